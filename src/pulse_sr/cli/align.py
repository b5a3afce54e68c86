"""``pulse-sr align``: find and align the faces of photos; the face helpers ``restore`` uses.

``align PHOTO... -o OUTDIR``: find every face, align it as FFHQ was made, and
write ``OUTDIR/<stem>_face_KK.png`` (the low-resolution search input),
``OUTDIR/aligned/<stem>_face_KK.png`` (the aligned crop at the generator's
resolution) and ``OUTDIR/<stem>.json`` (each face's landmarks, quad and
transform; written last, so its presence means the photo is done).

Heavy modules (torch, dlib, the engine) are imported inside the functions.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from pulse_sr.cli.common import (  # noqa: F401 - settings_from_args is part of this module's API
    Job, UsageError, err, generator_from_args, int_at_least, json_safe, output_name, prepare_jobs, run_jobs,
    settings_from_args, version,
)
from pulse_sr.cli.options import (  # noqa: F401 - the constants are re-exported (tests check them)
    DEFAULT_SIZE, DETECT_MAX_SIDE, FEATHER, MAX_SIDE, MIN_SCORE, PHOTO_MAX_PIXELS, TINY_SIDE, FaceOptions,
    RunOptions, add_face_options, add_output_options,
)


# -- parser --------------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    """Register ``align``."""
    p = sub.add_parser(
        "align",
        help="find and align the faces of photos, writing low-resolution search inputs",
        description="For each PHOTO (or folder of photos), detect every face (MTCNN, down to about "
        "16 px; dlib's 68 landmarks where it finds the face too), align it as the FFHQ dataset was "
        "made, resample it to the generator's "
        "resolution and downscale it with PULSE's bicubic operator. Writes OUTDIR/<stem>_face_KK.png, "
        "OUTDIR/aligned/<stem>_face_KK.png and OUTDIR/<stem>.json (quads and transforms).",
    )
    p.add_argument("inputs", nargs="+", metavar="PHOTO", help="image files or folders")
    p.add_argument("-o", "--output", "--outdir", dest="outdir", required=True, metavar="OUTDIR",
                   help="faces go to OUTDIR/<photo stem>_face_KK.png (made if missing)")
    p.add_argument("--generator", default="dcgan-digiface",
                   help="the generator the faces are for: sets their resolution and framing")
    p.add_argument("--weights", metavar="PATH", default=None, help="weights folder or file")
    add_face_options(p)
    p.add_argument("--max-pixels", type=int_at_least(16), default=PHOTO_MAX_PIXELS,
                   help="refuse larger photos (default 8192*8192)")
    p.add_argument("--overwrite", action="store_true", help="redo photos already aligned")
    add_output_options(p)
    p.set_defaults(func=cmd_align)


# -- shared with restore ---------------------------------------------------------------------
def resolve_size(size: int | None, resolution: int) -> int:
    """``--size`` (``None``: the default, or the nearest size the generator takes) checked
    against the input sizes of a ``resolution`` generator; a bad one is a UsageError."""
    from pulse_sr.degradations.bicubic import valid_input_sizes
    from pulse_sr.io.images import nearest_size

    sizes = valid_input_sizes(resolution)
    if not sizes:
        raise UsageError(f"a {resolution}x{resolution} generator takes no input size")
    if size is None:
        return DEFAULT_SIZE if DEFAULT_SIZE in sizes else nearest_size(DEFAULT_SIZE, sizes)
    if size not in sizes:
        raise UsageError(f"--size {size}: a {resolution}x{resolution} generator takes "
                         f"{', '.join(map(str, sizes))}")
    return int(size)


def find_faces(photo: Any, faces: FaceOptions, *, resolution: int, framing: Any) -> tuple[list[Any], list[str]]:
    """The faces of ``photo [H, W, 3]`` uint8 by the face options; returns ``(faces, notes)``.

    Detection: MTCNN for every size, dlib's 68 points where dlib finds the face too, retried
    on a copy with a neutral border for tight crops; frames that leave the photo are filled
    from such a border, never mirrored (:mod:`pulse_sr.io.face_finder`).
    Raises NoFaceError / AlignError (one line)."""
    from pulse_sr.degradations.bicubic import valid_input_sizes
    from pulse_sr.io.align import AlignError, NoFaceError, keep_largest, whole_image_face
    from pulse_sr.io.face_finder import align_without_mirror, detect_with_retry

    mode = faces.mode
    h, w = photo.shape[:2]
    if mode == "aligned" or (mode == "auto" and max(h, w) < TINY_SIDE):
        why = "--aligned" if mode == "aligned" else f"smaller than {TINY_SIDE} pixels"
        return [whole_image_face(photo, resolution=resolution)], [f"taken as an aligned face ({why})"]
    try:
        dets, notes = detect_with_retry(photo, min_score=faces.min_score, detect_max_side=faces.detect_max_side)
    except AlignError as e:
        if mode == "auto":
            raise AlignError(f"{e} (or --aligned if the image is already an aligned face)") from None
        raise
    if not dets:
        if mode == "auto" and h == w and h in valid_input_sizes(resolution):
            return ([whole_image_face(photo, resolution=resolution)],
                    ["no face detected; a square of a valid input size: taken as an aligned face"])
        raise NoFaceError("no face found (MTCNN and dlib detectors, also on a copy with a border); nothing written"
                          + ("; use --aligned if the image is an aligned face crop" if mode == "auto" else ""))
    kept = keep_largest(dets, faces.max_faces)
    if len(kept) < len(dets):
        notes.append(f"{len(dets)} faces found; kept the {len(kept)} largest (--max-faces)")
    return align_without_mirror(photo, kept, resolution=resolution, framing=framing), notes


def aligned_target(photo: Any, opts: RunOptions, resolution: int, size: int | None,
                   name: str) -> tuple[Any, list[str]]:
    """The search input ``[3, s, s]`` in [0, 1] of a whole-image face ``photo [H, W, 3]`` uint8:
    the image itself when its size is usable; returns ``(target, notes)``.

    ``size`` given (``align``): center-cropped and resized to it when needed; else
    (``restore``) :func:`fit_to_generator` with ``--resize`` / ``--center-crop`` as ``run``.
    """
    import torch

    from pulse_sr.io.images import fit_to_generator, resize_image

    img = torch.from_numpy(photo).permute(2, 0, 1).float().div(255.0)
    if size is None:
        return fit_to_generator(img, resolution, resize=opts.resize, center_crop=opts.center_crop, name=name)
    notes = []
    h, w = int(img.shape[1]), int(img.shape[2])
    s = min(h, w)
    if h != w:
        top, left = (h - s) // 2, (w - s) // 2
        img = img[:, top:top + s, left:left + s]
        notes.append(f"center-cropped {w}x{h} to the central {s}x{s}")
    if s != size:
        img = resize_image(img, size)
        notes.append(f"resized {s}x{s} to {size}x{size} (bicubic, antialiased)")
    return img.contiguous(), notes


def small_face_note(face: Any, size: int) -> None:
    """Say so when a detected face has fewer photo pixels than the search input."""
    if face.detection is not None and face.face_pixels < size:
        face.notes.append(f"the face frame is only {face.face_pixels:.0f} px in the photo, less than "
                          f"the {size}x{size} input: the input is an upsampled blur of it")


def load_photo(path: Path, max_pixels: int) -> Any:
    """``[H, W, 3]`` uint8 RGB of a photo (errors name the file)."""
    from pulse_sr.io.images import load_rgb8

    return load_rgb8(path, max_pixels=max_pixels)


# -- align ---------------------------------------------------------------------------------
def cmd_align(args: argparse.Namespace) -> int:
    """``pulse-sr align``: exit 0 all done or skipped, 1 some photo failed (no face, unreadable)."""

    opts, faces = RunOptions.from_args(args), FaceOptions.from_args(args)
    generator = generator_from_args(args, "cpu")
    framing = generator.framing
    size = resolve_size(faces.size, int(generator.resolution))
    jobs, failures = prepare_jobs(opts.inputs, opts.outdir, lambda p: opts.outdir / f"{output_name(p)}.json")

    def one(job: Job) -> None:
        _align_one(job, opts, faces, generator, framing, size)

    return run_jobs(jobs, failures, one)


def _old_face_files(record_path: Path) -> set[str]:
    """The face files an earlier record of this photo lists (none when it has none)."""
    import json

    if not record_path.exists():
        return set()
    try:
        old = json.loads(record_path.read_text(encoding="utf-8"))
        return {f[k] for f in old.get("faces", []) for k in ("file", "aligned_file") if k in f}
    except (OSError, ValueError, TypeError, AttributeError):
        return set()


def _remove_old_faces(outdir: Path, stem: str, names: set[str]) -> None:
    """Remove faces of an earlier run that this one no longer has (``--overwrite``): only this
    photo's own ``<stem>_face_KK.png`` files in OUTDIR and OUTDIR/aligned, nobody else's."""
    import re

    own = re.compile(rf"(aligned/)?{re.escape(stem)}_face_\d+\.png")
    for name in names:
        p = outdir / name
        if (isinstance(name, str) and own.fullmatch(name) and p.is_file() and not p.is_symlink()
                and p.resolve().parent in (outdir.resolve(), (outdir / "aligned").resolve())):
            p.unlink()


def _align_one(job: Job, opts: RunOptions, face_opts: FaceOptions, generator: Any, framing: Any,
               size: int) -> None:
    from pulse_sr.io.files import atomic_write_json
    from pulse_sr.io.images import save_png
    from pulse_sr.io.results import path_text

    path, stem, outdir = job.path, output_name(job.path), opts.outdir
    record_path = outdir / f"{stem}.json"
    if record_path.exists() and not opts.overwrite:
        job.status, job.converged, job.reason = "skipped", True, "aligned already"
        if not opts.quiet:
            err(f"{path}: skipped (aligned already; use --overwrite)")
        return
    started = time.perf_counter()
    photo = load_photo(path, opts.max_pixels)
    resolution = int(generator.resolution)
    faces, notes = find_faces(photo, face_opts, resolution=resolution, framing=framing)
    old_files = _old_face_files(record_path)
    (outdir / "aligned").mkdir(parents=True, exist_ok=True)
    records = []
    for face in faces:
        face_notes: list[str] = []
        if face.detection is None:
            lr, face_notes = aligned_target(photo, opts, resolution, size, str(path))
        else:
            lr = face.low_res(size)
            small_face_note(face, size)
        files = {"file": f"{stem}_face_{face.index:02d}.png",
                 "aligned_file": f"aligned/{stem}_face_{face.index:02d}.png"}
        save_png(lr, outdir / files["file"])
        save_png(face.aligned, outdir / files["aligned_file"])
        rec = {**face.record(), **files, "size": int(lr.shape[-1])}
        if face_notes:
            rec["notes"] = rec.get("notes", []) + face_notes
        records.append(rec)
        old_files.difference_update(files.values())
    record = {
        "pulse_sr_version": version(),
        "input": {"path": path_text(path), "size": [int(photo.shape[1]), int(photo.shape[0])], "notes": notes},
        "generator": {"name": generator.name, "resolution": resolution},
        "size": size,
        "coordinates": "photo pixels after EXIF orientation, x right, y down; pixel (i, j) covers "
                       "[i, i+1) x [j, j+1); matrix maps face-frame pixels (u, v, 1) at the generator's "
                       "resolution to photo pixels",
        "faces": records,
        "seconds": round(time.perf_counter() - started, 3),
    }
    atomic_write_json(record_path, json_safe(record))
    _remove_old_faces(outdir, stem, old_files)
    job.status, job.converged = "done", True
    job.extra["output"] = str(record_path)
    if not opts.quiet:
        err(f"{path}: {len(faces)} face{'s' if len(faces) != 1 else ''} -> {outdir}/{stem}_face_*.png")

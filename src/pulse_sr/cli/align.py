"""``pulse-sr align`` and ``pulse-sr restore``: faces in real photos.

``align PHOTO... -o OUTDIR``: find every face, align it as FFHQ was made, and
write ``OUTDIR/<stem>_face_KK.png`` (the low-resolution search input),
``OUTDIR/aligned/<stem>_face_KK.png`` (the aligned crop at the generator's
resolution) and ``OUTDIR/<stem>.json`` (each face's landmarks, quad and
transform; written last, so its presence means the photo is done).

``restore PHOTO... -o OUTDIR`` (also ``run --align``): align, search every face
and paste the chosen candidate back into an enlarged copy of the photo. Writes
``OUTDIR/<stem>/`` with ``restored.png``, ``comparison.png`` (input | restored),
``face_KK/`` (the search results, as ``pulse-sr run`` writes them, plus
``aligned.png``) and ``report.json``; the folder is staged and renamed when complete.

Heavy modules (torch, dlib, the engine) are imported inside the functions.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from pulse_sr.cli.common import (  # noqa: F401 - settings_from_args is part of this module's API
    NOTICE, Job, UsageError, already_done, announce_compile, announce_gaussian_fit, err, generator_from_args,
    int_at_least, json_safe, out, output_name, prepare_jobs, resolve_device, result_dir, run_jobs, settings_from_args, strip_name, version,
)

#: images smaller than this (longer side) are taken as aligned faces without detection
TINY_SIDE = 64
PHOTO_MAX_PIXELS = 8192 * 8192
DEFAULT_SIZE = 16
# Defaults of pulse_sr.io.align / pulse_sr.io.paste, repeated here so building the parser
# imports no torch (tests check they match).
MIN_SCORE, DETECT_MAX_SIDE, FEATHER, MAX_SIDE = 0.3, 1600, 0.1, 4096


# -- parsers -------------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    """Register ``align`` and ``restore``."""
    _add_align_parser(sub)
    _add_restore_parser(sub)


def add_face_options(p: Any) -> None:
    """Options that choose and align faces (``align``, ``restore``, ``run --align``)."""
    g = p.add_argument_group("faces")
    g.add_argument("--size", type=int_at_least(4), default=None,
                   help=f"side of each low-resolution face (default {DEFAULT_SIZE}, or the nearest "
                   "size the generator takes)")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--aligned", dest="face_mode", action="store_const", const="aligned",
                      help="inputs are already aligned faces: no detection")
    mode.add_argument("--detect", dest="face_mode", action="store_const", const="detect",
                      help=f"always detect faces (by default images under {TINY_SIDE} pixels are "
                      "taken as aligned faces, and so are valid-size squares without a detected face)")
    g.add_argument("--max-faces", type=int_at_least(1), default=None,
                   help="keep the K largest faces of each photo (default all)")
    g.add_argument("--min-score", type=float, default=MIN_SCORE,
                   help=f"dlib detector score a face needs (default {MIN_SCORE}; lower finds "
                   "more faces and more false ones)")
    g.add_argument("--detect-max-side", type=int_at_least(64), default=DETECT_MAX_SIDE,
                   help=f"detect on a copy at most this many pixels wide/high (default "
                   f"{DETECT_MAX_SIDE}); faces are cropped from the full photo")
    p.set_defaults(face_mode="auto")


def add_paste_options(p: Any) -> None:
    """Options for pasting faces back (``restore``, ``run --align``)."""
    g = p.add_argument_group("paste back")
    g.add_argument("--pick", type=int_at_least(0), default=None,
                   help="paste candidate K of each face (default: the one with the lowest L2)")
    g.add_argument("--feather", type=float, default=FEATHER,
                   help=f"soft edge of the pasted face, as a fraction of its side (default {FEATHER})")
    g.add_argument("--scale", type=float, default=None,
                   help="enlarge the photo by this factor (default: so the smallest face gets "
                   "the generator's full resolution, at least 1)")
    g.add_argument("--max-side", type=int_at_least(16), default=MAX_SIDE,
                   help=f"cap on the restored photo's longer side (default {MAX_SIDE})")


def _add_align_parser(sub: Any) -> None:
    p = sub.add_parser(
        "align",
        help="find and align the faces of photos, writing low-resolution search inputs",
        description="For each PHOTO (or folder of photos), detect every face (dlib; pip install "
        "'pulse-sr[align]'), align it as the FFHQ dataset was made, resample it to the generator's "
        "resolution and downscale it with PULSE's bicubic operator. Writes OUTDIR/<stem>_face_KK.png, "
        "OUTDIR/aligned/<stem>_face_KK.png and OUTDIR/<stem>.json (quads and transforms).",
    )
    p.add_argument("inputs", nargs="+", metavar="PHOTO", help="image files or folders")
    p.add_argument("-o", "--output", "--outdir", dest="outdir", required=True, metavar="OUTDIR")
    p.add_argument("--generator", default="dcgan-digiface",
                   help="the generator the faces are for: sets their resolution and framing")
    p.add_argument("--weights", metavar="PATH", default=None, help="weights folder or file")
    add_face_options(p)
    p.add_argument("--max-pixels", type=int_at_least(16), default=PHOTO_MAX_PIXELS,
                   help="refuse larger photos (default 8192*8192)")
    p.add_argument("--overwrite", action="store_true", help="redo photos already aligned")
    p.add_argument("--quiet", action="store_true", help="no per-photo lines")
    p.set_defaults(func=cmd_align)


def _add_restore_parser(sub: Any) -> None:
    from pulse_sr.cli import run as run_cli

    p = sub.add_parser(
        "restore",
        help="super-resolve every face of photos and paste them back (run --align)",
        description="For each PHOTO: align every face, search faces that downscale to it (as "
        "pulse-sr run does) and paste the chosen candidate back into an enlarged copy of the photo "
        "through the inverse of its alignment, with a feathered edge. Writes OUTDIR/<stem>/ with "
        "restored.png, comparison.png, face_KK/ (the search results) and report.json.",
    )
    run_cli.add_run_options(p)  # every option of `run`, same names and defaults
    for action in p._actions:  # photos are larger than the tiny faces `run` expects
        if action.dest == "max_pixels":
            action.help = "refuse larger photos (default 8192*8192)"
    add_face_options(p)
    add_paste_options(p)
    p.set_defaults(func=restore_main, max_pixels=PHOTO_MAX_PIXELS)


# -- shared --------------------------------------------------------------------------------
def _opt(args: argparse.Namespace, name: str, default: Any) -> Any:
    value = getattr(args, name, default)
    return default if value is None and default is not None else value


def _resolve_size(args: argparse.Namespace, resolution: int) -> int:
    from pulse_sr.degradations.bicubic import valid_input_sizes
    from pulse_sr.io.images import nearest_size

    sizes = valid_input_sizes(resolution)
    if not sizes:
        raise UsageError(f"a {resolution}x{resolution} generator takes no input size")
    size = getattr(args, "size", None)
    if size is None:
        return DEFAULT_SIZE if DEFAULT_SIZE in sizes else nearest_size(DEFAULT_SIZE, sizes)
    if size not in sizes:
        raise UsageError(f"--size {size}: a {resolution}x{resolution} generator takes "
                         f"{', '.join(map(str, sizes))}")
    return int(size)


def find_faces(photo: Any, args: argparse.Namespace, *, resolution: int, framing: Any) -> tuple[list[Any], list[str]]:
    """The faces of ``photo [H, W, 3]`` uint8 by the face options in ``args``; returns
    ``(faces, notes)``. Raises NoFaceError / AlignError (one line)."""
    from pulse_sr.degradations.bicubic import valid_input_sizes
    from pulse_sr.io.align import (
        AlignError, NoFaceError, align_detections, detect_faces, keep_largest, whole_image_face,
    )

    mode = _opt(args, "face_mode", "auto")
    h, w = photo.shape[:2]
    if mode == "aligned" or (mode == "auto" and max(h, w) < TINY_SIDE):
        why = "--aligned" if mode == "aligned" else f"smaller than {TINY_SIDE} pixels"
        return [whole_image_face(photo, resolution=resolution)], [f"taken as an aligned face ({why})"]
    min_score = float(_opt(args, "min_score", MIN_SCORE))
    try:
        dets = detect_faces(photo, min_score=min_score,
                            detect_max_side=int(_opt(args, "detect_max_side", DETECT_MAX_SIDE)))
    except AlignError as e:
        if mode == "auto":
            raise AlignError(f"{e} (or --aligned if the image is already an aligned face)") from None
        raise
    notes: list[str] = []
    if not dets:
        if mode == "auto" and h == w and h in valid_input_sizes(resolution):
            return ([whole_image_face(photo, resolution=resolution)],
                    ["no face detected; a square of a valid input size: taken as an aligned face"])
        raise NoFaceError(f"no face found (dlib detector, --min-score {min_score:g}); nothing written"
                          + ("; use --aligned if the image is an aligned face crop" if mode == "auto" else ""))
    max_faces = _opt(args, "max_faces", None)
    kept = keep_largest(dets, max_faces)
    if len(kept) < len(dets):
        notes.append(f"{len(dets)} faces found; kept the {len(kept)} largest (--max-faces)")
    return align_detections(photo, kept, resolution=resolution, framing=framing), notes


def _aligned_target(photo: Any, args: argparse.Namespace, resolution: int, size: int | None,
                    name: str) -> tuple[Any, list[str]]:
    """The search input of a whole-image face: the image itself when its size is usable.

    ``size`` given (``align``): center-cropped and resized to it when needed; else
    (``restore``) :func:`fit_to_generator` with ``--resize`` / ``--center-crop`` as ``run``.
    """
    import torch

    from pulse_sr.io.images import fit_to_generator, resize_image

    img = torch.from_numpy(photo).permute(2, 0, 1).float().div(255.0)
    if size is None:
        return fit_to_generator(img, resolution, resize=bool(_opt(args, "resize", False)),
                                center_crop=bool(_opt(args, "center_crop", False)), name=name)
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


def _small_face_note(face: Any, size: int) -> None:
    """Say so when a detected face has fewer photo pixels than the search input."""
    if face.detection is not None and face.face_pixels < size:
        face.notes.append(f"the face frame is only {face.face_pixels:.0f} px in the photo, less than "
                          f"the {size}x{size} input: the input is an upsampled blur of it")


def _load_photo(path: Path, args: argparse.Namespace) -> Any:
    from pulse_sr.errors import PulseError
    from pulse_sr.io.images import load_rgb8

    try:
        return load_rgb8(path, max_pixels=int(_opt(args, "max_pixels", PHOTO_MAX_PIXELS)))
    except PulseError as e:
        raise type(e)(strip_name(str(e), path)) from None


# -- align ---------------------------------------------------------------------------------
def cmd_align(args: argparse.Namespace) -> int:
    """``pulse-sr align``: exit 0 all done or skipped, 1 some photo failed (no face, unreadable)."""
    from pulse_sr.io.align import framing_for

    generator = generator_from_args(args, "cpu")
    resolution = int(generator.resolution)
    framing = framing_for(generator.name)
    size = _resolve_size(args, resolution)
    outdir = Path(args.outdir)
    jobs, failures = prepare_jobs(args, outdir, lambda p: outdir / f"{output_name(p)}.json")

    def one(job: Job) -> None:
        _align_one(job, args, generator, framing, size, outdir)

    return run_jobs(jobs, failures, one)


def _align_one(job: Job, args: argparse.Namespace, generator: Any, framing: Any, size: int,
               outdir: Path) -> None:
    import json
    import re

    from pulse_sr.io.files import atomic_write_json
    from pulse_sr.io.images import save_png

    path, stem = job.path, output_name(job.path)
    record_path = outdir / f"{stem}.json"
    if record_path.exists() and not args.overwrite:
        job.status = "skipped"
        if not args.quiet:
            out(f"{path}: skipped (aligned already; use --overwrite)")
        return
    started = time.perf_counter()
    photo = _load_photo(path, args)
    resolution = int(generator.resolution)
    faces, notes = find_faces(photo, args, resolution=resolution, framing=framing)
    old_files: set[str] = set()
    if record_path.exists():
        try:
            old = json.loads(record_path.read_text(encoding="utf-8"))
            old_files = {f[k] for f in old.get("faces", []) for k in ("file", "aligned_file") if k in f}
        except (OSError, ValueError, TypeError, AttributeError):
            old_files = set()
    (outdir / "aligned").mkdir(parents=True, exist_ok=True)
    records = []
    for face in faces:
        face_notes: list[str] = []
        if face.detection is None:
            lr, face_notes = _aligned_target(photo, args, resolution, size, str(path))
        else:
            lr = face.low_res(size)
            _small_face_note(face, size)
        files = {"file": f"{stem}_face_{face.index:02d}.png",
                 "aligned_file": f"aligned/{stem}_face_{face.index:02d}.png"}
        save_png(lr, outdir / files["file"])
        save_png(face.aligned, outdir / files["aligned_file"])
        rec = {**face.record(), **files, "size": int(lr.shape[-1])}
        if face_notes:
            rec["notes"] = rec.get("notes", []) + face_notes
        records.append(rec)
        old_files.discard(files["file"])
        old_files.discard(files["aligned_file"])
    record = {
        "pulse_sr_version": version(),
        "input": {"path": str(path), "size": [int(photo.shape[1]), int(photo.shape[0])], "notes": notes},
        "generator": {"name": generator.name, "resolution": resolution},
        "size": size,
        "coordinates": "photo pixels after EXIF orientation, x right, y down; pixel (i, j) covers "
                       "[i, i+1) x [j, j+1); matrix maps face-frame pixels (u, v, 1) at the generator's "
                       "resolution to photo pixels",
        "faces": records,
        "seconds": round(time.perf_counter() - started, 3),
    }
    atomic_write_json(record_path, json_safe(record))
    own = re.compile(rf"(aligned/)?{re.escape(stem)}_face_\d+\.png")  # this photo's files, nobody else's
    for name in old_files:  # faces of an earlier run that this one no longer has (--overwrite)
        p = outdir / name
        if (isinstance(name, str) and own.fullmatch(name) and p.is_file() and not p.is_symlink()
                and p.resolve().parent in (outdir.resolve(), (outdir / "aligned").resolve())):
            p.unlink()
    job.status, job.converged = "done", True
    if not args.quiet:
        out(f"{path}: {len(faces)} face{'s' if len(faces) != 1 else ''} -> {outdir}/{stem}_face_*.png")


# -- restore -------------------------------------------------------------------------------
def restore_main(args: argparse.Namespace) -> int:
    """``pulse-sr restore`` (and ``run --align``): align, search and paste back every face.

    ``args`` holds ``run``'s options; the face and paste-back options
    (:func:`add_face_options`, :func:`add_paste_options`) default when absent.
    Exit codes as ``run``: 0, 1 some photo failed, 2 usage, 3 a face without a candidate within eps.
    """
    from pulse_sr.cli.run import check_start
    from pulse_sr.io.align import framing_for

    settings = settings_from_args(args)
    pick = _opt(args, "pick", None)
    if pick is not None and pick >= args.n:
        raise UsageError(f"--pick {pick}: only {args.n} candidates per face (--n); use 0 ... {args.n - 1}")
    feather = float(_opt(args, "feather", FEATHER))
    if not 0.0 <= feather <= 0.5:
        raise UsageError(f"--feather {feather:g}: must be between 0 and 0.5")
    scale = _opt(args, "scale", None)
    if scale is not None and not 0 < scale <= 64:
        raise UsageError(f"--scale {scale:g}: must be > 0 and <= 64")
    device = resolve_device(args.device)
    generator = generator_from_args(args, device)
    check_start(settings, generator)
    size = _resolve_size(args, int(generator.resolution))
    announce_gaussian_fit(generator, quiet=args.quiet)
    announce_compile(settings, generator, quiet=args.quiet)
    framing = framing_for(generator.name)
    outdir = Path(args.outdir)
    jobs, failures = prepare_jobs(args, outdir, lambda p: result_dir(outdir, p))

    def one(job: Job) -> None:
        _restore_one(job, args, generator, settings, device, framing, size, outdir)

    return run_jobs(jobs, failures, one, not_converged="with a face without a candidate within eps")


def _restore_one(job: Job, args: argparse.Namespace, generator: Any, settings: Any, device: str,
                 framing: Any, size: int, outdir: Path) -> None:
    from pulse_sr.cli.run import search_with_progress, write_result_files
    from pulse_sr.io.files import atomic_write_json, staged_dir
    from pulse_sr.io.images import save_png
    from pulse_sr.io.paste import output_scale, paste_faces, side_by_side
    from pulse_sr.search.pulse import pulse_search, resolve_settings

    path = job.path
    final = result_dir(outdir, path)
    if already_done(job, final, overwrite=args.overwrite):
        return

    started = time.perf_counter()
    photo = _load_photo(path, args)
    resolution = int(generator.resolution)
    faces, notes = find_faces(photo, args, resolution=resolution, framing=framing)
    targets = []
    for face in faces:
        if face.detection is None:
            target, face_notes = _aligned_target(photo, args, resolution, None, str(path))
            face.notes.extend(face_notes)
        else:
            target = face.low_res(size)
            _small_face_note(face, size)
        targets.append(target)

    pick = _opt(args, "pick", None)
    n = args.n
    sw = max(3, len(str(settings.steps)))
    cw = max(2, len(str(n - 1)))
    run_info = {"n": n, "seed": args.seed, "device": device}
    search_settings = {**resolve_settings(settings, generator).to_dict(), **run_info}  # what the search runs
    with staged_dir(final, overwrite=args.overwrite) as tmp:
        chosen, entries = [], []
        for face, target in zip(faces, targets):
            folder = f"face_{face.index:02d}"
            fdir = tmp / folder
            fdir.mkdir()
            frames_dirs: list[Path] = []
            if _opt(args, "save_intermediate", False):
                for k in range(n):
                    d = fdir / "intermediate" / f"cand_{k:0{cw}d}"
                    d.mkdir(parents=True)
                    frames_dirs.append(d)
            face_started = time.perf_counter()
            label = Job(Path(f"{path.name} face {face.index}"))
            result = search_with_progress(label, args, generator, target, settings, device,
                                           frames_dirs, sw, pulse_search)
            save_png(face.aligned, fdir / "aligned.png")
            report = write_result_files(
                fdir, target=target, result=result, generator=generator, settings=search_settings,
                input_info={"path": str(path), "face": face.index, "aligned": "aligned.png",
                            "used_size": [int(target.shape[-1]), int(target.shape[-2])],
                            "notes": list(face.notes)},
                started=face_started, frames_dirs=frames_dirs,
            )
            k = report["best_index"] if pick is None else pick
            chosen.append((result.hr[k], face.matrix))
            cand = report["candidates"][k]
            entries.append({**face.record(), "folder": folder, "picked": k, "picked_l2": cand["final_l2"],
                            "picked_converged": cand["converged"], "any_converged": report["any_converged"],
                            "input_size": int(target.shape[-1])})

        h, w = photo.shape[:2]
        factor = output_scale(w, h, [f.face_pixels for f in faces], resolution,
                              max_side=int(_opt(args, "max_side", MAX_SIDE)),
                              scale=_opt(args, "scale", None))
        feather = float(_opt(args, "feather", FEATHER))
        feathers = [feather if f.detection is not None else 0.0 for f in faces]
        canvas, (sx, sy) = paste_faces(photo, chosen, scale=factor, feather=feathers)
        save_png(canvas, tmp / "restored.png")
        save_png(side_by_side(photo, canvas), tmp / "comparison.png")
        all_conv = all(e["any_converged"] for e in entries)
        report = {
            "pulse_sr_version": version(),
            "input": {"path": str(path), "size": [int(w), int(h)], "notes": notes},
            "generator": generator.describe(),
            "settings": {**search_settings, "size": size, "pick": pick, "feather": feather,
                         "face_mode": _opt(args, "face_mode", "auto")},
            "output": {"restored": "restored.png", "comparison": "comparison.png",
                       "size": [int(canvas.shape[2]), int(canvas.shape[1])], "scale": [sx, sy],
                       "background": "bicubic"},
            "coordinates": "photo pixels after EXIF orientation, x right, y down; pixel (i, j) covers "
                           "[i, i+1) x [j, j+1); matrix maps face-frame pixels (u, v, 1) at the "
                           "generator's resolution to photo pixels; restored = photo * scale",
            "faces": entries,
            "all_faces_converged": all_conv,
            "seconds": round(time.perf_counter() - started, 3),
            "notice": NOTICE,
        }
        atomic_write_json(tmp / "report.json", json_safe(report))
    job.status, job.converged = "done", all_conv
    msg = f"{path}: {len(faces)} face{'s' if len(faces) != 1 else ''} restored -> {final}"
    if all_conv:
        out(msg)
    else:
        err(f"{msg} (WARNING: some face has no candidate within eps={settings.eps:g}; pasted anyway)")

"""``pulse-sr restore`` (also ``run --align``): faces in real photos, super-resolved in place.

``restore PHOTO... -o OUTDIR``: align, search every face and paste the chosen candidate back
into an enlarged copy of the photo. Writes ``OUTDIR/<stem>/`` with ``restored.png``,
``comparison.png`` (input | restored), ``face_KK/`` (the search results, as ``pulse-sr run``
writes them, plus ``aligned.png``) and ``report.json``; the folder is staged and renamed
when complete.

Heavy modules (torch, dlib, the engine) are imported inside the functions.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from pulse_sr.cli.align import aligned_target, find_faces, load_photo, resolve_size, small_face_note
from pulse_sr.cli.common import (
    NOTICE, Job, UsageError, already_done, announce_compile, announce_gaussian_fit, claimed, err,
    generator_from_args, json_safe, not_converged_hint, prepare_jobs, resolve_device, result_dir, run_jobs,
    settings_from_args, verbose, version,
)
from pulse_sr.cli.options import (
    PHOTO_MAX_PIXELS, FaceOptions, PasteOptions, RunOptions, add_engine_options, add_face_options,
    add_paste_options, add_run_options, check_local_engine_flags, check_start, frame_dirs,
    search_with_progress,
)

NOT_CONVERGED = "with a face without a candidate within eps"


def add_parser(sub: Any) -> None:
    """Register ``restore``."""
    p = sub.add_parser(
        "restore",
        help="super-resolve every face of photos and paste them back (run --align)",
        description="For each PHOTO: align every face, search faces that downscale to it (as "
        "pulse-sr run does) and paste the chosen candidate back into an enlarged copy of the photo "
        "through the inverse of its alignment, with a feathered edge. A face already at least the "
        "generator's resolution is left untouched (--force restores it). Writes OUTDIR/<stem>/ with "
        "restored.png, comparison.png, face_KK/ (the search results) and report.json.",
    )
    add_run_options(p)  # every option of `run`, same names and defaults
    add_engine_options(p)  # accepted as by `run`; restore runs on the local engine (checked in restore_main)
    for action in p._actions:  # photos are larger than the tiny faces `run` expects
        if action.dest == "max_pixels":
            action.help = "refuse larger photos (default 8192*8192)"
    add_face_options(p)
    add_paste_options(p)
    p.set_defaults(func=restore_main, max_pixels=PHOTO_MAX_PIXELS)


@dataclasses.dataclass(frozen=True)
class Restore:
    """Everything one photo's restore needs besides the photo."""

    opts: RunOptions
    faces: FaceOptions
    paste: PasteOptions
    generator: Any
    settings: Any
    framing: Any
    size: int
    force: bool = False


def restore_main(args: argparse.Namespace) -> int:
    """``pulse-sr restore`` (and ``run --align``): align, search and paste back every face.

    ``args`` holds ``run``'s options; the face and paste-back options
    (:func:`add_face_options`, :func:`add_paste_options`) default when absent.
    Exit codes as ``run``: 0, 1 some photo failed, 2 usage, 3 a face without a candidate within eps.
    """
    if getattr(args, "engine", "local") != "local":
        raise UsageError("restore runs on the local engine only (drop --engine ray)")
    check_local_engine_flags(args)
    settings = settings_from_args(args)
    opts = RunOptions.from_args(args)
    paste = PasteOptions.from_args(args, opts.n)
    opts.check_input_choices()
    if opts.mask is not None:
        raise UsageError("--mask: a mask is for one input of pulse-sr run, not for the faces of a photo")
    opts = dataclasses.replace(opts, device=resolve_device(opts.device))
    generator = generator_from_args(args, opts.device)
    check_start(settings, generator)
    faces = FaceOptions.from_args(args)
    size = resolve_size(faces.size, int(generator.resolution))
    announce_gaussian_fit(generator, quiet=opts.quiet)
    announce_compile(settings, generator, quiet=opts.quiet)
    r = Restore(opts, faces, paste, generator, settings, generator.framing, size,
                force=bool(getattr(args, "force", False)))
    jobs, failures = prepare_jobs(opts.inputs, opts.outdir, lambda p: result_dir(opts.outdir, p))
    return run_jobs(jobs, failures, lambda job: _restore_one(job, r), not_converged=NOT_CONVERGED,
                    hint=not_converged_hint(args))


def _restore_one(job: Job, r: Restore) -> None:
    """Restore one photo into ``OUTDIR/<name>/`` (skipped when done or another run holds it)."""
    final = result_dir(r.opts.outdir, job.path)
    with claimed(job, final) as ours:
        if ours and not already_done(job, final, overwrite=r.opts.overwrite, converged_key="all_faces_converged"):
            _restore_photo(job, final, r)


def _gains(faces: list[Any], r: Restore) -> list[str]:
    """Per face: ``""`` to restore it, else why it is skipped (:func:`pulse_sr.io.face_gain.judge_face`:
    a face at least the generator's resolution has nothing to gain; ``--force`` restores it; a
    face within an octave below it gets a warning note)."""
    from pulse_sr.io.face_gain import SKIP, WARN, judge_face

    skips = []
    for face in faces:
        if face.detection is None:  # the whole image, taken as an aligned face: the user asked
            skips.append("")
            continue
        gain = judge_face(face, force=r.force)
        if gain.decision == WARN:
            face.notes.append(f"WARNING: {gain.reason}")
        skips.append(gain.reason + " (--force restores it)" if gain.decision == SKIP else "")
    return skips


def _targets(photo: Any, faces: list[Any], r: Restore, name: str) -> list[Any]:
    """The search input ``[3, s, s]`` in [0, 1] of each face (notes added to the face)."""
    resolution = int(r.generator.resolution)
    targets = []
    for face in faces:
        if face.detection is None:
            target, face_notes = aligned_target(photo, r.opts, resolution, None, name)
            face.notes.extend(face_notes)
        else:
            target = face.low_res(r.size)
            small_face_note(face, r.size)
        targets.append(target)
    return targets


def _face_plan(target: Any, r: Restore, name: str) -> Any:
    """An aligned face ``[3, s, s]`` in [0, 1] through the same auto detection as ``run`` (grey,
    noise; its size is valid, so it is a face); ``--mask`` is for ``run``'s single inputs."""
    from pulse_sr.input_plan import plan_input

    choices = {**r.opts.input_choices(), "resize": False, "center_crop": False}
    return plan_input(target, int(r.generator.resolution), eps=r.settings.eps, name=name, **choices)


def _search_face(tmp: Path, face: Any, target: Any, r: Restore, search_settings: dict[str, Any],
                 path: Path) -> tuple[Any, dict[str, Any]]:
    """Search one face into ``tmp/face_KK/``; returns ``(chosen hr [3, R, R], its report entry)``."""
    from pulse_sr.io.images import save_png
    from pulse_sr.io.results import path_text, write_result_files

    folder = f"face_{face.index:02d}"
    fdir = tmp / folder
    fdir.mkdir()
    frames = frame_dirs(fdir, r.opts.n, r.opts.save_intermediate)
    started = time.perf_counter()
    plan = _face_plan(target, r, f"{path} face {face.index}")
    result = search_with_progress(f"{path.name} face {face.index}", r.opts, r.generator, plan.target,
                                  r.settings, frames, plan=plan)
    save_png(face.aligned, fdir / "aligned.png")
    report = write_result_files(
        fdir, target=plan.image, result=result, generator=r.generator, settings=search_settings,
        input_info={"path": path_text(path), "face": face.index, "aligned": "aligned.png",
                    "used_size": [int(target.shape[-1]), int(target.shape[-2])], "notes": list(face.notes),
                    **plan.describe()},
        started=started, frames_dirs=frames, matched=plan.matched(),
    )
    k = report["best_index"] if r.paste.pick is None else r.paste.pick
    cand = report["candidates"][k]
    return result.hr[k], {**face.record(), "folder": folder, "picked": k, "picked_l2": cand["final_l2"],
                          "picked_converged": cand["converged"], "any_converged": report["any_converged"],
                          "input_size": int(target.shape[-1]), "detected": plan.summary()}


def _restore_photo(job: Job, final: Path, r: Restore) -> None:
    from pulse_sr.io.files import atomic_write_json, staged_dir
    from pulse_sr.io.images import save_png
    from pulse_sr.io.paste import output_scale, paste_faces, side_by_side
    from pulse_sr.io.results import path_text
    from pulse_sr.search.pulse import resolve_settings

    path, started = job.path, time.perf_counter()
    photo = load_photo(path, r.opts.max_pixels)
    resolution = int(r.generator.resolution)
    faces, notes = find_faces(photo, r.faces, resolution=resolution, framing=r.framing)
    verbose(f"  {path.name}: load and find faces {time.perf_counter() - started:.2f} s")
    skips = _gains(faces, r)
    todo = [f for f, why in zip(faces, skips) if not why]
    targets = _targets(photo, todo, r, str(path))
    run_info = {"n": r.opts.n, "seed": r.opts.seed, "device": r.opts.device}
    search_settings = {**resolve_settings(r.settings, r.generator).to_dict(), **run_info}  # what the search runs
    name = str(r.generator.name)
    with staged_dir(final, overwrite=r.opts.overwrite) as tmp:
        chosen, done = [], {}
        for face, target in zip(todo, targets):
            hr, done[face.index] = _search_face(tmp, face, target, r, search_settings, path)
            chosen.append((hr, face.matrix))
        entries = [done.get(f.index) or {**f.record(), "skipped": why} for f, why in zip(faces, skips)]
        h, w = photo.shape[:2]
        factor = output_scale(w, h, [f.face_pixels for f in todo], resolution,
                              max_side=r.paste.max_side, scale=r.paste.scale)
        feathers = [r.paste.feather if f.detection is not None else 0.0 for f in todo]
        verbose(f"  {path.name}: {len(chosen)} searches done at {time.perf_counter() - started:.2f} s")
        canvas, (sx, sy) = paste_faces(photo, chosen, scale=factor, feather=feathers)
        # a photo with generated faces pasted in (none pasted: the photo, enlarged, unmarked)
        kind = "composite" if chosen else None
        save_png(canvas, tmp / "restored.png", provenance=kind, generator=name)
        save_png(side_by_side(photo, canvas), tmp / "comparison.png", provenance=kind, generator=name)
        all_conv = all(done[k]["any_converged"] for k in done)
        report = {
            "pulse_sr_version": version(),
            "input": {"path": path_text(path), "size": [int(w), int(h)], "notes": notes},
            "generator": r.generator.describe(),
            "settings": {**search_settings, "size": r.size, "pick": r.paste.pick, "feather": r.paste.feather,
                         "face_mode": r.faces.mode, "force": r.force},
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
    job.extra["faces"] = {"restored": len(todo), "skipped": len(faces) - len(todo)}
    l2s = [e["picked_l2"] for e in done.values() if e.get("picked_l2") is not None]
    job.extra.update(best_l2=max(l2s) if l2s else None, output=str(final))  # the photo's worst face
    _photo_line(job, final, faces, skips, r, all_conv)


def _photo_line(job: Job, final: Path, faces: list[Any], skips: list[str], r: Restore,
                all_conv: bool) -> None:
    """The photo's one line (stdout when all is well, else stderr), with the skipped and
    warned faces on their own lines below it."""
    n_done = sum(1 for why in skips if not why)
    msg = f"{job.path}: {n_done} face{'s' if n_done != 1 else ''} restored"
    if n_done < len(faces):
        msg += (f", {len(faces) - n_done} left untouched (already at least the generator's resolution; "
                "--force restores them)")
    msg += f" -> {final}"
    if all_conv:  # every photo's line goes to stderr, whatever its outcome
        err(msg)
    else:
        err(f"{msg} (WARNING: some face has no candidate within eps={r.settings.eps:g}; pasted anyway)")
    for face, why in zip(faces, skips):
        warned = [n for n in face.notes if n.startswith("WARNING: ")]
        if why or (warned and not r.opts.quiet):
            err(f"  face {face.index}: " + (f"skipped: {why}" if why else warned[0]))

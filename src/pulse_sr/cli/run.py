"""``pulse-sr run``: search faces for low-resolution inputs and write them with their proof."""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from pulse_sr.cli.common import (
    Job, already_done, announce_compile, announce_gaussian_fit, claimed, err, generator_from_args,
    not_converged_hint, prepare_jobs, resolve_device, result_dir, run_jobs, settings_from_args, verbose,
)
from pulse_sr.cli.options import (  # noqa: F401 - add_run_options, check_start re-exported for callers
    RunOptions, add_face_options, add_paste_options, add_run_options, check_start, frame_dirs,
    search_with_progress,
)


def add_parser(sub: Any) -> None:
    """Register ``run``."""
    p = sub.add_parser(
        "run",
        help="search faces for one or more low-resolution inputs",
        description="For each INPUT (an image file, or a folder of .png/.jpg/.jpeg/.webp/.bmp/.gif/"
        ".tif/.tiff files), search N faces whose degraded version matches it within EPS (bicubic "
        "downscale for a face of a valid size, block means for a detected mosaic, luma for a black-and-"
        "white input; --degradation, --noise-sigma) and write them to OUTDIR/<stem>/ with their "
        "downscales (lr_XX.png) and report.json.",
    )
    add_run_options(p)
    p.add_argument("--align", action="store_true",
                   help="inputs are photos: align every face, search it and paste it back (= pulse-sr restore)")
    add_face_options(p)
    add_paste_options(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """``pulse-sr run``: search every input; see :mod:`pulse_sr.cli` for exit codes."""
    if args.align:
        from pulse_sr.cli.restore import restore_main

        return restore_main(args)
    settings = settings_from_args(args)
    opts = RunOptions.from_args(args)
    opts.check_input_choices()
    opts = dataclasses.replace(opts, device=resolve_device(opts.device))
    generator = generator_from_args(args, opts.device)
    check_start(settings, generator)
    announce_gaussian_fit(generator, quiet=opts.quiet)
    announce_compile(settings, generator, quiet=opts.quiet)

    jobs, failures = prepare_jobs(opts.inputs, opts.outdir, lambda p: result_dir(opts.outdir, p))
    return run_jobs(jobs, failures, lambda job: _run_one(job, opts, generator, settings),
                    hint=not_converged_hint(args))


def _run_one(job: Job, opts: RunOptions, generator: Any, settings: Any) -> None:
    """Search one input and write ``OUTDIR/<name>/`` (skipped when done or another run holds it)."""
    final = result_dir(opts.outdir, job.path)
    with claimed(job, final) as ours:
        if ours and not already_done(job, final, overwrite=opts.overwrite):
            _search_and_write(job, final, opts, generator, settings)


def _load_plan(path: Path, opts: RunOptions, resolution: int, eps: float) -> tuple[Any, Any]:
    """``(image [3, H, W] in [0, 1] as read, plan)`` of one input file: what it is and what is matched
    (:func:`pulse_sr.input_plan.plan_input`; errors name the file, and
    :func:`~pulse_sr.cli.common.run_jobs` prints them without the name twice)."""
    from pulse_sr.input_plan import plan_input
    from pulse_sr.io.images import load_input, load_mask

    img, known, mode = load_input(path, max_pixels=opts.max_pixels)
    mask = None if opts.mask is None else load_mask(opts.mask, max_pixels=opts.max_pixels)
    plan = plan_input(img, resolution, eps=eps, name=str(path), mode=mode, known=known, mask=mask,
                      **opts.input_choices())
    return img, plan


def _search_and_write(job: Job, final: Path, opts: RunOptions, generator: Any, settings: Any) -> None:
    from pulse_sr.io.files import staged_dir
    from pulse_sr.io.results import path_text, write_result_files

    path = job.path
    started = time.perf_counter()
    img, plan = _load_plan(path, opts, generator.resolution, settings.eps)
    loaded = time.perf_counter()
    with staged_dir(final, overwrite=opts.overwrite) as tmp:
        frames = frame_dirs(tmp, opts.n, opts.save_intermediate)
        result = search_with_progress(path.name, opts, generator, plan.target, settings, frames, plan=plan)
        searched = time.perf_counter()
        report = write_result_files(
            tmp, target=plan.image, result=result, generator=generator,
            settings={**result.settings.to_dict(), "n": opts.n, "seed": opts.seed, "device": opts.device},
            input_info={"path": path_text(path), "original_size": [int(img.shape[2]), int(img.shape[1])],
                        "used_size": [int(plan.image.shape[2]), int(plan.image.shape[1])], "notes": plan.notes,
                        **plan.describe()},
            started=started, frames_dirs=frames, matched=plan.matched(),
        )
    n_conv = sum(1 for c in report["candidates"] if c["converged"])
    best = report["candidates"][report["best_index"]]
    best_l2 = float("nan") if best["final_l2"] is None else best["final_l2"]
    job.status, job.converged = "done", n_conv > 0
    job.extra.update(best_l2=best_l2, output=str(final))
    verbose(f"  {path.name}: load {loaded - started:.2f} s, search {searched - loaded:.2f} s, "
            f"write {time.perf_counter() - searched:.2f} s")
    what = f" [{plan.summary()}]"
    extended = sum(1 for c in report["candidates"] if c.get("left_range"))
    ext = f"; {extended} left the generator's range (extended search)" if extended else ""
    if n_conv:  # every input's line goes to stderr, whatever its outcome
        err(f"{path}: {n_conv}/{opts.n} candidates within {_within(plan, settings, False)} (best L2 {best_l2:.2e}){ext}"
            f"{what} -> {final}")
    else:
        err(f"{path}: WARNING no candidate within {_within(plan, settings, True)}; best L2 {best_l2:.2e}{ext}; "
            f"results written anyway, marked not converged{what} -> {final}")


def _within(plan: Any, settings: Any, value: bool) -> str:
    """``eps`` (``eps=VALUE`` with ``value``), or the noise threshold when the noise raised it."""
    if plan.threshold != settings.eps:
        return f"the noise threshold {plan.threshold:.2e} (sigma^2 + eps)"
    return f"eps={settings.eps:g}" if value else "eps"

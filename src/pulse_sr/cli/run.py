"""``pulse-sr run``: search faces for low-resolution inputs and write them with their proof.

Each input goes through :func:`pulse_sr.engines.process.search_input` (input plan, search, range
phase), here in this process (``--engine local``) or on Ray workers (``--engine ray``, which hand
back :class:`~pulse_sr.engines.tasks.TaskResult` s); either way this process alone writes the
result folders, with the same staged folders, locks, resume rule, lines, summary and exit codes.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from pulse_sr.cli.common import (
    Job, UsageError, already_done, announce_compile, announce_gaussian_fit, claimed, err, generator_from_args,
    not_converged_hint, one_line, prepare_jobs, resolve_device, result_dir, run_jobs, settings_from_args, verbose,
)
from pulse_sr.cli.options import (  # noqa: F401 - add_run_options, check_start re-exported for callers
    RunOptions, add_engine_options, add_face_options, add_paste_options, add_run_options,
    check_local_engine_flags, check_start, frame_dirs, progress, search_with_progress,
)

RAY_HINT = "pip install 'pulse-sr[ray]'"


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
    add_engine_options(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """``pulse-sr run``: search every input; see :mod:`pulse_sr.cli` for exit codes."""
    engine = getattr(args, "engine", "local")
    if args.align:
        if engine != "local":
            raise UsageError("--align runs on the local engine only (drop --engine ray)")
        from pulse_sr.cli.restore import restore_main

        return restore_main(args)
    if engine == "ray":
        _check_ray(args)
    else:
        check_local_engine_flags(args)
    settings = settings_from_args(args)
    opts = RunOptions.from_args(args)
    opts.check_input_choices()
    opts = dataclasses.replace(opts, device=resolve_device(opts.device))
    generator = generator_from_args(args, opts.device)
    check_start(settings, generator)
    fit = announce_gaussian_fit(generator, quiet=opts.quiet)
    announce_compile(settings, generator, quiet=opts.quiet)

    jobs, failures = prepare_jobs(opts.inputs, opts.outdir, lambda p: result_dir(opts.outdir, p))
    if engine == "ray":
        return _run_ray(args, jobs, failures, opts, generator, settings, fit)
    return run_jobs(jobs, failures, lambda job: _run_one(job, opts, generator, settings),
                    hint=not_converged_hint(args))


def _check_ray(args: argparse.Namespace) -> None:
    """``--engine ray`` needs Ray Data (the ``ray`` extra); sane pool options. UsageErrors up front."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(f"--engine ray: Ray is not installed; {RAY_HINT}") from None
    if args.gpus_per_worker < 0:
        raise UsageError(f"--gpus-per-worker {args.gpus_per_worker:g}: must be >= 0")


def _run_one(job: Job, opts: RunOptions, generator: Any, settings: Any) -> None:
    """Search one input and write ``OUTDIR/<name>/`` (skipped when done or another run holds it)."""
    final = result_dir(opts.outdir, job.path)
    with claimed(job, final) as ours:
        if ours and not already_done(job, final, overwrite=opts.overwrite):
            _search_and_write(job, final, opts, generator, settings)


def _search_and_write(job: Job, final: Path, opts: RunOptions, generator: Any, settings: Any) -> None:
    from pulse_sr.engines.process import search_input
    from pulse_sr.io.files import staged_dir
    from pulse_sr.io.images import load_input, load_mask

    path = job.path
    started = time.perf_counter()
    img, known, mode = load_input(path, max_pixels=opts.max_pixels)
    mask = None if opts.mask is None else load_mask(opts.mask, max_pixels=opts.max_pixels)
    loaded = time.perf_counter()
    with staged_dir(final, overwrite=opts.overwrite) as tmp:
        frames = frame_dirs(tmp, opts.n, opts.save_intermediate)
        with progress(path.name, opts, settings, frames) as callback:
            res = search_input(os.fsdecode(path), img, known, mode, opts.task_options(with_mask=False),
                               generator=generator, settings=settings, n=opts.n, seed=opts.seed,
                               device=opts.device, mask=mask, callback=callback, callback_images=bool(frames),
                               started=started)
        searched = time.perf_counter()
        report = _write(tmp, res, opts, generator, frames)
    verbose(f"  {path.name}: load {loaded - started:.2f} s, search {searched - loaded:.2f} s, "
            f"write {time.perf_counter() - searched:.2f} s")
    _finish(job, final, res, report, opts, settings)


def _write(folder: Path, res: Any, opts: RunOptions, generator: Any, frames: list[Path]) -> dict[str, Any]:
    """One result's files (report.json last) into ``folder``, the same for every engine."""
    from pulse_sr.engines.process import write_args
    from pulse_sr.io.results import write_result_files

    return write_result_files(folder, generator=generator, frames_dirs=frames,
                              **write_args(res, n=opts.n, seed=opts.seed, device=opts.device))


def _finish(job: Job, final: Path, res: Any, report: dict[str, Any], opts: RunOptions, settings: Any) -> None:
    """Mark ``job`` done and print its line (stderr, whatever its outcome)."""
    n_conv = sum(1 for c in report["candidates"] if c["converged"])
    best = report["candidates"][report["best_index"]]
    best_l2 = float("nan") if best["final_l2"] is None else best["final_l2"]
    job.status, job.converged = "done", n_conv > 0
    job.extra.update(best_l2=best_l2, output=str(final))
    path = job.path
    what = f" [{res.summary}]"
    extended = sum(1 for c in report["candidates"] if c.get("left_range"))
    ext = f"; {extended} left the generator's range (extended search)" if extended else ""
    if n_conv:
        err(f"{path}: {n_conv}/{opts.n} candidates within {_within(res.threshold, settings, False)} "
            f"(best L2 {best_l2:.2e}){ext}{what} -> {final}")
    else:
        err(f"{path}: WARNING no candidate within {_within(res.threshold, settings, True)}; best L2 "
            f"{best_l2:.2e}{ext}; results written anyway, marked not converged{what} -> {final}")


def _within(threshold: float, settings: Any, value: bool) -> str:
    """``eps`` (``eps=VALUE`` with ``value``), or the noise threshold when the noise raised it."""
    if threshold != settings.eps:
        return f"the noise threshold {threshold:.2e} (sigma^2 + eps)"
    return f"eps={settings.eps:g}" if value else "eps"


# -- the Ray engine's driver -----------------------------------------------------------------
def _run_ray(args: argparse.Namespace, jobs: list[Job], failures: list[tuple[str, str]], opts: RunOptions,
             generator: Any, settings: Any, fit: Any) -> int:
    """Claim every pending input (lock, resume rule), run the searches on Ray, write each result as
    it arrives (staged folder, report.json last), then account for every input as the local engine
    does (:func:`~pulse_sr.cli.common.run_jobs`: lines, summary, exit code)."""
    from pulse_sr.engines import WorkerSpec, run_engine
    from pulse_sr.engines.local import read_tasks
    from pulse_sr.engines.ray_engine import default_workers
    from pulse_sr.errors import PulseError

    outcomes: dict[str, Any] = {}  # name -> ("done", result, report) | exception to raise
    task_opts = opts.task_options()
    with contextlib.ExitStack() as locks:
        todo = _claim(jobs, opts, locks, outcomes)
        by_name = {os.fsdecode(j.path): j for j in todo}
        spec = WorkerSpec(generator=_here(args.generator), weights=None if args.weights is None else
                          os.path.abspath(args.weights), device=opts.device, settings=settings, n=opts.n,
                          seed=opts.seed, gaussian_fit=fit)

        def on_result(res: Any) -> None:
            job = by_name[res.name]
            if not res.ok:
                outcomes[res.name] = res.error()
                return
            from pulse_sr.io.files import staged_dir

            final = result_dir(opts.outdir, job.path)
            try:
                with staged_dir(final, overwrite=opts.overwrite) as tmp:
                    report = _write(tmp, res, opts, generator, [])
            except OSError as e:
                outcomes[res.name] = e
                return
            outcomes[res.name] = ("done", res, report)
            _finish(job, final, res, report, opts, settings)  # its line now, as it arrives
            job.status = "pending"  # run_jobs accounts for it (JSON line, summary) through _replay

        if todo:
            try:
                run_engine("ray", read_tasks([j.path for j in todo], task_opts), spec, on_result,
                           address=args.ray_address, workers=args.ray_workers or default_workers(),
                           threads_per_worker=args.threads_per_worker, gpus_per_worker=args.gpus_per_worker)
            except PulseError as e:
                if outcomes.keys() & by_name.keys():
                    raise
                raise UsageError(f"--engine ray: {e.message}") from None  # no Ray to run on (bad --ray-address)
            except Exception as e:  # noqa: BLE001 - Ray's errors vary: the unfinished inputs fail, one line
                err(f"error: ray engine: {type(e).__name__}: {one_line(e)}")
                engine_error = f"not searched: the ray engine failed ({type(e).__name__})"
                for name in by_name:
                    outcomes.setdefault(name, RuntimeError(engine_error))
    return run_jobs(jobs, failures, lambda job: _replay(job, outcomes), hint=not_converged_hint(args))


def _claim(jobs: list[Job], opts: RunOptions, locks: contextlib.ExitStack, outcomes: dict[str, Any]) -> list[Job]:
    """The pending jobs this run searches: locked (held until ``locks`` closes) and not already done.
    A job whose resume check fails keeps its error in ``outcomes``."""
    todo = []
    for job in jobs:
        if job.status != "pending":
            continue
        final = result_dir(opts.outdir, job.path)
        if not locks.enter_context(claimed(job, final)):
            continue
        try:
            if already_done(job, final, overwrite=opts.overwrite):
                continue
        except Exception as e:  # noqa: BLE001 - raised again for this job alone by _replay
            outcomes[os.fsdecode(job.path)] = e
            continue
        todo.append(job)
    return todo


def _replay(job: Job, outcomes: dict[str, Any]) -> None:
    """What happened to ``job`` on the engine: done (already written and announced) or its error."""
    got = outcomes.get(os.fsdecode(job.path))
    if got is None:
        raise RuntimeError("no result came back from the ray engine")
    if isinstance(got, BaseException):
        raise got
    job.status = "done"  # written and announced by on_result


def _here(generator: str) -> str:
    """``--generator`` for the workers: a weights path made absolute (workers need it at that path)."""
    return os.path.abspath(generator) if os.path.sep in generator or os.path.exists(generator) else generator

"""``pulse-sr run``: search faces for low-resolution inputs and write them with their proof."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from pulse_sr.cli.common import (
    NOTICE, Job, UsageError, already_done, announce_compile, announce_gaussian_fit, err, generator_from_args,
    int_at_least, json_safe, layer_list, out, positive_float, prepare_jobs, resolve_device, result_dir,
    run_jobs, settings_from_args, strip_name, version,
)
from pulse_sr.search.settings import (  # torch-free module
    COMPILE,
    FRONT_END_DEFAULTS,
    MODES,
    NOISE_TYPES,
    OPTIMIZERS,
    SCHEDULES,
    STARTS,
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="search faces for one or more low-resolution inputs",
        description="For each INPUT (an image file, or a folder of .png/.jpg/.jpeg/.webp/.bmp/"
        ".tif/.tiff files), search N faces whose bicubic downscale matches it within EPS and "
        "write them to OUTDIR/<stem>/ with their downscales (lr_XX.png) and report.json.",
    )
    add_run_options(p)
    p.add_argument("--align", action="store_true",
                   help="inputs are photos: align every face, search it and paste it back (= pulse-sr restore)")
    from pulse_sr.cli.align import add_face_options, add_paste_options

    add_face_options(p)
    add_paste_options(p)
    p.set_defaults(func=cmd_run)


def add_run_options(p: Any) -> None:
    """Inputs, output, generator, search and I/O options of ``run`` (``restore`` takes them all)."""
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--output", "--outdir", dest="outdir", required=True, metavar="OUTDIR")
    g = p.add_argument_group("generator")
    g.add_argument("--generator", default="dcgan-digiface",
                   help="dcgan-digiface (default, 64x64), stylegan1/2/3 (with --weights), tiny (tests), "
                   "a zoo name (pulse-sr weights list) or a weights path")
    g.add_argument("--weights", metavar="PATH", default=None, help="weights folder or file")
    g.add_argument("--download", action="store_true",
                   help="download a zoo generator that is not in the weights cache yet")
    g.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N or mps")
    s = p.add_argument_group("search")
    s.add_argument("--n", type=int_at_least(1), default=4, help="candidates per input (default 4)")
    s.add_argument("--steps", type=int_at_least(1), default=100, help="default 100")
    s.add_argument("--eps", type=positive_float, default=2e-3,
                   help="L2 tolerance of a match (default 2e-3)")
    s.add_argument("--seed", type=int_at_least(0), default=0,
                   help="candidate k uses seed + k (default 0)")
    s.add_argument("--loss", default="100*L2+0.05*GEOCROSS", help="default 100*L2+0.05*GEOCROSS")
    s.add_argument("--lr", type=positive_float, default=0.4,
                   help="learning rate (default 0.4, PULSE's; the dcgan fast preset uses 1.5 unless you give another)")
    s.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    s.add_argument("--schedule", choices=SCHEDULES, default="linear1cycledrop",
                   help="lr schedule (default PULSE's linear1cycledrop; cosine_restart: not PULSE's, reached eps in "
                        "fewer steps on the 1024 benchmarks, see README)")
    s.add_argument("--noise", choices=NOISE_TYPES, default="trainable")
    s.add_argument("--num-trainable-noise", type=int_at_least(0), default=5)
    s.add_argument("--bad-noise-layers", type=layer_list, default=(17,),
                   help='comma or dot separated (default "17"; "" for none)')
    s.add_argument("--tile-latent", action="store_true", help="one latent for all layers")
    s.add_argument("--run-all-steps", action="store_true",
                   help="keep optimising candidates already within eps")
    s.add_argument("--mode", choices=MODES, default=None,
                   help="auto (default): fast where benchmarks/run.py shows it pays (dcgan), else faithful; "
                        "faithful: the original loop; fast: StyleGAN1-type generators run most steps through "
                        "a truncated synthesis, dcgan uses lr 1.5 and --start-pool 8 (settings you give "
                        "other than PULSE's defaults win); eps is always checked on the full network's output")
    s.add_argument("--faithful", action="store_true",
                   help="the original PULSE loop, bit for bit (same as --mode faithful --compile off)")
    s.add_argument("--start-pool", type=int_at_least(1), default=1,
                   help="start each candidate at the best of this many seeded draws, by L2 to the input "
                        "(forward passes only; default 1: PULSE's single draw)")
    s.add_argument("--lean-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="keep freed memory in the process: same results, far fewer page faults (a 1024 "
                        "step 2.3x faster), more resident memory (default on; always on with --mode fast)")
    s.add_argument("--max-batch", type=int_at_least(0), default=0,
                   help="candidates per forward+backward (default 0: one at a time from 512 px on, else "
                        "all at once); 1 caps memory at one candidate's with the same gradients")
    s.add_argument("--compile", choices=COMPILE, default=FRONT_END_DEFAULTS["compile"],
                   help="full steps through torch.compile: the same loop, float rounding aside; at 1024 a "
                        "step 1.4x faster with 40%% less memory, after a one-off compile of ~100 s cached on "
                        "disk (default auto: on from 512 px; --faithful turns it off)")
    s.add_argument("--start", choices=STARTS, default="gaussian",
                   help="gaussian (default, PULSE): random draws through the Gaussian fit; w_avg: start every "
                        "candidate at the mapping network's tracked average w (StyleGAN2/3 weights)")
    i = p.add_argument_group("input and output")
    i.add_argument("--resize", action="store_true",
                   help="resize inputs of an unusable size to the nearest usable one")
    i.add_argument("--center-crop", action="store_true", help="crop non-square inputs to a square")
    i.add_argument("--max-pixels", type=int_at_least(16), default=4096 * 4096,
                   help="refuse larger input images (default 4096*4096)")
    i.add_argument("--overwrite", action="store_true", help="replace existing results")
    i.add_argument("--save-intermediate", action="store_true",
                   help="save every step of each candidate and an animated GIF")
    i.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_run(args: argparse.Namespace) -> int:
    """``pulse-sr run``: search every input; see the module docstring for exit codes."""
    if args.align:
        from pulse_sr.cli.align import restore_main

        return restore_main(args)
    settings = settings_from_args(args)
    device = resolve_device(args.device)
    generator = generator_from_args(args, device)
    check_start(settings, generator)
    announce_gaussian_fit(generator, quiet=args.quiet)
    announce_compile(settings, generator, quiet=args.quiet)

    outdir = Path(args.outdir)
    jobs, failures = prepare_jobs(args, outdir, lambda p: result_dir(outdir, p))
    return run_jobs(jobs, failures, lambda job: _run_one(job, args, generator, settings, device, outdir))


def check_start(settings: Any, generator: Any) -> None:
    """``--start w_avg`` needs a mapping network that tracks ``w_avg``: a UsageError up front."""
    if settings.start == "w_avg":
        from pulse_sr.search.latents import w_avg_latent

        try:
            w_avg_latent(generator, None)
        except ValueError as e:
            raise UsageError(f"--start w_avg: {e}") from None


def _run_one(job: Job, args: argparse.Namespace, generator: Any, settings: Any,
             device: str, outdir: Path) -> None:
    from pulse_sr.errors import PulseError
    from pulse_sr.io.files import staged_dir
    from pulse_sr.io.images import fit_to_generator, load_image
    from pulse_sr.search.pulse import pulse_search

    path = job.path
    final = result_dir(outdir, path)
    if already_done(job, final, overwrite=args.overwrite):
        return

    started = time.perf_counter()
    try:
        img = load_image(path, max_pixels=args.max_pixels)
        target, notes = fit_to_generator(
            img, generator.resolution, resize=args.resize, center_crop=args.center_crop,
            name=str(path),
        )
    except PulseError as e:
        raise type(e)(strip_name(str(e), path)) from None
    original = [int(img.shape[2]), int(img.shape[1])]
    used = [int(target.shape[2]), int(target.shape[1])]
    n = args.n
    cw = max(2, len(str(n - 1)))
    sw = max(3, len(str(settings.steps)))

    with staged_dir(final, overwrite=args.overwrite) as tmp:
        frames_dirs: list[Path] = []
        if args.save_intermediate:
            for k in range(n):
                d = tmp / "intermediate" / f"cand_{k:0{cw}d}"
                d.mkdir(parents=True)
                frames_dirs.append(d)
        result = search_with_progress(
            job, args, generator, target, settings, device, frames_dirs, sw, pulse_search
        )
        report = write_result_files(
            tmp, target=target, result=result, generator=generator,
            settings={**result.settings.to_dict(), "n": n, "seed": args.seed, "device": device},  # as resolved
            input_info={"path": str(path), "original_size": original, "used_size": used,
                        "notes": notes},
            started=started, frames_dirs=frames_dirs,
        )
    n_conv = sum(1 for c in report["candidates"] if c["converged"])
    best = report["best_index"]
    best_l2 = report["candidates"][best]["final_l2"]
    best_l2 = float("nan") if best_l2 is None else best_l2

    job.status, job.converged = "done", n_conv > 0
    if n_conv:
        out(f"{path}: {n_conv}/{n} candidates within eps (best L2 {best_l2:.2e}) -> {final}")
    else:
        err(f"{path}: WARNING no candidate within eps={settings.eps:g}; best L2 {best_l2:.2e}; "
             f"results written anyway, marked not converged -> {final}")


def write_result_files(folder: Path, *, target: Any, result: Any, generator: Any,
                       settings: dict[str, Any], input_info: dict[str, Any], started: float,
                       frames_dirs: Sequence[Path] = ()) -> dict[str, Any]:
    """Write one input's results into ``folder`` (normally a staged, not yet renamed, folder).

    Files: ``input.png`` (the ``[1, 3, h, w]`` target in [0, 1]), per candidate ``hr_KK.png``
    and ``lr_KK.png`` (its own downscale: the proof), ``search_KK.gif`` when frames were saved,
    and ``report.json`` last. Returns the report dict.
    """
    import torch

    from pulse_sr.io.files import atomic_write_json
    from pulse_sr.io.images import save_png

    candidates = result.candidates()
    cw = max(2, len(str(len(candidates) - 1)))
    save_png(target, folder / "input.png")
    entries = []
    for c in candidates:
        files = {"hr": f"hr_{c.index:0{cw}d}.png", "lr": f"lr_{c.index:0{cw}d}.png"}
        save_png(c.hr, folder / files["hr"])
        save_png(c.lr, folder / files["lr"])
        if frames_dirs:
            files["frames"] = f"intermediate/cand_{c.index:0{cw}d}"
            files["gif"] = f"search_{c.index:0{cw}d}.gif"
            _write_gif(frames_dirs[c.index], folder / files["gif"])
        entries.append({**c.summary(), "files": files})
    l2s = [c.l2 for c in candidates]
    best = min(range(len(l2s)), key=lambda k: (l2s[k] != l2s[k], l2s[k]))  # nan last
    report = {
        "pulse_sr_version": version(),
        "input": input_info,
        "generator": generator.describe(),
        "settings": settings,
        "candidates": entries,
        "any_converged": any(c.converged for c in candidates),
        "best_index": best,
        "seconds": round(time.perf_counter() - started, 3),
        "torch_version": torch.__version__,
        "notice": NOTICE,
    }
    report = json_safe(report)
    atomic_write_json(folder / "report.json", report)
    return report


def search_with_progress(job: Job, args: argparse.Namespace, generator: Any, target: Any,
                          settings: Any, device: str, frames_dirs: list[Path], sw: int,
                          pulse_search: Callable[..., Any]) -> Any:
    from tqdm import tqdm

    from pulse_sr.io.images import to_pil

    bar = tqdm(total=settings.steps, desc=job.path.name, unit="step", file=sys.stderr,
               disable=True if args.quiet else None, leave=False, dynamic_ncols=True)

    def callback(info: Any) -> None:
        if info.step > bar.n:
            bar.update(info.step - bar.n)
        bar.set_postfix_str(
            f"best L2 {float(info.best_l2.min()):.2e}, converged "
            f"{int(info.converged.sum())}/{int(info.converged.numel())}",
            refresh=False,
        )
        if frames_dirs and info.hr is not None:
            for k, d in enumerate(frames_dirs):
                to_pil(info.hr[k]).save(d / f"step_{info.step:0{sw}d}.png")

    try:
        return pulse_search(
            generator, target, n=args.n, seed=args.seed, settings=settings, device=device,
            callback=callback, callback_images=bool(frames_dirs),
        )
    finally:
        bar.close()


def _write_gif(frames_dir: Path, dest: Path, max_side: int = 256) -> None:
    """Animated GIF of the saved frames (80 ms each, looping), at most ``max_side`` pixels."""
    from PIL import Image

    files = sorted(frames_dir.glob("step_*.png"))
    if not files:
        return
    frames = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
            if max(im.size) > max_side:
                im = im.resize((max_side, max_side), Image.Resampling.LANCZOS)
            frames.append(im.copy())
    frames[0].save(dest, format="GIF", save_all=True, append_images=frames[1:], duration=80,
                   loop=0)

#!/usr/bin/env python
"""Faithful PULSE loop versus the faster modes, on the same planted problems, in one run.

Each (configuration, mode) runs in its own subprocess (this script re-invoked with
``--worker``), so peak memory is that mode's alone and process-wide settings of one
mode (the lean malloc) cannot leak into another.

    python benchmarks/run.py --configs dcgan --problems 2 --steps 20          # smoke, ~1 min
    python benchmarks/run.py --configs stylegan1 --steps 10 --fit-samples 20000
    python benchmarks/run.py                                                # full figures

Modes: ``faithful`` (the original loop), ``faithful-lean`` (same loop, lean malloc),
``fast`` (coarse-to-fine + lean, or the backend's preset), ``compiled`` (the original loop,
lean, full steps through ``torch.compile``). A 2-step warm-up search (where ``torch.compile``
compiles) runs before the timed ones and is reported apart, like the fits. Any mode may carry setting overrides:
``--modes faithful,fast:refresh_every=10,coarse_side=128``.
Prints a speed table and a quality table; writes JSON (default benchmarks/results/run.json).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_engine  # the sibling script: planted problems and machine info
from bench_engine import planted

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference"
DEFAULT_JSON = HERE / "results" / "run.json"
FULL_FIT_SAMPLES = 1_000_000
NIQE_MIN_SIDE = 128

CONFIGS = {
    "dcgan": {"label": "dcgan-digiface", "generator": "dcgan-digiface", "input": 16, "n": 4, "problems": 5},
    "stylegan1": {"label": "stylegan1 (stand-in)", "generator": "stylegan1", "input": 32, "n": 1, "problems": 1},
    # The stand-in's noise strengths are N(0, 1) like every other parameter, so the noise maps PULSE keeps
    # fixed (layers 5-16) alone move the 32x32 input by L2 0.049 (25x eps): no planted problem is solvable.
    # FFHQ's noise only touches fine detail; this config zeroes the stand-in's noise strengths so that,
    # as there, the planted latent is an exact solution whatever noise the search draws.
    "stylegan1-quiet": {"label": "stylegan1 (stand-in, noise 0)", "generator": "stylegan1", "input": 32, "n": 1,
                        "problems": 1, "quiet_noise": True},
    # Zeroed noise is not enough for a planted problem like a real one: the stand-in's toRGB (N(0, 1) weights
    # and bias) gives images of std about 2, so over half the pixels of the planted truth are clipped and its
    # clipped downscale is L2 0.36-0.57 from the unclipped one the loss sees: the planted latent is far from
    # a solution of the loss, and the search chases a saturated picture. This config also scales toRGB's
    # weight by 0.2 and zeroes its bias (std about 0.35, 1-2.5 % of pixels clipped, L2 gap below 1e-3).
    "stylegan1-tame": {"label": "stylegan1 (stand-in, noise 0, toRGB tamed)", "generator": "stylegan1",
                       "input": 32, "n": 1, "problems": 3, "quiet_noise": True, "tame_rgb": True},
}
#: toRGB weight scale of the ``stylegan1-tame`` config (see CONFIGS)
TAME_RGB_SCALE = 0.2
MODES = {
    "faithful": {},
    "faithful-lean": {"lean_memory": True},
    "fast": {"mode": "fast"},
    "compiled": {"lean_memory": True, "compile": "on"},
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median(xs: list[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def mean(xs: list[float]) -> float | None:
    return float(statistics.fmean(xs)) if xs else None


def parse_mode(spec: str) -> tuple[str, dict]:
    """``name[:key=value,...]`` -> (label, settings overrides)."""
    name, _, extra = spec.partition(":")
    if name not in MODES:
        raise SystemExit(f"unknown mode {name!r}; known: {', '.join(MODES)}")
    overrides = dict(MODES[name])
    for item in filter(None, extra.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return spec, overrides


def quiet_noise(synthesis_pt: Path) -> None:
    """Zero every noise strength (``*.noise.weight``) of a PULSE ``synthesis.pt``, in place."""
    import torch

    state = torch.load(synthesis_pt, map_location="cpu", weights_only=True)
    for key in state:
        if key.endswith(".noise.weight"):
            state[key] = torch.zeros_like(state[key])
    torch.save(state, synthesis_pt)


def tame_rgb(synthesis_pt: Path, scale: float = TAME_RGB_SCALE) -> None:
    """Scale toRGB's weight by ``scale`` and zero its bias in a PULSE ``synthesis.pt``, in place."""
    import torch

    state = torch.load(synthesis_pt, map_location="cpu", weights_only=True)
    state["torgb.weight"] = state["torgb.weight"] * scale
    state["torgb.bias"] = torch.zeros_like(state["torgb.bias"])
    torch.save(state, synthesis_pt)


def head_gradient_cosine(G, head, side: int, target, fit) -> float:
    """Cosine between the coarse proxy's gradient and the true gradient of ``100 * L2`` with respect
    to ``ws``, at the search's first start (seed 0): how well steps through the head point the way
    full steps would (1 = the same direction; about 0 = no better than a random direction)."""
    import torch
    import torch.nn.functional as F

    from pulse_sr.search.pulse import make_state
    from pulse_sr.search.settings import SearchSettings

    search = make_state(G, target, n=1, seed=0, settings=SearchSettings(), gaussian_fit=fit)
    observation = search.observations[0]
    ws0, y = search.to_ws(search.latent.detach()), observation.target
    ws = ws0.clone().requires_grad_(True)
    true_lr = observation.operator((search.G.synthesis(ws, search.noise) + 1) / 2)
    (g_true,) = torch.autograd.grad(100 * (true_lr - y).square().mean(), ws)
    ws = ws0.clone().requires_grad_(True)
    pred = head.predict(search.G.synthesis_features(ws, search.noise, side))
    proxy = pred + (true_lr.detach() - pred.detach())  # the coarse phase's offset: exact value, head's slope
    (g_proxy,) = torch.autograd.grad(100 * (proxy - y).square().mean(), ws)
    return float(F.cosine_similarity(g_proxy.flatten(), g_true.flatten(), dim=0))


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------- worker


def quality(hr, truth) -> dict:
    """Spread between candidates, RMS distance to the ground truth, NIQE (outputs >= 128 pixels)."""
    out: dict = {"spread": None, "dist_to_truth": None, "niqe": None}
    try:
        from pulse_sr.metrics import niqe, spread
    except ImportError:  # HOOK: pulse_sr.metrics (niqe + spread) not installed in this tree
        niqe = spread = None  # type: ignore[assignment]
    out["dist_to_truth"] = [float((h - truth[0]).square().mean().sqrt()) for h in hr]
    if spread is not None:
        out["spread"] = float(spread(hr)) if hr.shape[0] > 1 else None
    if niqe is not None and hr.shape[-1] >= NIQE_MIN_SIDE:
        out["niqe"] = [float(v) for v in niqe(hr)]
    return out


def run_worker(args: argparse.Namespace) -> dict:
    import torch
    import pulse_sr
    from pulse_sr.search.pulse import pulse_search

    cfg = CONFIGS[args.worker]
    label, overrides = parse_mode(args.worker_mode)
    problems = args.problems if args.problems is not None else cfg["problems"]
    n = args.n if args.n is not None else cfg["n"]
    if args.worker.startswith("stylegan1"):
        G = pulse_sr.load_generator("stylegan1", weights=args.weights_dir)
    else:
        G = pulse_sr.load_generator(cfg["generator"])
    factor = G.resolution // cfg["input"]

    fit, setup = None, {}
    if G.has_mapping:
        from pulse_sr.search.gaussian_fit import cached_gaussian_fit, fit_gaussian

        t0 = time.perf_counter()
        if args.fit_samples in (None, FULL_FIT_SAMPLES):
            fit = cached_gaussian_fit(G)
        else:
            fit = fit_gaussian(G, samples=args.fit_samples)
        setup["gaussian_fit_seconds"] = time.perf_counter() - t0
    if overrides.get("mode") == "fast":
        # the per-weights head fit is a one-off cost (cached), timed apart from the searches
        from pulse_sr.search.coarse import choose_side
        from pulse_sr.search.heads import cached_head
        from pulse_sr.search.pulse import supports_coarse

        if supports_coarse(G, cfg["input"]):
            t0 = time.perf_counter()
            side = choose_side(G, cfg["input"], int(overrides.get("coarse_side", 0)))
            head = cached_head(G, side, cfg["input"], gaussian_fit=fit)
            setup.update(head_seconds=time.perf_counter() - t0, head_side=side, head_rmse=head.rmse,
                         head_gradient_cosine=head_gradient_cosine(G, head, side, planted(G, 0, factor)[1], fit))

    # a process's first search pays one-off costs (kernel selection, lazy inits and, with
    # compile=on, torch.compile itself, cached on disk for later processes): timed apart, like the fits
    t0 = time.perf_counter()
    pulse_search(G, planted(G, 0, factor)[1], n=1, gaussian_fit=fit, steps=2, **overrides)
    setup["warmup_seconds"] = time.perf_counter() - t0

    rows = []
    for i in range(problems):
        truth, target = planted(G, i, factor)

        def progress(info, _i=i):
            if args.verbose and (info.step == 1 or info.step % 10 == 0):
                log(f"[{args.worker}/{label}] problem {_i} step {info.step}/{info.total_steps} "
                    f"best L2 {float(info.best_l2.min()):.5f} active {int(info.active.sum())}")

        c0, t0 = cpu_seconds(), time.perf_counter()
        res = pulse_search(G, target, n=n, seed=args.seed, gaussian_fit=fit, steps=args.steps,
                           callback=progress, **overrides)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        conv = [bool(c) for c in res.converged]
        secs = [float(s) for s in res.seconds]
        batch_steps = int(res.steps.max())
        full = [int(s) for s in (res.full_steps if res.full_steps is not None else res.steps)]
        row = {
            "problem": i, "target_seed": 1000 + i, "wall_seconds": wall, "cpu_seconds": cpu,
            "batch_steps": batch_steps, "candidate_steps": [int(s) for s in res.steps], "full_steps": full,
            "converged": conv, "l2": [float(v) for v in res.l2], "best_l2": float(res.l2.min()),
            "seconds_to_eps": [s for s, c in zip(secs, conv) if c],
            "first_within_eps_seconds": min((s for s, c in zip(secs, conv) if c), default=None),
            **quality(res.hr, truth),
        }
        rows.append(row)
        log(f"[{args.worker}/{label}] problem {i}: {wall:.1f} s wall, {cpu:.1f} s cpu, {batch_steps} steps "
            f"({max(full)} full), best L2 {row['best_l2']:.5f}, within eps {sum(conv)}/{n}, "
            f"first at {row['first_within_eps_seconds']}")

    cands = [c for r in rows for c in r["converged"]]
    full_step_rows = [r for r in rows if max(r["full_steps"]) == r["batch_steps"]]
    summary = {
        "config": args.worker, "label": cfg["label"], "mode": label, "overrides": overrides,
        "weights_hash": G.weights_hash, "input": cfg["input"], "output": G.resolution, "n": n,
        "problems": problems, "steps": args.steps, "seed": args.seed, "eps": float(res.eps), "setup": setup,
        "first_within_eps_seconds_median": median([r["first_within_eps_seconds"] for r in rows
                                                   if r["first_within_eps_seconds"] is not None]),
        "seconds_per_image_median": median([r["wall_seconds"] for r in rows]),
        "cpu_seconds_per_image_median": median([r["cpu_seconds"] for r in rows]),
        # only meaningful when every step ran the full network (faithful modes)
        "seconds_per_full_step": (sum(r["wall_seconds"] for r in full_step_rows)
                                  / sum(r["batch_steps"] for r in full_step_rows)) if full_step_rows else None,
        "candidates_within_eps": sum(cands) / len(cands),
        "problems_within_eps": sum(any(r["converged"]) for r in rows) / problems,
        "steps_median": median([s for r in rows for s in r["candidate_steps"]]),
        "full_steps_median": median([s for r in rows for s in r["full_steps"]]),
        "best_l2_median": median([r["best_l2"] for r in rows]),
        "spread_mean": mean([r["spread"] for r in rows if r["spread"] is not None]),
        "dist_to_truth_mean": mean([d for r in rows for d in r["dist_to_truth"]]),
        "niqe_mean": mean([v for r in rows if r["niqe"] for v in r["niqe"]]),
        "torch_threads": torch.get_num_threads(),
        "per_problem": rows,
    }
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return summary


# --------------------------------------------------------------------------- driver


def machine_info() -> dict:
    """``bench_engine.machine_info()`` plus the load average when the run starts."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {**bench_engine.machine_info(), "loadavg_at_start": load}


def spawn(config: str, mode: str, args: argparse.Namespace, weights_dir: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", config, "--worker-mode", mode,
               "--worker-out", str(out), "--steps", str(args.steps), "--seed", str(args.seed)]
        for flag, value in (("--problems", args.problems), ("--n", args.n), ("--fit-samples", args.fit_samples),
                            ("--weights-dir", weights_dir)):
            if value is not None:
                cmd += [flag, str(value)]
        if args.verbose:
            cmd.append("--verbose")
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def tables(results: list[dict]) -> str:
    speed = [[r["label"], r["mode"], f"{r['input']}->{r['output']}", str(r["n"]), str(r["problems"]),
              str(r["steps"]), fmt(r["first_within_eps_seconds_median"], ".1f"),
              fmt(r["seconds_per_image_median"], ".1f"), fmt(r["cpu_seconds_per_image_median"], ".1f"),
              fmt(r["seconds_per_full_step"], ".2f"), f"{r['candidates_within_eps']:.0%}",
              f"{r['problems_within_eps']:.0%}", f"{fmt(r['steps_median'], '.0f')}/{fmt(r['full_steps_median'], '.0f')}",
              f"{r['best_l2_median']:.5f}", f"{r['peak_rss_mb']:.0f}"] for r in results]
    quality_rows = [[r["label"], r["mode"], fmt(r["spread_mean"], ".4f"), fmt(r["dist_to_truth_mean"], ".4f"),
                     fmt(r["niqe_mean"], ".2f")] for r in results]
    return "\n\n".join([
        render(["config", "mode", "in->out", "n", "probs", "steps", "s to 1st<=eps", "s/image", "cpu s/image",
                "s/full step", "cands<=eps", "probs<=eps", "steps/full", "best L2", "peak MiB"], speed),
        render(["config", "mode", "spread", "RMS to truth", "NIQE"], quality_rows),
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="dcgan,stylegan1", help="comma list of: " + ", ".join(CONFIGS))
    p.add_argument("--modes", default="faithful,faithful-lean,fast",
                   help="comma list of modes, each name[:key=value,...] (see above)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--problems", type=int, default=None, help="default: dcgan 5, stylegan1 1, stylegan1-tame 3")
    p.add_argument("--n", type=int, default=None, help="candidates per problem (default: dcgan 4, stylegan1 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit-samples", type=int, default=None, help="Gaussian fit samples (default: cached 1M fit)")
    p.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--verbose", action="store_true", help="progress every 10 steps")
    p.add_argument("--worker", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    p.add_argument("--worker-mode", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--weights-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        args.worker_out.write_text(json.dumps(run_worker(args)))
        return 0

    # split modes on commas that start a new mode name (overrides use commas too)
    modes, current = [], ""
    for part in args.modes.split(","):
        if part.partition(":")[0] in MODES and current:
            modes.append(current)
            current = part
        else:
            current = f"{current},{part}" if current else part
    modes.append(current)
    for m in modes:
        parse_mode(m)
    configs = [c for c in args.configs.split(",") if c]
    for c in configs:
        if c not in CONFIGS:
            raise SystemExit(f"unknown config {c!r}; known: {', '.join(CONFIGS)}")
    info = machine_info()
    log(f"machine: {info['cpu']}, nproc {info['nproc']}, load {info['loadavg_at_start']}")
    results = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-run-weights-") as wtmp:
        for config in configs:
            weights_dir = None
            if config.startswith("stylegan1"):
                weights_dir = Path(wtmp) / config
                script = args.reference / "deterministic_weights.py"
                if not script.is_file():
                    raise SystemExit(f"no {script}; pass --reference DIR")
                subprocess.run([sys.executable, str(script), str(weights_dir)], check=True)
                if CONFIGS[config].get("quiet_noise"):
                    quiet_noise(weights_dir / "synthesis.pt")
                if CONFIGS[config].get("tame_rgb"):
                    tame_rgb(weights_dir / "synthesis.pt")
            for mode in modes:
                log(f"[{config}] mode {mode}")
                results.append(spawn(config, mode, args, weights_dir))
    print(f"machine: {info['cpu']} | nproc {info['nproc']} | torch {info['torch']} | load at start "
          f"{info['loadavg_at_start']}")
    print(tables(results))
    for r in results:
        if r["setup"]:
            print(f"{r['label']} / {r['mode']}: one-off setup (not in the timings): "
                  + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r["setup"].items()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_name(args.json.name + ".tmp")
    tmp.write_text(json.dumps({
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [sys.argv[0], *(argv if argv is not None else sys.argv[1:])],
        "machine": info, "total_seconds": time.perf_counter() - started, "results": results,
    }, indent=2))
    tmp.replace(args.json)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Benchmark the PULSE search engine (``pulse_sr.search.pulse.pulse_search``) on the CPU.

Each configuration runs in its own subprocess (this script re-invoked with
``--worker CONFIG``) so that its peak memory (``ru_maxrss``) is its own.

    python benchmarks/bench_engine.py                  # every configuration
    python benchmarks/bench_engine.py --only dcgan
    python benchmarks/bench_engine.py --only stylegan1 --steps 30 --fit-samples 100000
    python benchmarks/bench_engine.py --only stylegan3 --steps 2 --fit-samples 2000   # smoke run

See benchmarks/README.md for what each column means.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference"
DEFAULT_JSON = HERE / "results" / "engine.json"

FULL_FIT_SAMPLES = 1_000_000

CONFIGS = {
    # name: generator, input size, output size, candidates, default problems
    "dcgan": {"label": "dcgan-digiface", "generator": "dcgan-digiface", "input": 16, "n": 4, "problems": 5},
    "stylegan1": {"label": "stylegan1 (stand-in weights)", "generator": "stylegan1", "input": 32, "n": 1, "problems": 1},
    # NVIDIA networks with the reference's stand-in weights (deterministic_weights_sg23.py) and, unless
    # --fit-samples says otherwise, a 100,000-sample Gaussian fit (their weights have no cacheable hash)
    "stylegan2": {"label": "stylegan2 1024 (stand-in weights)", "generator": "stylegan2", "input": 32, "n": 1,
                  "problems": 1, "standin": "stylegan2", "fit_samples": 100_000},
    "stylegan3": {"label": "stylegan3-T 256 (stand-in weights)", "generator": "stylegan3", "input": 16, "n": 1,
                  "problems": 1, "standin": "stylegan3_t", "fit_samples": 100_000},
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median(xs: list[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


# --------------------------------------------------------------------------- worker


def planted(G, i: int, factor: int):
    """Problem i: ground truth ``x [1, 3, R, R]`` = G(z) for z seeded 1000 + i, and its downscale ``[3, h, h]``
    (the LR input; an exact solution lies in the generator's range). Shared with ``run.py``."""
    import torch
    import pulse_sr

    with torch.no_grad():
        z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(1000 + i))
        x = ((G(z) + 1) / 2).clamp(0, 1)
        return x, pulse_sr.bicubic_downsample(x, factor)[0]


def load_standin(network: str, reference: Path):
    """An NVIDIA StyleGAN2/3 generator with the reference's stand-in weights (no pickle involved)."""
    import importlib.util

    script = reference / "deterministic_weights_sg23.py"
    if not script.is_file():
        raise SystemExit(f"no {script}; pass --reference DIR (the folder with deterministic_weights_sg23.py)")
    spec = importlib.util.spec_from_file_location("deterministic_weights_sg23", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kwargs = json.loads((reference / f"{network}_keys.json").read_text())["kwargs"]
    if network == "stylegan2":
        from pulse_sr.generators.stylegan2 import load_stylegan2_state_dict as load
    else:
        from pulse_sr.generators.stylegan3 import load_stylegan3_state_dict as load
    G = load(module.state_dict(network), kwargs)
    G.weights_hash = f"stand-in-{network}"
    G.weights_source = str(script)
    return G


def run_worker(config: str, args: argparse.Namespace) -> dict:
    import torch
    import pulse_sr
    from pulse_sr.search.pulse import pulse_search

    cfg = CONFIGS[config]
    problems = args.problems if args.problems is not None else cfg["problems"]
    steps = args.steps
    n = cfg["n"]

    t0 = time.perf_counter()
    if config == "stylegan1":
        G = pulse_sr.load_generator("stylegan1", weights=args.weights_dir)
    elif "standin" in cfg:
        G = load_standin(cfg["standin"], args.reference)
    else:
        G = pulse_sr.load_generator(cfg["generator"])
    load_seconds = time.perf_counter() - t0
    factor = G.resolution // cfg["input"]

    fit = None
    fit_info = None
    if G.has_mapping:
        from pulse_sr.search.gaussian_fit import (
            cached_gaussian_fit,
            fit_gaussian,
            gaussian_fit_cache_path,
        )

        fit_samples = args.fit_samples if args.fit_samples is not None else cfg.get("fit_samples")
        if fit_samples is None or fit_samples == FULL_FIT_SAMPLES:
            path = gaussian_fit_cache_path(G.weights_hash, FULL_FIT_SAMPLES, 0)
            was_cached = path.is_file()
            t0 = time.perf_counter()
            fit = cached_gaussian_fit(G)
            fit_seconds = time.perf_counter() - t0
            fit_info = {
                "samples": FULL_FIT_SAMPLES,
                "seconds": fit_seconds,
                "source": "cache hit" if was_cached else "computed (now cached)",
                "cache_path": str(path),
            }
        else:
            t0 = time.perf_counter()
            fit = fit_gaussian(G, samples=fit_samples)
            fit_seconds = time.perf_counter() - t0
            fit_info = {
                "samples": fit_samples,
                "seconds": fit_seconds,
                "source": "computed (reduced fit, not cached)",
                "cache_path": None,
            }
        log(f"[{config}] gaussian fit: {fit_info['samples']} samples, {fit_seconds:.1f} s, {fit_info['source']}")

    per_problem = []
    for i in range(problems):
        _, target = planted(G, i, factor)
        progress = None
        if config != "dcgan":
            def progress(info, _i=i):
                if info.step == 1 or info.step % 10 == 0:
                    log(f"[{config}] problem {_i} step {info.step}/{info.total_steps} "
                        f"best L2 {float(info.best_l2.min()):.5f} active {int(info.active.sum())}")
        t0 = time.perf_counter()
        result = pulse_search(G, target, n=n, seed=args.seed, gaussian_fit=fit, steps=steps, callback=progress)
        wall = time.perf_counter() - t0
        batch_steps = int(result.steps.max())
        row = {
            "problem": i,
            "target_seed": 1000 + i,
            "wall_seconds": wall,
            "batch_steps": batch_steps,
            "seconds_per_step": wall / batch_steps,
            "candidate_steps": [int(s) for s in result.steps],
            "converged": [bool(c) for c in result.converged],
            "l2": [float(v) for v in result.l2],
            "best_l2": float(result.l2.min()),
            "any_converged": bool(result.converged.any()),
        }
        per_problem.append(row)
        log(f"[{config}] problem {i}: {wall:.1f} s, {batch_steps} steps, best L2 {row['best_l2']:.5f}, "
            f"within eps {sum(row['converged'])}/{n}")

    eps = float(result.eps)
    steps_to_eps = [s for r in per_problem for s, c in zip(r["candidate_steps"], r["converged"]) if c]
    n_candidates = sum(len(r["converged"]) for r in per_problem)
    total_wall = sum(r["wall_seconds"] for r in per_problem)
    total_batch_steps = sum(r["batch_steps"] for r in per_problem)
    summary = {
        "config": config,
        "label": cfg["label"],
        "generator": cfg["generator"],
        "weights_hash": G.weights_hash,
        "input": cfg["input"],
        "output": G.resolution,
        "n": n,
        "problems": problems,
        "steps": steps,
        "seed": args.seed,
        "eps": eps,
        "load_seconds": load_seconds,
        "gaussian_fit": fit_info,
        # wall seconds of all searches / all optimisation steps of the batch (loop iterations)
        "seconds_per_step": total_wall / total_batch_steps,
        "steps_to_eps_median": median(steps_to_eps),
        "steps_to_eps_count": len(steps_to_eps),
        "seconds_per_image_median": median([r["wall_seconds"] for r in per_problem]),
        "problems_within_eps": sum(r["any_converged"] for r in per_problem) / problems,
        "candidates_within_eps": len(steps_to_eps) / n_candidates,
        "best_l2_median": median([r["best_l2"] for r in per_problem]),
        "torch_threads": torch.get_num_threads(),
        "per_problem": per_problem,
    }
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return summary


# --------------------------------------------------------------------------- driver


def machine_info() -> dict:
    """CPU model, core count, Python and torch versions, torch threads (shared with ``run.py``)."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def make_standin_weights(reference: Path, out: Path) -> None:
    script = reference / "deterministic_weights.py"
    if not script.is_file():
        raise SystemExit(f"no {script}; pass --reference DIR (the folder with deterministic_weights.py)")
    subprocess.run([sys.executable, str(script), str(out)], check=True)


def spawn_worker(config: str, args: argparse.Namespace, weights_dir: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", config,
               "--worker-out", str(out), "--steps", str(args.steps), "--seed", str(args.seed),
               "--reference", str(args.reference)]
        if args.problems is not None:
            cmd += ["--problems", str(args.problems)]
        if args.fit_samples is not None:
            cmd += ["--fit-samples", str(args.fit_samples)]
        if weights_dir is not None:
            cmd += ["--weights-dir", str(weights_dir)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)  # worker logs progress on stderr
        result = json.loads(out.read_text())
        result["process_seconds"] = time.perf_counter() - t0
        return result


def fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def table(results: list[dict]) -> str:
    head = ["config", "in->out", "n", "probs", "steps", "s/step", "steps to eps",
            "s/image", "probs<=eps", "cands<=eps", "best L2", "peak RSS", "fit"]
    rows = []
    for r in results:
        fit = r["gaussian_fit"]
        fit_s = "-" if fit is None else f"{fit['seconds']:.1f}s {fit['samples']:,} {fit['source'].split(' (')[0]}"
        ste = fmt(r["steps_to_eps_median"], ".0f")
        ste += f" ({r['steps_to_eps_count']})" if r["steps_to_eps_count"] else ""
        rows.append([
            r["label"], f"{r['input']}->{r['output']}", str(r["n"]), str(r["problems"]), str(r["steps"]),
            f"{r['seconds_per_step']:.3f}", ste, f"{r['seconds_per_image_median']:.1f}",
            f"{r['problems_within_eps']:.0%}", f"{r['candidates_within_eps']:.0%}",
            f"{r['best_l2_median']:.5f}", f"{r['peak_rss_mb']:.0f} MB", fit_s,
        ])
    widths = [max(len(h), *(len(row[k]) for row in rows)) for k, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(row) for row in rows)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(CONFIGS), help="run one configuration")
    p.add_argument("--steps", type=int, default=100, help="search steps (default 100, PULSE's)")
    p.add_argument("--problems", type=int, default=None,
                   help="planted problems per configuration (default: dcgan 5, the others 1)")
    p.add_argument("--seed", type=int, default=0, help="search seed (candidate k starts from seed + k)")
    p.add_argument("--fit-samples", type=int, default=None,
                   help="Gaussian-fit samples (default: stylegan1 the engine's cached 1,000,000 fit, "
                        "stylegan2/3 100,000 uncached)")
    p.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE,
                   help=f"folder with deterministic_weights.py / _sg23.py (default {DEFAULT_REFERENCE})")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON})")
    p.add_argument("--worker", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--weights-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        result = run_worker(args.worker, args)
        args.worker_out.write_text(json.dumps(result))
        return 0

    configs = [args.only] if args.only else list(CONFIGS)
    info = machine_info()
    log(f"machine: {info['cpu']}, nproc {info['nproc']}, torch {info['torch']}, threads {info['torch_threads']}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-engine-weights-") as wtmp:
        for config in configs:
            weights_dir = None
            if config == "stylegan1":
                weights_dir = Path(wtmp) / "stylegan1"
                log(f"[stylegan1] writing stand-in weights to {weights_dir}")
                make_standin_weights(args.reference, weights_dir)
            results.append(spawn_worker(config, args, weights_dir))

    print(f"machine: {info['cpu']} | nproc {info['nproc']} | torch {info['torch']} | "
          f"torch threads {info['torch_threads']} | python {info['python']}")
    print(table(results))
    for r in results:
        if r["gaussian_fit"]:
            f = r["gaussian_fit"]
            print(f"{r['label']}: Gaussian fit {f['samples']:,} samples in {f['seconds']:.1f} s ({f['source']}); "
                  f"not included in s/step or s/image")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [sys.argv[0], *(argv if argv is not None else sys.argv[1:])],
        "machine": info,
        "results": results,
    }, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

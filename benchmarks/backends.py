#!/usr/bin/env python
"""The other backends' step cost against their arithmetic limit (issue 16), on the CPU.

One PULSE full step (synthesis, bicubic downscale, L2 loss, backward to ``ws`` and the
trainable noise maps; batch 1, as the search's chunked path runs at 1024 px) of the
StyleGAN2 config-f 1024 and StyleGAN3-T 256 networks with the reference's stand-in weights.

For each network, in one process:

- its FLOPs, counted by ``torch.utils.flop_counter.FlopCounterMode`` over forward + backward;
- the float32 matrix-product rate: a 2048x2048 GEMM, best of several;
- the step's seconds, eager and through ``torch.compile`` (``search/compiled.py``);

GEMM and steps are interleaved, repetition after repetition, and the best of each is kept: the
machine is shared, so every figure is noisy and only the best ones are comparable. The
arithmetic limit is ``FLOPs / GEMM rate``; ``ratio`` = step seconds / limit (target: <= 2).

Each (network, memory) pair runs in its own subprocess, so that peak memory (``ru_maxrss``)
is its own and lean memory (``search/lean.py``, process-wide) is on only where asked.
Compiled steps also report how far their gradients are from eager float32.

    python benchmarks/backends.py                        # both networks, JSON to results/backends.json
    python benchmarks/backends.py --only stylegan3 --reps 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_REFERENCE = Path(os.environ.get("PULSE_SR_REFERENCE") or HERE.parent.parent / "shared" / "reference")
DEFAULT_JSON = HERE / "results" / "backends.json"

NETWORKS = {
    # name: stand-in network, LR input size, README label
    "stylegan2": {"standin": "stylegan2", "input": 32, "label": "`stylegan2` (config-f)"},
    "stylegan3": {"standin": "stylegan3_t", "input": 16, "label": "`stylegan3` (T)"},
}
#: (memory, modes) per worker process: the README baseline (eager, plain malloc), then lean memory
WORKERS = (("plain", ("eager",)), ("lean", ("eager", "compiled")))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def gemm_rate(size: int = 2048, tries: int = 3) -> float:
    """Best float32 ``size x size`` matrix-product rate over ``tries`` runs, FLOP/s."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def make_problem(net: str, reference: Path):
    """``(G, ws [1, num_ws, w_dim], noise list, target [1, 3, h, h])``; ws near ``w_avg``,
    PULSE's first 5 noise maps trainable, target the downscale of another sample."""
    import torch
    from bench_engine import load_standin
    from pulse_sr.degradations.bicubic import bicubic_downsample

    cfg = NETWORKS[net]
    G = load_standin(cfg["standin"], reference)
    g = torch.Generator().manual_seed(16)
    ws = (G.w_avg.reshape(1, 1, -1) + 0.5 * torch.randn(1, G.num_ws, G.w_dim, generator=g)).requires_grad_(True)
    noise = [n.clone().requires_grad_(i < 5) for i, n in enumerate(G.const_noise())] if G.noise_shapes else None
    with torch.no_grad():
        other = G.w_avg.reshape(1, 1, -1) + torch.randn(1, G.num_ws, G.w_dim, generator=g)
        target = bicubic_downsample((G.synthesis(other, noise) + 1) / 2, G.resolution // cfg["input"])
    return G, ws, noise, target


def step(synthesis, G, ws, noise, target) -> list:
    """One full step's forward + backward; returns the gradients (ws, then trainable noise)."""
    from pulse_sr.degradations.bicubic import bicubic_downsample

    leaves = [ws] + [n for n in (noise or []) if n.requires_grad]
    for t in leaves:
        t.grad = None
    hr = (synthesis(ws, noise) + 1) / 2
    loss = (bicubic_downsample(hr, G.resolution // target.shape[-1]) - target).square().mean()
    loss.backward()
    return [t.grad.detach().clone() for t in leaves]


def compare(ref: list, got: list) -> dict:
    """Worst relative L2 error and lowest cosine between two gradient lists."""
    import torch

    rel = max(float((a - b).norm() / a.norm()) for a, b in zip(ref, got))
    cos = min(float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)) for a, b in zip(ref, got))
    return {"max_relative_l2": rel, "min_cosine": cos}


def run_worker(net: str, memory: str, modes: list[str], args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if memory == "lean":
        from pulse_sr.search.lean import keep_freed_memory

        keep_freed_memory()
    G, ws, noise, target = make_problem(net, args.reference)
    row: dict = {"network": net, "memory": memory, "threads": torch.get_num_threads(),
                 "resolution": G.resolution, "input": NETWORKS[net]["input"], "n": 1}
    counter = FlopCounterMode(display=False)
    with counter:
        eager_grads = step(G.synthesis, G, ws, noise, target)
    row["flops"] = counter.get_total_flops()
    synths = {"eager": G.synthesis}
    if "compiled" in modes:
        from pulse_sr.search.compiled import synthesis_for

        synths["compiled"] = synthesis_for(G, True)
        t0 = time.perf_counter()
        grads = step(synths["compiled"], G, ws, noise, target)
        row["compile_seconds"] = time.perf_counter() - t0
        row["compiled_fell_back"] = synths["compiled"].fell_back
        row["compiled_vs_eager_gradients"] = compare(eager_grads, grads)
        log(f"[{net}/{memory}] compiled in {row['compile_seconds']:.0f} s, gradients {row['compiled_vs_eager_gradients']}")
    rates: list[float] = []
    times: dict[str, list[float]] = {m: [] for m in modes}
    for rep in range(args.reps):
        for mode in modes:
            rates.append(gemm_rate())
            t0 = time.perf_counter()
            step(synths[mode], G, ws, noise, target)
            times[mode].append(time.perf_counter() - t0)
            log(f"[{net}/{memory}] rep {rep} {mode}: {times[mode][-1]:.2f} s/step, GEMM {rates[-1] / 1e9:.1f} GFLOP/s")
    row["gemm_flops_per_s"] = {"best": max(rates), "all": rates}
    limit = row["flops"] / max(rates)
    row["limit_seconds"] = limit
    row["modes"] = {m: {"seconds_per_step": min(t), "all": t, "achieved_flops_per_s": row["flops"] / min(t),
                        "ratio_to_limit": min(t) / limit} for m, t in times.items()}
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def table(rows: list[dict]) -> str:
    """The README's "Other backends" table."""
    lines = ["| generator | input -> output | n | mode | s/step | GFLOP/step | achieved GFLOP/s | GEMM GFLOP/s "
             "| x limit | peak memory |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        for mode, m in r["modes"].items():
            label = mode if r["memory"] == "plain" else f"{mode}, lean"
            lines.append(f"| {NETWORKS[r['network']]['label']} | {r['input']} -> {r['resolution']} | 1 | {label} "
                         f"| {m['seconds_per_step']:.1f} | {r['flops'] / 1e9:.0f} | {m['achieved_flops_per_s'] / 1e9:.1f} "
                         f"| {r['gemm_flops_per_s']['best'] / 1e9:.1f} | {m['ratio_to_limit']:.2f} "
                         f"| {r['peak_rss_mb']:.0f} MiB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(NETWORKS), help="comma-separated networks")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (best kept)")
    p.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--worker", nargs=3, metavar=("NET", "MEMORY", "MODES"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    if args.worker:
        net, memory, modes = args.worker
        print(json.dumps(run_worker(net, memory, modes.split(","), args)))
        return 0
    rows = []
    for net in args.only.split(","):
        for memory, modes in WORKERS:
            cmd = [sys.executable, __file__, "--worker", net, memory, ",".join(modes), "--reps", str(args.reps),
                   "--reference", str(args.reference)]
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpus": os.cpu_count(), "load_average": os.getloadavg()},
              "note": "shared, loaded machine: figures are noisy; best of interleaved repetitions", "runs": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

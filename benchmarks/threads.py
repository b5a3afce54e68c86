"""Compute threads on a shared machine: the default generator's (dcgan-digiface) search step with 1
or 2 threads, spinning (OpenMP's default) or passive waiting, on an idle machine and next to one
busy process (``python -c "while True: pass"``, killed after); and in every run the arithmetic peak
(a large float32 matrix product, same threads) against the step's rate (its FLOPs counted by
``torch.utils.flop_counter`` over one forward+backward).

Each configuration runs in a fresh process (the OpenMP runtime reads its wait policy when torch
is imported). Writes ``benchmarks/results/threads.json``.

    PYTHONPATH=src .venv/bin/python benchmarks/threads.py --json benchmarks/results/threads.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable


def _child(threads: int, batches: list[int], steps: int) -> dict:
    """In a fresh process: per batch size, seconds per step and per candidate, the step's FLOPs and
    rate; the peak matmul rate (all with ``threads`` threads)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pulse_sr.degradations.bicubic import bicubic_downsample
    from pulse_sr.generators.dcgan import load_dcgan_digiface
    from pulse_sr.search.pulse import full_step, make_state
    from pulse_sr.search.settings import SearchSettings

    torch.set_num_threads(threads)
    G = load_dcgan_digiface()
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = bicubic_downsample(((G(z) + 1) / 2).clamp(0, 1), 4)[0]
    settings = SearchSettings(steps=10_000, run_all_steps=True)
    out: dict = {"threads": torch.get_num_threads(), "batches": {}}
    for batch in batches:
        state = make_state(G, target, n=batch, seed=0, settings=settings)
        with FlopCounterMode(display=False) as counter:
            full_step(state, 0)
        flops = counter.get_total_flops()
        times = []
        for step in range(1, steps + 3):
            t = time.perf_counter()
            full_step(state, step)
            times.append(time.perf_counter() - t)
        sec = statistics.median(times[2:])  # two warm-up steps
        out["batches"][batch] = {"step_s": sec, "ms_per_candidate": 1e3 * sec / batch,
                                 "gflop_per_step": flops / 1e9, "gflops": flops / sec / 1e9}
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    a @ b
    times = []
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    out["matmul_gflops"] = 2 * 2048 ** 3 / statistics.median(times) / 1e9
    for row in out["batches"].values():
        row["share_of_peak"] = row["gflops"] / out["matmul_gflops"]
    return out


def _run_config(threads: int, wait: str, busy: bool, batches: list[int], steps: int) -> dict:
    env = dict(os.environ)
    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS"):
        env.pop(key, None)
    if wait == "passive":
        env.update({"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0", "KMP_BLOCKTIME": "0"})
    hog = subprocess.Popen([PY, "-c", "while True: pass"]) if busy else None
    try:
        t = time.perf_counter()
        proc = subprocess.run([PY, __file__, "--child", str(threads), "--batches", ",".join(map(str, batches)),
                               "--steps", str(steps)], env=env, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row.update({"wait": wait, "busy_neighbour": busy, "process_wall_s": wall})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--batches", default="4,24")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.child:
        print(json.dumps(_child(args.child, batches, args.steps)))
        return
    rows = []
    for busy in (False, True):
        for threads in (int(t) for t in args.threads.split(",")):
            for wait in ("default", "passive"):
                row = _run_config(threads, wait, busy, batches, args.steps)
                rows.append(row)
                per = "  ".join(f"b{b}: {r['ms_per_candidate']:.2f} ms/cand {r['gflops']:.0f} GFLOP/s "
                                f"({100 * r['share_of_peak']:.0f}% of peak)" for b, r in row["batches"].items())
                print(f"busy={busy!s:5} threads={threads} wait={wait:7s} peak {row['matmul_gflops']:.0f} "
                      f"GFLOP/s  {per}", flush=True)
    record = {"cpus": os.cpu_count(), "load_before": os.getloadavg(), "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()

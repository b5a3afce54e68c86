"""Continuous batching against inputs one after another: planted 16 px faces of the default
generator (dcgan-digiface), ``--n`` candidates each, settings as the command line runs them
(``mode=auto``: dcgan's fast preset), each input through ``pulse_search`` alone and all through
``search_many`` (batch ``--batch``). Prints seconds and candidates within eps for both; same process,
so start-up is not counted.

    PYTHONPATH=src .venv/bin/python benchmarks/batched.py --faces 8 --json benchmarks/results/batched.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from pulse_sr.degradations.bicubic import bicubic_downsample
from pulse_sr.generators.dcgan import load_dcgan_digiface
from pulse_sr.search.batched import InputSpec, search_many
from pulse_sr.search.pulse import pulse_search
from pulse_sr.search.settings import SearchSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    G = load_dcgan_digiface()
    targets = []
    for i in range(args.faces):
        z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(1000 + i))
        with torch.no_grad():
            targets.append(bicubic_downsample(((G(z) + 1) / 2).clamp(0, 1), 4)[0])
    settings = SearchSettings(mode="auto")
    pulse_search(G, targets[0], n=1, steps=2, settings=settings)  # warm-up (allocator, first-call costs)
    t = time.perf_counter()
    alone = [pulse_search(G, x, n=args.n, seed=0, settings=settings) for x in targets]
    t_alone = time.perf_counter() - t
    got: dict = {}
    t = time.perf_counter()
    search_many(G, (InputSpec(i, x) for i, x in enumerate(targets)), n=args.n, seed=0, settings=settings,
                batch_size=args.batch, on_result=lambda k, r: got.__setitem__(k, r))
    t_many = time.perf_counter() - t
    record = {
        "faces": args.faces, "n": args.n, "batch": args.batch, "threads": torch.get_num_threads(),
        "load": os.getloadavg(),
        "alone_s": t_alone, "batched_s": t_many, "ratio": t_many / t_alone,
        "alone_within_eps": sum(int(r.converged.sum()) for r in alone),
        "batched_within_eps": sum(int(r.converged.sum()) for r in got.values()),
        "candidates": args.faces * args.n,
    }
    print(json.dumps(record, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Train the learned-start encoders shipped for dcgan-digiface (or any generator), with a log.

    python scripts/train_encoder.py                     # src/pulse_sr/encoders/dcgan-digiface-{bicubic,box}.safetensors
    python scripts/train_encoder.py --pool 1024 --steps 50 --out-dir /tmp/enc   # smoke

One compute thread (the machine is shared). The log (command, seed, versions, losses, and the
start's L2 against PULSE's random start on held-out planted inputs) is written beside the files
as ``<generator>.log.txt``.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def evaluate(generator, encoders, seed: int, count: int, log) -> None:
    """Mean L2 between the target and A(G(start)): encoder prediction (spread 0) vs a random sphere point."""
    from pulse_sr.search.encoder import degrade, encoder_start, make_operator, sample_latents, stream_seed

    latents, hr = sample_latents(generator, count, torch.Generator().manual_seed(stream_seed("eval", seed)))
    rng = torch.Generator().manual_seed(stream_seed("eval-random", seed))
    for (op, factor), res in sorted(encoders.items()):
        targets = degrade(hr, op, factor)
        A = make_operator(op, factor)
        enc = torch.cat([encoder_start(generator, t, operator_name=op, n=1, seed=0, spread=0.0, encoder=res.encoder)
                         for t in targets])
        rand = torch.randn((count, 1, generator.w_dim), generator=rng)
        rand = rand * (generator.w_dim**0.5 / rand.norm(dim=-1, keepdim=True))
        with torch.no_grad():
            l2 = [(A(((generator.synthesis(s) + 1) / 2).clamp(0, 1)) - targets).pow(2).mean(dim=(1, 2, 3))
                  for s in (enc, rand)]
        log(f"eval {op}-x{factor}: start L2 over {count} held-out planted inputs: encoder {l2[0].mean():.5f} "
            f"(median {l2[0].median():.5f}), random {l2[1].mean():.5f} (median {l2[1].median():.5f})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generator", default="dcgan-digiface")
    p.add_argument("--operators", default="bicubic,box")
    p.add_argument("--factors", default="2,4,8")
    p.add_argument("--pool", type=int, default=8192, help="generator samples drawn once and shared")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", type=int, default=64, help="held-out planted inputs for the start check")
    p.add_argument("--out-dir", type=Path, default=REPO / "src" / "pulse_sr" / "encoders")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from pulse_sr.generators.registry import load_generator
    from pulse_sr.search.encoder import save_encoders, train_encoders

    generator = load_generator(args.generator)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    log(f"command: python scripts/train_encoder.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    log(f"seed {args.seed}; generator {generator.name} sha256 {generator.weights_hash}; torch {torch.__version__}; "
        f"python {platform.python_version()}; {platform.machine()}; threads 1; started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    ops = [s for s in args.operators.split(",") if s]
    factors = [int(s) for s in args.factors.split(",") if s]
    start = time.perf_counter()
    trained = train_encoders(generator, ops, factors, pool_size=args.pool, steps=args.steps, batch=args.batch,
                             seed=args.seed, log=log)
    log(f"trained {len(trained)} encoders in {time.perf_counter() - start:.0f} s")
    evaluate(generator, trained, args.seed, args.eval, log)
    for op in ops:
        path = args.out_dir / f"{generator.name}-{op}.safetensors"
        save_encoders(path, generator, {k: v for k, v in trained.items() if k[0] == op},
                      extra={"trained_by": "scripts/train_encoder.py", "pool": args.pool, "batch": args.batch})
        log(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} ({path.stat().st_size} bytes)")
    (args.out_dir / f"{generator.name}.log.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

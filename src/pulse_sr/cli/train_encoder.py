"""``pulse-sr train-encoder``: train the learned start for a generator (see search/encoder.py)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pulse_sr.cli.common import EXIT_FAILED, EXIT_OK, UsageError, err, generator_from_args, int_at_least, one_line, out, resolve_device


def factor_list(text: str) -> tuple[int, ...]:
    """``"2,4,8"`` -> (2, 4, 8); each >= 2."""
    try:
        factors = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected factors separated by commas, e.g. 2,4,8; got {text!r}") from None
    if not factors or any(f < 2 for f in factors):
        raise argparse.ArgumentTypeError(f"factors must be integers >= 2, got {text!r}")
    return factors


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train-encoder",
        help="train the learned start (a small encoder from low-resolution input to latent) for a generator",
        description="Train, from the generator's own samples only, one small encoder per downscale factor that "
        "predicts a starting latent from the low-resolution input, and write them to one .safetensors file "
        "tied to the generator's weights hash. Minutes on a CPU for the 64 px default; use --device cuda "
        "for large generators.",
    )
    p.add_argument("--generator", default="dcgan-digiface", help="generator name or weights path (as for run)")
    p.add_argument("--weights", metavar="PATH", default=None, help="weights folder or file")
    p.add_argument("--operator", default="bicubic", choices=("bicubic", "box"),
                   help="degradation the inputs went through: PULSE's bicubic (default) or a box average")
    p.add_argument("--factors", type=factor_list, default=None, metavar="F,F,...",
                   help="downscale factors (default: those giving 8, 16 and 32 px inputs that divide the resolution)")
    p.add_argument("--steps", type=int_at_least(1), default=800, help="optimiser steps per factor (default 800)")
    p.add_argument("--pool", type=int_at_least(64), default=8192, help="generator samples drawn once (default 8192)")
    p.add_argument("--batch", type=int_at_least(2), default=64, help="batch size (default 64)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of samples, batches and weights (default 0)")
    p.add_argument("-o", "--output", default=None, metavar="FILE.safetensors",
                   help="output file (default: <generator>-<operator>.encoder.safetensors here)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N or mps")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_train_encoder)


def default_factors(resolution: int) -> tuple[int, ...]:
    """Factors giving 8, 16 and 32 px inputs (those that divide ``resolution`` with factor >= 2)."""
    return tuple(resolution // s for s in (8, 16, 32) if resolution % s == 0 and resolution // s >= 2)


def cmd_train_encoder(args: argparse.Namespace) -> int:
    """0 written, 1 write failed, 2 bad usage or generator."""
    device = resolve_device(args.device)
    generator = generator_from_args(args, device)
    name = generator.name or generator.backend
    dst = Path(args.output) if args.output else Path(f"{name}-{args.operator}.encoder.safetensors")
    if dst.suffix != ".safetensors":
        raise UsageError(f"-o {dst}: the output name must end with .safetensors")
    if (dst.exists() or dst.is_symlink()) and not args.overwrite:
        raise UsageError(f"-o {dst}: exists; use --overwrite to replace it")
    if not dst.parent.is_dir():
        raise UsageError(f"-o {dst}: folder {dst.parent} does not exist")
    factors = args.factors or default_factors(generator.resolution)
    bad = [f for f in factors if generator.resolution % f]
    if bad or not factors:
        raise UsageError(f"--factors: {bad or 'none'} do not divide the generator's {generator.resolution} px")

    from pulse_sr.errors import PulseError
    from pulse_sr.search.encoder import save_encoders, train_encoders

    log = None if args.quiet else out
    try:
        trained = train_encoders(generator, [args.operator], list(factors), pool_size=args.pool, steps=args.steps,
                                 batch=args.batch, seed=args.seed, log=log, device=device)
    except PulseError as e:
        raise UsageError(one_line(e)) from None
    tmp = dst.with_name(f".{dst.name}.partial")
    try:
        save_encoders(tmp, generator, trained, extra={"trained_by": "pulse-sr train-encoder", "pool": args.pool,
                                                      "batch": args.batch})
        os.replace(tmp, dst)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        err(f"error: cannot write {dst}: {one_line(e)}")
        return EXIT_FAILED
    losses = ", ".join(f"x{f} {r.first_loss:.3f}->{r.last_loss:.3f}" for (_, f), r in sorted(trained.items()))
    out(f"wrote {dst} ({args.operator}, factors {', '.join(map(str, factors))}; held-out cosine loss {losses})")
    return EXIT_OK

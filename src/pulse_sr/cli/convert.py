"""``pulse-sr convert``: save any loadable generator in pulse-sr's own .safetensors format."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pulse_sr.cli.common import EXIT_FAILED, EXIT_OK, UsageError, announce_gaussian_fit, err, one_line, out


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="save a generator's weights in pulse-sr's own .safetensors format",
        description="Load SRC (anything --generator/--weights accept: a PULSE StyleGAN1 weights folder, an "
        "NVIDIA .pkl, a DCGAN weights.tar, the name dcgan-digiface) and write DST.safetensors: the state "
        "dict plus what rebuilds the network. Loading DST reads no pickle.",
    )
    p.add_argument("src", metavar="SRC", help="weights folder or file, or a generator name")
    p.add_argument("-o", "--output", dest="dst", required=True, metavar="DST.safetensors")
    p.add_argument("--generator", default=None, metavar="NAME",
                   help="what SRC holds weights for (dcgan-digiface, stylegan1, stylegan2); "
                   "default: from SRC itself")
    p.add_argument("--with-gaussian-fit", action="store_true",
                   help="also store the 1,000,000-sample latent Gaussian fit (cached; computed if needed) "
                   "for generators with a mapping network")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    """``pulse-sr convert SRC -o DST.safetensors``: 0 written, 1 write failed, 2 bad usage or weights."""
    dst = Path(args.dst)
    if dst.suffix != ".safetensors":
        raise UsageError(f"-o {dst}: the output name must end with .safetensors")
    if dst.is_dir():
        raise UsageError(f"-o {dst}: is a folder")
    if (dst.exists() or dst.is_symlink()) and not args.overwrite:
        raise UsageError(f"-o {dst}: exists; use --overwrite to replace it")
    if not dst.parent.is_dir():
        raise UsageError(f"-o {dst}: folder {dst.parent} does not exist")

    from pulse_sr.errors import PulseError
    from pulse_sr.generators.registry import load_generator

    try:
        if args.generator is None:
            generator = load_generator(args.src)
        else:
            generator = load_generator(args.generator, weights=args.src)
    except PulseError as e:
        raise UsageError(one_line(e)) from None
    except OSError as e:
        raise UsageError(f"cannot load generator from {args.src!r}: {one_line(e)}") from None

    from pulse_sr.formats.own import save_generator

    fit = None
    note = ""
    if args.with_gaussian_fit:
        if generator.has_mapping:
            from pulse_sr.search.gaussian_fit import DEFAULT_SAMPLES, DEFAULT_SEED

            mean, std = announce_gaussian_fit(generator, quiet=False)
            fit = {"mean": mean, "std": std, "samples": DEFAULT_SAMPLES, "seed": DEFAULT_SEED}
            note = f", Gaussian fit ({DEFAULT_SAMPLES:,} samples)"
        else:
            note = f", no Gaussian fit ({generator.backend} has no mapping network)"
    try:
        save_generator(generator, dst, gaussian_fit=fit)
    except PulseError as e:
        raise UsageError(one_line(e)) from None
    except OSError as e:
        err(f"error: cannot write {dst}: {one_line(e)}")
        return EXIT_FAILED
    tensors = len(generator.state_dict())
    out(f"wrote {dst} (backend {generator.backend}, {tensors} tensors{note})")
    return EXIT_OK

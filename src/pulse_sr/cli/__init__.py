"""The ``pulse-sr`` command line.

``pulse-sr run INPUT... -o OUTDIR`` searches a face GAN for faces that
downscale to each input and writes them, with their proof, to
``OUTDIR/<stem>/``; ``align`` and ``restore`` do the same for faces in photos;
``pulse-sr convert SRC -o DST.safetensors`` saves a generator in pulse-sr's own
weights format; ``serve`` starts the web app; ``weights`` manages the zoo. Heavy
modules (torch, the engine) are imported inside the command functions so
``pulse-sr --help`` stays fast.

Exit codes: 0 every input done (or skipped) with at least one candidate within
eps; 1 some input failed (or an unexpected error); 2 bad usage, device or
generator; 3 all processed but some input (done now, or skipped because an
earlier run did it) has no candidate within eps; 130 interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Sequence

from pulse_sr.cli.common import (  # noqa: F401 - re-exported for callers and tests
    DEBUG_ENV, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NOT_CONVERGED, EXIT_OK, EXIT_USAGE, NOTICE,
    UsageError, configure, err, one_line, version,
)
from pulse_sr.threads import prefer_passive_wait
from pulse_sr.search.settings import NOISE_TYPES, OPTIMIZERS, SCHEDULES  # noqa: F401 - torch-free

#: subcommand modules (each has ``add_parser(subparsers)`` that sets ``func``), in help order
SUBCOMMANDS = ("run", "align", "restore", "convert", "serve", "weights", "train_encoder")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; each subcommand sets ``func``."""
    parser = argparse.ArgumentParser(
        prog="pulse-sr",
        description="PULSE face super-resolution: search a face GAN for faces that "
        "downscale to your tiny input. Every output face is invented, not recovered.",
    )
    parser.add_argument("--version", action="version", version=f"pulse-sr {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"pulse_sr.cli.{name}").add_parser(sub)
    parser.set_defaults(_subparsers=sub.choices)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; an option the subcommand does not know is reported with the
    subcommand's usage (argparse alone shows the top level's), exit 2."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = getattr(args, "_subparsers", {}).get(getattr(args, "command", None))
        (sub or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    configure(args)
    # Idle OpenMP threads must sleep, not spin: on a shared machine spinning made a DCGAN step
    # 4-30x slower (benchmarks/results/threads.json). Read when torch starts, so set it first.
    prefer_passive_wait()
    debug = bool(os.environ.get(DEBUG_ENV))
    try:
        return int(args.func(args))
    except UsageError as e:
        err(f"error: {e}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        err("interrupted (unfinished results removed)")
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - one line unless debugging
        if debug:
            traceback.print_exc()
        err(f"error: unexpected {type(e).__name__}: {one_line(e)}"
             + ("" if debug else f" (run with {DEBUG_ENV}=1 for a traceback)"))
        return EXIT_FAILED


def _console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _console()

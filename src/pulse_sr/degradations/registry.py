"""All degradation operators by name, and ``make_operator`` for specs like ``gaussian:1.5``.

Spec grammar: ``bicubic | box | gaussian[:SIGMA] | nearest[:PHASE]`` (SIGMA in
HR pixels, default ``0.5 * factor``; PHASE in ``0..factor-1``, default
``factor // 2``). ``grey=True`` wraps the operator in :class:`Grey` (luma).
"""
from __future__ import annotations

import math
from typing import Callable

from pulse_sr.degradations.base import Degradation
from pulse_sr.degradations.bicubic import BicubicDownsample
from pulse_sr.degradations.box import BoxDownsample
from pulse_sr.degradations.gaussian import GaussianDownsample
from pulse_sr.degradations.grey import Grey
from pulse_sr.degradations.nearest import NearestDownsample
from pulse_sr.errors import SettingsError

#: name -> class; each takes ``factor`` first
OPERATORS: dict[str, Callable[..., Degradation]] = {
    "bicubic": BicubicDownsample,
    "box": BoxDownsample,
    "gaussian": GaussianDownsample,
    "nearest": NearestDownsample,
}
#: PULSE's operator, the library default
DEFAULT_OPERATOR = "bicubic"


def _bad(spec: str, why: str) -> SettingsError:
    names = "|".join(OPERATORS)
    return SettingsError(
        f"degradation {spec!r}: {why} (expected {names}, gaussian:SIGMA or nearest:PHASE)",
        field="degradation",
        value=spec,
    )


def parse_spec(spec: str) -> tuple[str, float | int | None]:
    """``"gaussian:1.5" -> ("gaussian", 1.5)``; ``"box" -> ("box", None)``."""
    if not isinstance(spec, str):
        raise _bad(repr(spec), "not a string")
    name, sep, arg = spec.strip().lower().partition(":")
    if name not in OPERATORS:
        raise _bad(spec, "unknown operator")
    if not sep:
        return name, None
    if name == "gaussian":
        try:
            sigma = float(arg)
        except ValueError:
            raise _bad(spec, "SIGMA is not a number") from None
        if not math.isfinite(sigma) or sigma <= 0:
            raise _bad(spec, "SIGMA must be a positive number")
        return name, sigma
    if name == "nearest":
        if not arg.strip().isdigit():
            raise _bad(spec, "PHASE is not a non-negative integer")
        return name, int(arg)
    raise _bad(spec, f"{name} takes no parameter")


def make_operator(spec: str, *, factor: int, grey: bool = False) -> Degradation:
    """The operator for ``spec`` downscaling by ``factor`` (optionally reduced to luma)."""
    name, arg = parse_spec(spec)
    if name == "gaussian":
        op: Degradation = GaussianDownsample(factor, sigma=arg)
    elif name == "nearest":
        op = NearestDownsample(factor, phase=arg)
    else:
        op = OPERATORS[name](factor)
    return Grey(op) if grey else op

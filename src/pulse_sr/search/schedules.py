"""Learning-rate schedules of PULSE: multipliers of the base lr at step ``t`` of ``steps``."""
from __future__ import annotations

import math
from typing import Callable

from pulse_sr.search.settings import SCHEDULES


def fixed(t: int, steps: int) -> float:
    return 1.0


def linear1cycle(t: int, steps: int) -> float:
    """Triangle from 0.1 up to 1 at mid-run and back to 0.1."""
    return (9 * (1 - abs(t / steps - 0.5) * 2) + 1) / 10


def linear1cycledrop(t: int, steps: int) -> float:
    """The triangle over the first 90% of steps, then a linear drop from 0.1 to 0.001."""
    if t < 0.9 * steps:
        return (9 * (1 - abs(t / (0.9 * steps) - 0.5) * 2) + 1) / 10
    return 1 / 10 + (t - 0.9 * steps) / (0.1 * steps) * (1 / 1000 - 1 / 10)


def cosine_restart(t: int, steps: int) -> float:
    """Not PULSE's: a cosine from 1 down to 0.01 over the first 40% of steps, then a warm restart,
    a cosine from 0.5 down to 0.001 over the rest. Reaches eps sooner on most planted problems of
    ``benchmarks/schedules.py`` (recorded there as ``restart40``); the restart catches those the first
    cycle leaves short."""
    first = 0.4 * steps
    if t < first:
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t / first))
    u = (t - first) / max(steps - first, 1)
    return 0.001 + (0.5 - 0.001) * 0.5 * (1 + math.cos(math.pi * u))


_SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "fixed": fixed,
    "linear1cycle": linear1cycle,
    "linear1cycledrop": linear1cycledrop,
    "cosine_restart": cosine_restart,
}


def lr_multiplier(name: str) -> Callable[[int, int], float]:
    """The schedule ``f(t, steps)`` by name; ValueError names the known ones."""
    try:
        return _SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown lr schedule {name!r}; known: {', '.join(SCHEDULES)}") from None

"""pulse-sr: PULSE face super-resolution (Menon et al., CVPR 2020) on a CPU.

Every face it returns is generated: one of many faces whose bicubic downscale
matches the input, not a recovery of the person in it.

Public API (loaded lazily, so ``import pulse_sr`` is cheap):
``load_generator``, ``upsample``, ``pulse_search``, ``bicubic_downsample``,
``SearchSettings``.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_generator": "pulse_sr.generators.registry",
    "upsample": "pulse_sr.api",
    "pulse_search": "pulse_sr.search.pulse",
    "bicubic_downsample": "pulse_sr.degradations.bicubic",
    "SearchSettings": "pulse_sr.search.settings",
    "SearchResult": "pulse_sr.search.settings",
    "Candidate": "pulse_sr.search.settings",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pulse_sr' has no attribute {name!r}")

"""Quality metrics for the benchmark harness and the web app.

- :func:`niqe`: no-reference naturalness score (lower is better), as BasicSR computes it.
- :func:`spread`, :func:`spread_map`: how much a set of candidate faces differ.

``pulse_sr.metrics.niqe`` is the function; reach the module's helpers with
``from pulse_sr.metrics.niqe import niqe_y, pristine_model``.
"""
from __future__ import annotations

from pulse_sr.metrics.niqe import niqe
from pulse_sr.metrics.spread import spread, spread_map

__all__ = ["niqe", "spread", "spread_map"]

"""How different a set of candidate faces are from each other.

PULSE returns several faces for one input; all of them downscale to it, so
their differences show what the input does not determine.

- :func:`spread`: one number, the mean over all unordered pairs of candidates
  ``(i, j)``, ``i < j``, of their RMS pixel difference
  ``sqrt(mean over channels and pixels of (hr_i - hr_j)^2)``. Same units as the
  images (0 = identical, 1 = black versus white everywhere).
- :func:`spread_map`: where they differ, ``[H, W]``: per pixel and channel the
  standard deviation across candidates (population form, divided by N), then
  averaged over R, G, B.

A single candidate has spread 0 and a zero map.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _check(hr: Tensor, what: str) -> Tensor:
    if not isinstance(hr, Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor, got {type(hr).__name__}")
    if hr.ndim != 4 or hr.shape[1] != 3 or hr.shape[0] < 1:
        raise ValueError(f"{what}: expected candidates [N, 3, H, W] with N >= 1, got {list(hr.shape)}")
    if not torch.isfinite(hr).all():
        raise ValueError(f"{what}: the images have NaN or infinite values")
    return hr.detach().to(torch.float64)


def spread(hr: Tensor) -> float:
    """Mean pairwise RMS difference of candidates ``hr [N, 3, H, W]`` in [0, 1] (0.0 when N == 1)."""
    x = _check(hr, "spread").flatten(1)
    n = x.shape[0]
    if n < 2:
        return 0.0
    total = 0.0
    for a in range(n - 1):  # one row of pairs at a time: memory O(N * pixels)
        total += (x[a + 1:] - x[a]).square().mean(dim=1).sqrt().sum().item()
    return total / (n * (n - 1) // 2)


def spread_map(hr: Tensor) -> Tensor:
    """Per-pixel spread ``[H, W]`` (float32): std across the N candidates (divided by N), mean over RGB."""
    x = _check(hr, "spread_map")
    return x.std(dim=0, correction=0).mean(dim=0).to(torch.float32)

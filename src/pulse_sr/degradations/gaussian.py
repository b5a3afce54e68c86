"""``gaussian``: Gaussian blur (sigma in HR pixels), then decimation by ``factor``.

The kernel is centred on each output pixel's block centre (``i*f + (f-1)/2``),
so it is even-length for an even factor; taps span ``+- ceil(4 sigma)`` pixels
beyond the block (the mass left out is below 1e-4) and are normalised to sum 1.
The image is reflect-padded (mirror without repeating the edge, as the bicubic
operator does) and filtered separably, rows first, with stride ``factor``.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pulse_sr.degradations.base import Degradation
from pulse_sr.degradations.box import check_divisible, check_factor
from pulse_sr.errors import SettingsError

#: default sigma (HR pixels) per unit of factor: sigma = 0.5 * factor
DEFAULT_SIGMA_PER_FACTOR = 0.5
#: kernel half-support beyond the block, in sigmas
TRUNCATE = 4.0


def gaussian_kernel_1d(factor: int, sigma: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """Normalised taps ``[f + 2 * ceil(4 sigma)]`` centred on the block centre."""
    radius = math.ceil(TRUNCATE * sigma)
    centre = (factor - 1) / 2
    pos = torch.arange(-radius, factor + radius, dtype=torch.float64) - centre
    taps = torch.exp(-0.5 * (pos / sigma) ** 2)
    return (taps / taps.sum()).to(dtype)


class GaussianDownsample(nn.Module, Degradation):
    """Blur + decimate ``[n, C, H, W] -> [n, C, H/f, W/f]``; linear, any value range."""

    name = "gaussian"
    kernel: Tensor

    def __init__(self, factor: int, sigma: float | None = None) -> None:
        super().__init__()
        check_factor(factor, self.name)
        if sigma is None:
            sigma = DEFAULT_SIGMA_PER_FACTOR * factor
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or not (
            0 < sigma <= 64
        ):
            raise SettingsError(
                f"gaussian sigma must be in (0, 64] HR pixels, got {sigma!r}", field="sigma", value=repr(sigma)
            )
        self.factor = factor
        self.sigma = float(sigma)
        self.radius = math.ceil(TRUNCATE * self.sigma)
        self.register_buffer("kernel", gaussian_kernel_1d(factor, self.sigma), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        check_divisible(x, self.factor)
        n, c, h, w = x.shape
        r = self.radius
        if r >= h or r >= w:
            raise ValueError(f"image of {h}x{w} is too small for a gaussian of sigma {self.sigma} (needs a side > {r})")
        k = self.kernel.to(device=x.device, dtype=x.dtype)
        size = k.numel()
        x = F.pad(x, (0, 0, r, r), mode="reflect")
        x = F.conv2d(x, k.view(1, 1, size, 1).expand(c, 1, size, 1), stride=(self.factor, 1), groups=c)
        x = F.pad(x, (r, r, 0, 0), mode="reflect")
        return F.conv2d(x, k.view(1, 1, 1, size).expand(c, 1, 1, size), stride=(1, self.factor), groups=c)

    def params(self) -> dict[str, Any]:
        return {"factor": self.factor, "sigma": self.sigma}

    def output_size(self, resolution: int) -> int:
        return resolution // self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}, sigma={self.sigma}"

"""``box``: area-average downscaling (what a Pixelate / mosaic filter does).

Each output pixel is the mean of its ``factor x factor`` block of input pixels:
exactly ``F.avg_pool2d(x, factor)``.
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from pulse_sr.degradations.base import Degradation
from pulse_sr.errors import SettingsError


def check_factor(factor: int, name: str) -> None:
    """Refuse a factor that is not a positive integer (``SettingsError``)."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise SettingsError(
            f"{name} downscale factor must be a positive integer, got {factor!r}", field="factor", value=repr(factor)
        )


def check_divisible(x: Tensor, factor: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected an NCHW tensor, got shape {list(x.shape)}")
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image of {h}x{w} cannot be downscaled by {factor}: both sides must be multiples of it")


class BoxDownsample(nn.Module, Degradation):
    """Block mean: ``[n, C, H, W] -> [n, C, H/f, W/f]``, any value range, linear."""

    name = "box"

    def __init__(self, factor: int) -> None:
        super().__init__()
        check_factor(factor, self.name)
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        if self.factor == 1:
            return x
        check_divisible(x, self.factor)
        return F.avg_pool2d(x, self.factor)

    def params(self) -> dict[str, Any]:
        return {"factor": self.factor}

    def output_size(self, resolution: int) -> int:
        return resolution // self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"

"""PULSE's bicubic downscaling operator, as a function and a thin module.

The kernel is Keys' cubic with a = -0.5, sampled at ``4 * factor`` taps and
normalised to sum 1; the image is reflect-padded by ``3 * factor / 2`` on each
side (``floor`` before, ``ceil`` after) and filtered separably, rows first, with
stride ``factor``. This is the operator PULSE's loss and eps check use, so an
image ``x`` "matches" a low-resolution input ``y`` when
``mean((bicubic_downsample(x, f) - y) ** 2) <= eps``.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pulse_sr.degradations.base import Degradation


def _keys_cubic(t: float, a: float = -0.5) -> float:
    t = abs(t)
    if t <= 1.0:
        return (a + 2.0) * t**3 - (a + 3.0) * t**2 + 1.0
    if t < 2.0:
        return a * t**3 - 5.0 * a * t**2 + 8.0 * a * t - 4.0 * a
    return 0.0


def bicubic_kernel_1d(factor: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The normalised 1-D kernel ``[4 * factor]`` for downscaling by ``factor``."""
    _check_factor(factor)
    size = 4 * factor
    center = math.floor(size / 2)
    # Evaluate in float32 exactly as the original does (values, then normalise).
    taps = torch.tensor(
        [_keys_cubic((i - center + 0.5) / factor) for i in range(size)], dtype=torch.float32
    )
    return (taps / taps.sum()).to(dtype)


#: smallest input side the search accepts
MIN_SIDE = 4


def valid_input_sizes(resolution: int) -> list[int]:
    """Square input sides a ``resolution`` generator can match: divisors >= 4 with factor >= 2."""
    return [s for s in range(MIN_SIDE, resolution // 2 + 1) if resolution % s == 0]


def _check_factor(factor: int) -> None:
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"bicubic downscale factor must be a positive integer, got {factor!r}")


def _downsample_with(x: Tensor, kernel: Tensor, factor: int) -> Tensor:
    if x.ndim != 4:
        raise ValueError(f"expected an NCHW tensor, got shape {list(x.shape)}")
    n, c, h, w = x.shape
    if h % factor or w % factor:
        raise ValueError(
            f"image of {h}x{w} cannot be downscaled by {factor}: both sides must be multiples of it"
        )
    size = kernel.numel()
    pad = size - factor
    before, after = pad // 2, pad - pad // 2
    if before >= h or after >= h or before >= w or after >= w:
        raise ValueError(f"image of {h}x{w} is too small to downscale by {factor}")
    k = kernel.to(device=x.device, dtype=x.dtype)
    k_rows = k.view(1, 1, size, 1).expand(c, 1, size, 1)
    k_cols = k.view(1, 1, 1, size).expand(c, 1, 1, size)
    x = F.pad(x, (0, 0, before, after), mode="reflect")
    x = F.conv2d(x, k_rows, stride=(factor, 1), groups=c)
    x = F.pad(x, (before, after, 0, 0), mode="reflect")
    return F.conv2d(x, k_cols, stride=(1, factor), groups=c)


def bicubic_downsample(x: Tensor, factor: int) -> Tensor:
    """Downscale ``x [N, C, H, W]`` by an integer ``factor`` -> ``[N, C, H/f, W/f]``.

    Differentiable, deterministic, any value range (PULSE feeds [0, 1]).
    ``factor == 1`` returns ``x`` unchanged.
    """
    _check_factor(factor)
    if factor == 1:
        return x
    return _downsample_with(x, bicubic_kernel_1d(factor), factor)


class BicubicDownsample(nn.Module, Degradation):
    """Module form of :func:`bicubic_downsample` and PULSE's default operator (a
    :class:`~pulse_sr.degradations.base.Degradation` named ``bicubic``, params ``{"factor": k}``):
    ``[N, 3, R, R]`` in [0, 1] -> ``[N, 3, R/k, R/k]``. The kernel is a buffer, so ``.to(device)``
    moves it."""

    name = "bicubic"
    channels = 3
    kernel: Tensor

    def __init__(self, factor: int) -> None:
        super().__init__()
        _check_factor(factor)
        self.factor = factor
        self.register_buffer("kernel", bicubic_kernel_1d(factor), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.factor == 1:
            return x
        return _downsample_with(x, self.kernel, self.factor)

    def params(self) -> dict[str, Any]:
        return {"factor": self.factor}

    def output_size(self, resolution: int) -> int:
        if resolution % self.factor:
            raise ValueError(f"a {resolution} px image cannot be downscaled by {self.factor}")
        return resolution // self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"

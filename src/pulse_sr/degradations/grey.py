"""``Grey``: reduce any operator's RGB output to luma, for black-and-white inputs.

Luma is ITU-R BT.601, ``0.299 R + 0.587 G + 0.114 B``, what Pillow's
``convert("L")`` computes (Pillow rounds to 8 bits; this stays in float).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pulse_sr.degradations.base import Degradation

#: ITU-R BT.601 luma weights (R, G, B)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luma(x: Tensor) -> Tensor:
    """``[n, 3, h, w] -> [n, 1, h, w]`` BT.601 luma, same range as ``x``."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"luma needs an [n, 3, h, w] tensor, got shape {list(x.shape)}")
    w = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


class Grey(nn.Module, Degradation):
    """``luma(inner(x))``: ``[n, 3, R, R] -> [n, 1, h, w]``; linear when ``inner`` is."""

    name = "grey"
    channels = 1

    def __init__(self, inner: Degradation) -> None:
        super().__init__()
        if getattr(inner, "channels", 3) != 3:
            raise ValueError(f"Grey wraps an RGB operator, got {inner.describe()}")
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return luma(self.inner(x))

    def params(self) -> dict[str, Any]:
        return {"operator": self.inner.describe(), "luma": "ITU-R BT.601", "weights": list(LUMA_WEIGHTS)}

    def output_size(self, resolution: int) -> int:
        return self.inner.output_size(resolution)

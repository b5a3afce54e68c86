"""``nearest``: point sampling, one input pixel per block, with its phase.

Output pixel ``(i, j)`` is input pixel ``(i * f + phase_y, j * f + phase_x)``.
The default phase ``f // 2`` is the block's centre pixel (lower-right of the
centre for even ``f``), which is what Pillow's ``Image.NEAREST`` downscale picks.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from pulse_sr.degradations.base import Degradation
from pulse_sr.degradations.box import check_divisible, check_factor
from pulse_sr.errors import SettingsError


class NearestDownsample(nn.Module, Degradation):
    """Decimation ``[n, C, H, W] -> [n, C, H/f, W/f]`` taking pixel ``i*f + phase``."""

    name = "nearest"

    def __init__(self, factor: int, phase: int | tuple[int, int] | None = None) -> None:
        super().__init__()
        check_factor(factor, self.name)
        if phase is None:
            phase = factor // 2
        py, px = (phase, phase) if isinstance(phase, int) else tuple(phase)
        for p in (py, px):
            if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < factor:
                raise SettingsError(
                    f"nearest phase must be an integer in 0..{factor - 1}, got {p!r}", field="phase", value=repr(p)
                )
        self.factor = factor
        self.phase = (py, px)

    def forward(self, x: Tensor) -> Tensor:
        check_divisible(x, self.factor)
        py, px = self.phase
        return x[..., py :: self.factor, px :: self.factor]

    def params(self) -> dict[str, Any]:
        return {"factor": self.factor, "phase": list(self.phase)}

    def output_size(self, resolution: int) -> int:
        return resolution // self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}, phase={self.phase}"

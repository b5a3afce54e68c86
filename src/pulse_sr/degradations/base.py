"""The interface every degradation operator implements (deepinv-style ``physics``).

An operator is an object handed to the search. ``A(x)`` is deterministic and
differentiable: HR images [n, 3, R, R] in [0, 1] -> observations [n, C, h, w]
(C = 3, or 1 for a luma operator). Noise is not part of ``A``: it is a separate
model (threshold) the search is told about.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor


class Degradation:
    """Base class: subclasses set ``name`` and implement :meth:`forward` and :meth:`params`."""

    #: registry name (``bicubic``, ``box``, ``gaussian``, ``nearest``, ...)
    name: str = "identity"
    #: channels of the observation (3 RGB, 1 luma)
    channels: int = 3

    def forward(self, x: "Tensor") -> "Tensor":  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, x: "Tensor") -> "Tensor":
        return self.forward(x)

    def params(self) -> dict[str, Any]:
        """JSON-safe parameters, recorded in report.json with ``name``."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.params()}

    def output_size(self, resolution: int) -> int:  # pragma: no cover - interface
        """Side of the observation for a ``resolution`` px square input."""
        raise NotImplementedError

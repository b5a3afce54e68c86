"""L2 over known pixels only: unknown pixels (mask 0) add nothing to the loss."""
from __future__ import annotations

import torch
from torch import Tensor


def masked_l2(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean square error per image over the known pixels -> ``[n]``.

    ``pred`` ``[n, C, h, w]``; ``target`` broadcastable to it; ``mask``
    ``[h, w]``, ``[1 | n, 1 | C, h, w]`` with 1 = known, 0 = unknown (fractional
    weights allowed). Without a mask this is ``mean((pred - target) ** 2)`` per
    image, PULSE's L2. A mask with no known pixel is refused (``ValueError``).
    """
    diff2 = (pred - target) ** 2
    if mask is None:
        return diff2.flatten(1).mean(dim=1)
    m = mask.to(dtype=pred.dtype, device=pred.device)
    while m.ndim < 4:
        m = m.unsqueeze(0)
    m = m.expand_as(diff2)
    known = m.flatten(1).sum(dim=1)
    if bool((known <= 0).any()):
        raise ValueError("the mask marks no pixel as known")
    return (diff2 * m).flatten(1).sum(dim=1) / known


def known_fraction(mask: Tensor) -> float:
    """Share of known pixels in a 0/1 mask (for reports)."""
    return float(torch.as_tensor(mask, dtype=torch.float64).mean())

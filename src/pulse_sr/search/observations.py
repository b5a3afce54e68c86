"""What each candidate of a search is matched against: its own input, operator, threshold, mask.

An :class:`Observation` is one low-resolution input as the search sees it: the target
``y``, the operator ``A`` (a :class:`~pulse_sr.degradations.base.Degradation`), the match
threshold (PULSE's eps; a noise model may raise it) and a mask of the known pixels. Every
candidate of a search points at one observation; candidates of one input share the same
object, and candidates of different inputs may sit in one batch. Where candidates share an
observation their images go through its operator together (:func:`group_rows`), so a search of
one input computes exactly what a single-target search computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from pulse_sr.degradations.base import Degradation
from pulse_sr.degradations.bicubic import BicubicDownsample, valid_input_sizes
from pulse_sr.errors import SizeError
from pulse_sr.search.losses import l2_per_image


@dataclass(eq=False)
class Observation:
    """One input: ``target [1, C, h, w]`` float32 in [0, 1] on the search's device; ``operator``:
    HR ``[B, 3, R, R]`` in [0, 1] -> ``[B, C, h, w]``; ``threshold``: a candidate matches when its
    L2 is at most this (and the data terms are clamped at it); ``mask``: ``None`` (every pixel known)
    or ``[1, 1|C, h, w]`` float32, 1 = known, 0 = unknown (ignored by L2 and the check).

    Identity matters, not equality: candidates pointing at the same object are batched through
    its operator together.
    """

    target: Tensor
    operator: Degradation
    threshold: float
    mask: Tensor | None = None

    def l2(self, lr: Tensor) -> Tensor:
        """Unclamped L2 ``[B]`` of observations ``lr [B, C, h, w]`` to the target, over known pixels."""
        return l2_per_image(lr, self.target, self.mask)


#: a noise estimate below this (0..1 scale) leaves the threshold at eps: a clean input matches as in PULSE
NOISE_FLOOR = 1.0 / 255.0


def match_threshold(eps: float, noise_sigma: float = 0.0) -> float:
    """The L2 within which a candidate matches an input with Gaussian noise of ``noise_sigma`` (0..1
    scale, in the observation as matched): ``sigma^2 + eps`` (the noise alone has mean square
    sigma^2 around the clean observation), or ``eps`` when ``sigma < NOISE_FLOOR``."""
    if not noise_sigma >= 0:
        raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma!r}")
    return float(eps) if noise_sigma < NOISE_FLOOR else float(noise_sigma) ** 2 + float(eps)


#: a group of rows of a batch that share one observation: (row positions on the device, or
#: ``None`` for every row in order; the observation)
Group = tuple["Tensor | None", Observation]


def group_rows(observations: Sequence[Observation], rows: Tensor, device: torch.device) -> list[Group]:
    """Split the batch rows ``rows`` (candidate indices, CPU long ``[B]``) by observation.

    One observation for every row (today's only case) gives ``[(None, obs)]``: the batch is used as
    is. Otherwise one group per observation, in order of first appearance, with the positions of its
    rows within ``rows``.
    """
    picked = [observations[i] for i in rows.tolist()]
    if not picked:
        return []
    if all(o is picked[0] for o in picked):
        return [(None, picked[0])]
    positions: dict[int, list[int]] = {}
    owners: dict[int, Observation] = {}
    for pos, obs in enumerate(picked):
        positions.setdefault(id(obs), []).append(pos)
        owners[id(obs)] = obs
    return [(torch.tensor(p, device=device), owners[k]) for k, p in positions.items()]


def take(x: Tensor, pos: Tensor | None) -> Tensor:
    """Rows ``pos`` of ``x`` (all of ``x`` when ``pos`` is None)."""
    return x if pos is None else x[pos]


def per_row(groups: list[Group], rows: int, value: Callable[[Tensor | None, Observation], Tensor]) -> Tensor:
    """``[rows]`` from ``value(pos, obs) -> [len(group)]`` per group (differentiable)."""
    if len(groups) == 1 and groups[0][0] is None:
        return value(None, groups[0][1])
    out: Tensor | None = None
    for pos, obs in groups:
        v = value(pos, obs)
        if out is None:
            out = v.new_zeros(rows)
        out = out.index_put((pos,), v)  # type: ignore[arg-type]
    assert out is not None
    return out


def join_rows(groups: list[Group], rows: int, values: list[Tensor]) -> Tensor:
    """One ``[rows, ...]`` tensor from per-group values (all of one shape past the first dim)."""
    if len(groups) == 1 and groups[0][0] is None:
        return values[0]
    out = values[0].new_empty((rows, *values[0].shape[1:]))
    for (pos, _), v in zip(groups, values):
        out[pos] = v
    return out


def prepare_target(target: Tensor, resolution: int) -> tuple[Tensor, int]:
    """``target [3, h, w]`` or ``[1, 3, h, w]`` in [0, 1] -> (``[1, 3, h, w]`` float32, factor)."""
    if target.ndim == 3:
        target = target[None]
    if target.ndim != 4 or target.shape[0] != 1 or target.shape[1] != 3:
        raise SizeError(f"target must be [3, h, w] or [1, 3, h, w] RGB, got {list(target.shape)}")
    h, w = target.shape[-2:]
    if h != w:
        raise SizeError(f"target is {w}x{h}; PULSE needs a square input", size=[int(w), int(h)], square=False)
    if resolution % h or resolution // h < 2:
        sizes = valid_input_sizes(resolution)
        nearest = min(sizes, key=lambda s: (abs(s - int(h)), s)) if sizes else None
        raise SizeError(
            f"target is {h}x{h}; a {resolution}x{resolution} generator takes "
            f"{', '.join(map(str, sizes))} pixel squares",
            size=[int(h), int(h)], valid_sizes=sizes, nearest=nearest, square=True,
        )
    return target.float(), resolution // h


def prepare_mask(mask: Tensor | None, target: Tensor) -> Tensor | None:
    """``mask`` ``[h, w]``, ``[1|C, h, w]`` or ``[1, 1|C, h, w]`` (bool or 0/1; true/1 = known) ->
    ``[1, 1|C, h, w]`` float32 on the target's device; None stays None."""
    if mask is None:
        return None
    m = mask.detach()
    while m.ndim < 4:
        m = m[None]
    c, (h, w) = target.shape[1], target.shape[-2:]
    if m.ndim != 4 or m.shape[0] != 1 or m.shape[1] not in (1, c) or tuple(m.shape[-2:]) != (h, w):
        raise SizeError(f"mask of shape {list(mask.shape)} does not fit a {w}x{h} input with {c} channels",
                        size=[int(w), int(h)])
    m = m.to(device=target.device, dtype=torch.float32)
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("mask values must be 0 (unknown) or 1 (known)")
    if not bool(m.any()):
        raise ValueError("mask marks no pixel as known: there is nothing to match")
    return m


def make_observation(target: Tensor, resolution: int, *, threshold: float, device: torch.device,
                     operator: Degradation | None = None, mask: Tensor | None = None) -> Observation:
    """An input as the search uses it. ``operator=None``: PULSE's bicubic at the factor the target
    size implies (``target [3, h, w]``, ``resolution`` a multiple >= 2 of ``h``). With an operator, its
    output for a ``resolution`` image must have the target's size."""
    if operator is None:
        target, factor = prepare_target(target.detach().to(device), resolution)
        return Observation(target, BicubicDownsample(factor).to(device), float(threshold),
                           prepare_mask(mask, target))
    target = target.detach().to(device).float()
    if target.ndim == 3:
        target = target[None]
    side = operator.output_size(resolution)
    if target.ndim != 4 or target.shape[0] != 1 or tuple(target.shape[1:]) != (operator.channels, side, side):
        raise SizeError(
            f"target is {list(target.shape)}; the {operator.name} operator makes "
            f"[1, {operator.channels}, {side}, {side}] from a {resolution} px face",
            size=[int(s) for s in target.shape[-2:]],
        )
    return Observation(target, operator, float(threshold), prepare_mask(mask, target))

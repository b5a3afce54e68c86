"""PULSE's loss terms, per candidate, and the loss-string parser.

All terms return one value per candidate ``[N]`` so candidates optimised in one
batch stay independent (the original summed over the batch, which couples the
eps clamp of one candidate to the others' reports).

- ``L2``: ``mean((A(x) - y)^2)`` per image, clamped below at eps (so a candidate
  under eps gets no more push from it, as in the original).
- ``L1``: ``10 * mean(|A(x) - y|)`` per image, clamped at eps (PULSE's factor 10).

The data terms take an optional ``mask`` ``[1|N, 1|C, h, w]`` (1 = known pixel, 0 = unknown):
the mean is then over the known pixels only, so unknown pixels add nothing to the loss nor
to the eps check. ``mask=None`` (all pixels known) is the plain mean, bit for bit.
- ``GEOCROSS``: mean squared geodesic distance between the ``num_ws`` latent
  vectors of a candidate, on the sphere, scaled as the original:
  ``mean_ij(512 * d_ij^2) / 8`` where ``d_ij = 2 atan2(|a-b|, |a+b|)``; 0 for one vector.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

LOSS_TERMS = ("L2", "L1", "GEOCROSS")


def _mean_per_image(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values [N, C, h, w]`` per image ``[N]``, over the pixels ``mask`` marks known."""
    if mask is None:
        return values.mean(dim=(1, 2, 3))
    mask = mask.to(values.dtype)
    known = mask.expand_as(values).sum(dim=(1, 2, 3))
    return (values * mask).sum(dim=(1, 2, 3)) / known


def l2_per_image(lr: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Unclamped mean squared error per image: ``[N, C, h, w]`` x ``[1|N, C, h, w]`` -> ``[N]``
    (over the known pixels of ``mask [1|N, 1|C, h, w]``, 1 = known, when given)."""
    return _mean_per_image((lr - target).pow(2), mask)


def loss_l2(lr: Tensor, target: Tensor, eps: float, mask: Tensor | None = None) -> Tensor:
    """PULSE's L2 term per image ``[N]`` (clamped at eps)."""
    return l2_per_image(lr, target, mask).clamp(min=eps)


def loss_l1(lr: Tensor, target: Tensor, eps: float, mask: Tensor | None = None) -> Tensor:
    """PULSE's L1 term per image ``[N]``: 10 * mean |diff| (over known pixels), clamped at eps."""
    return 10 * _mean_per_image((lr - target).abs(), mask).clamp(min=eps)


def loss_geocross(ws: Tensor) -> Tensor:
    """Geodesic cross loss per candidate for ``ws [N, L, D]`` -> ``[N]``.

    Uses the original's constants (512 and /8) whatever ``D`` and ``L`` are, so
    StyleGAN1 values match PULSE exactly.
    """
    n, layers, dim = ws.shape
    if layers == 1:
        return ws.new_zeros(n)
    x = ws.view(n, 1, layers, dim)
    y = ws.view(n, layers, 1, dim)
    a = ((x - y).pow(2).sum(-1) + 1e-9).sqrt()
    b = ((x + y).pow(2).sum(-1) + 1e-9).sqrt()
    d = 2 * torch.atan2(a, b)
    return (d.pow(2) * 512).mean(dim=(1, 2)) / 8.0


@dataclass(frozen=True)
class LossSpec:
    """A parsed loss string such as ``"100*L2+0.05*GEOCROSS"``: (weight, term) pairs."""

    terms: tuple[tuple[float, str], ...]

    def __str__(self) -> str:
        return "+".join(f"{w:g}*{t}" for w, t in self.terms)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t for _, t in self.terms)


_TERM = re.compile(r"^\s*(?:([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?([A-Za-z0-9]+)\s*$")


def parse_loss(spec: str) -> LossSpec:
    """Parse ``"w1*TERM1+w2*TERM2"``; weight defaults to 1; terms from :data:`LOSS_TERMS`."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("loss string is empty; example: 100*L2+0.05*GEOCROSS")
    terms: list[tuple[float, str]] = []
    for part in spec.split("+"):
        m = _TERM.match(part)
        if not m:
            raise ValueError(f"cannot read loss term {part!r} in {spec!r}; example: 100*L2+0.05*GEOCROSS")
        weight = float(m.group(1)) if m.group(1) else 1.0
        name = m.group(2).upper()
        if name not in LOSS_TERMS:
            raise ValueError(f"unknown loss term {m.group(2)!r} in {spec!r}; known: {', '.join(LOSS_TERMS)}")
        if any(t == name for _, t in terms):
            raise ValueError(f"loss term {name} appears twice in {spec!r}")
        terms.append((weight, name))
    if not any(t in ("L2", "L1") for _, t in terms):
        raise ValueError(f"loss {spec!r} has no data term; it needs L2 or L1 to match the input")
    return LossSpec(tuple(terms))


def evaluate_loss(spec: LossSpec, lr: Tensor, target: Tensor, ws: Tensor, eps: float,
                  mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss per candidate ``[N]`` and each term ``{name: [N]}`` (terms unweighted).

    lr ``[N, C, h, w]`` and target ``[1|N, C, h, w]`` in [0, 1]; ws ``[N, L, w_dim]``; eps: the clamp
    of the data terms (the candidates' match threshold); mask: see the module docstring."""
    parts: dict[str, Tensor] = {}
    total = lr.new_zeros(lr.shape[0])
    for weight, name in spec.terms:
        if name == "L2":
            value = loss_l2(lr, target, eps, mask)
        elif name == "L1":
            value = loss_l1(lr, target, eps, mask)
        else:
            value = loss_geocross(ws)
        parts[name] = value
        total = total + weight * value
    return total, parts

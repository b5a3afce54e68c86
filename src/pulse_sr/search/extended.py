"""The extended-range search: intermediate layer optimisation (ILO, Daras et al., ICML 2021).

After the latent search, a face the generator cannot make exactly (a real photo) is
often still a few 1e-3 of L2 away. ILO optimises the generator's activation at an
intermediate layer (:mod:`pulse_sr.generators.split`) instead of the latent, constrained
to a ball around the activation the latent produces, so the face stays near the
generator's range.

The ball is **l1**, of radius ``radius * ||a0||_1`` per candidate (``a0``: its start
activation). l1 as in ILO and in the experiment of issue 13: it favours sparse changes,
so most of the activation stays exactly the generator's and the deviation concentrates
where the data demands it, whereas an l2 ball of the same relative radius lets every
unit move a little. (An l2 ball was not benchmarked here.) After every optimiser step
the activation is projected back onto the ball (Duchi et al. 2008), in float64 and onto
a radius shrunk by a float32 rounding margin, so the reported distance never exceeds
``radius``.

Loss per candidate: L2 between ``operator(hr)`` and the target over known pixels
(``mask``), plus, when a chroma prior is given (grey inputs), ``chroma_weight *
prior.penalty(hr)``. The search never mutates the generator, writes no files and draws
no random numbers (``seed`` is recorded only, so reports carry one).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor

from pulse_sr.errors import SettingsError
from pulse_sr.generators.split import Split, activation_at, check_layer, synthesis_from

if TYPE_CHECKING:
    from pulse_sr.degradations.base import Degradation
    from pulse_sr.search.chroma import ChromaPrior

#: defaults chosen by benchmarks/real_inputs.py (dcgan-digiface, lfw_subset faces at 16x16)
DEFAULT_RADIUS = 0.3
DEFAULT_STEPS = 100
DEFAULT_LR = 0.1
DEFAULT_CHROMA_WEIGHT = 1e-2
#: float32 unit roundoff
_U32 = 2.0 ** -24


@dataclass
class ExtendedStep:
    """Callback payload after each step. ``l2``/``radius_used``: [n] of the state just evaluated
    (before the step's update); ``radius_now``: [n] after the update and projection; ``best_l2`` [n];
    ``converged``, ``active``: [n] bool."""

    step: int
    total_steps: int
    l2: Tensor
    radius_used: Tensor
    radius_now: Tensor
    best_l2: Tensor
    converged: Tensor
    active: Tensor


@dataclass
class ExtendedResult:
    """Per candidate (batched): hr [n, 3, R, R] in [0, 1]; lr [n, C, h, w] = operator(hr);
    l2 [n] (over known pixels); converged [n] (l2 <= its threshold); left_range [n] (the face is
    not the latent's own output); radius_used [n] (l1 distance of the activation from the
    latent's, / ||a0||_1; never above ``radius``); start_l2 [n]; steps [n]; chroma_distance [n]
    (Mahalanobis, when a chroma prior was given)."""

    hr: Tensor
    lr: Tensor
    act: Tensor
    skip: Tensor | None
    l2: Tensor
    start_l2: Tensor
    threshold: Tensor
    converged: Tensor
    left_range: Tensor
    radius_used: Tensor
    steps: Tensor
    seconds: float
    layer: int
    radius: float
    seed: int
    chroma_distance: Tensor | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self, k: int) -> dict[str, Any]:
        """Plain data for candidate ``k`` (report.json)."""
        out: dict[str, Any] = {
            "range": "extended", "layer": self.layer, "norm": "l1", "radius": self.radius,
            "left_range": bool(self.left_range[k]), "radius_used": float(self.radius_used[k]),
            "start_l2": float(self.start_l2[k]), "final_l2": float(self.l2[k]),
            "converged": bool(self.converged[k]), "steps_run": int(self.steps[k]),
        }
        if self.chroma_distance is not None:
            out["chroma_distance"] = float(self.chroma_distance[k])
        return out


def project_l1_ball(v: Tensor, z: Tensor) -> Tensor:
    """Euclidean projection of each row of ``v [n, d]`` onto the l1 ball of radius ``z [n]`` (>= 0)
    (Duchi et al. 2008, sort-based). Rows already inside are returned unchanged."""
    a = v.abs()
    inside = a.sum(dim=1) <= z
    u, _ = a.sort(dim=1, descending=True)
    css = u.cumsum(dim=1)
    j = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    cond = u - (css - z[:, None]) / j > 0
    rho = (cond.sum(dim=1) - 1).clamp(min=0)  # cond holds for a prefix of the sorted entries
    theta = ((css.gather(1, rho[:, None]).squeeze(1) - z) / (rho + 1).to(v.dtype)).clamp(min=0)
    w = v.sign() * (a - theta[:, None]).clamp(min=0)
    return torch.where(inside[:, None], v, w)


def _safe_radius(norm0: Tensor, radius: float) -> Tensor:
    """The l1 radius the float64 projection uses so that the float32 activation it yields stays
    within ``radius * norm0``: casting ``a0 + w`` (float64) to float32 moves each element by at most
    ``u32 * |a0 + w|``, so in total by ``u32 * (norm0 + r)``; 4x that margin also covers float64
    rounding of the sums (relative 1e-16 per op over d <= 1e7 terms)."""
    r = radius * norm0
    return (r - 4 * _U32 * (norm0 + r)).clamp(min=0)


def masked_l2(lr: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Mean squared error per image over known pixels: lr [n, C, h, w], target [1|n, C, h, w],
    mask [1|n, 1, h, w] in {0, 1} (1 = known) or None -> [n]."""
    if mask is None:
        return (lr - target).pow(2).mean(dim=(1, 2, 3))
    m = mask.to(lr.dtype)
    known = (m.sum(dim=(1, 2, 3)) * lr.shape[1]).clamp(min=1)
    return ((lr - target).pow(2) * m).sum(dim=(1, 2, 3)) / known


def _prepare(target: Tensor, mask: Tensor | None, threshold: float | Tensor, n: int,
             dev: torch.device) -> tuple[Tensor, Tensor | None, Tensor]:
    target = target.detach().to(dev, torch.float32)
    if target.ndim == 3:
        target = target[None]
    if target.ndim != 4 or target.shape[0] not in (1, n):
        raise SettingsError(f"target must be [C, h, w] or [n, C, h, w], got {list(target.shape)}")
    if mask is not None:
        mask = mask.detach().to(dev, torch.float32)
        while mask.ndim < 4:
            mask = mask[None]
        if mask.shape[-2:] != target.shape[-2:]:
            raise SettingsError(f"mask {list(mask.shape[-2:])} does not match the target {list(target.shape[-2:])}")
    thr = torch.as_tensor(threshold, dtype=torch.float32).flatten().expand(n).clone()
    return target, mask, thr


class _Problem:
    """The fixed parts of one extended search: the generator's halves, the start activation ``a0``
    [n, C, H, W] (and its float64 copy, l1 norms, safe radii), target, mask, operator, prior."""

    def __init__(self, G: torch.nn.Module, ws: Tensor, noise: list[Tensor] | None, layer: int, radius: float,
                 operator: Callable[[Tensor], Tensor], target: Tensor, mask: Tensor | None,
                 chroma: "ChromaPrior | None", chroma_weight: float) -> None:
        self.G, self.ws, self.noise, self.layer = G, ws, noise, layer
        self.operator, self.target, self.mask = operator, target, mask
        self.chroma, self.chroma_weight = chroma, chroma_weight
        with torch.no_grad():
            s0 = activation_at(G, ws, noise, layer)
        self.a0, self.skip = s0.act.detach(), None if s0.skip is None else s0.skip.detach()
        self.a0_64 = self.a0.double().flatten(1)
        self.norm0 = self.a0_64.abs().sum(dim=1)
        self.r_safe = _safe_radius(self.norm0, radius)

    def image(self, a: Tensor) -> Tensor:
        """Activation [n, C, H, W] -> raw image [n, 3, R, R] in about [0, 1] (not clamped)."""
        return (synthesis_from(self.G, Split(a, self.layer, self.skip), self.ws, self.noise) + 1) / 2

    def evaluate(self, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(loss [n] on the raw image, l2 [n] of the clamped image (CPU), chroma penalty [n] (CPU))."""
        raw = self.image(a)
        l2_raw = masked_l2(self.operator(raw), self.target, self.mask)
        with torch.no_grad():
            l2 = masked_l2(self.operator(raw.detach().clamp(0, 1)), self.target, self.mask).cpu()
        pen = self.chroma.penalty(raw) if self.chroma is not None else raw.new_zeros(raw.shape[0])
        return l2_raw + self.chroma_weight * pen, l2, pen.detach().cpu()

    def radius_of(self, a: Tensor) -> Tensor:
        """[n] float64 on CPU: ``||a - a0||_1 / ||a0||_1``, measured on the float32 activation itself."""
        return ((a.detach().double().flatten(1) - self.a0_64).abs().sum(dim=1) / self.norm0.clamp(min=1e-300)).cpu()

    @torch.no_grad()
    def project_(self, act: Tensor) -> None:
        """Move ``act`` in place back into the ball (in float64, onto the safe radius)."""
        w = project_l1_ball(act.double().flatten(1) - self.a0_64, self.r_safe)
        act.copy_((self.a0_64 + w).view_as(act).to(act.dtype))


def _check_options(steps: int, radius: float, lr: float) -> None:
    if not (isinstance(steps, int) and steps >= 0):
        raise SettingsError(f"steps must be a non-negative integer, got {steps!r}", steps=steps)
    if not (radius >= 0 and lr > 0):
        raise SettingsError(f"radius must be >= 0 and lr > 0, got radius={radius!r}, lr={lr!r}",
                            radius=radius, lr=lr)


def extended_search(
    generator: torch.nn.Module, target: Tensor, *, operator: "Degradation | Callable[[Tensor], Tensor]",
    start_ws: Tensor, start_noise: Sequence[Tensor] | None, layer: int, radius: float = DEFAULT_RADIUS,
    steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, threshold: float | Tensor = 2e-3,
    mask: Tensor | None = None, seed: int = 0, callback: Callable[[ExtendedStep], None] | None = None,
    chroma: "ChromaPrior | None" = None, chroma_weight: float = DEFAULT_CHROMA_WEIGHT,
) -> ExtendedResult:
    """ILO from the latent search's result.

    target [C, h, w] or [n, C, h, w] in [0, 1]; operator: hr [n, 3, R, R] in [0, 1] -> [n, C, h, w];
    start_ws [n, num_ws, w_dim] and start_noise (list of [n, 1, H, W] or None): each candidate's
    latent result; threshold: float or [n] (each candidate's own); mask [h, w] or [1|n, 1, h, w]
    (1 = known pixel); radius: relative l1 radius; lr: Adam step relative to the mean |a0|.
    A candidate stops once its L2 is within its threshold and its chroma penalty is 0; it keeps
    its best state: within the threshold beats outside, then the lower loss.
    """
    _check_options(steps, radius, lr)
    G = copy.deepcopy(generator).eval() if generator.training else generator  # BatchNorm stats stay put
    check_layer(G, layer)
    ws = start_ws.detach()
    n, dev = ws.shape[0], ws.device
    noise = None if start_noise is None else [t.detach() for t in start_noise]
    target, mask, thr = _prepare(target, mask, threshold, n, dev)
    started = time.perf_counter()
    P = _Problem(G, ws, noise, layer, radius, operator, target, mask, chroma, chroma_weight)
    act = P.a0.clone().requires_grad_(True)
    opt = torch.optim.Adam([act], lr=lr * (float(P.a0.abs().mean()) or 1.0))
    best_act = P.a0.clone()
    best_l2, best_key = torch.full((n,), float("inf")), torch.full((n,), float("inf"))
    done = torch.zeros(n, dtype=torch.bool)
    steps_run = torch.zeros(n, dtype=torch.long)
    start_l2 = torch.full((n,), float("nan"))
    for step in range(steps + 1):
        total, l2, pen = P.evaluate(act)
        start_l2 = l2.clone() if step == 0 else start_l2
        active = ~done
        key = total.detach().cpu() + torch.where(l2 <= thr, 0.0, 1e3)  # within the threshold first
        better = active & (key < best_key)
        best_act[better.nonzero().flatten().to(dev)] = act.detach()[better.nonzero().flatten().to(dev)]
        best_key[better], best_l2[better] = key[better], l2[better]
        done |= active & (l2 <= thr) & (pen <= 0)
        steps_run[active] = step
        used = P.radius_of(act)
        if step < steps and not done.all():
            (grad,) = torch.autograd.grad(total.sum(), [act])  # never into the generator's parameters
            act.grad = grad * (~done).to(dev, grad.dtype).view(-1, *[1] * (grad.ndim - 1))
            opt.step()
            with torch.no_grad():
                act[done.to(dev)] = best_act[done.to(dev)]
            P.project_(act)
        if callback is not None:
            callback(ExtendedStep(step, steps, l2, used, P.radius_of(act), best_l2.clone(), best_l2 <= thr, ~done))
        if step == steps or done.all():
            break
    return _result(P, best_act, thr, start_l2, steps_run, started, radius, seed,
                   {"layer": layer, "radius": radius, "norm": "l1", "steps": steps, "lr": lr,
                    "chroma_weight": chroma_weight if chroma is not None else 0.0})


@torch.no_grad()
def _result(P: _Problem, best_act: Tensor, thr: Tensor, start_l2: Tensor, steps_run: Tensor, started: float,
            radius: float, seed: int, settings: dict[str, Any]) -> ExtendedResult:
    """Each candidate's best state, re-evaluated on its clamped image."""
    hr = P.image(best_act).clamp(0, 1)
    lr_out = P.operator(hr)
    l2 = masked_l2(lr_out, P.target, P.mask).cpu()
    used = P.radius_of(best_act)
    return ExtendedResult(
        hr=hr.cpu(), lr=lr_out.cpu(), act=best_act.cpu(), skip=None if P.skip is None else P.skip.cpu(),
        l2=l2, start_l2=start_l2, threshold=thr, converged=l2 <= thr, left_range=used > 0, radius_used=used,
        steps=steps_run, seconds=time.perf_counter() - started, layer=P.layer, radius=radius, seed=seed,
        chroma_distance=P.chroma.distance(hr).cpu() if P.chroma is not None else None, settings=settings,
    )

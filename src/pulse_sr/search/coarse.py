"""Coarse-to-fine PULSE: most steps through a synthesis truncated at an intermediate side.

The loss only sees the face downscaled to ``h x h`` (16 or 32 pixels), yet the
original loop runs the whole 1024x1024 network forward and backward every step.
Here, for the first ``coarse_steps`` steps, the synthesis stops after the block of
side ``s`` (64 for a 32x32 input: about a tenth of the full step's cost) and a
linear head fitted once per weights file (:mod:`pulse_sr.search.heads`) turns the
features into an ``h x h`` image.

The head alone is only approximately right, so the proxy is corrected: every
``refresh_every`` steps the true full network is run forward (no gradient) at the
current latents, which

- checks eps on the *true* output and records it as the candidate's best state
  (candidates within eps stop there, exactly as in the faithful loop);
- sets a per-candidate offset ``delta = true_lr - head(features)``, so the proxy
  equals the true downscale at that point and the coarse steps chase the true
  residual, with the truncated network supplying the gradient direction.

After the coarse steps (or as soon as a refresh finds that the true L2 of most
active candidates has not fallen since the previous refresh: the proxy has
stopped paying) the remaining steps are ordinary full steps of the original loop. Nothing is
returned that did not come out of the full network.

The phase runs on a :class:`~pulse_sr.search.state.SearchState` through its public interface
(it supplies the truncated forward and the proxy loss; the state keeps the books). The head
models PULSE's bicubic downscale, so the phase applies only when every candidate's operator is
that (:func:`coarse_applies`); the candidates' own targets, thresholds and masks are used as is.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from pulse_sr.generators.base import FaceGenerator
from pulse_sr.search.heads import CoarseHead, cached_head
from pulse_sr.search.state import SearchState

#: share of the step budget spent in the coarse phase when ``coarse_steps == -1``
AUTO_COARSE_SHARE = 0.8
#: the auto side is at least this (the head reads too little from 16x16 features)
MIN_AUTO_SIDE = 32


def supports_coarse(G: FaceGenerator, lr_side: int) -> bool:
    """Whether the generator offers truncated synthesis with a side between the input's and its own."""
    sides = getattr(G, "feature_sides", None)
    if sides is None or not hasattr(G, "synthesis_with_features"):
        return False
    return any(lr_side <= s < G.resolution for s in sides())


def coarse_applies(state: SearchState) -> bool:
    """Whether the coarse phase can run this search: truncation offered, and every candidate matched
    through PULSE's bicubic operator onto an RGB input of one side (what the heads are fitted for)."""
    sides = {int(o.target.shape[-1]) for o in state.observations}
    if len(sides) != 1 or not supports_coarse(state.G, next(iter(sides))):
        return False
    R = state.G.resolution
    return all(o.operator.name == "bicubic" and o.operator.channels == 3 and o.target.shape[1] == 3
               and o.operator.output_size(R) == o.target.shape[-1] for o in state.observations)


def choose_side(G: object, lr_side: int, requested: int = 0) -> int:
    """The truncation side: ``requested`` if non-zero (must be a block side in ``[lr_side, R)``), else
    the smallest block side ``>= max(2 * lr_side, 32)`` below the resolution, else the largest usable one."""
    resolution = int(G.resolution)  # type: ignore[attr-defined]
    usable = [s for s in G.feature_sides() if lr_side <= s < resolution]  # type: ignore[attr-defined]
    if not usable:
        raise ValueError(f"no intermediate side between the input ({lr_side}) and the output ({resolution})")
    if requested:
        if requested not in usable:
            raise ValueError(f"coarse_side {requested} is not one of {usable}")
        return requested
    wanted = max(2 * lr_side, MIN_AUTO_SIDE)
    return next((s for s in usable if s >= wanted), usable[-1])


def coarse_step_count(steps: int, requested: int) -> int:
    """Coarse steps: ``requested`` or 80 % of ``steps``, leaving at least the last step to the full network."""
    count = int(math.floor(AUTO_COARSE_SHARE * steps)) if requested < 0 else requested
    return max(0, min(count, steps - 1))


@torch.no_grad()
def _refresh(state: SearchState, head: CoarseHead, side: int, step: int, active: Tensor,
             delta: Tensor) -> tuple[Tensor, Tensor]:
    """True forward at the current latents: eps check and best state, new ``delta``.
    Returns the images ``[A, 3, R, R]`` and their true L2 ``[A]`` (CPU)."""
    hrs, totals = [], []
    for part in state.split(active):
        ws, noise = state.inputs(part)
        with torch.inference_mode():
            img, feat = state.G.synthesis_with_features(ws, noise, side)
            hr = (img + 1) / 2
            del img
            lr_true = state.degrade_joined(part, hr)  # one size: coarse_applies checked it
            total = state.loss(part, lr_true, ws)
            offset = lr_true - head.predict(feat)
        hrs.append(hr.clone())  # plain tensors from here on
        totals.append(total.clone())
        delta[part.to(state.dev)] = offset.clone()
    hr = torch.cat(hrs)
    return hr, state.observe(step, active, hr, torch.cat(totals).cpu())


def run_coarse_phase(state: SearchState) -> int:
    """Run the coarse steps of ``state`` (in place); returns the first step the full loop should run."""
    settings, G = state.settings, state.G
    lr_side = int(state.observations[0].target.shape[-1])
    side = choose_side(G, lr_side, settings.coarse_side)
    count = coarse_step_count(settings.steps, settings.coarse_steps)
    if count == 0:
        return 0
    head = cached_head(G, side, lr_side, gaussian_fit=state.gaussian_fit).to(state.dev)
    delta = torch.zeros((state.n, 3, lr_side, lr_side), device=state.dev)
    previous = torch.full((state.n,), float("inf"))
    for step in range(count):
        if state.done.all():
            return step
        active = state.begin_step(step)
        hr = None
        if step % settings.refresh_every == 0:
            hr, now = _refresh(state, head, side, step, active, delta)
            # the proxy no longer pays once the true L2 stops falling: hand over to the full network
            stalled = bool((now >= previous[active]).float().mean() > 0.5)
            previous[active] = now
            still = ~state.done[active]
            if stalled or not bool(still.any()):
                state.report(step, active, hr)
                return step + 1
            active, hr = active[still], hr[still.to(state.dev)]
        ws, noise = state.inputs(active)
        lr_proxy = head.predict(G.synthesis_features(ws, noise, side)) + delta[active.to(state.dev)]
        total = state.loss(active, lr_proxy, ws)
        # a refresh step keeps the true loss in the history
        state.record_proxy(step, active, None if hr is not None else total.detach().cpu())
        state.update(step, total)
        state.report(step, active, hr)
    return count

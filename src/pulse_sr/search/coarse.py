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
stopped paying) the remaining steps are ordinary full steps of the original loop. Nothing is returned that did not come out of the full network.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from pulse_sr.search.heads import CoarseHead, cached_head
from pulse_sr.search.losses import evaluate_loss

if TYPE_CHECKING:
    from pulse_sr.search.pulse import Search

#: share of the step budget spent in the coarse phase when ``coarse_steps == -1``
AUTO_COARSE_SHARE = 0.8
#: the auto side is at least this (the head reads too little from 16x16 features)
MIN_AUTO_SIDE = 32


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
def _refresh(search: "Search", head: CoarseHead, side: int, step: int, active: Tensor, delta: Tensor) -> Tensor:
    """True forward at the current latents: eps check and best state, new ``delta``. Returns the images."""
    hrs, totals = [], []
    for part in active.split(search.settings.max_batch or active.numel()):
        idx = part.to(search.dev)
        ws = search.to_ws(search.latent[idx])
        with torch.inference_mode():
            img, feat = search.G.synthesis_with_features(ws, [t[idx] for t in search.noise], side)
            hr = (img + 1) / 2
            del img
            lr_true = search.downsample(hr)
            total, _ = evaluate_loss(search.loss_spec, lr_true, search.target, ws, search.eps)
            offset = lr_true - head.predict(feat)
        hrs.append(hr.clone())  # plain tensors from here on
        totals.append(total.clone())
        delta[idx] = offset.clone()
    hr = torch.cat(hrs)
    search.full_steps[active] += 1
    search.observe(step, active, hr, torch.cat(totals).cpu())
    return hr


def run_coarse_phase(search: "Search") -> int:
    """Run the coarse steps of ``search`` (in place); returns the first step the full loop should run."""
    settings, G = search.settings, search.G
    lr_side = int(search.target.shape[-1])
    side = choose_side(G, lr_side, settings.coarse_side)
    count = coarse_step_count(settings.steps, settings.coarse_steps)
    if count == 0:
        return 0
    head = cached_head(G, side, lr_side, gaussian_fit=search.gaussian_fit).to(search.dev)
    delta = torch.zeros((search.n, 3, lr_side, lr_side), device=search.dev)
    previous = torch.full((search.n,), float("inf"))
    for step in range(count):
        if search.done.all():
            return step
        active = search.begin_step(step)
        hr = None
        if step % settings.refresh_every == 0:
            hr = _refresh(search, head, side, step, active, delta)
            now = search.l2_hist[step, active]
            # the proxy no longer pays once the true L2 stops falling: hand over to the full network
            stalled = bool((now >= previous[active]).float().mean() > 0.5)
            previous[active] = now
            still = ~search.done[active]
            if stalled and bool(still.any()):
                search.report(step, active, hr)
                return step + 1
            if not bool(still.any()):
                search.report(step, active, hr)
                return step + 1
            active, hr = active[still], hr[still.to(search.dev)]
        idx = active.to(search.dev)
        ws = search.to_ws(search.latent[idx])
        feat = G.synthesis_features(ws, [t[idx] for t in search.noise], side)
        lr_proxy = head.predict(feat) + delta[idx]
        total, _ = evaluate_loss(search.loss_spec, lr_proxy, search.target, ws, search.eps)
        if hr is None:  # a refresh step keeps the true loss in the history
            search.loss_hist[step, active] = total.detach().cpu()
        search.steps_run[active] = step + 1
        search.update(step, total)
        search.report(step, active, hr)
    return count

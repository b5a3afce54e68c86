"""The state of one batched PULSE search and its bookkeeping, apart from the phases that step it.

A :class:`SearchState` holds the candidates: the search variables (latents on their sphere,
trainable noise maps), the optimiser, each candidate's :class:`~pulse_sr.search.observations.Observation`
(its own target, operator, threshold and mask), its best state so far, histories and early stop,
and it builds the :class:`~pulse_sr.search.settings.SearchResult`. A phase (the full loop in
:mod:`pulse_sr.search.pulse`, the coarse proxy in :mod:`pulse_sr.search.coarse`) only supplies
its forward and its (proxy) loss, through this interface:

- ``begin_step(step) -> active``: set the step's learning rate; which candidates still run;
- ``split(active)`` and ``inputs(part)``: the active candidates in chunks of ``max_batch``, and a
  chunk's synthesis inputs ``(ws, noise)``;
- ``degrade(part, hr)`` and ``loss(part, lr, ws)``: each candidate's operator and total loss;
- ``observe(step, part, hr, total)``: record *true* images (L2, best state, early stop);
  ``record_proxy(step, part, total)`` for a step that only saw a proxy;
- ``update(step, total)`` / ``apply(grads)``: the optimiser step; ``report``: the progress callback.
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pulse_sr.generators.base import FaceGenerator
from pulse_sr.search.adam import Adam
from pulse_sr.search.compiled import synthesis_for
from pulse_sr.search.latents import best_of_pool, initial_state
from pulse_sr.search.losses import evaluate_loss, parse_loss
from pulse_sr.search.observations import Observation, group_rows, join_rows, per_row, take
from pulse_sr.search.schedules import lr_multiplier
from pulse_sr.search.settings import OPTIMIZERS, SearchResult, SearchSettings, StepInfo
from pulse_sr.search.sphere import latent_dims, noise_dims, project_to_sphere_, sphere_norm

Callback = Callable[[StepInfo], None]


def make_optimizer(name: str, params: list[Tensor], lr: float) -> "torch.optim.Optimizer | Adam":
    """PULSE's optimizers: adam, sgd, sgdm (momentum 0.9), adamax. Adam is :mod:`pulse_sr.search.adam`'s
    (bit for bit ``torch.optim.Adam``, without importing ``torch._dynamo``: seconds of start-up)."""
    if name == "adam":
        return Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "sgdm":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adamax":
        return torch.optim.Adamax(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def working_copy(generator: FaceGenerator, device: torch.device) -> FaceGenerator:
    """The generator itself when it can be used as is, else an eval-mode copy.

    Never changes the caller's module: no train/eval switch, no device move,
    no gradients accumulated into its parameters (we differentiate with
    ``torch.autograd.grad`` with respect to the search variables only).
    """
    current = generator._device()
    if generator.training or current != device:
        generator = copy.deepcopy(generator).eval().to(device)
    return generator


class SearchState:
    """The candidates of one batched search (see the module docstring for what phases use).

    ``observations``: one per candidate (``n = len(observations)``); candidate k starts from seed
    ``seed + k``. ``G`` is the generator the search runs (the caller's, or an eval-mode copy).
    """

    def __init__(self, G: FaceGenerator, observations: Sequence[Observation], *, seed: int,
                 settings: SearchSettings, device: torch.device, gaussian_fit: tuple[Tensor, Tensor] | None,
                 callback: Callback | None = None, callback_images: bool = False) -> None:
        n = len(observations)
        if n < 1:
            raise ValueError("a search needs at least one candidate")
        self.G, self.settings, self.n, self.dev = G, settings, n, device
        self.observations, self.seeds = list(observations), [seed + k for k in range(n)]
        self.callback, self.callback_images = callback, callback_images
        #: what full steps run: ``G.synthesis`` or its compiled version (search/compiled.py)
        self.synthesis = synthesis_for(G, settings.compile == "on")
        self.loss_spec = parse_loss(settings.loss)
        self.schedule = lr_multiplier(settings.schedule)
        #: per candidate: the match threshold (float32, as the L2 it is compared with)
        self.thresholds = torch.tensor([o.threshold for o in self.observations], dtype=torch.float32)
        self.gaussian_fit = None if gaussian_fit is None else tuple(
            t.detach().to(device, torch.float32) for t in gaussian_fit)
        self._init_variables(seed)
        self._init_bookkeeping(settings.steps)

    def _init_variables(self, seed: int) -> None:
        """Seeded starts (best of the start pool), the variables, their spheres and optimiser."""
        G, settings = self.G, self.settings
        start = initial_state(G, settings, n=self.n, seed=seed, device=self.dev, gaussian_fit=self.gaussian_fit)
        if settings.start_pool > 1:
            start.latent = best_of_pool(G, start, settings, seed=seed, score=self._pool_score)
        self.latent = start.latent.requires_grad_(True)
        self.noise = start.noise
        self.trainable = [t.requires_grad_(True) for t, flag in zip(self.noise, start.trainable) if flag]
        self.variables = [self.latent, *self.trainable]
        with torch.no_grad():
            self.radii = [sphere_norm(self.latent, latent_dims(self.latent))] + [
                sphere_norm(t, noise_dims(t)) for t in self.trainable]
        self.optimizer = make_optimizer(settings.optimizer, self.variables, settings.lr)

    def _init_bookkeeping(self, steps: int) -> None:
        """Per candidate: the best state so far (see :func:`better`), histories, early stop."""
        n, R = self.n, self.G.resolution
        self.best_hr = torch.zeros((n, 3, R, R), device=self.dev)
        self.best_latent = self.latent.detach().clone()
        self.best_noise = [t.detach().clone() for t in self.noise]
        self.best_l2 = torch.full((n,), float("inf"))
        self.best_total = torch.full((n,), float("inf"))
        self.best_step = torch.zeros(n, dtype=torch.long)
        self.steps_run = torch.zeros(n, dtype=torch.long)
        self.full_steps = torch.zeros(n, dtype=torch.long)
        self.finished_at = torch.zeros(n)
        self.done = torch.zeros(n, dtype=torch.bool)
        self.loss_hist = torch.full((steps, n), float("nan"))
        self.l2_hist = torch.full((steps, n), float("nan"))
        self.start_time = time.perf_counter()
        self.last_step = 0

    # -- forward pieces a phase uses ---------------------------------------------------------
    def to_ws(self, latent: Tensor) -> Tensor:
        """Search latent ``[B, L, w_dim]`` -> synthesis input ``[B, num_ws, w_dim]`` (tiled, mapped)."""
        if self.settings.tile_latent:
            latent = latent.expand(-1, self.G.num_ws, -1)
        if self.gaussian_fit is None:
            return latent
        mean, std = self.gaussian_fit
        # the original's LeakyReLU(0.2): undoes the fit's LeakyReLU(5) back into W
        return F.leaky_relu(latent * std + mean, negative_slope=0.2)

    def split(self, active: Tensor) -> tuple[Tensor, ...]:
        """``active`` (CPU long) in chunks of at most ``settings.max_batch`` (one chunk when 0)."""
        return active.split(self.settings.max_batch or max(active.numel(), 1))

    def inputs(self, part: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Synthesis inputs of candidates ``part``: ``ws [B, num_ws, w_dim]``, noise ``[B, 1, H, W]``s."""
        idx = part.to(self.dev)
        return self.to_ws(self.latent[idx]), [t[idx] for t in self.noise]

    def degrade(self, part: Tensor, hr: Tensor) -> list[Tensor]:
        """Each candidate's operator on its image ``hr [B, 3, R, R]``: one ``[b, C, h, w]`` per group
        of candidates sharing an observation (see :func:`~pulse_sr.search.observations.group_rows`)."""
        return [obs.operator(take(hr, pos)) for pos, obs in group_rows(self.observations, part, self.dev)]

    def degrade_joined(self, part: Tensor, hr: Tensor) -> Tensor:
        """:meth:`degrade` as one ``[B, C, h, w]`` tensor, rows in ``part``'s order (every candidate's
        observation of one size; not differentiable across groups of several inputs)."""
        groups = group_rows(self.observations, part, self.dev)
        return join_rows(groups, part.numel(), self.degrade(part, hr))

    def loss(self, part: Tensor, lr: Tensor | list[Tensor], ws: Tensor) -> Tensor:
        """Total loss ``[B]`` of candidates ``part`` from their observations ``lr`` (per group as
        :meth:`degrade` returns them, or one ``[B, C, h, w]`` tensor when all have one size) and ``ws``."""
        groups = group_rows(self.observations, part, self.dev)
        lrs = lr if isinstance(lr, list) else [take(lr, pos) for pos, _ in groups]
        by_obs = {id(obs): x for (_, obs), x in zip(groups, lrs)}

        def total(pos: Tensor | None, obs: Observation) -> Tensor:
            value, _ = evaluate_loss(self.loss_spec, by_obs[id(obs)], obs.target, take(ws, pos),
                                     obs.threshold, obs.mask)
            return value

        return per_row(groups, part.numel(), total)

    def true_l2(self, part: Tensor, hr: Tensor) -> Tensor:
        """L2 ``[B]`` (CPU) of the clamped images ``hr [B, 3, R, R]`` through each candidate's operator:
        what eps is checked on, and what is returned."""
        groups = group_rows(self.observations, part, self.dev)
        lrs = self.degrade(part, hr.clamp(0, 1))
        by_obs = {id(obs): x for (_, obs), x in zip(groups, lrs)}
        return per_row(groups, part.numel(), lambda pos, obs: obs.l2(by_obs[id(obs)])).cpu()

    @torch.inference_mode()
    def _start_l2(self, latent: Tensor, noise: list[Tensor], rows: Tensor | None = None) -> Tensor:
        """L2 ``[B]`` of the clamped images of latents ``[B, L, w_dim]`` with noise ``[B, 1, H, W]``s,
        row b scored against candidate ``rows[b]``'s observation (default: row b is candidate b)."""
        rows = torch.arange(latent.shape[0]) if rows is None else rows
        hr = (self.G.synthesis(self.to_ws(latent), noise) + 1) / 2
        return self.true_l2(rows, hr)

    def _pool_score(self, latent: Tensor, noise: list[Tensor], k: int) -> Tensor:
        """Start-pool score of draws ``[B, L, w_dim]`` of candidate ``k``: their L2 to its input."""
        return self._start_l2(latent, noise, torch.full((latent.shape[0],), k, dtype=torch.long))

    # -- bookkeeping ---------------------------------------------------------------------------
    def begin_step(self, step: int) -> Tensor:
        """Set the learning rate for ``step``; the active candidates' indices (CPU, long)."""
        self.last_step = step + 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.settings.lr * self.schedule(step, self.settings.steps)
        return (~self.done).nonzero().flatten()

    def is_last(self, step: int) -> bool:
        """Whether ``step`` is the budget's last (no optimiser step follows it)."""
        return step == self.settings.steps - 1

    @torch.no_grad()
    def observe(self, step: int, active: Tensor, hr: Tensor, total_cpu: Tensor) -> Tensor:
        """Record the true images ``hr [A, 3, R, R]`` (unclamped, of the full network) of candidates
        ``active`` with their total loss ``[A]``: L2, best state, early stop. Returns the L2 ``[A]``."""
        l2 = self.true_l2(active, hr)
        self.full_steps[active] += 1
        self.loss_hist[step, active] = total_cpu
        self.l2_hist[step, active] = l2
        self.steps_run[active] = step + 1
        thresholds = self.thresholds[active]
        improved = better(l2, total_cpu, self.best_l2[active], self.best_total[active], thresholds)
        if improved.any():
            rows = active[improved]
            rows_dev = rows.to(self.dev)
            self.best_hr[rows_dev] = hr[improved.nonzero().flatten().to(self.dev)]
            self.best_latent[rows_dev] = self.latent.detach()[rows_dev]
            for b, t in zip(self.best_noise, self.noise):
                b[rows_dev] = t.detach()[rows_dev]
            self.best_l2[rows] = l2[improved]
            self.best_total[rows] = total_cpu[improved]
            self.best_step[rows] = step + 1
        now_done = l2 <= thresholds
        if not self.settings.run_all_steps and now_done.any():
            self.done[active[now_done]] = True
            self.finished_at[active[now_done]] = time.perf_counter() - self.start_time
        return l2

    def record_proxy(self, step: int, active: Tensor, total_cpu: Tensor | None) -> None:
        """A step that saw only a proxy of the images: its loss ``[A]`` (None: keep what ``observe``
        recorded this step) and the step count; the true L2 stays unmeasured (nan)."""
        if total_cpu is not None:
            self.loss_hist[step, active] = total_cpu
        self.steps_run[active] = step + 1

    def update(self, step: int, total: Tensor) -> None:
        """Gradient of the summed per-candidate loss, optimiser step, projection back to the spheres."""
        if self.done.all() or self.is_last(step):
            return
        grads = torch.autograd.grad(total.sum(), self.variables, allow_unused=True)
        self.apply(grads)

    def apply(self, grads: "list[Tensor | None] | tuple[Tensor | None, ...]") -> None:
        """Optimiser step with these gradients of the variables, then back onto the spheres."""
        for v, g in zip(self.variables, grads):
            v.grad = torch.zeros_like(v) if g is None else g
        self.optimizer.step()
        with torch.no_grad():
            project_to_sphere_(self.latent, self.radii[0], latent_dims(self.latent))
            for t, r in zip(self.trainable, self.radii[1:]):
                project_to_sphere_(t, r, noise_dims(t))

    def report(self, step: int, active: Tensor, hr: Tensor | None) -> None:
        """Call the progress callback (``hr``: the active candidates' current images, if known)."""
        if self.callback is None:
            return
        images = None
        if self.callback_images:
            with torch.no_grad():
                images = self.best_hr.clone()
                if hr is not None:
                    images[active.to(self.dev)] = hr
                images = images.clamp(0, 1).cpu()
        self.callback(StepInfo(
            step=step + 1,
            total_steps=self.settings.steps,
            l2=self.l2_hist[step].clone(),
            best_l2=self.best_l2.clone(),
            converged=self.best_l2 <= self.thresholds,
            active=~self.done,
            hr=images,
        ))

    def result(self, rows: Tensor | None = None) -> SearchResult:
        """The result of candidates ``rows`` (default: all), which must share one observation."""
        rows = torch.arange(self.n) if rows is None else rows
        obs = self.observations[int(rows[0])]
        if any(self.observations[i] is not obs for i in rows.tolist()):
            raise ValueError("these candidates match different inputs: take one result per input")
        elapsed = time.perf_counter() - self.start_time
        finished_at = self.finished_at[rows].clone()
        finished_at[~self.done[rows]] = elapsed
        idx = rows.to(self.dev)
        with torch.no_grad():
            hr_out = self.best_hr[idx].clamp(0, 1)
            lr_out = obs.operator(hr_out)
            final_l2 = obs.l2(lr_out).cpu()
            ws_out = self.to_ws(self.best_latent[idx])
        return SearchResult(
            target=obs.target[0].cpu(),
            hr=hr_out.cpu(),
            lr=lr_out.cpu(),
            latents=self.best_latent[idx].cpu(),
            ws=ws_out.cpu(),
            noise=[t[idx].cpu() for t in self.best_noise],
            l2=final_l2,
            converged=final_l2 <= self.thresholds[rows],
            steps=self.steps_run[rows].clone(),
            best_step=self.best_step[rows].clone(),
            seconds=finished_at,
            seeds=[self.seeds[i] for i in rows.tolist()],
            loss_history=self.loss_hist[:self.last_step, rows],
            l2_history=self.l2_hist[:self.last_step, rows],
            eps=obs.threshold,
            settings=self.settings,
            full_steps=self.full_steps[rows].clone(),
        )


def better(l2: Tensor, total: Tensor, best_l2: Tensor, best_total: Tensor, threshold: Tensor | float) -> Tensor:
    """Which new states beat the stored best (all ``[A]``; ``threshold`` per candidate or one).

    Within the threshold beats outside it; among states within it the lower total loss
    wins (the most plausible latent that still matches); outside it the lower
    L2 wins (the closest match to the input).
    """
    new_in, old_in = l2 <= threshold, best_l2 <= threshold
    return (new_in & ~old_in) | (new_in & old_in & (total < best_total)) | (~new_in & ~old_in & (l2 < best_l2))

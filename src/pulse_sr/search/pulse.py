"""The PULSE search: find latents whose generated face downscales to the input.

:func:`pulse_search` is a pure function in the spirit of NVIDIA's ``project()``:
keyword-only options, a :class:`SearchResult` back, progress through a
callback, no file output, and the caller's generator is never modified.

Faithful to the original loop (Menon et al., CVPR 2020) by default, with its
bugs fixed: seed 0 is honoured; candidate k starts from seed + k; candidates
run as one batch with independent losses, eps checks and early stops; each
candidate returns its best image and the downscale *of that image*; candidates
that miss eps are returned too, marked not converged. Latents map into W with
the original's ``LeakyReLU(0.2)`` (the inverse of the fit's ``LeakyReLU(5)``).

Options beside the faithful loop (``SearchSettings``): ``mode="fast"``
(coarse-to-fine, :mod:`pulse_sr.search.coarse`), ``lean_memory`` (same numbers,
fewer page faults, :mod:`pulse_sr.search.lean`), ``max_batch`` (full steps in
chunks of candidates: same gradients, less memory), ``compile`` (full steps through
``torch.compile``, :mod:`pulse_sr.search.compiled`) and ``start="w_avg"``.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from pulse_sr.degradations.bicubic import BicubicDownsample, valid_input_sizes
from pulse_sr.errors import SizeError
from pulse_sr.generators.base import FaceGenerator
from pulse_sr.search.compiled import synthesis_for
from pulse_sr.search.latents import best_of_pool, initial_state
from pulse_sr.search.losses import evaluate_loss, l2_per_image, parse_loss
from pulse_sr.search.schedules import lr_multiplier
from pulse_sr.search.settings import (
    COMPILE,
    FAST_PRESETS,
    MODES,
    NOISE_TYPES,
    OPTIMIZERS,
    STARTS,
    SearchResult,
    SearchSettings,
    StepInfo,
)
from pulse_sr.search.sphere import latent_dims, noise_dims, project_to_sphere_, sphere_norm

Callback = Callable[[StepInfo], None]
#: with ``max_batch=0`` (auto), full steps run one candidate at a time from this resolution on:
#: the same gradients, a quarter of the peak memory at n=4, and faster on a CPU (measured at 1024);
#: ``compile="auto"`` compiles the full synthesis from this resolution on
CHUNK_MIN_RESOLUTION = 512


def make_optimizer(name: str, params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    """PULSE's optimizers: adam, sgd, sgdm (momentum 0.9), adamax."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "sgdm":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adamax":
        return torch.optim.Adamax(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def validate_settings(settings: SearchSettings) -> None:
    """Raise ValueError with a clear message for impossible settings."""
    if not isinstance(settings.steps, int) or settings.steps < 1:
        raise ValueError(f"steps must be a positive integer, got {settings.steps!r}")
    if not settings.eps > 0:
        raise ValueError(f"eps must be positive, got {settings.eps!r}")
    if not settings.lr > 0:
        raise ValueError(f"lr must be positive, got {settings.lr!r}")
    if settings.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {settings.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    if settings.noise not in NOISE_TYPES:
        raise ValueError(f"unknown noise type {settings.noise!r}; known: {', '.join(NOISE_TYPES)}")
    if settings.num_trainable_noise < 0:
        raise ValueError("num_trainable_noise must be >= 0")
    if settings.mode not in MODES:
        raise ValueError(f"unknown mode {settings.mode!r}; known: {', '.join(MODES)}")
    if settings.start not in STARTS:
        raise ValueError(f"unknown start {settings.start!r}; known: {', '.join(STARTS)}")
    if not isinstance(settings.coarse_side, int) or settings.coarse_side < 0:
        raise ValueError(f"coarse_side must be 0 (auto) or a block side, got {settings.coarse_side!r}")
    if not isinstance(settings.coarse_steps, int) or settings.coarse_steps < -1:
        raise ValueError(f"coarse_steps must be -1 (auto) or >= 0, got {settings.coarse_steps!r}")
    if not isinstance(settings.max_batch, int) or settings.max_batch < 0:
        raise ValueError(f"max_batch must be 0 (all candidates at once) or positive, got {settings.max_batch!r}")
    if not isinstance(settings.start_pool, int) or settings.start_pool < 1:
        raise ValueError(f"start_pool must be a positive integer, got {settings.start_pool!r}")
    if settings.compile not in COMPILE:
        raise ValueError(f"compile must be one of {', '.join(COMPILE)}, got {settings.compile!r}")
    if not isinstance(settings.refresh_every, int) or settings.refresh_every < 1:
        raise ValueError(f"refresh_every must be a positive integer, got {settings.refresh_every!r}")
    lr_multiplier(settings.schedule)
    parse_loss(settings.loss)


def prepare_target(target: Tensor, resolution: int) -> tuple[Tensor, int]:
    """``target [3, h, w]`` or ``[1, 3, h, w]`` in [0, 1] -> (``[1, 3, h, w]`` float32, factor)."""
    if target.ndim == 3:
        target = target[None]
    if target.ndim != 4 or target.shape[0] != 1 or target.shape[1] != 3:
        raise SizeError(f"target must be [3, h, w] or [1, 3, h, w] RGB, got {list(target.shape)}")
    h, w = target.shape[-2:]
    if h != w:
        raise SizeError(f"target is {w}x{h}; PULSE needs a square input")
    if resolution % h or resolution // h < 2:
        sizes = valid_input_sizes(resolution)
        raise SizeError(
            f"target is {h}x{h}; a {resolution}x{resolution} generator takes "
            f"{', '.join(map(str, sizes))} pixel squares"
        )
    return target.float(), resolution // h


def _working_copy(generator: FaceGenerator, device: torch.device) -> FaceGenerator:
    """The generator itself when it can be used as is, else an eval-mode copy.

    Never changes the caller's module: no train/eval switch, no device move,
    no gradients accumulated into its parameters (we differentiate with
    ``torch.autograd.grad`` with respect to the search variables only).
    """
    current = generator._device()
    if generator.training or current != device:
        generator = copy.deepcopy(generator).eval().to(device)
    return generator


def pulse_search(
    generator: FaceGenerator,
    target: Tensor,
    *,
    n: int = 1,
    seed: int = 0,
    settings: SearchSettings | None = None,
    device: str | torch.device | None = None,
    gaussian_fit: tuple[Tensor, Tensor] | None = None,
    callback: Callback | None = None,
    callback_images: bool = False,
    **overrides: object,
) -> SearchResult:
    """Search ``n`` faces whose bicubic downscale matches ``target``.

    target: ``[3, h, w]`` in [0, 1] with ``generator.resolution`` an integer
    multiple (>= 2) of ``h``. ``settings`` (or keyword ``overrides`` of its fields)
    default to the original PULSE's. ``gaussian_fit``: ``(mean, std)`` ``[w_dim]``
    to map sphere latents into W (computed and cached per weights file when
    omitted and the generator has a mapping network).

    ``mode="fast"`` runs most steps through a truncated synthesis (see
    :mod:`pulse_sr.search.coarse`), or its backend's preset (``FAST_PRESETS``);
    ``mode="auto"`` is fast where a preset exists. Every returned face is still the
    true network's output and eps is checked on it. ``result.settings`` holds the
    settings as run (see :func:`resolve_settings`).
    """
    settings = dataclasses.replace(settings or SearchSettings(), **overrides)  # type: ignore[arg-type]
    validate_settings(settings)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    settings = resolve_settings(settings, generator)
    if settings.lean_memory or settings.mode == "fast":
        from pulse_sr.search.lean import keep_freed_memory

        keep_freed_memory()
    search = Search(generator, target, n=n, seed=seed, settings=settings, device=device,
                    gaussian_fit=gaussian_fit, callback=callback, callback_images=callback_images)
    if settings.mode == "fast" and supports_coarse(search.G, search.target.shape[-1]):
        from pulse_sr.search.coarse import run_coarse_phase

        start = run_coarse_phase(search)
    else:
        start = 0
    for step in range(start, settings.steps):
        if search.done.all():
            break
        search.full_step(step)
    return search.result()


def resolve_settings(settings: SearchSettings, generator: FaceGenerator) -> SearchSettings:
    """The settings a search of ``generator`` actually runs, every "auto" decided.

    ``mode="auto"``: fast for backends with a preset (``FAST_PRESETS``), else faithful; fast mode
    takes its backend's preset for fields still at PULSE's defaults. ``max_batch=0`` and
    ``compile="auto"``: chunked and compiled full steps from ``CHUNK_MIN_RESOLUTION`` on.
    """
    replace = dataclasses.replace
    big = generator.resolution >= CHUNK_MIN_RESOLUTION
    preset = FAST_PRESETS.get(generator.backend, {})
    if settings.mode == "auto":
        settings = replace(settings, mode="fast" if preset else "faithful")
    if settings.mode == "fast" and preset:
        pulse = SearchSettings()
        settings = replace(settings, **{k: v for k, v in preset.items()  # type: ignore[arg-type]
                                        if getattr(settings, k) == getattr(pulse, k)})
    if settings.max_batch == 0 and big:
        settings = replace(settings, max_batch=1)
    if settings.compile == "auto":
        settings = replace(settings, compile="on" if big else "off")
    return settings


def supports_coarse(G: FaceGenerator, lr_side: int) -> bool:
    """Whether the generator offers truncated synthesis with a side between the input's and its own."""
    sides = getattr(G, "feature_sides", None)
    if sides is None or not hasattr(G, "synthesis_with_features"):
        return False
    return any(lr_side <= s < G.resolution for s in sides())


class Search:
    """One batched search: the variables, their optimiser and each candidate's best state.

    ``full_step`` is one step of the original loop for the still-active candidates;
    other phases (coarse.py) use ``observe`` and ``update`` to share the bookkeeping.
    """

    def __init__(self, generator: FaceGenerator, target: Tensor, *, n: int, seed: int, settings: SearchSettings,
                 device: str | torch.device | None, gaussian_fit: tuple[Tensor, Tensor] | None,
                 callback: Callback | None, callback_images: bool) -> None:
        self.settings, self.n, self.seed = settings, n, seed
        self.callback, self.callback_images = callback, callback_images
        dev = self.dev = torch.device(device) if device is not None else generator._device()
        G = self.G = _working_copy(generator, dev)
        #: what full steps run: ``G.synthesis`` or its compiled version (search/compiled.py)
        self.synthesis = synthesis_for(G, settings.compile == "on")
        self.target, factor = prepare_target(target.detach().to(dev), G.resolution)
        self.downsample = BicubicDownsample(factor).to(dev)
        self.loss_spec = parse_loss(settings.loss)
        self.schedule = lr_multiplier(settings.schedule)
        steps, self.eps = settings.steps, settings.eps

        self.gaussian_fit: tuple[Tensor, Tensor] | None = None
        if G.has_mapping:
            if gaussian_fit is None:
                from pulse_sr.search.gaussian_fit import cached_gaussian_fit

                gaussian_fit = cached_gaussian_fit(G)
            self.gaussian_fit = tuple(t.detach().to(dev, torch.float32) for t in gaussian_fit)  # type: ignore[assignment]

        start = initial_state(G, settings, n=n, seed=seed, device=dev, gaussian_fit=self.gaussian_fit)
        if settings.start_pool > 1:
            start.latent = best_of_pool(G, start, settings, seed=seed, score=self._start_l2)
        self.latent = start.latent.requires_grad_(True)
        self.noise = start.noise
        self.trainable = [t.requires_grad_(True) for t, flag in zip(self.noise, start.trainable) if flag]
        self.variables = [self.latent, *self.trainable]
        with torch.no_grad():
            self.radii = [sphere_norm(self.latent, latent_dims(self.latent))] + [
                sphere_norm(t, noise_dims(t)) for t in self.trainable]
        self.optimizer = make_optimizer(settings.optimizer, self.variables, settings.lr)

        # Per-candidate bookkeeping: the best state so far (see _better).
        self.best_hr = torch.zeros((n, 3, G.resolution, G.resolution), device=dev)
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

    @torch.inference_mode()
    def _start_l2(self, latent: Tensor, noise: list[Tensor]) -> Tensor:
        """L2 to the input of the clamped images of latents ``[B, L, w_dim]`` with noise ``[B, 1, H, W]``s."""
        hr = ((self.G.synthesis(self.to_ws(latent), noise) + 1) / 2).clamp(0, 1)
        return l2_per_image(self.downsample(hr), self.target).cpu()

    def to_ws(self, latent: Tensor) -> Tensor:
        """Search latent ``[B, L, w_dim]`` -> synthesis input ``[B, num_ws, w_dim]`` (tiled, mapped)."""
        if self.settings.tile_latent:
            latent = latent.expand(-1, self.G.num_ws, -1)
        if self.gaussian_fit is None:
            return latent
        mean, std = self.gaussian_fit
        # the original's LeakyReLU(0.2): undoes the fit's LeakyReLU(5) back into W
        return F.leaky_relu(latent * std + mean, negative_slope=0.2)

    def begin_step(self, step: int) -> Tensor:
        """Set the learning rate for ``step``; the active candidates' indices (CPU, long)."""
        self.last_step = step + 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.settings.lr * self.schedule(step, self.settings.steps)
        return (~self.done).nonzero().flatten()

    def full_step(self, step: int) -> None:
        """One step of the original loop: full synthesis, loss, eps check, Adam, sphere projection."""
        active = self.begin_step(step)
        chunk = self.settings.max_batch
        if chunk and active.numel() > chunk:
            self._chunked_full_step(step, active, chunk)
            return
        idx = active.to(self.dev)
        ws = self.to_ws(self.latent[idx])
        hr = (self.synthesis(ws, [t[idx] for t in self.noise]) + 1) / 2
        total, _ = evaluate_loss(self.loss_spec, self.downsample(hr), self.target, ws, self.eps)
        self.full_steps[active] += 1
        self.observe(step, active, hr.detach(), total.detach().cpu())
        self.update(step, total)
        self.report(step, active, hr.detach())

    def _chunked_full_step(self, step: int, active: Tensor, chunk: int) -> None:
        """``full_step`` with forward+backward over at most ``chunk`` candidates at a time.

        Candidates' losses are independent, so each chunk's gradient is exactly its rows of the
        whole batch's gradient; peak memory is that of one chunk.
        """
        last = step == self.settings.steps - 1
        grads = [torch.zeros_like(v) for v in self.variables]
        hrs, totals = [], []
        for part in active.split(chunk):
            idx = part.to(self.dev)
            ws = self.to_ws(self.latent[idx])
            hr = (self.synthesis(ws, [t[idx] for t in self.noise]) + 1) / 2
            total, _ = evaluate_loss(self.loss_spec, self.downsample(hr), self.target, ws, self.eps)
            if not last:
                parts = torch.autograd.grad(total.sum(), self.variables, allow_unused=True)
                for acc, g in zip(grads, parts):
                    if g is not None:
                        acc += g
            hrs.append(hr.detach())
            totals.append(total.detach())
            del hr, total, ws
        hr_all = torch.cat(hrs)
        self.full_steps[active] += 1
        self.observe(step, active, hr_all, torch.cat(totals).cpu())
        if not (self.done.all() or last):
            self.apply(grads)
        self.report(step, active, hr_all)

    @torch.no_grad()
    def observe(self, step: int, active: Tensor, hr: Tensor, total_cpu: Tensor) -> None:
        """Record the true image ``hr [A, 3, R, R]`` of the active candidates: L2 (of the clamped
        image's downscale), best state, early stop."""
        # eps is checked on what is returned: the clamped image's own downscale.
        l2 = l2_per_image(self.downsample(hr.clamp(0, 1)), self.target).cpu()
        self.loss_hist[step, active] = total_cpu
        self.l2_hist[step, active] = l2
        self.steps_run[active] = step + 1
        better = _better(l2, total_cpu, self.best_l2[active], self.best_total[active], self.eps)
        if better.any():
            rows = active[better]
            rows_dev = rows.to(self.dev)
            self.best_hr[rows_dev] = hr[better.nonzero().flatten().to(self.dev)]
            self.best_latent[rows_dev] = self.latent.detach()[rows_dev]
            for b, t in zip(self.best_noise, self.noise):
                b[rows_dev] = t.detach()[rows_dev]
            self.best_l2[rows] = l2[better]
            self.best_total[rows] = total_cpu[better]
            self.best_step[rows] = step + 1
        now_done = l2 <= self.eps
        if not self.settings.run_all_steps and now_done.any():
            self.done[active[now_done]] = True
            self.finished_at[active[now_done]] = time.perf_counter() - self.start_time

    def update(self, step: int, total: Tensor) -> None:
        """Gradient of the summed per-candidate loss, optimiser step, projection back to the spheres."""
        if self.done.all() or step == self.settings.steps - 1:
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
        self.callback(
            StepInfo(
                step=step + 1,
                total_steps=self.settings.steps,
                l2=self.l2_hist[step].clone(),
                best_l2=self.best_l2.clone(),
                converged=self.best_l2 <= self.eps,
                active=~self.done,
                hr=images,
            )
        )

    def result(self) -> SearchResult:
        elapsed = time.perf_counter() - self.start_time
        finished_at = self.finished_at.clone()
        finished_at[~self.done] = elapsed
        with torch.no_grad():
            hr_out = self.best_hr.clamp(0, 1)
            lr_out = self.downsample(hr_out)
            final_l2 = l2_per_image(lr_out, self.target).cpu()
            ws_out = self.to_ws(self.best_latent)
        return SearchResult(
            target=self.target[0].cpu(),
            hr=hr_out.cpu(),
            lr=lr_out.cpu(),
            latents=self.best_latent.cpu(),
            ws=ws_out.cpu(),
            noise=[t.cpu() for t in self.best_noise],
            l2=final_l2,
            converged=final_l2 <= self.eps,
            steps=self.steps_run.clone(),
            best_step=self.best_step.clone(),
            seconds=finished_at,
            seeds=[self.seed + k for k in range(self.n)],
            loss_history=self.loss_hist[:self.last_step],
            l2_history=self.l2_hist[:self.last_step],
            eps=self.eps,
            settings=self.settings,
            full_steps=self.full_steps.clone(),
        )


def _better(l2: Tensor, total: Tensor, best_l2: Tensor, best_total: Tensor, eps: float) -> Tensor:
    """Which new states beat the stored best.

    Within eps beats outside eps; among states within eps the lower total loss
    wins (the most plausible latent that still matches); outside eps the lower
    L2 wins (the closest match to the input).
    """
    new_in, old_in = l2 <= eps, best_l2 <= eps
    return (new_in & ~old_in) | (new_in & old_in & (total < best_total)) | (~new_in & ~old_in & (l2 < best_l2))

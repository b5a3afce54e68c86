"""The PULSE search: find latents whose generated face downscales to the input.

:func:`pulse_search` is a pure function in the spirit of NVIDIA's ``project()``:
keyword-only options, a :class:`SearchResult` back, progress through a
callback, no file output, and the caller's generator is never modified.

Faithful to the original loop (Menon et al., CVPR 2020) by default, with its
bugs fixed: seed 0 is honoured; candidate k starts from seed + k; candidates
run as one batch with independent losses, eps checks and early stops; each
candidate returns its best image and the downscale *of that image*; candidates
that miss eps are returned too, marked not converged.
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
from pulse_sr.search.latents import initial_state
from pulse_sr.search.losses import evaluate_loss, l2_per_image, parse_loss
from pulse_sr.search.schedules import lr_multiplier
from pulse_sr.search.settings import (
    NOISE_TYPES,
    OPTIMIZERS,
    SearchResult,
    SearchSettings,
    StepInfo,
)
from pulse_sr.search.sphere import latent_dims, noise_dims, project_to_sphere_, sphere_norm

Callback = Callable[[StepInfo], None]


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
    """
    settings = dataclasses.replace(settings or SearchSettings(), **overrides)  # type: ignore[arg-type]
    validate_settings(settings)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    dev = torch.device(device) if device is not None else generator._device()
    G = _working_copy(generator, dev)
    target, factor = prepare_target(target.detach().to(dev), G.resolution)
    downsample = BicubicDownsample(factor).to(dev)
    loss_spec = parse_loss(settings.loss)
    schedule = lr_multiplier(settings.schedule)
    steps, eps = settings.steps, settings.eps

    if G.has_mapping:
        if gaussian_fit is None:
            from pulse_sr.search.gaussian_fit import cached_gaussian_fit

            gaussian_fit = cached_gaussian_fit(G)
        mean, std = (t.detach().to(dev, torch.float32) for t in gaussian_fit)

        def to_ws(latent: Tensor) -> Tensor:
            return F.leaky_relu(latent * std + mean, negative_slope=5.0)
    else:

        def to_ws(latent: Tensor) -> Tensor:
            return latent

    start = initial_state(G, settings, n=n, seed=seed, device=dev)
    latent = start.latent.requires_grad_(True)
    noise = start.noise
    trainable = [t.requires_grad_(True) for t, flag in zip(noise, start.trainable) if flag]
    variables = [latent, *trainable]
    with torch.no_grad():
        radii = [sphere_norm(latent, latent_dims(latent))] + [sphere_norm(t, noise_dims(t)) for t in trainable]
    optimizer = make_optimizer(settings.optimizer, variables, settings.lr)

    # Per-candidate bookkeeping: the best state so far (see _better).
    best_hr = torch.zeros((n, 3, G.resolution, G.resolution), device=dev)
    best_latent = latent.detach().clone()
    best_noise = [t.detach().clone() for t in noise]
    best_l2 = torch.full((n,), float("inf"))
    best_total = torch.full((n,), float("inf"))
    best_step = torch.zeros(n, dtype=torch.long)
    steps_run = torch.zeros(n, dtype=torch.long)
    finished_at = torch.zeros(n)
    done = torch.zeros(n, dtype=torch.bool)
    loss_hist = torch.full((steps, n), float("nan"))
    l2_hist = torch.full((steps, n), float("nan"))
    start_time = time.perf_counter()
    last_step = 0

    for step in range(steps):
        active = (~done).nonzero().flatten()
        if active.numel() == 0:
            break
        last_step = step + 1
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * schedule(step, steps)
        idx = active.to(dev)
        latent_in = latent[idx]
        if settings.tile_latent:
            latent_in = latent_in.expand(-1, G.num_ws, -1)
        ws = to_ws(latent_in)
        hr = (G.synthesis(ws, [t[idx] for t in noise]) + 1) / 2
        lr_img = downsample(hr)
        total, _ = evaluate_loss(loss_spec, lr_img, target, ws, eps)
        with torch.no_grad():
            # eps is checked on what is returned: the clamped image's own downscale.
            l2 = l2_per_image(downsample(hr.detach().clamp(0, 1)), target).cpu()
        total_cpu = total.detach().cpu()
        loss_hist[step, active] = total_cpu
        l2_hist[step, active] = l2
        steps_run[active] = step + 1

        with torch.no_grad():
            better = _better(l2, total_cpu, best_l2[active], best_total[active], eps)
            if better.any():
                rows = active[better]
                rows_dev = rows.to(dev)
                best_hr[rows_dev] = hr.detach()[better.nonzero().flatten().to(dev)]
                best_latent[rows_dev] = latent.detach()[rows_dev]
                for b, t in zip(best_noise, noise):
                    b[rows_dev] = t.detach()[rows_dev]
                best_l2[rows] = l2[better]
                best_total[rows] = total_cpu[better]
                best_step[rows] = step + 1
            now_done = l2 <= eps
            if not settings.run_all_steps and now_done.any():
                done[active[now_done]] = True
                finished_at[active[now_done]] = time.perf_counter() - start_time

        if not (done.all() or step == steps - 1):
            grads = torch.autograd.grad(total.sum(), variables, allow_unused=True)
            for v, g in zip(variables, grads):
                v.grad = torch.zeros_like(v) if g is None else g
            optimizer.step()
            with torch.no_grad():
                project_to_sphere_(latent, radii[0], latent_dims(latent))
                for t, r in zip(trainable, radii[1:]):
                    project_to_sphere_(t, r, noise_dims(t))

        if callback is not None:
            images = None
            if callback_images:
                with torch.no_grad():
                    images = best_hr.clone()
                    images[idx] = hr.detach()
                    images = images.clamp(0, 1).cpu()
            callback(
                StepInfo(
                    step=step + 1,
                    total_steps=steps,
                    l2=l2_hist[step].clone(),
                    best_l2=best_l2.clone(),
                    converged=best_l2 <= eps,
                    active=~done,
                    hr=images,
                )
            )

    elapsed = time.perf_counter() - start_time
    finished_at[~done] = elapsed
    with torch.no_grad():
        hr_out = best_hr.clamp(0, 1)
        lr_out = downsample(hr_out)
        final_l2 = l2_per_image(lr_out, target).cpu()
        latents_out = best_latent
        ws_latent = latents_out.expand(-1, G.num_ws, -1) if settings.tile_latent else latents_out
        ws_out = to_ws(ws_latent)
    return SearchResult(
        target=target[0].cpu(),
        hr=hr_out.cpu(),
        lr=lr_out.cpu(),
        latents=latents_out.cpu(),
        ws=ws_out.cpu(),
        noise=[t.cpu() for t in best_noise],
        l2=final_l2,
        converged=final_l2 <= eps,
        steps=steps_run,
        best_step=best_step,
        seconds=finished_at,
        seeds=[seed + k for k in range(n)],
        loss_history=loss_hist[:last_step],
        l2_history=l2_hist[:last_step],
        eps=eps,
        settings=settings,
    )


def _better(l2: Tensor, total: Tensor, best_l2: Tensor, best_total: Tensor, eps: float) -> Tensor:
    """Which new states beat the stored best.

    Within eps beats outside eps; among states within eps the lower total loss
    wins (the most plausible latent that still matches); outside eps the lower
    L2 wins (the closest match to the input).
    """
    new_in, old_in = l2 <= eps, best_l2 <= eps
    return (new_in & ~old_in) | (new_in & old_in & (total < best_total)) | (~new_in & ~old_in & (l2 < best_l2))

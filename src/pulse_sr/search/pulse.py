"""The PULSE search: find latents whose generated face, degraded, matches the input.

:func:`pulse_search` in the spirit of NVIDIA's ``project()``: keyword-only options, a
:class:`SearchResult` back, progress through a callback; the caller's generator is never
modified. It is not free of side effects, though (see :func:`pulse_search`): it may write
caches and set process-wide options.

Faithful to the original loop (Menon et al., CVPR 2020) by default, with its
bugs fixed: seed 0 is honoured; candidate k starts from seed + k; candidates
run as one batch with independent losses, eps checks and early stops; each
candidate returns its best image and the downscale *of that image*; candidates
that miss eps are returned too, marked not converged. Latents map into W with
the original's ``LeakyReLU(0.2)`` (the inverse of the fit's ``LeakyReLU(5)``).

This module holds the full phase (every step through the whole network); the search's state
and bookkeeping live in :mod:`pulse_sr.search.state`, each candidate's input, operator, threshold
and mask in :mod:`pulse_sr.search.observations`, and the coarse phase in
:mod:`pulse_sr.search.coarse`.

Options beside the faithful loop (``SearchSettings``): ``mode="fast"``
(coarse-to-fine, :mod:`pulse_sr.search.coarse`), ``lean_memory`` (same numbers,
fewer page faults, :mod:`pulse_sr.search.lean`), ``max_batch`` (full steps in
chunks of candidates: same gradients, less memory), ``compile`` (full steps through
``torch.compile``, :mod:`pulse_sr.search.compiled`) and ``start="w_avg"``.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from pulse_sr.degradations.base import Degradation
from pulse_sr.errors import SettingsError
from pulse_sr.generators.base import FaceGenerator
from pulse_sr.search.coarse import coarse_applies, run_coarse_phase, supports_coarse
from pulse_sr.search.losses import parse_loss
from pulse_sr.search.observations import make_observation, match_threshold, prepare_target
from pulse_sr.search.ranged import extend_result
from pulse_sr.search.schedules import lr_multiplier
from pulse_sr.search.settings import (
    COMPILE,
    FAST_PRESETS,
    MODES,
    NOISE_TYPES,
    OPTIMIZERS,
    RANGES,
    STARTS,
    SearchResult,
    SearchSettings,
)
from pulse_sr.search.sphere import latent_dims, sphere_norm
from pulse_sr.search.state import Callback, SearchState, make_optimizer, working_copy

__all__ = [
    "CHUNK_MIN_RESOLUTION", "Callback", "SearchState", "full_step", "make_optimizer", "make_state",
    "prepare_target", "pulse_search", "resolve_settings", "supports_coarse", "validate_settings",
]

#: with ``max_batch=0`` (auto), full steps run one candidate at a time from this resolution on:
#: the same gradients, a quarter of the peak memory at n=4, and faster on a CPU (measured at 1024);
#: ``compile="auto"`` compiles the full synthesis from this resolution on
CHUNK_MIN_RESOLUTION = 512


def _bad(field: str, settings: SearchSettings, message: str) -> SettingsError:
    """The structured error for an impossible value of ``field``."""
    value = getattr(settings, field)
    safe = list(value) if isinstance(value, tuple) else value
    if not isinstance(safe, (str, int, float, bool, list, type(None))):
        safe = repr(value)
    return SettingsError(message, field=field, value=safe, problem=message)


def validate_settings(settings: SearchSettings) -> None:
    """Raise :class:`~pulse_sr.errors.SettingsError` (a ValueError; ``data``: ``field``, ``value``,
    ``problem``) with a clear message for impossible settings."""
    if not isinstance(settings.steps, int) or settings.steps < 1:
        raise _bad("steps", settings, f"steps must be a positive integer, got {settings.steps!r}")
    if not settings.eps > 0:
        raise _bad("eps", settings, f"eps must be positive, got {settings.eps!r}")
    if not settings.lr > 0:
        raise _bad("lr", settings, f"lr must be positive, got {settings.lr!r}")
    if settings.optimizer not in OPTIMIZERS:
        raise _bad("optimizer", settings,
                   f"unknown optimizer {settings.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    if settings.noise not in NOISE_TYPES:
        raise _bad("noise", settings,
                   f"unknown noise type {settings.noise!r}; known: {', '.join(NOISE_TYPES)}")
    if settings.num_trainable_noise < 0:
        raise _bad("num_trainable_noise", settings, "num_trainable_noise must be >= 0")
    if settings.mode not in MODES:
        raise _bad("mode", settings, f"unknown mode {settings.mode!r}; known: {', '.join(MODES)}")
    if settings.start not in STARTS:
        raise _bad("start", settings, f"unknown start {settings.start!r}; known: {', '.join(STARTS)}")
    if not isinstance(settings.coarse_side, int) or settings.coarse_side < 0:
        raise _bad("coarse_side", settings,
                   f"coarse_side must be 0 (auto) or a block side, got {settings.coarse_side!r}")
    if not isinstance(settings.coarse_steps, int) or settings.coarse_steps < -1:
        raise _bad("coarse_steps", settings,
                   f"coarse_steps must be -1 (auto) or >= 0, got {settings.coarse_steps!r}")
    if not isinstance(settings.max_batch, int) or settings.max_batch < 0:
        raise _bad("max_batch", settings,
                   f"max_batch must be 0 (all candidates at once) or positive, got {settings.max_batch!r}")
    if not isinstance(settings.start_pool, int) or settings.start_pool < 1:
        raise _bad("start_pool", settings,
                   f"start_pool must be a positive integer, got {settings.start_pool!r}")
    if settings.compile not in COMPILE:
        raise _bad("compile", settings,
                   f"compile must be one of {', '.join(COMPILE)}, got {settings.compile!r}")
    if not isinstance(settings.refresh_every, int) or settings.refresh_every < 1:
        raise _bad("refresh_every", settings,
                   f"refresh_every must be a positive integer, got {settings.refresh_every!r}")
    if settings.range not in RANGES:
        raise _bad("range", settings, f"unknown range {settings.range!r}; known: {', '.join(RANGES)}")
    if not isinstance(settings.range_layer, int) or settings.range_layer < 0:
        raise _bad("range_layer", settings, f"range_layer must be 0 (auto) or a layer, got {settings.range_layer!r}")
    if not (isinstance(settings.range_radius, (int, float)) and 0 <= settings.range_radius < float("inf")):
        raise _bad("range_radius", settings, f"range_radius must be >= 0, got {settings.range_radius!r}")
    if not isinstance(settings.range_steps, int) or settings.range_steps < 0:
        raise _bad("range_steps", settings, f"range_steps must be 0 (as steps) or positive, got {settings.range_steps!r}")
    names = {f.name for f in dataclasses.fields(SearchSettings)} - {"given"}
    if not isinstance(settings.given, tuple) or not all(g in names for g in settings.given):
        raise _bad("given", settings, f"given must be a tuple of settings field names, got {settings.given!r}")
    for field, check in (("schedule", lr_multiplier), ("loss", parse_loss)):
        try:
            check(getattr(settings, field))
        except ValueError as e:
            raise _bad(field, settings, str(e)) from None


def pulse_search(
    generator: FaceGenerator,
    target: Tensor,
    *,
    n: int = 1,
    seed: int = 0,
    settings: SearchSettings | None = None,
    device: str | torch.device | None = None,
    gaussian_fit: tuple[Tensor, Tensor] | None = None,
    operator: Degradation | None = None,
    mask: Tensor | None = None,
    threshold: float | None = None,
    noise_sigma: float | None = None,
    callback: Callback | None = None,
    callback_images: bool = False,
    **overrides: object,
) -> SearchResult:
    """Search ``n`` faces whose degraded version matches ``target``.

    target: ``[C, h, w]`` in [0, 1]. ``operator`` (a :class:`~pulse_sr.degradations.base.Degradation`,
    HR ``[n, 3, R, R]`` in [0, 1] -> ``[n, C, h, w]``): default PULSE's bicubic downscale by the
    factor the target implies (``C = 3``, ``generator.resolution`` an integer multiple >= 2 of ``h``).
    ``mask``: ``None`` (every pixel known) or ``[h, w]`` / ``[1|C, h, w]``, 1 (True) = known,
    0 = unknown: L2, the loss and the eps check are over known pixels only.
    ``threshold``: the match threshold of this input (default ``settings.eps``); or ``noise_sigma``
    (0..1 scale, the noise in the observation as matched) sets it to ``sigma^2 + eps``
    (:func:`~pulse_sr.search.observations.match_threshold`). The search stops a candidate at it,
    and a candidate within it is ``converged``.
    ``settings.range`` ``extended`` / ``auto``: after the latent search, candidates continue in the
    extended range (:mod:`pulse_sr.search.ranged`); their ``extras`` say how far they left it.
    ``settings`` (or keyword ``overrides`` of its fields) default to the original PULSE's.
    ``gaussian_fit``: ``(mean, std)`` ``[w_dim]`` to map sphere latents into W (computed when omitted
    and the generator has a mapping network).

    ``mode="fast"`` runs most steps through a truncated synthesis (see
    :mod:`pulse_sr.search.coarse`), or its backend's preset (``FAST_PRESETS``);
    ``mode="auto"`` is fast where a preset exists. Every returned face is still the
    true network's output and eps is checked on it. ``result.settings`` holds the
    settings as run (see :func:`resolve_settings`).

    Side effects beyond the result (the caller's generator is never one of them):

    - caches under pulse-sr's cache folder (``PULSE_SR_CACHE``, else the user cache dir): the
      Gaussian fit when ``gaussian_fit`` is omitted and the generator has a mapping network
      (:mod:`pulse_sr.search.gaussian_fit`), the coarse heads in fast mode
      (:mod:`pulse_sr.search.heads`), and torch.compile's kernels with ``compile="on"``, which
      also sets ``TORCHINDUCTOR_CACHE_DIR`` for the process unless it is set
      (:mod:`pulse_sr.search.compiled`);
    - with ``lean_memory`` or in fast mode, glibc's malloc is told once, for the whole process,
      to keep freed memory (:mod:`pulse_sr.search.lean`; opt out with ``PULSE_SR_NO_MALLOPT=1``).
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
    if threshold is not None and noise_sigma is not None:
        raise ValueError("give threshold or noise_sigma, not both")
    if threshold is None:
        threshold = match_threshold(settings.eps, noise_sigma or 0.0)
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold!r}")
    state = make_state(generator, target, n=n, seed=seed, settings=settings, device=device,
                       gaussian_fit=gaussian_fit, operator=operator, mask=mask, threshold=threshold,
                       callback=callback, callback_images=callback_images)
    start_note = _encoder_start(state, target, operator, mask, seed) if settings.start == "encoder" else None
    start = run_coarse_phase(state) if settings.mode == "fast" and coarse_applies(state) else 0
    for step in range(start, settings.steps):
        if state.done.all():
            break
        full_step(state, step)
    result = state.result()
    result = extend_result(state.G, result, state.observations[0], settings=settings, seed=seed, device=state.dev)
    if start_note is not None:  # report.json says per candidate where it started
        extras = [dict(e) for e in result.extras] + [{} for _ in range(n - len(result.extras))]
        result = dataclasses.replace(result, extras=[{**e, "start": start_note} for e in extras])
    return result


def _encoder_start(state: SearchState, target: Tensor, operator: Degradation | None, mask: Tensor | None,
                   seed: int) -> str:
    """``start="encoder"``: move the candidates' latents (before any step) to
    :func:`pulse_sr.search.encoder.encoder_start`'s seeded points around the encoder's prediction
    for ``target`` ``[3, h, h]`` in [0, 1]. Where no encoder applies (no encoder shipped for the
    generator, operator and factor; a grey or masked input) PULSE's start stays. Returns the note
    the report keeps: ``"encoder"``, or ``"gaussian (...why)"``."""
    from pulse_sr.search.encoder import encoder_start

    name = "bicubic" if operator is None else operator.name
    why = None
    if mask is not None:
        why = "a masked input"
    elif target.ndim != 3 or target.shape[0] != 3 or target.shape[1] != target.shape[2]:
        why = f"a {list(target.shape)} target"
    if why is None:
        start = encoder_start(state.G, target.to(state.dev, torch.float32).clamp(0, 1), operator_name=name,
                              n=state.n, seed=seed, tile=state.settings.tile_latent)
        if start is not None:
            with torch.no_grad():
                state.latent.copy_(start.to(state.latent))
                state.radii[0] = sphere_norm(state.latent, latent_dims(state.latent))
                state.best_latent = state.latent.detach().clone()
            return "encoder"
        why = f"no encoder for {state.G.name or state.G.backend}, {name}, x{state.G.resolution // target.shape[-1]}"
    return f"gaussian (PULSE's start: {why})"


def make_state(generator: FaceGenerator, target: Tensor, *, n: int, seed: int, settings: SearchSettings,
               device: str | torch.device | None = None, gaussian_fit: tuple[Tensor, Tensor] | None = None,
               operator: Degradation | None = None, mask: Tensor | None = None,
               callback: Callback | None = None, callback_images: bool = False,
               threshold: float | None = None) -> SearchState:
    """The state of a search of ``n`` candidates of one input, before any step (``settings`` as run:
    see :func:`resolve_settings`). Arguments as :func:`pulse_search`'s; ``threshold``: the input's
    match threshold (default ``settings.eps``)."""
    dev = torch.device(device) if device is not None else generator._device()
    G = working_copy(generator, dev)
    threshold = settings.eps if threshold is None else float(threshold)
    observation = make_observation(target, G.resolution, threshold=threshold, device=dev,
                                   operator=operator, mask=mask)
    if gaussian_fit is None and G.has_mapping:
        from pulse_sr.search.gaussian_fit import cached_gaussian_fit

        gaussian_fit = cached_gaussian_fit(G)
    return SearchState(G, [observation] * n, seed=seed, settings=settings, device=dev,
                       gaussian_fit=gaussian_fit if G.has_mapping else None,
                       callback=callback, callback_images=callback_images)


def resolve_settings(settings: SearchSettings, generator: FaceGenerator) -> SearchSettings:
    """The settings a search of ``generator`` actually runs, every "auto" decided.

    ``mode="auto"``: fast for backends with a preset (``FAST_PRESETS``), else faithful. Fast mode
    takes its backend's preset for the fields the caller did not give (``settings.given``) and
    that are still at PULSE's defaults. ``max_batch=0`` and ``compile="auto"``: chunked and
    compiled full steps from ``CHUNK_MIN_RESOLUTION`` on.
    """
    replace = dataclasses.replace
    big = generator.resolution >= CHUNK_MIN_RESOLUTION
    preset = FAST_PRESETS.get(generator.backend, {})
    if settings.mode == "auto":
        settings = replace(settings, mode="fast" if preset else "faithful")
    if settings.mode == "fast" and preset:
        pulse = SearchSettings()
        settings = replace(settings, **{k: v for k, v in preset.items()  # type: ignore[arg-type]
                                        if k not in settings.given and getattr(settings, k) == getattr(pulse, k)})
    if settings.max_batch == 0 and big:
        settings = replace(settings, max_batch=1)
    if settings.compile == "auto":
        settings = replace(settings, compile="on" if big else "off")
    return settings


# -- the full phase: every step through the whole network -----------------------------------------
def full_step(state: SearchState, step: int) -> None:
    """One step of the original loop for the active candidates: full synthesis, each candidate's
    operator and loss, eps check, optimiser step, sphere projection."""
    active = state.begin_step(step)
    chunk = state.settings.max_batch
    if chunk and active.numel() > chunk:
        _chunked_full_step(state, step, active)
        return
    ws, noise = state.inputs(active)
    hr = (state.synthesis(ws, noise) + 1) / 2
    total = state.loss(active, state.degrade(active, hr), ws)
    state.observe(step, active, hr.detach(), total.detach().cpu())
    state.update(step, total)
    state.report(step, active, hr.detach())


def _chunked_full_step(state: SearchState, step: int, active: Tensor) -> None:
    """``full_step`` with forward+backward over at most ``max_batch`` candidates at a time.

    Candidates' losses are independent, so each chunk's gradient is exactly its rows of the
    whole batch's gradient; peak memory is that of one chunk.
    """
    last = state.is_last(step)
    grads = [torch.zeros_like(v) for v in state.variables]
    hrs, totals = [], []
    for part in state.split(active):
        ws, noise = state.inputs(part)
        hr = (state.synthesis(ws, noise) + 1) / 2
        total = state.loss(part, state.degrade(part, hr), ws)
        if not last:
            parts = torch.autograd.grad(total.sum(), state.variables, allow_unused=True)
            for acc, g in zip(grads, parts):
                if g is not None:
                    acc += g
        hrs.append(hr.detach())
        totals.append(total.detach())
        del hr, total, ws
    hr_all = torch.cat(hrs)
    state.observe(step, active, hr_all, torch.cat(totals).cpu())
    if not (state.done.all() or last):
        state.apply(grads)
    state.report(step, active, hr_all)

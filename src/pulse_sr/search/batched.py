"""Continuous batching: the full steps of several inputs' searches through one batched synthesis.

:func:`search_many` runs a stream of inputs, each with its own target, operator, threshold and
mask, ``n`` candidates each. Every input has its own :class:`~pulse_sr.search.state.SearchState`
(made exactly as :func:`~pulse_sr.search.pulse.pulse_search` makes it: the same seeds ``seed + k``,
the same start and start pool, its own optimiser, its own step counter and so its own position in
PULSE's step-indexed learning-rate schedule). What is shared is the forward and backward of the
generator: each step, the active candidates of every input in flight go through one synthesis call
(in chunks of ``settings.max_batch`` if set), and each input's loss, eps check, best state, early
stop and optimiser step are its own. The losses are independent, so the gradient of their sum with
respect to one input's variables is that input's gradient alone; only float32 rounding differs
(a batch of another size may reorder sums inside the convolutions).

When a candidate is within its threshold it leaves the batch; when every candidate of an input is
done (or its step budget is spent) ``on_result(key, result)`` fires with what ``pulse_search`` would
have returned for that input alone, and the next inputs join as soon as their ``n`` candidates fit
in ``batch_size`` rows: the batch stays full.

Fast mode's coarse phase (:mod:`pulse_sr.search.coarse`) is per input: where it applies, an input
runs it on its own as it joins, then its full steps join the batch (as ``pulse_search`` would run
them after the coarse phase).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Iterator

import torch
from torch import Tensor

from pulse_sr.degradations.base import Degradation
from pulse_sr.errors import PulseError
from pulse_sr.generators.base import FaceGenerator
from pulse_sr.search.coarse import coarse_applies, run_coarse_phase
from pulse_sr.search.pulse import make_state, resolve_settings, validate_settings
from pulse_sr.search.settings import SearchResult, SearchSettings, StepInfo
from pulse_sr.search.state import SearchState, working_copy

#: candidate rows in flight when ``batch_size`` is 0: one DCGAN step costs 4.4 ms per candidate at
#: batch 24 against 5.6 ms at batch 4 (issue 16's measurement on a 2-core CPU)
DEFAULT_BATCH = 24

ResultFn = Callable[[Hashable, SearchResult], None]
ManyCallback = Callable[[Hashable, StepInfo], None]
ErrorFn = Callable[[Hashable, Exception], None]


@dataclass
class InputSpec:
    """One input of :func:`search_many`: ``key`` (what ``on_result`` is called with), ``target``
    ``[C, h, w]`` in [0, 1], ``operator`` (None: PULSE's bicubic at the factor the size implies),
    ``mask`` (None or ``[h, w]`` / ``[1|C, h, w]``, 1 = known) and ``threshold`` (None: ``eps``)."""

    key: Hashable
    target: Tensor
    operator: Degradation | None = None
    mask: Tensor | None = None
    threshold: float | None = None


@dataclass(eq=False)
class Flight:
    """An input in flight: its key, its search state and the next step it runs."""

    key: Hashable
    state: SearchState
    step: int = 0
    #: per variable of ``state``: this step's accumulated gradient
    grads: list[Tensor] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return bool(self.state.done.all()) or self.step >= self.state.settings.steps

    def active_count(self) -> int:
        return int((~self.state.done).sum())


def search_many(generator: FaceGenerator, inputs: Iterable[InputSpec], *, n: int = 1, seed: int = 0,
                settings: SearchSettings | None = None, batch_size: int = 0,
                device: str | torch.device | None = None, gaussian_fit: tuple[Tensor, Tensor] | None = None,
                on_result: ResultFn, callback: ManyCallback | None = None,
                on_error: ErrorFn | None = None) -> int:
    """Search ``n`` faces for each input, several inputs' candidates per batch; returns the number of
    inputs searched. ``on_result(key, SearchResult)`` fires once per input, as soon as it is done, in
    the order inputs finish (not necessarily their order). ``batch_size``: candidate rows in flight
    (0: ``DEFAULT_BATCH``, at least ``n``); an input joins when its ``n`` candidates fit. ``callback``:
    ``(key, StepInfo)`` after each step of an input. ``on_error(key, error)``: an input that cannot
    be searched (a :class:`~pulse_sr.errors.PulseError` or ``ValueError``: wrong size, bad mask) is
    reported there and skipped, the others go on; without it the error is raised. Settings as :func:`pulse_search`'s (resolved
    once for the generator); side effects as its (caches, malloc option)."""
    settings = dataclasses.replace(settings or SearchSettings())
    validate_settings(settings)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be 0 (default) or positive, got {batch_size!r}")
    capacity = max(batch_size or DEFAULT_BATCH, n)
    settings = resolve_settings(settings, generator)
    if settings.lean_memory or settings.mode == "fast":
        from pulse_sr.search.lean import keep_freed_memory

        keep_freed_memory()
    dev = torch.device(device) if device is not None else generator._device()
    G = working_copy(generator, dev)  # once: every state below shares this module
    if gaussian_fit is None and G.has_mapping:
        from pulse_sr.search.gaussian_fit import cached_gaussian_fit

        gaussian_fit = cached_gaussian_fit(G)

    shared: list = []  # the first state's synthesis (compiled or not), used by all: compiled once

    def start(spec: InputSpec) -> Flight:
        report = None if callback is None else (lambda info, key=spec.key: callback(key, info))
        state = make_state(G, spec.target, n=n, seed=seed, settings=settings, device=dev,
                           gaussian_fit=gaussian_fit, operator=spec.operator, mask=spec.mask,
                           threshold=spec.threshold, callback=report)
        if shared:
            state.synthesis = shared[0]
        else:
            shared.append(state.synthesis)
        first = run_coarse_phase(state) if settings.mode == "fast" and coarse_applies(state) else 0
        return Flight(spec.key, state, first)

    pending: Iterator[InputSpec] = iter(inputs)
    flights: list[Flight] = []
    done = [0]

    def emit_finished() -> None:
        for f in [f for f in flights if f.finished]:
            flights.remove(f)
            on_result(f.key, f.state.result())
            done[0] += 1

    exhausted = False
    while True:
        emit_finished()
        while not exhausted and (not flights or sum(f.active_count() for f in flights) + n <= capacity):
            spec = next(pending, None)
            if spec is None:
                exhausted = True
            else:
                try:
                    flights.append(start(spec))
                except (PulseError, ValueError) as exc:
                    if on_error is None:
                        raise
                    on_error(spec.key, exc)
                emit_finished()  # a coarse phase may have found every candidate already
        if not flights:
            if exhausted:
                return done[0]
            continue
        batched_step(flights)


def batched_step(flights: list[Flight]) -> None:
    """One full step of every input in flight (each at its own step index): one synthesis over all
    active candidates (in chunks of ``max_batch`` rows if set), then each input's own bookkeeping
    and optimiser step, as :func:`~pulse_sr.search.pulse.full_step` does for one input."""
    segments = [(f, f.state.begin_step(f.step)) for f in flights]
    hrs, totals = batched_forward_backward(segments)
    for (f, active), hr, total in zip(segments, hrs, totals):
        state = f.state
        state.observe(f.step, active, hr, total.cpu())
        if not (state.done.all() or state.is_last(f.step)):
            state.apply(f.grads)
        state.report(f.step, active, hr)
        f.grads = []
        f.step += 1


def _chunks(segments: list[tuple[Flight, Tensor]], limit: int) -> Iterator[list[tuple[Flight, Tensor]]]:
    """The ``(flight, rows)`` segments cut into consecutive chunks of at most ``limit`` rows."""
    chunk: list[tuple[Flight, Tensor]] = []
    room = limit
    for f, rows in segments:
        while rows.numel():
            take = rows[:room]
            chunk.append((f, take))
            rows, room = rows[room:], room - take.numel()
            if room == 0:
                yield chunk
                chunk, room = [], limit
    if chunk:
        yield chunk


def batched_forward_backward(segments: list[tuple[Flight, Tensor]]) -> tuple[list[Tensor], list[Tensor]]:
    """Forward and backward of the candidates ``rows`` of each flight ``(flight, rows)`` through
    shared synthesis calls. Returns per segment the images ``[A, 3, R, R]`` in [0, 1] (unclamped,
    detached) and total losses ``[A]``; leaves each flight's gradients (one per variable of its
    state, rows not run are 0) in ``flight.grads``; no gradients for a flight at its last step."""
    first = segments[0][0].state
    synthesis = first.synthesis
    total_rows = sum(rows.numel() for _, rows in segments)
    limit = first.settings.max_batch or max(total_rows, 1)
    for f, _ in segments:
        f.grads = [torch.zeros_like(v) for v in f.state.variables]
    hr_parts: dict[int, list[Tensor]] = {id(f): [] for f, _ in segments}
    total_parts: dict[int, list[Tensor]] = {id(f): [] for f, _ in segments}
    for chunk in _chunks(segments, limit):
        inputs = [f.state.inputs(rows) for f, rows in chunk]
        ws = torch.cat([w for w, _ in inputs])
        noise = [torch.cat(layer) for layer in zip(*(nz for _, nz in inputs))]
        hr = (synthesis(ws, noise) + 1) / 2
        sizes = [rows.numel() for _, rows in chunk]
        losses, learners = [], []
        for (f, rows), hr_s, ws_s in zip(chunk, hr.split(sizes), ws.split(sizes)):
            total = f.state.loss(rows, f.state.degrade(rows, hr_s), ws_s)
            hr_parts[id(f)].append(hr_s.detach())
            total_parts[id(f)].append(total.detach())
            if not f.state.is_last(f.step):
                losses.append(total.sum())
                learners.append(f)
        if losses:
            variables = [v for f in learners for v in f.state.variables]
            grads = torch.autograd.grad(torch.stack(losses).sum(), variables, allow_unused=True)
            it = iter(grads)
            for f in learners:
                for acc in f.grads:
                    g = next(it)
                    if g is not None:
                        acc += g
        del hr, ws, inputs
    return ([torch.cat(hr_parts[id(f)]) for f, _ in segments],
            [torch.cat(total_parts[id(f)]) for f, _ in segments])

"""Engine-neutral task and result types: what a worker receives and what it sends back.

A worker gets an input's *bytes* (never a path it must read: workers need no shared file
system) and returns a :class:`TaskResult` holding everything the driver needs to write the
same result folder as the local engine. Only the driver writes files.

Results travel as bytes made by ``torch.save`` of plain data (tensors, numbers, strings,
lists, dicts) and are read back with ``torch.load(weights_only=True)``: nothing a worker
sends can run code on the driver. Torch is imported only inside the functions.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from pulse_sr.search.settings import SearchResult, SearchSettings

#: SearchResult fields that are tensors (or lists of tensors), sent as CPU tensors
_RESULT_TENSORS = ("target", "hr", "lr", "latents", "ws", "l2", "converged", "steps", "best_step",
                   "seconds", "loss_history", "l2_history")


@dataclass(frozen=True)
class TaskOptions:
    """Per-input options: the CLI's ``--resize``, ``--center-crop``, ``--max-pixels``, and the input
    plan's ``--degradation``, ``--noise-sigma``, ``--grey-output``, ``--faithful`` and ``--mask``
    (``mask_data``: the mask file's bytes as base64 text, ``mask_name`` its name; JSON-able, so
    workers need no copy of the file)."""

    resize: bool = False
    center_crop: bool = False
    max_pixels: int = 4096 * 4096
    degradation: str = "auto"
    noise_sigma: str = "auto"
    grey_output: bool = False
    faithful: bool = False
    mask_data: str = ""
    mask_name: str = ""


@dataclass(frozen=True)
class InputTask:
    """One input: ``name`` (the driver's path or key, used in messages and results), its file's
    ``data`` bytes, and its options. ``index`` orders results for the driver's bookkeeping;
    ``problem``: why the driver could not read the file (then ``data`` is empty and the worker
    reports it as an image error)."""

    name: str
    data: bytes
    options: TaskOptions = field(default_factory=TaskOptions)
    index: int = 0
    problem: str = ""


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker needs once, before its first task (small and picklable).

    ``generator``/``weights``: as :func:`pulse_sr.generators.registry.load_generator` takes them
    (a weights path must exist on every worker's machine); ``gaussian_fit``: ``(mean, std)``
    ``[w_dim]`` to send instead of having each worker compute or read its cached fit;
    ``fit_samples``: samples of a fit computed by the worker (``None``: the cached default fit).
    ``threads``: torch intra-op threads per worker (``None``: leave torch's choice).
    """

    generator: str = "dcgan-digiface"
    weights: str | None = None
    device: str = "cpu"
    settings: SearchSettings | None = None
    n: int = 4
    seed: int = 0
    gaussian_fit: tuple[Tensor, Tensor] | None = None
    fit_samples: int | None = None
    threads: int | None = None


@dataclass
class TaskResult:
    """A worker's answer for one input: a search result, or an error.

    Success: ``target`` ``[3, h, w]`` in [0, 1] (the input as planned: ``input.png``), ``matched``
    ``[C, s, s]`` (the observation matched when it is not ``target``: ``target.png``), ``result`` (the
    :class:`~pulse_sr.search.settings.SearchResult`, CPU tensors), ``generator_info``
    (``generator.describe()``), ``input_info`` (report.json's ``input``: ``path``, ``original_size``,
    ``used_size``, ``notes`` and the input plan's description), ``summary`` (the plan in one clause),
    ``threshold`` (the match threshold), ``seconds`` (load + search on the worker). Failure: ``error_kind`` (a
    :class:`~pulse_sr.errors.PulseError` kind, or ``"error"``), ``error_message`` (one line,
    naming the input) and ``error_data``. ``worker_pid``: the process that did the work.
    """

    name: str
    index: int = 0
    target: Tensor | None = None
    result: SearchResult | None = None
    generator_info: dict[str, Any] = field(default_factory=dict)
    input_info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error_kind: str | None = None
    error_message: str = ""
    error_data: dict[str, Any] = field(default_factory=dict)
    worker_pid: int = 0
    matched: Tensor | None = None
    summary: str = ""
    threshold: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    def error(self) -> Exception:
        """The worker's error as a :class:`~pulse_sr.errors.PulseError` of the same kind."""
        from pulse_sr import errors

        classes = {c.kind: c for c in (errors.ImageError, errors.SizeError, errors.WeightsError,
                                       errors.SettingsError)}
        return classes.get(self.error_kind or "", errors.PulseError)(self.error_message, **self.error_data)

    def to_bytes(self) -> bytes:
        """Plain data only (tensors, numbers, strings, lists, dicts), for :meth:`from_bytes`."""
        import torch

        buf = io.BytesIO()
        torch.save(_plain(self), buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "TaskResult":
        """Read :meth:`to_bytes`'s output with ``torch.load(weights_only=True)`` (runs no code)."""
        import torch

        d = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        res = d.pop("result")
        return cls(**d, result=None if res is None else _search_result(res))


def _plain(r: TaskResult) -> dict[str, Any]:
    """``r`` as plain data (the SearchResult as a dict, its settings as their dict)."""
    res = None
    if r.result is not None:
        s = r.result
        res = {k: getattr(s, k).detach().cpu() for k in _RESULT_TENSORS}
        res.update(noise=[t.detach().cpu() for t in s.noise], seeds=list(s.seeds), eps=float(s.eps),
                   settings=s.settings.to_dict(), extras=[dict(e) for e in s.extras],
                   full_steps=None if s.full_steps is None else s.full_steps.detach().cpu())
    return {"name": r.name, "index": r.index, "target": None if r.target is None else r.target.detach().cpu(),
            "result": res, "generator_info": r.generator_info, "input_info": r.input_info,
            "seconds": float(r.seconds), "error_kind": r.error_kind, "error_message": r.error_message,
            "error_data": r.error_data, "worker_pid": int(r.worker_pid),
            "matched": None if r.matched is None else r.matched.detach().cpu(), "summary": r.summary,
            "threshold": float(r.threshold)}


def _search_result(d: dict[str, Any]) -> SearchResult:
    """Rebuild a SearchResult from :func:`_plain`'s dict."""
    from pulse_sr.search.settings import SearchResult, SearchSettings

    s = dict(d["settings"])
    s["bad_noise_layers"] = tuple(s["bad_noise_layers"])
    s["given"] = tuple(s["given"])
    return SearchResult(**{k: d[k] for k in _RESULT_TENSORS}, noise=list(d["noise"]), seeds=list(d["seeds"]),
                        eps=float(d["eps"]), settings=SearchSettings(**s), full_steps=d["full_steps"],
                        extras=[dict(e) for e in d.get("extras", [])])

"""The local engine: one input's search, pure and testable without Ray.

:class:`WorkerContext` loads the generator (and its Gaussian fit) once per worker process;
:func:`process_task` turns an :class:`~pulse_sr.engines.tasks.InputTask` (the input's bytes)
into a :class:`~pulse_sr.engines.tasks.TaskResult`; :func:`run_local` runs tasks one after the
other in this process and hands each result to a callback (the driver's writer). The Ray
engine runs the very same :func:`process_task` inside its actors.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from pulse_sr.engines.process import MAX_INPUT_BYTES  # noqa: F401 - re-exported
from pulse_sr.engines.tasks import InputTask, TaskOptions, TaskResult, WorkerSpec

if TYPE_CHECKING:
    from torch import Tensor

    from pulse_sr.generators.base import FaceGenerator

class WorkerContext:
    """A worker's state, built once: the generator and its Gaussian fit (``None`` without a
    mapping network), torch's thread count set from ``spec.threads``."""

    def __init__(self, spec: WorkerSpec, generator: FaceGenerator | None = None) -> None:
        import torch

        from pulse_sr.generators.registry import load_generator

        if spec.threads is not None:
            torch.set_num_threads(int(spec.threads))
        self.spec = spec
        self.generator = generator if generator is not None else load_generator(
            spec.generator, weights=spec.weights, device=spec.device, progress=False)
        self.gaussian_fit = self._fit()
        self.generator_info = self.generator.describe()

    def _fit(self) -> tuple[Tensor, Tensor] | None:
        if not self.generator.has_mapping:
            return None
        if self.spec.gaussian_fit is not None:
            return self.spec.gaussian_fit
        from pulse_sr.search.gaussian_fit import cached_gaussian_fit, fit_gaussian

        if self.spec.fit_samples is not None:
            return fit_gaussian(self.generator, samples=self.spec.fit_samples)
        return cached_gaussian_fit(self.generator)


def decode_input(task: InputTask) -> Tensor:
    """The input's bytes as ``[3, H, W]`` float32 in [0, 1], with exactly the checks and
    conversions of :func:`pulse_sr.io.images.load_image`; errors name ``task.name``."""
    from pulse_sr.engines.process import decode_bytes
    from pulse_sr.errors import ImageError

    if task.problem:
        raise ImageError(f"{task.name}: {task.problem}", path=task.name, problem=task.problem)
    return decode_bytes(task.name, task.data, task.options.max_pixels)[0]


def process_task(task: InputTask, ctx: WorkerContext) -> TaskResult:
    """Decode, plan (:func:`pulse_sr.input_plan.plan_input`), search; a :class:`TaskResult` (never raises for a bad
    input: the error travels in the result, kind and one-line message)."""
    from pulse_sr.errors import PulseError

    started = time.perf_counter()
    try:
        return _search(task, ctx, started)
    except PulseError as e:
        msg = e.message if e.message.startswith(task.name) else f"{task.name}: {e.message}"
        return TaskResult(task.name, task.index, error_kind=e.kind, error_message=msg,
                          error_data=dict(e.data), worker_pid=os.getpid(),
                          seconds=time.perf_counter() - started)
    except Exception as e:  # noqa: BLE001 - one bad input must not stop a folder
        line = " ".join(str(e).split())
        return TaskResult(task.name, task.index, error_kind="error",
                          error_message=f"{task.name}: unexpected {type(e).__name__}: {line}",
                          worker_pid=os.getpid(), seconds=time.perf_counter() - started)


def _search(task: InputTask, ctx: WorkerContext, started: float) -> TaskResult:
    """:func:`pulse_sr.engines.process.search_task` with the worker's generator and spec."""
    from pulse_sr.engines.process import search_task

    spec = ctx.spec
    return search_task(task, generator=ctx.generator, settings=spec.settings, n=spec.n, seed=spec.seed,
                       device=spec.device, gaussian_fit=ctx.gaussian_fit)


def read_tasks(paths: Iterable[str | os.PathLike[str]], options: TaskOptions | None = None) -> list[InputTask]:
    """Tasks from files on the driver, their bytes read here (a file that cannot be read, or is
    over ``MAX_INPUT_BYTES``, becomes a task with a ``problem`` the worker reports)."""
    opts = options or TaskOptions()
    tasks = []
    for i, p in enumerate(paths):
        data, problem = b"", ""
        try:
            size = os.path.getsize(p)
            if size > MAX_INPUT_BYTES:
                problem = f"file too large ({size:,} bytes; the limit is {MAX_INPUT_BYTES:,})"
            else:
                data = Path(p).read_bytes()
        except OSError as e:
            problem = f"cannot read ({e.strerror or e})"
        tasks.append(InputTask(str(p), data, opts, index=i, problem=problem))
    return tasks


def run_local(tasks: Iterable[InputTask], spec: WorkerSpec, on_result: Callable[[TaskResult], object],
              *, generator: FaceGenerator | None = None) -> int:
    """Run every task in this process, one after the other; ``on_result`` gets each result.
    Returns the number of results. ``generator``: an already loaded one (else ``spec``'s)."""
    ctx = WorkerContext(spec, generator)
    count = 0
    for task in tasks:
        on_result(process_task(task, ctx))
        count += 1
    return count

"""Engines: who runs the searches of a folder of inputs, and where.

Both take engine-neutral :class:`~pulse_sr.engines.tasks.InputTask` s (an input's bytes and
options) and a :class:`~pulse_sr.engines.tasks.WorkerSpec` (generator, settings, n, seed), and
hand every :class:`~pulse_sr.engines.tasks.TaskResult` to the driver's ``on_result`` callback,
which alone writes files:

- ``local``: in this process, one input after the other (:mod:`pulse_sr.engines.local`);
- ``ray``: an actor pool on a local or remote Ray (:mod:`pulse_sr.engines.ray_engine`, the
  optional ``ray`` extra).

:func:`run_engine` is the one entry point a front end calls. Nothing heavy is imported here.
A front end's use, e.g. ``pulse-sr run --engine ray``::

    tasks = read_tasks(paths, TaskOptions(resize=..., center_crop=..., max_pixels=...))
    spec = WorkerSpec(generator=..., weights=..., device=..., settings=settings, n=n, seed=seed,
                      gaussian_fit=fit)  # fit computed once on the driver (None: each worker's own)
    run_engine("ray", tasks, spec, write_one, address=None, workers=2, threads_per_worker=1,
               gpus_per_worker=0)

where ``paths`` leaves out inputs already done (the resume rule: report.json exists) and
``write_one(result)`` writes ``result.target``,
``result.result`` (a SearchResult), ``result.generator_info`` and ``result.input_info`` into a
staged folder (report.json last), or records ``result.error()`` as that input's failure.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from pulse_sr.engines.tasks import InputTask, TaskOptions, TaskResult, WorkerSpec

ENGINES = ("local", "ray")

__all__ = ["ENGINES", "InputTask", "TaskOptions", "TaskResult", "WorkerSpec", "run_engine"]


def run_engine(engine: str, tasks: Iterable[InputTask], spec: WorkerSpec,
               on_result: Callable[[TaskResult], object], **options: Any) -> int:
    """Run ``tasks`` on ``engine`` (``"local"`` or ``"ray"``); ``on_result`` gets each result once.

    ``options`` for ``ray``: ``address``, ``workers``, ``threads_per_worker``, ``gpus_per_worker``,
    ``attempts`` (see :func:`pulse_sr.engines.ray_engine.run_ray`); for ``local``: ``generator``
    (an already loaded one). Returns the number of results delivered.
    """
    if engine == "local":
        from pulse_sr.engines.local import run_local

        return run_local(tasks, spec, on_result, **options)
    if engine == "ray":
        from pulse_sr.engines.ray_engine import run_ray

        return run_ray(tasks, spec, on_result, **options)
    raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")

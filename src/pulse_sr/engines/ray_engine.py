"""The Ray engine: the same searches as the local engine, on a pool of Ray actors.

The driver reads each input's bytes and hands them to Ray Data (``from_items``: workers need
the bytes, not a shared file system). A fixed pool of actors, each loading the generator once
(:class:`~pulse_sr.engines.local.WorkerContext`), runs
:func:`~pulse_sr.engines.local.process_task`; results stream back to the driver, which passes
each to ``on_result`` exactly once (the CLI's writer: staged folders, resume rule, report,
summary, as with the local engine). Only the driver writes.

Fault tolerance: an actor whose process dies (SIGKILL) is restarted and its unfinished calls
retried by Ray; should a run fail anyway, the driver reruns the inputs whose result never
arrived (``attempts`` times in all). A result for an input already delivered is dropped.

Every Ray call goes through :mod:`pulse_sr.engines.ray_adapter`.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable, Iterable

from pulse_sr.engines.tasks import InputTask, TaskOptions, TaskResult, WorkerSpec

#: local Ray's object store when the command starts its own Ray (results are small: a 64x64
#: search of n=4 is a few hundred KB)
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024


class RayWorker:
    """Ray Data's callable class: one per actor, the generator loaded once in ``__init__``."""

    def __init__(self, spec: WorkerSpec) -> None:
        from pulse_sr.engines.local import WorkerContext

        self.ctx = WorkerContext(spec)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch``: numpy columns ``name``, ``index``, ``data`` (bytes), ``options`` (JSON-able
        dict as text) -> columns ``name``, ``index``, ``payload`` (:meth:`TaskResult.to_bytes`)."""
        import json

        import numpy as np

        from pulse_sr.engines.local import process_task

        names, indices, payloads = [], [], []
        for name, index, data, options in zip(batch["name"], batch["index"], batch["data"], batch["options"]):
            task = InputTask(str(name), bytes(data), TaskOptions(**json.loads(str(options))), index=int(index))
            names.append(task.name)
            indices.append(task.index)
            payloads.append(process_task(task, self.ctx).to_bytes())
        return {"name": np.array(names, dtype=object), "index": np.array(indices, dtype=np.int64),
                "payload": np.array(payloads, dtype=object)}


def _row(task: InputTask) -> dict[str, Any]:
    import json

    return {"name": task.name, "index": task.index, "data": task.data,
            "options": json.dumps(dataclasses.asdict(task.options))}


def run_ray(tasks: Iterable[InputTask], spec: WorkerSpec, on_result: Callable[[TaskResult], object], *,
            address: str | None = None, workers: int = 2, threads_per_worker: int = 1,
            gpus_per_worker: float = 0, attempts: int = 3) -> int:
    """Run every task on a Ray actor pool; ``on_result`` gets each input's result once, in the
    order they finish. Returns the number of results delivered.

    ``address``: ``None`` starts a local Ray inside this process with ``workers *
    threads_per_worker`` CPUs (shut down at the end); ``"auto"`` or ``"HOST:PORT"`` joins an
    existing cluster (its workers need pulse-sr installed, and ``spec.weights`` at the same path).
    A Ray already initialised in this process is used as it is and left running.
    ``workers`` actors, each with ``threads_per_worker`` CPUs and torch threads and, when
    ``gpus_per_worker`` > 0, that many GPUs (then ``spec.device`` should be ``"cuda"``).
    An input whose result never arrives after ``attempts`` runs raises the last Ray error.
    """
    from pulse_sr.engines import ray_adapter

    if workers < 1 or threads_per_worker < 1 or gpus_per_worker < 0 or attempts < 1:
        raise ValueError("workers, threads_per_worker and attempts must be >= 1, gpus_per_worker >= 0")
    pending = {t.name: t for t in tasks}
    spec = dataclasses.replace(spec, threads=threads_per_worker)
    started = ray_adapter.start(address=address, num_cpus=workers * threads_per_worker,
                                num_gpus=None if not gpus_per_worker else int(-(-workers * gpus_per_worker // 1)),
                                object_store_bytes=LOCAL_OBJECT_STORE_BYTES)
    delivered = 0
    try:
        for attempt in range(1, attempts + 1):
            if not pending:
                break
            try:
                delivered += _one_run(pending, spec, on_result, workers, threads_per_worker, gpus_per_worker)
            except _CallbackError as e:
                raise e.error from None  # the driver's own writer failed: not Ray's to retry
            except Exception as e:  # noqa: BLE001 - Ray's errors vary by version; retry what is missing
                if attempt == attempts:
                    raise
                print(f"ray engine: run {attempt} failed ({type(e).__name__}); retrying "
                      f"{len(pending)} input(s)", file=sys.stderr)
    finally:
        ray_adapter.stop(started)
    return delivered


def _one_run(pending: dict[str, InputTask], spec: WorkerSpec, on_result: Callable[[TaskResult], object],
             workers: int, threads: int, gpus: float) -> int:
    """One pass over ``pending``; each result delivered is removed from it (duplicates dropped)."""
    from pulse_sr.engines import ray_adapter

    rows = [_row(t) for t in pending.values()]
    delivered = 0
    for row in ray_adapter.map_rows_with_actors(rows, RayWorker, constructor_kwargs={"spec": spec},
                                                workers=min(workers, max(1, len(rows))),
                                                cpus_per_worker=threads, gpus_per_worker=gpus):
        name = str(row["name"])
        if name not in pending:
            continue  # a retried call's second answer: already delivered
        result = TaskResult.from_bytes(bytes(row["payload"]))
        del pending[name]
        try:
            on_result(result)
        except BaseException as e:  # noqa: BLE001 - re-raised as it is by run_ray
            raise _CallbackError(e) from e
        delivered += 1
    return delivered


class _CallbackError(Exception):
    """Carries an exception raised by ``on_result`` past the retry loop."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


def default_workers() -> int:
    """Workers for a local Ray when not told: one per CPU this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

"""The one small adapter over Ray's API: everything version-dependent lives here.

Ray Data's way to ask for a fixed pool of N actors changed between versions:

- Ray < 2.9: ``compute=ActorPoolStrategy(N, N)`` (no ``size=`` keyword, no ``concurrency``);
- Ray 2.9 to 2.50: ``concurrency=N`` (``compute`` deprecated);
- Ray >= 2.51: ``compute=ActorPoolStrategy(size=N)`` (``concurrency`` deprecated, warns).

:func:`actor_pool_kwargs` picks the form from what the installed Ray accepts (its signatures,
not its version string), so :mod:`pulse_sr.engines.ray_engine` never spells either form.
``ray`` is imported only inside the functions (it is an optional extra).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator

#: the Ray version the ``ray`` extra pins and the tests run against
PINNED_RAY = "2.60.0"


def import_ray() -> Any:
    """``ray`` with Ray Data, or a :class:`~pulse_sr.errors.PulseError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data needs pyarrow/pandas: fail here, not mid-run
    except ImportError as e:
        from pulse_sr.errors import PulseError

        raise PulseError(f"the ray engine needs Ray Data ({e}); install it with "
                         f"pip install 'pulse-sr[ray]' (ray[data]=={PINNED_RAY})") from None
    return ray


def actor_pool_kwargs(map_batches: Callable[..., Any], strategy: Any, size: int) -> dict[str, Any]:
    """The keyword arguments that ask ``map_batches`` for a fixed pool of ``size`` actors.

    ``strategy``: Ray Data's ``ActorPoolStrategy`` class. Prefers ``compute=strategy(size=N)``
    where that exists and ``concurrency`` is deprecated or absent; else ``concurrency=N``; else
    the oldest positional ``strategy(N, N)``.
    """
    params = inspect.signature(map_batches).parameters
    has_size = "size" in inspect.signature(strategy.__init__).parameters
    concurrency_deprecated = _concurrency_deprecated()
    if has_size and ("concurrency" not in params or concurrency_deprecated):
        return {"compute": strategy(size=size)}
    if "concurrency" in params:
        return {"concurrency": size}
    return {"compute": strategy(size, size)}


def _concurrency_deprecated() -> bool:
    """Whether this Ray warns about ``concurrency=`` (2.51 on): read from its own source."""
    try:
        from ray.data._internal import util

        return "``concurrency`` is deprecated" in inspect.getsource(util.get_compute_strategy)
    except (ImportError, AttributeError, OSError, TypeError):
        return False


def start(*, address: str | None, num_cpus: int | None, num_gpus: int | None,
          object_store_bytes: int | None = None) -> bool:
    """Join ``address`` (``"auto"`` or ``"HOST:PORT"``) or start a local Ray with ``num_cpus``.

    A Ray already initialised in this process is used as it is. Returns whether this call
    started it (then :func:`stop` shuts it down). No dashboard, worker logs not echoed. A cluster
    that cannot be joined is a :class:`~pulse_sr.errors.PulseError` (one line, ``address``).
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": False}
    if address is not None:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as e:
            from pulse_sr.errors import PulseError

            line = " ".join(str(e).split())[:300]
            raise PulseError(f"cannot join the Ray cluster at {address}: {line}", address=address) from None
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=object_store_bytes, **kwargs)
    quiet_data()
    return True


def stop(started: bool) -> None:
    """Shut Ray down if :func:`start` started it."""
    if started:
        import_ray().shutdown()


def quiet_data() -> None:
    """No Ray Data progress bars in the driver's terminal (the CLI prints its own lines)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    for name in ("enable_progress_bars", "enable_operator_progress_bars"):
        if hasattr(ctx, name):
            setattr(ctx, name, False)
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False


def map_rows_with_actors(rows: list[dict[str, Any]], udf: type, *, constructor_kwargs: dict[str, Any],
                         workers: int, cpus_per_worker: float, gpus_per_worker: float) -> Iterator[dict[str, Any]]:
    """Stream ``udf``'s output rows for ``rows`` (one block and one batch per row), computed by a
    fixed pool of ``workers`` actors, each built once with ``constructor_kwargs``.

    Actors are restarted when their process dies and their unfinished calls retried
    (``max_restarts=-1``, ``max_task_retries=-1``: see :func:`restart_kwargs`).
    """
    ray = import_ray()
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows))) if _accepts(
        ray.data.from_items, "override_num_blocks") else ray.data.from_items(rows, parallelism=max(1, len(rows)))
    extra: dict[str, Any] = {"num_cpus": cpus_per_worker}
    if gpus_per_worker:
        extra["num_gpus"] = gpus_per_worker
    out = ds.map_batches(udf, batch_size=1, batch_format="numpy", fn_constructor_kwargs=constructor_kwargs,
                         **actor_pool_kwargs(ds.map_batches, ray.data.ActorPoolStrategy, workers),
                         **restart_kwargs(), **extra)
    yield from out.iter_rows()


def restart_kwargs() -> dict[str, Any]:
    """Unlimited actor restarts and call retries. Ray 2.60 deprecates passing them as extra
    ``**ray_remote_args`` and makes them the actor pool's default (its
    ``actor_pool_map_operator``: ``max_restarts=-1``, ``max_task_retries=-1`` unless given), so
    they are passed only to a Ray that does not warn about such arguments."""
    try:
        from ray.data import dataset

        if hasattr(dataset, "_warn_on_ray_remote_args"):
            return {}
    except ImportError:
        pass
    return {"max_restarts": -1, "max_task_retries": -1}


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    return name in inspect.signature(fn).parameters

"""The Ray engine on a local 2-CPU Ray started once for this module (CPU only, tiny generator).

Results equal the local engine's bit for bit: the workers run the same ``process_task`` on
the same bytes with the same generator weights, Gaussian fit (sent in the spec), seeds and
one torch thread, on this same CPU, so every kernel sees the same shapes and reduction order.
(Were a worker on another CPU type, float32 rounding could differ per op; not the case here.)
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

try:  # the Ray engine's tests run wherever the suite runs: scripts/setup --test installs the ray extra
    import ray.data  # noqa: F401
except ImportError:  # pragma: no cover - a setup problem, said as one line, never a silent skip
    pytest.fail("Ray Data is missing: run scripts/setup --test (pip install -e '.[ray,test]')", pytrace=False)

from conftest import planted  # shared test helper  # noqa: E402

from pulse_sr.engines import InputTask, TaskResult, WorkerSpec, run_engine  # noqa: E402
from pulse_sr.engines import ray_adapter  # noqa: E402
from pulse_sr.engines.local import read_tasks  # noqa: E402
from pulse_sr.io.images import save_png  # noqa: E402
from pulse_sr.search.settings import SearchSettings  # noqa: E402

#: few steps keep each search short; enough that a worker is mid-search when it is killed
SETTINGS = SearchSettings(steps=12)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray with 2 CPUs for the whole module (start-up is the slow part)."""
    started = ray_adapter.start(address=None, num_cpus=2, num_gpus=None, object_store_bytes=128 * 1024 * 1024)
    yield
    ray_adapter.stop(started)


@pytest.fixture(scope="module")
def folder(tiny, tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("inputs")
    paths = []
    for s in range(6):
        p = d / f"face{s}.png"
        save_png(planted(tiny, s, 4), p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def spec(tiny_fit) -> WorkerSpec:
    return WorkerSpec(generator="tiny", n=2, seed=5, settings=SETTINGS, gaussian_fit=tiny_fit, threads=1)


@pytest.fixture(scope="module")
def local_results(tiny, folder, spec) -> dict[str, TaskResult]:
    threads = torch.get_num_threads()
    got: dict[str, TaskResult] = {}
    try:
        run_engine("local", read_tasks(folder), spec, lambda r: got.__setitem__(r.name, r), generator=tiny)
    finally:
        torch.set_num_threads(threads)
    return got


def _assert_same(a: TaskResult, b: TaskResult) -> None:
    assert a.ok and b.ok, (a.error_message, b.error_message)
    assert torch.equal(a.target, b.target)
    for k in ("hr", "lr", "latents", "l2", "converged", "steps", "l2_history"):
        assert torch.equal(getattr(a.result, k), getattr(b.result, k)), k
    assert a.input_info == b.input_info and a.generator_info == b.generator_info


def test_local_ray_processes_a_folder_like_the_local_engine(local_ray, folder, spec, local_results):
    got: list[TaskResult] = []
    junk = InputTask("junk.png", b"junk", index=len(folder))
    n = run_engine("ray", [*read_tasks(folder), junk], spec, got.append, workers=2, threads_per_worker=1)
    assert n == len(folder) + 1 == len(got)
    bad = [r for r in got if r.name == "junk.png"]  # a bad input is an error result, the rest run
    assert [r.error_kind for r in bad] == ["image"] and bad[0].error_message.startswith("junk.png: not an image")
    good = [r for r in got if r.name != "junk.png"]
    assert sorted(r.name for r in good) == sorted(local_results)
    for r in good:
        _assert_same(r, local_results[r.name])
    assert all(r.worker_pid != os.getpid() for r in got)  # computed by the workers, not the driver


def test_a_worker_killed_with_sigkill_loses_nothing(local_ray, folder, spec, local_results):
    got: list[TaskResult] = []
    killed: list[int] = []

    def on_result(r: TaskResult) -> None:
        got.append(r)
        if not killed:  # the worker that sent the first result is searching its next input now
            os.kill(r.worker_pid, signal.SIGKILL)
            killed.append(r.worker_pid)

    tasks = read_tasks(folder) + read_tasks(folder[:2])  # a duplicate name is one input
    n = run_engine("ray", tasks, spec, on_result, workers=2, threads_per_worker=1)
    names = [r.name for r in got]
    assert n == len(folder) and sorted(names) == sorted(local_results)  # each input exactly once
    for r in got:
        _assert_same(r, local_results[r.name])
    assert killed
    with pytest.raises(ProcessLookupError):  # the worker really died (Ray reaped it)
        os.kill(killed[0], 0)


def _write(r: TaskResult, out: Path) -> None:
    """A stand-in for the CLI's writer: the result folder, report.json last."""
    final = out / Path(r.name).stem
    final.mkdir()  # fails if an input were written twice
    (final / "report.json").write_text(json.dumps({"l2": r.result.l2.tolist()}))


def test_resume_after_the_driver_dies_writes_each_input_once(local_ray, folder, spec, tmp_path):
    """The CLI's resume rule at this level: report.json, written last, marks an input done."""
    written: list[str] = []

    def dying_writer(r: TaskResult) -> None:
        _write(r, tmp_path)
        written.append(r.name)
        if len(written) == 2:
            raise KeyboardInterrupt  # the driver dies after two inputs

    with pytest.raises(KeyboardInterrupt):
        run_engine("ray", read_tasks(folder), spec, dying_writer, workers=2, threads_per_worker=1)
    assert len(written) == 2
    todo = [p for p in folder if not (tmp_path / p.stem / "report.json").exists()]
    assert len(todo) == len(folder) - 2
    run_engine("ray", read_tasks(todo), spec, lambda r: (_write(r, tmp_path), written.append(r.name)),
               workers=2, threads_per_worker=1)
    assert sorted(written) == sorted(str(p) for p in folder)
    assert sorted(d.name for d in tmp_path.iterdir()) == sorted(p.stem for p in folder)

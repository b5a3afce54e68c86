"""Engines without Ray: task/result types, the local engine's process_task, the Ray adapter's
choice of arguments per Ray version (with stand-in signatures: no Ray needed)."""
from __future__ import annotations

import io
import pickle

import pytest
import torch

from pulse_sr.engines import InputTask, TaskOptions, TaskResult, WorkerSpec, run_engine
from pulse_sr.engines.local import WorkerContext, process_task, read_tasks
from pulse_sr.engines.ray_adapter import actor_pool_kwargs
from pulse_sr.io.images import png_bytes
from pulse_sr.search.pulse import pulse_search
from pulse_sr.search.settings import SearchSettings
from conftest import planted  # shared test helper

SETTINGS = SearchSettings(steps=6)


@pytest.fixture(scope="module")
def ctx(tiny, tiny_fit):
    threads = torch.get_num_threads()
    c = WorkerContext(WorkerSpec(generator="tiny", n=2, seed=3, settings=SETTINGS, gaussian_fit=tiny_fit,
                                 threads=threads), generator=tiny)
    return c


def _task(tiny, seed: int, name: str = "face.png", **opts) -> InputTask:
    return InputTask(name, png_bytes(planted(tiny, seed, 4)), TaskOptions(**opts), index=seed)


def test_process_task_equals_pulse_search_on_the_decoded_input(tiny, tiny_fit, ctx):
    task = _task(tiny, 0)
    res = process_task(task, ctx)
    assert res.ok, res.error_message
    # the target is the PNG's 8-bit pixels: decoding is exact, so it equals the quantised plant
    expected_target = torch.round(planted(tiny, 0, 4).clamp(0, 1) * 255) / 255
    assert torch.equal(res.target, expected_target)
    # the same function on the same input in the same process and thread count: bit-equal
    direct = pulse_search(tiny, res.target, n=2, seed=3, settings=SETTINGS, gaussian_fit=tiny_fit)
    assert torch.equal(res.result.hr, direct.hr)
    assert torch.equal(res.result.l2, direct.l2)
    info = res.input_info  # report.json's "input": the sizes and the input plan's description
    assert {k: info[k] for k in ("path", "original_size", "used_size", "notes")} == {
        "path": "face.png", "original_size": [8, 8], "used_size": [8, 8], "notes": []}
    assert (info["kind"], info["degradation"], info["grey"], info["threshold"]) == ("face", "bicubic", False, SETTINGS.eps)
    assert res.generator_info == tiny.describe()
    assert res.matched is None and res.threshold == SETTINGS.eps and res.summary.startswith("face, bicubic")


def test_process_task_follows_the_input_plan(tiny, tiny_fit, ctx):
    """Regression (issue 16): process_task ran load_image + fit_to_generator + pulse_search and
    ignored the input plan: a grey input was matched in colour, --degradation was not honoured."""
    from pulse_sr.input_plan import plan_input

    grey = planted(tiny, 2, 4).mean(0, keepdim=True).expand(3, -1, -1)
    res = process_task(InputTask("grey.png", png_bytes(grey), TaskOptions(degradation="box")), ctx)
    assert res.ok, res.error_message
    assert (res.input_info["grey"], res.input_info["degradation"]) == (True, "box")
    assert res.matched is not None and res.matched.shape == (1, 8, 8)  # matched on luma
    plan = plan_input(res.target, tiny.resolution, eps=SETTINGS.eps, name="grey.png", degradation="box")
    direct = pulse_search(tiny, plan.target, n=2, seed=3, settings=SETTINGS, gaussian_fit=tiny_fit,
                          operator=plan.operator, mask=plan.mask, threshold=plan.threshold)
    assert torch.equal(res.result.l2, direct.l2)  # same process, threads and inputs: bit-equal
    assert torch.equal(res.result.lr, direct.lr)


def test_task_result_round_trip_is_exact_and_plain(tiny, ctx):
    res = process_task(_task(tiny, 1), ctx)
    back = TaskResult.from_bytes(res.to_bytes())
    assert back.name == res.name and back.index == 1 and back.ok
    for k in ("hr", "lr", "latents", "ws", "l2", "converged", "steps", "loss_history", "l2_history"):
        assert torch.equal(getattr(back.result, k), getattr(res.result, k)), k
    assert all(torch.equal(a, b) for a, b in zip(back.result.noise, res.result.noise))
    assert back.result.settings == res.result.settings
    assert [c.summary() for c in back.result.candidates()] == [c.summary() for c in res.result.candidates()]
    assert (back.summary, back.threshold, back.input_info) == (res.summary, res.threshold, res.input_info)
    assert back.result.extras == res.result.extras


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_task_result_from_bytes_runs_no_code():
    buf = io.BytesIO()
    torch.save({"name": _Evil()}, buf)
    with pytest.raises(pickle.UnpicklingError):
        TaskResult.from_bytes(buf.getvalue())


def test_bad_inputs_come_back_as_structured_errors(tiny, ctx):
    bad = process_task(InputTask("dir/junk.png", b"not an image"), ctx)
    assert (bad.error_kind, bad.result) == ("image", None)
    assert bad.error_message.startswith("dir/junk.png: not an image")
    assert "pulse-sr-in-" not in bad.error_message  # the worker's temporary file is never named
    wide = InputTask("wide.png", png_bytes(torch.rand(3, 8, 16)))
    assert process_task(wide, ctx).error_kind == "size"
    cropped = process_task(InputTask("wide.png", wide.data, TaskOptions(center_crop=True)), ctx)
    assert cropped.ok and cropped.input_info["used_size"] == [8, 8]
    unread = process_task(InputTask("gone.png", b"", problem="cannot read (No such file)"), ctx)
    assert (unread.error_kind, unread.error_message) == ("image", "gone.png: cannot read (No such file)")
    assert isinstance(unread.error(), Exception) and unread.error().kind == "image"


def test_read_tasks_reads_bytes_and_marks_unreadable_files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"abc")
    tasks = read_tasks([tmp_path / "a.png", tmp_path / "missing.png"])
    assert [(t.data, t.index, bool(t.problem)) for t in tasks] == [(b"abc", 0, False), (b"", 1, True)]


def test_run_engine_local_delivers_each_input_once(tiny, tiny_fit):
    tasks = [_task(tiny, s, name=f"f{s}.png") for s in range(2)]
    got: list[TaskResult] = []
    spec = WorkerSpec(generator="tiny", n=1, settings=SETTINGS, gaussian_fit=tiny_fit)
    assert run_engine("local", tasks, spec, got.append, generator=tiny) == 2
    assert [r.name for r in got] == ["f0.png", "f1.png"] and all(r.ok for r in got)
    with pytest.raises(ValueError, match="unknown engine"):
        run_engine("spark", tasks, spec, got.append)


# -- the adapter: one place that knows how each Ray version spells "a pool of N actors" -----------
class _NewStrategy:  # Ray >= 2.9: ActorPoolStrategy(size=...)
    def __init__(self, *, size=None, min_size=None, max_size=None):
        self.size = size


class _OldStrategy:  # Ray < 2.9: ActorPoolStrategy(min_size, max_size)
    def __init__(self, min_size=1, max_size=None):
        self.size = (min_size, max_size)


def _mb_with_concurrency(fn, *, batch_size=None, compute=None, concurrency=None, **kw): ...


def _mb_without_concurrency(fn, *, batch_size=None, compute=None, **kw): ...


def test_adapter_picks_the_pool_arguments_each_ray_version_takes(monkeypatch):
    from pulse_sr.engines import ray_adapter

    monkeypatch.setattr(ray_adapter, "_concurrency_deprecated", lambda: False)  # Ray 2.9 .. 2.50
    assert actor_pool_kwargs(_mb_with_concurrency, _NewStrategy, 3) == {"concurrency": 3}
    old = actor_pool_kwargs(_mb_without_concurrency, _OldStrategy, 3)  # Ray < 2.9
    assert old["compute"].size == (3, 3)
    monkeypatch.setattr(ray_adapter, "_concurrency_deprecated", lambda: True)  # Ray >= 2.51
    new = actor_pool_kwargs(_mb_with_concurrency, _NewStrategy, 3)
    assert list(new) == ["compute"] and new["compute"].size == 3


def test_joining_a_cluster_that_is_not_there_is_one_clear_error(monkeypatch):
    """No Ray cluster runs at this address: a PulseError naming it, not Ray's traceback."""
    import ray  # the test extra setup installs the ray extra: never skipped
    from pulse_sr.engines import ray_adapter
    from pulse_sr.errors import PulseError

    monkeypatch.setattr(ray, "is_initialized", lambda: False)

    def refuse(**kw):
        raise ConnectionError("Could not find any running Ray instance.\n Please specify address")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(PulseError, match=r"^cannot join the Ray cluster at 10.0.0.9:6379: Could not find") as e:
        ray_adapter.start(address="10.0.0.9:6379", num_cpus=None, num_gpus=None)
    assert e.value.data == {"address": "10.0.0.9:6379"} and "\n" not in str(e.value)

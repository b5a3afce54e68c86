"""``pulse-sr run --engine ray`` against ``--engine local`` on a local 2-CPU Ray started once for
this module (CPU only, tiny generator, few steps).

The same files come out bit for bit: both engines run :func:`pulse_sr.engines.process.search_input`
on the same decoded 8-bit pixels with the same generator weights (``tiny`` is seeded), Gaussian
fit (the driver's, sent to the workers), seeds and one torch thread on this same CPU, so every
kernel sees the same shapes and reduction order; PNG encoding of equal tensors is deterministic.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

try:  # the Ray engine's tests run wherever the suite runs: scripts/setup --test installs the ray extra
    import ray.data  # noqa: F401
except ImportError:  # pragma: no cover - a setup problem, said as one line, never a silent skip
    pytest.fail("Ray Data is missing: run scripts/setup --test (pip install -e '.[ray,test]')", pytrace=False)

from conftest import planted  # shared test helper  # noqa: E402

from pulse_sr import cli  # noqa: E402
from pulse_sr.engines import ray_adapter  # noqa: E402
from pulse_sr.io.images import save_png  # noqa: E402

FAST = ["--generator", "tiny", "--steps", "8", "--n", "2", "--quiet", "--seed", "3"]
RAY = ["--engine", "ray", "--ray-workers", "2", "--threads-per-worker", "1"]
#: report fields that are timings or depend on which process ran the search
VOLATILE = ("seconds",)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray with 2 CPUs for the whole module (start-up is the slow part); the CLI uses
    a Ray already initialised in its process as it is."""
    started = ray_adapter.start(address=None, num_cpus=2, num_gpus=None, object_store_bytes=128 * 1024 * 1024)
    yield
    ray_adapter.stop(started)


@pytest.fixture(autouse=True)
def _env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PULSE_SR_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the Ray workers run one thread each (--threads-per-worker 1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tiny, tmp_path_factory) -> Path:
    """Three planted 8x8 faces, one grey (the input plan matches it on luma), and a bad file."""
    d = tmp_path_factory.mktemp("inputs")
    for s in range(2):
        save_png(planted(tiny, s, 4), d / f"face{s}.png")
    grey = planted(tiny, 7, 4).mean(0, keepdim=True).expand(3, -1, -1)
    save_png(grey, d / "grey.png")
    (d / "bad.png").write_bytes(b"not an image")
    return d


def _run(args: list, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _report(folder: Path) -> dict:
    r = json.loads((folder / "report.json").read_text())
    for k in VOLATILE:
        r.pop(k)
    for c in r["candidates"]:
        c.pop("seconds", None)
    return r


@pytest.fixture(scope="module")
def local_out(folder, tmp_path_factory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("local")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = cli.main([str(a) for a in ["run", folder, "-o", out, *FAST]])
    finally:
        torch.set_num_threads(threads)
    return out, code


def test_ray_engine_writes_the_same_folders_as_the_local_engine(local_ray, folder, local_out, tmp_path, capsys):
    out_local, code_local = local_out
    code, out, err = _run(["run", folder, "-o", tmp_path, *FAST, *RAY], capsys)
    assert code == code_local == 1  # bad.png failed, alone
    assert [line for line in err.splitlines() if "bad.png" in line] == [
        f"error: {folder / 'bad.png'}: not an image (or not a supported format: PNG, JPEG, WebP, BMP, TIFF, GIF)"]
    assert "summary: 3 done, 0 skipped, 1 failed" in out
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(p.name for p in out_local.iterdir()) == ["face0", "face1", "grey"]
    for name in names:
        a, b = tmp_path / name, out_local / name
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        assert _report(a) == _report(b), name
        for png in a.glob("*.png"):  # hr_KK, lr_KK, input, target: pixels bit-equal
            assert png.read_bytes() == (b / png.name).read_bytes(), (name, png.name)
    grey = _report(tmp_path / "grey")
    assert grey["input"]["grey"] is True and grey["lr_compares_with"] == "target.png"  # the input plan ran


def test_ray_engine_resumes_skipping_inputs_already_done(local_ray, folder, local_out, tmp_path, capsys):
    """A driver killed after some inputs left their report.json: the next run skips exactly those,
    and leaves their folders untouched."""
    out_local, _ = local_out
    import shutil

    shutil.copytree(out_local / "face0", tmp_path / "face0")  # what a killed driver left written
    before = (tmp_path / "face0" / "report.json").read_bytes()
    code, out, err = _run(["run", folder, "-o", tmp_path, *FAST, *RAY], capsys)
    assert code == 1
    assert "summary: 2 done, 1 skipped, 1 failed" in out
    assert f"{folder / 'face0.png'}: skipped (exists; use --overwrite)" in err
    assert (tmp_path / "face0" / "report.json").read_bytes() == before
    for name in ("face1", "grey"):
        assert _report(tmp_path / name) == _report(out_local / name)


def test_ray_engine_without_ray_is_a_usage_error(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when not installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    code, out, err = _run(["run", folder, "-o", tmp_path / "out", *FAST, "--engine", "ray"], capsys)
    assert code == 2
    assert err.strip().splitlines() == ["error: --engine ray: Ray is not installed; pip install 'pulse-sr[ray]'"]
    assert not (tmp_path / "out").exists()


def test_ray_options_need_the_ray_engine(folder, tmp_path, capsys):
    code, out, err = _run(["run", folder, "-o", tmp_path / "out", *FAST, "--ray-workers", "2"], capsys)
    assert (code, err.strip()) == (2, "error: --ray-workers: only with --engine ray")
    assert not (tmp_path / "out").exists()


def test_restore_refuses_the_ray_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """restore takes every run option, the engine's too, but runs on the local engine only."""
    from pulse_sr import cli

    code = cli.main(["restore", str(tmp_path / "none.png"), "-o", str(tmp_path / "o"), "--engine", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and "local engine only" in err and len(err.strip().splitlines()) == 1
    code = cli.main(["restore", str(tmp_path / "none.png"), "-o", str(tmp_path / "o"), "--ray-workers", "2"])
    assert code == 2 and "only with --engine ray" in capsys.readouterr().err

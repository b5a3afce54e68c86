"""Hostile inputs: each test is named after the failure it guards against."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pulse_sr import cli
from pulse_sr.io.files import child_path, result_name, staged_dir

FAST = ["--generator", "tiny", "--steps", "2", "--n", "1", "--quiet"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_SR_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def run(args: list, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def write_face(path: Path, side: int = 8, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(40, 216, (side, side, 3), dtype=np.uint8)).save(path, format="PNG")


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# -- 1. data loss: an input whose stem is "." or ".." ------------------------------------------
@pytest.mark.parametrize("command", ["run", "restore"])
@pytest.mark.parametrize("name", ["..png", "...png"])
def test_dot_stem_with_overwrite_keeps_other_results(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     command: str, name: str) -> None:
    """``..png`` has the stem ``.``: its result folder was OUTDIR itself, and ``--overwrite``
    moved the whole output folder aside and deleted it. ``...png`` (stem ``..``) pointed at
    OUTDIR's parent."""
    src, out = tmp_path / "in", tmp_path / "work" / "out"
    src.mkdir()
    out.parent.mkdir()
    write_face(src / "earlier.png", seed=1)
    code, _, err = run([command, src / "earlier.png", "-o", out, *FAST], capsys)
    assert code in (0, 3), err
    (out.parent / "keep.txt").write_text("a user's file beside the output folder")
    before_out, before_parent = snapshot(out), snapshot(out.parent)

    write_face(src / name, seed=2)
    for flags in ([], ["--overwrite"], ["--overwrite"]):
        code, _, err = run([command, src / name, "-o", out, *FAST, *flags], capsys)
        assert code in (0, 3), err
        assert "Traceback" not in err
    after = snapshot(out)
    for rel, data in before_out.items():
        assert after.get(rel) == data, rel  # every earlier result still there, unchanged
    assert snapshot(out.parent)["keep.txt"] == before_parent["keep.txt"]
    safe = result_name(Path(name).stem)
    assert (out / safe / "report.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted(["earlier", safe])


def test_result_name_is_always_a_fresh_child() -> None:
    for stem in ["", ".", "..", "...", ".hidden", "a/b", "a\\b", "CON", "nul.tar", "com1", "x.", "x ",
                 ".x.partial-1-abc", "face"]:
        name = result_name(stem)
        assert child_path("/out", name).parent == Path("/out")  # raises if not a plain child name
        assert not name.startswith(".") and name not in ("", ".", "..") and name[-1] not in ". "
        assert name.split(".")[0].upper() not in {"CON", "NUL", "COM1"}
    assert result_name("face") == "face" and result_name("my.face") == "my.face"  # safe names unchanged


def test_staged_dir_refuses_a_parent(tmp_path: Path) -> None:
    for bad in (tmp_path / "..", Path(str(tmp_path) + "/..")):
        with pytest.raises(ValueError):
            with staged_dir(bad, overwrite=True):
                pass
    assert tmp_path.is_dir()
    for bad in ("", ".", "..", "a/b"):
        with pytest.raises(ValueError):
            child_path(tmp_path, bad)

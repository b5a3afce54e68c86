"""Hostile inputs: each test is named after the failure it guards against."""
from __future__ import annotations

import json
import os
import subprocess
import sys
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


# -- 4. non-UTF-8 file names -----------------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "restore"])
def test_non_utf8_file_name_is_processed(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    """``bad\\xffbyte.png`` ran the whole search, then failed writing report.json ("unexpected
    UnicodeEncodeError"). The name is kept in report.json as a surrogate escape (its bytes come
    back with os.fsencode) and printed readably (``\\xff``), never crashing the output."""
    raw = b"bad\xffbyte"
    src = tmp_path / os.fsdecode(raw + b".png")
    write_face(src)
    out = tmp_path / "out"
    code, stdout, err = run([command, src, "-o", out, *FAST], capsys)
    assert code in (0, 3), err
    assert "unexpected" not in err and "Traceback" not in err
    final = out / os.fsdecode(raw)
    text = (final / "report.json").read_bytes().decode("utf-8")  # strict UTF-8: a valid JSON file
    report = json.loads(text)
    assert os.fsencode(report["input"]["path"]) == os.fsencode(src)
    assert "bad\\xffbyte.png" in stdout + err  # the odd byte shown, not a crash or a '?'


# -- degraded: two runs into one output folder -------------------------------------------------
def test_second_run_skips_an_input_another_run_holds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two ``run``s into the same OUTDIR both did every search, then the second failed every input.
    A run holds ``.<name>.lock`` (its pid) while it works on an input; another run skips that
    input with a line saying so. A lock whose process has died is stale and taken over."""
    write_face(tmp_path / "face.png")
    out = tmp_path / "out"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (out / ".face.lock").write_text(f"{other.pid}\n")
        code, stdout, err = run(["run", tmp_path / "face.png", "-o", out, *FAST], capsys)
        assert code == 0, err
        assert f"skipped (another pulse-sr run (pid {other.pid}) is writing {out / 'face'})" in err  # the per-input line: stderr, like every per-input line
        assert "0 done, 1 skipped, 0 failed" in stdout
        assert not (out / "face").exists()  # no search was run for it
        assert (out / ".face.lock").read_text() == f"{other.pid}\n"  # another run's lock is left alone
    finally:
        other.kill()
        other.wait()
    code, stdout, err = run(["run", tmp_path / "face.png", "-o", out, *FAST], capsys)  # now stale
    assert code in (0, 3), err
    assert "1 done, 0 skipped, 0 failed" in stdout and (out / "face" / "report.json").is_file()
    assert not (out / ".face.lock").exists()  # released when done


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    from pulse_sr.io.files import lock_path, try_lock, unlock

    final = tmp_path / "out" / "face"
    assert try_lock(final) is None  # claimed
    assert lock_path(final).read_text().strip() == str(os.getpid())
    assert try_lock(final) == os.getpid()  # held (by us): a second claim fails
    unlock(final)
    assert not lock_path(final).exists()
    lock_path(final).write_text("garbage")  # a lock being written right now: held, pid unknown
    assert try_lock(final) == 0


# -- degraded: a rerun's exit code -------------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "restore"])
def test_rerun_of_unconverged_result_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    """A rerun skipped results that never converged and exited 0, where the first run exited 3."""
    write_face(tmp_path / "f.png")
    args = [command, tmp_path / "f.png", "-o", tmp_path / "out", *FAST, "--steps", "1", "--eps", "1e-9"]
    code, _, err = run(args, capsys)
    assert code == 3, err
    code, stdout, err = run(args, capsys)
    assert code == 3, (stdout, err)
    assert "0 done, 1 skipped, 0 failed (1 skipped as done earlier" in stdout
    code, stdout, err = run([command, tmp_path / "f.png", "-o", tmp_path / "out2", *FAST, "--eps", "1"], capsys)
    assert code == 0, err
    code, stdout, err = run([command, tmp_path / "f.png", "-o", tmp_path / "out2", *FAST, "--eps", "1"], capsys)
    assert code == 0 and "0 done, 1 skipped, 0 failed" in stdout  # a converged result skips with 0


# -- degraded: folder scans ----------------------------------------------------------------------
def test_folder_scan_reports_every_file_not_taken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Folder scans dropped files without a word: each entry not taken is counted as skipped, with
    the reason."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    write_face(src / "a.png")
    write_face(src / ".hidden.png")
    (src / "notes.txt").write_text("not an image")
    (src / "gone.png").symlink_to(tmp_path / "nowhere.png")
    code, stdout, err = run(["run", src, "-o", tmp_path / "out", *FAST, "--eps", "1"], capsys)
    assert code == 0, err
    assert "summary: 1 done, 4 skipped, 0 failed" in stdout
    reasons = {ln.split(": ", 1)[1].split(" (", 1)[0]: ln.split(" (", 1)[1]
               for ln in stdout.splitlines() if ln.startswith("  skipped: ")}
    assert reasons.keys() == {str(src / n) for n in (".hidden.png", "notes.txt", "gone.png", "sub")}
    assert reasons[str(src / ".hidden.png")].startswith("hidden file")
    assert reasons[str(src / "notes.txt")].startswith("not a supported image type: .txt")
    assert reasons[str(src / "gone.png")].startswith("broken symbolic link")
    assert reasons[str(src / "sub")].startswith("a folder")

"""The ``pulse-sr`` command line, in-process (plus one subprocess run), with the tiny generator."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pulse_sr import cli

FAST = ["--generator", "tiny", "--steps", "3", "--n", "2", "--quiet"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_SR_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)


def write_rgb(path: Path, h: int = 8, w: int = 8, seed: int = 0) -> np.ndarray:
    """A smooth random colour image (8-bit RGB)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(40, 216, (h, w, 3), dtype=np.uint8)
    Image.fromarray(a).save(path)
    return a


def read(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float() / 255


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def partials(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".partial-" in p.name or ".old-" in p.name]


# -- batches -------------------------------------------------------------------------------
def test_folder_with_good_and_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    good = {"a": write_rgb(src / "a.png", seed=1), "b": write_rgb(src / "b.PNG", seed=2)}
    (src / "empty.png").write_bytes(b"")
    (src / "text.png").write_text("not an image\n")
    write_rgb(src / "full.png", 64, 64)
    data = (src / "full.png").read_bytes()
    (src / "full.png").unlink()
    (src / "cut.png").write_bytes(data[: len(data) // 2])
    write_rgb(src / "seven.png", 7, 7)
    write_rgb(src / "wide.png", 8, 16)
    (src / "notes.txt").write_text("ignored: not an image extension")

    code, stdout, stderr = run(["run", src, "-o", out, *FAST], capsys)
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]
    assert partials(out) == []
    err_lines = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(err_lines) == 5
    for name in ("empty.png", "text.png", "cut.png", "seven.png", "wide.png"):
        assert sum(name in ln for ln in err_lines) == 1, (name, stderr)
    # issue 14: a file the scan does not take is no longer dropped without a word: the summary
    # counts it as skipped, with the reason (it was "summary: 2 done, 0 skipped, 5 failed")
    assert "notes.txt" not in stderr and f"  skipped: {src / 'notes.txt'} (not a supported image type" in stdout
    assert "Traceback" not in stderr
    assert "summary: 2 done, 1 skipped, 5 failed" in stdout
    assert "--center-crop" in stderr and "4, 8 or 16" in stderr

    from pulse_sr.degradations.bicubic import bicubic_downsample

    for stem, pixels in good.items():
        d = out / stem
        assert sorted(os.listdir(d)) == ["hr_00.png", "hr_01.png", "input.png", "lr_00.png",
                                         "lr_01.png", "report.json"]
        rep = json.loads((d / "report.json").read_text())
        assert rep["input"]["original_size"] == [8, 8] and rep["input"]["used_size"] == [8, 8]
        assert rep["input"]["notes"] == [] and rep["input"]["path"].endswith(stem + (".png" if stem == "a" else ".PNG"))
        assert rep["generator"]["resolution"] == 32
        assert rep["settings"]["steps"] == 3 and rep["settings"]["n"] == 2
        assert rep["settings"]["seed"] == 0 and rep["settings"]["device"] == "cpu"
        assert rep["settings"]["eps"] == 2e-3 and rep["settings"]["bad_noise_layers"] == [17]
        assert [c["seed"] for c in rep["candidates"]] == [0, 1]
        assert rep["candidates"][1]["files"] == {"hr": "hr_01.png", "lr": "lr_01.png"}
        l2 = [c["final_l2"] for c in rep["candidates"]]
        assert rep["best_index"] == int(np.argmin(l2))
        assert rep["any_converged"] == any(c["converged"] for c in rep["candidates"])
        assert "not a recovery" in rep["notice"] and rep["torch_version"] == torch.__version__
        assert rep["seconds"] >= 0 and rep["pulse_sr_version"]
        assert f"-> {d}" in stdout + stderr

        assert torch.equal(read(d / "input.png"), torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
        for k in range(2):
            hr, lr = read(d / f"hr_{k:02d}.png"), read(d / f"lr_{k:02d}.png")
            assert hr.shape == (3, 32, 32) and lr.shape == (3, 8, 8)
            down = bicubic_downsample(hr[None], 4)[0].clamp(0, 1)
            assert float((down - lr).abs().max()) <= 1.5 / 255
            # the reported L2 is the proof: recompute it from the files (the engine's lr is
            # the unclamped downscale, so 8-bit files reproduce it only approximately)
            l2_files = float(((lr - read(d / "input.png")) ** 2).mean())
            assert l2_files == pytest.approx(l2[k], rel=0.05, abs=2e-4)


def test_skip_and_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img, out = tmp_path / "face.png", tmp_path / "out"
    write_rgb(img)
    args = ["run", img, "-o", out, *FAST, "--eps", "1"]
    # issue 15: every input's line goes to stderr whatever its outcome (it was stdout when
    # converged, stderr otherwise); the summary stays on stdout
    code, stdout, stderr = run(args, capsys)
    assert code == 0 and "2/2 candidates within eps" in stderr
    (out / "face" / "marker").write_text("old run")

    code, stdout, stderr = run(args, capsys)
    assert code == 0 and "face.png: skipped (exists; use --overwrite)" in stderr
    assert "0 done, 1 skipped, 0 failed" in stdout
    assert (out / "face" / "marker").exists()

    code, stdout, _ = run([*args, "--overwrite"], capsys)
    assert code == 0 and not (out / "face" / "marker").exists()
    assert (out / "face" / "report.json").exists() and partials(out) == []


def test_same_stem_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_rgb(tmp_path / "x.png")
    write_rgb(tmp_path / "x.jpg", seed=3)
    out = tmp_path / "out"
    code, _, stderr = run(["run", tmp_path / "x.png", tmp_path / "x.jpg", "-o", out, *FAST, "--eps", "1"], capsys)
    assert code == 1
    line = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(line) == 1 and str(tmp_path / "x.jpg") in line[0] and str(tmp_path / "x.png") in line[0]
    assert json.loads((out / "x" / "report.json").read_text())["input"]["path"].endswith("x.png")


def test_resize_and_center_crop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    write_rgb(tmp_path / "ten.png", 10, 10)
    code, _, stderr = run(["run", tmp_path / "ten.png", "-o", out, *FAST], capsys)
    assert code == 1 and "--resize" in stderr and "nearest: 8" in stderr
    assert not (out / "ten").exists()

    code, _, _ = run(["run", tmp_path / "ten.png", "-o", out, *FAST, "--resize"], capsys)
    rep = json.loads((out / "ten" / "report.json").read_text())
    assert rep["input"]["original_size"] == [10, 10] and rep["input"]["used_size"] == [8, 8]
    assert len(rep["input"]["notes"]) == 1 and read(out / "ten" / "input.png").shape == (3, 8, 8)

    pixels = write_rgb(tmp_path / "tall.png", 12, 8)  # 8 wide, 12 high
    code, _, _ = run(["run", tmp_path / "tall.png", "-o", out, *FAST, "--center-crop"], capsys)
    rep = json.loads((out / "tall" / "report.json").read_text())
    assert rep["input"]["original_size"] == [8, 12] and rep["input"]["used_size"] == [8, 8]
    centre = torch.from_numpy(pixels[2:10]).permute(2, 0, 1).float() / 255
    assert torch.equal(read(out / "tall" / "input.png"), centre)


def test_nothing_converges_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_rgb(tmp_path / "f.png")
    out = tmp_path / "out"
    code, _, stderr = run(["run", tmp_path / "f.png", "-o", out, *FAST, "--steps", "1", "--eps", "1e-9"], capsys)
    assert code == 3
    assert "WARNING no candidate within eps=1e-09" in stderr and "marked not converged" in stderr
    rep = json.loads((out / "f" / "report.json").read_text())
    assert rep["any_converged"] is False and not any(c["converged"] for c in rep["candidates"])
    # The original wrote nothing when eps was missed; we write every candidate, marked.
    assert all((out / "f" / f"{kind}_{k:02d}.png").is_file() for kind in ("hr", "lr") for k in range(2))


def test_rgba_grey_and_palette_inputs_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba[:4, :, 3] = 0  # transparent top half -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.full((8, 8), 90, dtype=np.uint8), "L").save(tmp_path / "grey.png")
    Image.fromarray(np.full((8, 8, 3), 60, dtype=np.uint8)).convert("P").save(tmp_path / "pal.png")
    out = tmp_path / "out"
    code, _, stderr = run(["run", tmp_path, "-o", out, *FAST, "--eps", "1"], capsys)
    assert code == 0, stderr
    target = read(out / "rgba" / "input.png")
    assert torch.allclose(target[:, 0, 0], torch.ones(3)) and target[0, 7, 0] == pytest.approx(200 / 255)
    assert torch.allclose(read(out / "grey" / "input.png"), torch.full((3, 8, 8), 90 / 255))


def test_save_intermediate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_rgb(tmp_path / "f.png")
    out = tmp_path / "out"
    args = ["run", tmp_path / "f.png", "-o", out, "--generator", "tiny", "--steps", "4", "--n", "2",
            "--quiet", "--save-intermediate", "--eps", "1e-9"]
    code, _, _ = run(args, capsys)
    assert code == 3
    d = out / "f"
    for k in range(2):
        frames = sorted(os.listdir(d / "intermediate" / f"cand_{k:02d}"))
        assert frames == [f"step_{s:03d}.png" for s in range(1, 5)]
        with Image.open(d / f"search_{k:02d}.gif") as gif:
            assert gif.n_frames > 1 and gif.info.get("loop") == 0
    rep = json.loads((d / "report.json").read_text())
    assert rep["candidates"][0]["files"]["gif"] == "search_00.gif"


# -- usage errors --------------------------------------------------------------------------
def test_bad_device(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    write_rgb(tmp_path / "f.png")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA, anywhere
    code, _, err = run(["run", tmp_path / "f.png", "-o", tmp_path / "o", *FAST, "--device", "cuda"], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "cuda" in err.lower()
    code, _, err = run(["run", tmp_path / "f.png", "-o", tmp_path / "o", *FAST, "--device", "toaster"], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "toaster" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("opt,value", [("--steps", "0"), ("--n", "0"), ("--eps", "0"), ("--lr", "-1"),
                                       ("--steps", "many"), ("--bad-noise-layers", "a,b")])
def test_bad_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str], opt: str, value: str) -> None:
    code, _, err = run(["run", tmp_path / "f.png", "-o", tmp_path / "o", "--generator", "tiny", opt, value], capsys)
    assert code == 2 and opt in err and "Traceback" not in err


def test_bad_loss_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["run", tmp_path / "f.png", "-o", tmp_path / "o", *FAST, "--loss", "7*BOGUS"], capsys)
    assert code == 2 and err.startswith("error: bad search settings") and err.count("\n") == 1


def test_stylegan1_missing_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_rgb(tmp_path / "f.png")
    code, _, err = run(["run", tmp_path / "f.png", "-o", tmp_path / "o", "--generator", "stylegan1",
                        "--weights", tmp_path / "nope", "--quiet"], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_choices_match_engine() -> None:
    from pulse_sr.search import settings

    assert cli.OPTIMIZERS == settings.OPTIMIZERS
    assert cli.SCHEDULES == settings.SCHEDULES
    assert cli.NOISE_TYPES == settings.NOISE_TYPES


def test_cli_import_is_light() -> None:
    code = "import sys, pulse_sr.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("pulse-sr ")
    assert cli.main(["run", "--help"]) == 0
    assert "--save-intermediate" in capsys.readouterr().out
    assert cli.main([]) == 2


# -- interruptions and bugs ----------------------------------------------------------------
def test_interrupt_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import pulse_sr.search.pulse as engine

    def boom(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "pulse_search", boom)
    write_rgb(tmp_path / "f.png")
    out = tmp_path / "out"
    code, _, err = run(["run", tmp_path / "f.png", "-o", out, *FAST], capsys)
    assert code == 130 and "interrupted" in err
    assert list(out.iterdir()) == []


def test_unexpected_error_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import pulse_sr.search.pulse as engine

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(engine, "pulse_search", boom)
    write_rgb(tmp_path / "f.png")
    write_rgb(tmp_path / "g.png", seed=1)
    code, stdout, err = run(["run", tmp_path / "f.png", tmp_path / "g.png", "-o", tmp_path / "out", *FAST], capsys)
    # one line per input where it happens, printed once (issue 15: the summary no longer
    # repeats it); no traceback; the next input still runs
    hint = "unexpected RuntimeError: kaboom (run with PULSE_SR_DEBUG=1 for a traceback)"
    assert code == 1 and "Traceback" not in err
    assert err.splitlines() == [f"error: {tmp_path / 'f.png'}: {hint}", f"error: {tmp_path / 'g.png'}: {hint}"]
    assert "summary: 0 done, 0 skipped, 2 failed" in stdout
    assert list((tmp_path / "out").iterdir()) == []

    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    code, _, err = run(["run", tmp_path / "f.png", "-o", tmp_path / "out", *FAST], capsys)
    assert code == 1 and "Traceback" in err


def test_subprocess_bad_file_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_text("definitely not a png")
    env = {**os.environ, "PULSE_SR_CACHE": str(tmp_path / "cache")}
    env.pop(cli.DEBUG_ENV, None)
    proc = subprocess.run(
        [sys.executable, "-m", "pulse_sr.cli", "run", str(tmp_path / "broken.png"), "-o",
         str(tmp_path / "out"), "--generator", "tiny", "--steps", "2", "--n", "1"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"error: {tmp_path / 'broken.png'}: not an image" in proc.stderr
    assert not (tmp_path / "out" / "broken").exists()


@pytest.mark.slow
def test_stylegan1_weights_folder_end_to_end(tmp_path: Path, weights_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A user's PULSE weights folder through --weights: one 1024 step, real file output."""
    from pulse_sr.generators.stylegan1 import load_stylegan1
    from pulse_sr.search import gaussian_fit as gf

    gen = load_stylegan1(weights_dir)
    # Seed the cache with a small fit under the default key, so the test skips the 1M-sample fit.
    mean, std = gf.fit_gaussian(gen, samples=4096)
    path = gf.gaussian_fit_cache_path(gen.weights_hash, gf.DEFAULT_SAMPLES, gf.DEFAULT_SEED)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"mean": mean, "std": std}, path)
    write_rgb(tmp_path / "face.png", 32, 32)
    out = tmp_path / "out"
    code, _, stderr = run(["run", tmp_path / "face.png", "-o", out, "--generator", "stylegan1",
                           "--weights", weights_dir, "--n", "1", "--steps", "1", "--quiet"], capsys)
    assert code == 3, stderr  # one step does not reach eps; results are written anyway
    rep = json.loads((out / "face" / "report.json").read_text())
    assert rep["generator"]["weights_sha256"] == gen.weights_hash
    assert rep["generator"]["resolution"] == 1024 and rep["input"]["used_size"] == [32, 32]
    with Image.open(out / "face" / "hr_00.png") as im:
        assert im.size == (1024, 1024)
    hr = read(out / "face" / "hr_00.png")[None]
    from pulse_sr.degradations.bicubic import bicubic_downsample

    assert torch.allclose(bicubic_downsample(hr, 32)[0].clamp(0, 1), read(out / "face" / "lr_00.png"), atol=2 / 255)


def test_zoo_generator_not_downloaded_needs_consent(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A zoo name that is not in the weights cache: one line saying how to get it, exit 2, nothing
    fetched and nothing written (stdin is not a terminal here, so nobody is asked)."""
    monkeypatch.setenv("PULSE_SR_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("PULSE_SR_ZOO_BASE_URL", "http://127.0.0.1:9/")  # would be refused if tried
    monkeypatch.delenv("PULSE_SR_ALLOW_DOWNLOAD", raising=False)
    write_rgb(tmp_path / "face.png", 32, 32)
    code, _, err = run(["run", tmp_path / "face.png", "-o", tmp_path / "out", "--generator",
                        "stylegan2-ffhq-1024", "--quiet"], capsys)
    assert code == 2
    assert err.strip() == ("error: stylegan2-ffhq-1024 is not downloaded; run `pulse-sr weights download "
                           "stylegan2-ffhq-1024` or pass --download (or set PULSE_SR_ALLOW_DOWNLOAD=1)")
    assert not (tmp_path / "out").exists()
    assert not [p for p in (tmp_path / "weights").rglob("*") if p.is_file()]


# -- settings: one builder for the CLI and the web app ---------------------------------------
@pytest.mark.parametrize("argv,body,faithful", [
    (["--steps", "50", "--eps", "0.003", "--lr", "0.4"], {"steps": 50, "eps": 0.003, "lr": 0.4}, False),
    ([], {}, False),
    (["--faithful", "--steps", "7"], {"steps": 7}, True),
    (["--no-lean-memory", "--mode", "fast", "--bad-noise-layers", "1,2"],
     {"lean_memory": False, "mode": "fast", "bad_noise_layers": [1, 2]}, False),
])
def test_cli_and_web_build_identical_settings(argv: list[str], body: dict, faithful: bool) -> None:
    """The CLI's settings are front_end.build_settings of what the user gave, exactly what the web
    app builds from the same request's JSON body; lean memory is on unless turned off (the web
    app used to run without it)."""
    from pulse_sr.cli.common import settings_from_args
    from pulse_sr.front_end import build_settings

    args = cli.build_parser().parse_args(["run", "x.png", "-o", "o", *argv])
    from_cli = settings_from_args(args)
    assert from_cli == build_settings(body, faithful=faithful)
    assert from_cli.lean_memory is body.get("lean_memory", True)
    if hasattr(from_cli, "given"):
        assert set(from_cli.given) == set(body)  # an explicit --lr 0.4 is expressed, omitted options are not


def test_search_options_default_to_none() -> None:
    """No literal re-declaring of the settings' defaults in the CLI: every option named after a
    SearchSettings field defaults to None (build_settings fills what the user did not give)."""
    import dataclasses

    from pulse_sr.search.settings import SearchSettings

    fields = {f.name for f in dataclasses.fields(SearchSettings)}
    parser = cli.build_parser()
    for command in ("run", "restore"):
        sub = parser._subparsers._group_actions[0].choices[command]
        options = {a.dest: a.default for a in sub._actions if a.dest in fields}
        assert len(options) >= 17, options
        assert {k: v for k, v in options.items() if v is not None} == {}, command


def test_help_states_the_library_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from pulse_sr.search.settings import SearchSettings

    assert cli.main(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    d = SearchSettings()
    assert f"default {d.steps}" in text and f"default {d.eps:g}" in text and f"default {d.lr}" in text

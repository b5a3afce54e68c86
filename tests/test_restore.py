"""Paste-back and ``pulse-sr restore``: align, search, paste; folders, resume after kill -9."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pulse_sr import cli
from pulse_sr.degradations.bicubic import bicubic_downsample
from pulse_sr.io.align import align_detections, detect_faces, frame_corners, warp_face
from pulse_sr.io.paste import edge_mask, output_scale, paste_faces

sys.path.insert(0, str(Path(__file__).parent))
from test_align import HEAD_CENTRE, background, place_heads, similarity

# --force: these photos' faces are larger than the tiny generator's 32 px, which restore
# leaves untouched by default (issue 15); the tests here are about the paste-back itself.
FAST = ["--generator", "tiny", "--steps", "2", "--n", "2", "--quiet", "--force"]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)


@pytest.fixture(scope="module")
def astro() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def read(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float() / 255


def run(args: list, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def outside(corners: np.ndarray, h: int, w: int, margin: float = 3.0) -> torch.Tensor:
    """``[h, w]`` bool: pixels whose centre lies outside the corners' bounding box + margin."""
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    x0, y0 = corners.min(0) - margin
    x1, y1 = corners.max(0) + margin
    return (xs < x0) | (xs > x1) | (ys < y0) | (ys > y1)


def partials(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".partial-" in p.name or ".old-" in p.name]


# -- paste-back, library level -------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 1.7])
def test_paste_back_inverts_the_alignment(astro: np.ndarray, scale: float) -> None:
    """Aligning the astronaut and pasting the aligned crop back gives the photo again:
    far from the face exactly its bicubic upscale, on the face nearly (two resamplings)."""
    face = align_detections(astro, detect_faces(astro), resolution=256)[0]
    canvas, (sx, sy) = paste_faces(astro, [(face.aligned, face.matrix)], scale=scale)
    photo = torch.from_numpy(astro).permute(2, 0, 1).float() / 255
    h, w = round(512 * scale), round(512 * scale)
    assert canvas.shape == (3, h, w) and (sx, sy) == (w / 512, h / 512)
    if scale == 1.0:
        ref = photo
    else:
        ref = F.interpolate(photo[None], size=(h, w), mode="bicubic", align_corners=False)[0].clamp(0, 1)
    corners = frame_corners(face.matrix, 256) * np.array([sx, sy])
    far = outside(corners, h, w)
    assert far.float().mean() > 0.5
    assert torch.equal(canvas[:, far], ref[:, far])
    # Deep inside the frame (mask 1): the pasted crop lines up with the photo.
    inner = ~outside(corners.mean(0) + (corners - corners.mean(0)) * 0.6, h, w, margin=0)
    diff = (canvas - ref).abs()[:, inner].mean()
    assert diff < 0.02
    # A crop pasted 4 face pixels off would not line up: the check above can fail.
    shifted = face.matrix @ np.array([[1, 0, 4], [0, 1, 0], [0, 0, 1]], float)
    wrong, _ = paste_faces(astro, [(face.aligned, shifted)], scale=scale)
    assert (wrong - ref).abs()[:, inner].mean() > 2 * diff


def test_edge_mask_by_hand() -> None:
    r, feather = 100, 0.1  # ramp over 10 face pixels
    u = torch.tensor([-1.0, 0.0, 2.5, 5.0, 10.0, 50.0, 97.5, 101.0])
    v = torch.full_like(u, 50.0)
    got = edge_mask(u, v, r, feather)
    # smoothstep(t) = t^2 (3 - 2t): t = 0.25 -> 0.15625, t = 0.5 -> 0.5
    assert torch.allclose(got, torch.tensor([0.0, 0.0, 0.15625, 0.5, 1.0, 1.0, 0.15625, 0.0]))
    hard = edge_mask(u, v, r, 0.0)
    assert hard.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_output_scale_rules() -> None:
    assert output_scale(512, 512, [135.7], 64) == 1.0  # face larger than the generator: no upscale
    assert output_scale(16, 16, [16.0], 64) == 4.0  # an aligned 16 px face gets all 64 px
    assert output_scale(300, 200, [40.0, 20.0], 64) == 3.2  # the smallest face decides
    assert output_scale(512, 256, [8.0], 64, max_side=1024) == 2.0  # capped
    assert output_scale(8000, 4000, [500.0], 64, max_side=4000) == 0.5  # a huge photo shrinks
    assert output_scale(100, 100, [50.0], 64, scale=3.0) == 3.0


# -- pulse-sr restore -------------------------------------------------------------------------
def test_restore_astronaut(tmp_path: Path, astro: np.ndarray, capsys: pytest.CaptureFixture[str]) -> None:
    Image.fromarray(astro).save(tmp_path / "astro.png")
    out = tmp_path / "out"
    code, _, err = run(["restore", tmp_path / "astro.png", "-o", out, *FAST, "--size", "8",
                             "--pick", "1"], capsys)
    assert code in (0, 3), err
    d = out / "astro"
    rep = json.loads((d / "report.json").read_text())
    assert len(rep["faces"]) == 1 and rep["faces"][0]["picked"] == 1
    face = rep["faces"][0]
    assert sorted(p.name for p in (d / "face_00").iterdir()) == [
        "aligned.png", "hr_00.png", "hr_01.png", "input.png", "lr_00.png", "lr_01.png", "report.json"]
    # The search input is PULSE's bicubic downscale of the aligned crop.
    aligned = read(d / "face_00" / "aligned.png")
    assert aligned.shape == (3, 32, 32)
    down = bicubic_downsample(aligned[None], 4)[0].clamp(0, 1)
    assert (down - read(d / "face_00" / "input.png")).abs().max() < 3 / 255
    # The face is large in the photo (about 170 px for 32): the photo keeps its size.
    restored = read(d / "restored.png")
    assert restored.shape == (3, 512, 512) and rep["output"]["scale"] == [1.0, 1.0]
    photo = torch.from_numpy(astro).permute(2, 0, 1).float() / 255
    m = np.array(face["matrix"])
    far = outside(frame_corners(m, 32), 512, 512)
    assert torch.equal(restored[:, far], photo[:, far])
    assert (restored - photo).abs().amax(0)[~far].max() > 0.1  # the face did change
    # Pulled back through the same matrix, the restored face is candidate 1 (--pick 1).
    back = warp_face(restored, m, 32)[:, 8:24, 8:24]
    d1 = (back - read(d / "face_00" / "hr_01.png")[:, 8:24, 8:24]).abs().mean()
    d0 = (back - read(d / "face_00" / "hr_00.png")[:, 8:24, 8:24]).abs().mean()
    assert d1 < 0.03 and d1 < d0
    comp = read(d / "comparison.png")
    assert comp.shape[1] == 512 and comp.shape[2] > 1024
    assert torch.equal(comp[:, :, :512], photo) and torch.equal(comp[:, :, -512:], restored)


def test_restore_planted_tiny_face(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An 8x8 input (taken as an aligned face) made by downscaling the generator's own face:
    the restored photo is the chosen face itself and downscales to the input."""
    from pulse_sr.generators.tiny import make_tiny_generator

    g = make_tiny_generator()
    with torch.no_grad():
        x = ((g(torch.randn(1, g.z_dim, generator=torch.Generator().manual_seed(3))) + 1) / 2).clamp(0, 1)
    lr = bicubic_downsample(x, 4)[0].clamp(0, 1)
    Image.fromarray((lr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / "tiny.png")
    eps = 5e-3
    code, _, err = run(["restore", tmp_path / "tiny.png", "-o", tmp_path / "o", "--generator", "tiny",
                        "--steps", "100", "--n", "1", "--eps", str(eps), "--quiet"], capsys)
    assert code == 0, err
    d = tmp_path / "o" / "tiny"
    rep = json.loads((d / "report.json").read_text())
    assert rep["faces"][0]["mode"] == "aligned" and rep["faces"][0]["picked_converged"]
    restored = read(d / "restored.png")
    assert torch.equal(restored, read(d / "face_00" / "hr_00.png"))
    target = read(tmp_path / "tiny.png")
    l2 = float(((bicubic_downsample(restored[None], 4)[0] - target) ** 2).mean())
    assert l2 <= eps + 1e-4  # + the 8-bit rounding of restored.png


def test_run_align_is_restore(tmp_path: Path, astro: np.ndarray, capsys: pytest.CaptureFixture[str]) -> None:
    """``pulse-sr run PHOTO --align`` writes exactly what ``pulse-sr restore PHOTO`` writes."""
    Image.fromarray(astro[::2, ::2].copy()).save(tmp_path / "astro.png")
    args = [*FAST, "--size", "8", "--feather", "0.2"]
    code_r, _, err_r = run(["restore", tmp_path / "astro.png", "-o", tmp_path / "r", *args], capsys)
    code_a, _, err_a = run(["run", tmp_path / "astro.png", "-o", tmp_path / "a", "--align", *args], capsys)
    assert code_r in (0, 3) and code_a == code_r, (err_r, err_a)
    names = sorted(p.relative_to(tmp_path / "r") for p in (tmp_path / "r").rglob("*.png"))
    assert names == sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert Path("astro/restored.png") in names and Path("astro/face_00/hr_01.png") in names
    for name in names:
        assert torch.equal(read(tmp_path / "r" / name), read(tmp_path / "a" / name)), name
    rep_r = json.loads((tmp_path / "r" / "astro" / "report.json").read_text())
    rep_a = json.loads((tmp_path / "a" / "astro" / "report.json").read_text())
    assert rep_a["faces"][0]["matrix"] == rep_r["faces"][0]["matrix"]


def test_restore_folder_mixed_then_resume(tmp_path: Path, astro: np.ndarray,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(src / "a_tiny.png")
    Image.fromarray(astro).resize((256, 256)).convert("L").save(src / "b_grey.png")
    background(200, 150).save(src / "c_noface.png")
    (src / "d_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    two = place_heads(background(640, 400, seed=2), astro,
                      [similarity(0.0, 0.8, HEAD_CENTRE, (170, 200)), similarity(8.0, 0.9, HEAD_CENTRE, (470, 200))])
    Image.fromarray(two).save(src / "e_two.jpg", quality=92)
    args = ["restore", src, "-o", out, *FAST, "--size", "8"]
    code, stdout, err = run(args, capsys)
    assert code == 1
    assert "summary: 3 done, 0 skipped, 2 failed" in stdout
    assert "c_noface.png: no face found" in err and "d_corrupt.png" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["a_tiny", "b_grey", "e_two"]
    rep = json.loads((out / "e_two" / "report.json").read_text())
    assert [f["folder"] for f in rep["faces"]] == ["face_00", "face_01"]
    xs = [np.array(f["frame_corners"]).mean(0)[0] for f in rep["faces"]]
    assert xs[0] < 320 < xs[1]  # left to right
    assert read(out / "a_tiny" / "restored.png").shape == (3, 32, 32)  # 8 px face -> all 32 px
    # Re-running resumes: finished photos are skipped, the failures fail again.
    code, stdout, err = run(args, capsys)
    assert code == 1 and "summary: 0 done, 3 skipped, 2 failed" in stdout
    assert partials(out) == []


def test_restore_kill_9_then_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rng = np.random.default_rng(2)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(src / f"{name}.png")
    # 40 steps per photo (no early stop): "a" finishes, then the run is killed inside "b".
    slow = ["--generator", "tiny", "--n", "1", "--steps", "40", "--run-all-steps", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "pulse_sr.cli", "restore", str(src), "-o", str(out), *slow],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(".b.partial-*")) and time.monotonic() < deadline:
            assert proc.poll() is None, "restore ended before it could be killed"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # What looks finished is finished: "a" with its complete report; "b" only as a hidden
    # staging folder; "c" not started.
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == ["a"]
    rep = json.loads((out / "a" / "report.json").read_text())
    assert all((out / "a" / f["folder"] / "report.json").is_file() for f in rep["faces"])
    assert [p.name.split(".partial-")[0] for p in partials(out)] == [".b"]
    code, stdout, err = run(["restore", src, "-o", out, *FAST], capsys)
    assert code in (0, 3), err
    assert "summary: 2 done, 1 skipped, 0 failed" in stdout
    assert partials(out) == []  # the dead process's staging folder is cleaned up
    for name in ("a", "b", "c"):
        rep = json.loads((out / name / "report.json").read_text())
        assert (out / name / rep["output"]["restored"]).is_file()
    code, stdout, _ = run(["restore", src, "-o", out, *FAST], capsys)
    assert "summary: 0 done, 3 skipped, 0 failed" in stdout


def test_restore_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    code, _, err = run(["restore", tmp_path / "x.png", "-o", tmp_path / "o", *FAST, "--pick", "2"], capsys)
    assert code == 2 and "--pick 2" in err
    code, _, err = run(["restore", tmp_path / "x.png", "-o", tmp_path / "o", *FAST, "--size", "5"], capsys)
    assert code == 2 and "--size 5" in err and "4, 8, 16" in err
    assert not (tmp_path / "o").exists()


def test_restore_takes_every_run_option() -> None:
    """restore's parser is run's (except run's own --align) plus the face and paste-back options;
    the search settings come from the same names."""
    from pulse_sr.cli.align import settings_from_args

    parser = cli.build_parser()
    run_flags = {a.dest for a in parser._subparsers._group_actions[0].choices["run"]._actions}
    restore = parser._subparsers._group_actions[0].choices["restore"]
    assert run_flags - {"align"} <= {a.dest for a in restore._actions}
    assert "align" not in {a.dest for a in restore._actions}
    args = parser.parse_args(["restore", "x.png", "-o", "o", "--steps", "7", "--eps", "0.01",
                              "--bad-noise-layers", "1,2", "--tile-latent", "--pick", "1", "--max-faces", "3"])
    s = settings_from_args(args)
    assert (s.steps, s.eps, s.bad_noise_layers, s.tile_latent) == (7, 0.01, (1, 2), True)
    assert (args.pick, args.max_faces, args.face_mode, args.max_pixels) == (1, 3, "auto", 8192 * 8192)

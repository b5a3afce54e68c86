"""Issue 13 end to end: real kinds of input through the front ends' plan and the search.

Planted solutions: a face of the default generator (dcgan-digiface, 64 px) made into the
input as a user would get it: pixelated (PNG and JPEG q80, 4 and 8 px blocks, a random
phase), black and white, noisy, partly transparent. Each is read as the CLI reads it
(:func:`pulse_sr.io.images.load_input`, :func:`pulse_sr.input_plan.plan_input`), searched with
the front ends' default settings, and checked against the truth it was made from.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pulse_sr.degradations.bicubic import bicubic_downsample
from pulse_sr.degradations.grey import luma
from pulse_sr.front_end import build_settings
from pulse_sr.input_plan import plan_input
from pulse_sr.io.images import load_input
from pulse_sr.search.pulse import pulse_search

STEPS = 100


def face(gen, seed: int) -> torch.Tensor:
    """A generator face ``[1, 3, R, R]`` in [0, 1] with a known latent."""
    z = torch.randn(1, gen.z_dim, generator=torch.Generator().manual_seed(2000 + seed))
    with torch.no_grad():
        return ((gen(z) + 1) / 2).clamp(0, 1)


def to8(x: torch.Tensor) -> np.ndarray:
    """``[C, H, W]`` in [0, 1] -> HxWxC uint8."""
    return (x.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)


def saved(path: Path, a: np.ndarray, **kw) -> Path:
    Image.fromarray(a.squeeze()).save(path, **kw)
    return path


def plan_of(path: Path, gen, **kw):
    img, known, mode = load_input(path)
    return plan_input(img, gen.resolution, eps=2e-3, name=str(path), mode=mode, known=known, **kw)


def search(gen, plan, n: int = 2):
    settings = build_settings({"steps": STEPS})
    return pulse_search(gen, plan.target, n=n, seed=0, settings=settings, operator=plan.operator,
                        mask=plan.mask, threshold=plan.threshold)


def l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean())


@pytest.mark.parametrize("k,fmt,seed", [(4, "PNG", 0), (8, "JPEG", 1)])
def test_mosaic_is_detected_and_matched_against_its_true_block_means(dcgan, tmp_path: Path, k: int, fmt: str,
                                                                     seed: int) -> None:
    x = face(dcgan, seed)
    grid = F.avg_pool2d(x, 4)[0]  # the true block means: a 16x16 grid, box factor 4
    g8 = to8(grid)
    big = np.repeat(np.repeat(g8, k, 0), k, 1)
    rng = np.random.default_rng(seed)
    dx, dy = (int(v) for v in rng.integers(1, k, size=2))  # a crop that starts mid-block
    side = 15 * k + 1  # still 16 cells: partial ones at both borders
    crop = big[dy:dy + side, dx:dx + side]
    path = saved(tmp_path / f"m.{fmt.lower()}", crop, **({"quality": 80} if fmt == "JPEG" else {}))
    plan = plan_of(path, dcgan)
    assert plan.kind == "mosaic" and plan.operator.describe() == {"name": "box", "factor": 4}
    assert plan.analysis.mosaic.k == k and plan.target.shape == (3, 16, 16)
    assert "mosaic" in plan.summary() and plan.threshold == 2e-3
    res = search(dcgan, plan)
    assert bool(res.converged.any())
    best = int(res.l2.argmin())
    # against the true block means (not the grid read from the file): by the triangle inequality
    # ||lr - true|| <= ||lr - read|| + ||read - true||, the read grid's own error (8-bit rounding,
    # JPEG) measured here, not assumed
    read_err = l2(plan.target, grid)
    bound = (res.l2[best].sqrt() + read_err ** 0.5) ** 2
    assert l2(res.lr[best], grid) <= float(bound) * (1 + 1e-5)
    assert float(bound) <= 2e-3 + 4 * (2e-3 * read_err) ** 0.5 + read_err
    # lr is A(hr): the box means of the face, the same grid as the target
    assert torch.allclose(res.lr[best], F.avg_pool2d(res.hr[best:best + 1], 4)[0], atol=1e-6)


def test_grey_input_matched_on_luma_faces_stay_in_colour(dcgan, tmp_path: Path) -> None:
    x = face(dcgan, 2)
    y = luma(bicubic_downsample(x, 4))[0]  # [1, 16, 16]
    path = saved(tmp_path / "bw.png", to8(y))  # a mode-L file
    plan = plan_of(path, dcgan)
    assert plan.grey and plan.kind == "face" and plan.target.shape == (1, 16, 16)
    res = search(dcgan, plan)
    best = int(res.l2.argmin())
    assert bool(res.converged[best])
    # luma L2, recomputed independently of the operator object
    own = luma(bicubic_downsample(res.hr[best:best + 1], 4))[0]
    assert l2(own, plan.target) <= 2e-3 * (1 + 1e-4)
    hr = res.hr[best]
    assert float((hr[0] - hr[1]).abs().mean()) > 1e-2  # colour: R and G differ
    assert "chroma_distance" in res.extras[best]
    assert res.lr.shape[1] == 1  # lr_XX.png in the input's own terms


def test_noisy_input_converges_under_the_estimated_threshold(dcgan, tmp_path: Path) -> None:
    x = face(dcgan, 3)
    clean = bicubic_downsample(x, 4)[0]
    rng = np.random.default_rng(3)
    noisy = np.clip(clean.permute(1, 2, 0).numpy() + rng.normal(0, 16 / 255, (16, 16, 3)), 0, 1)
    path = saved(tmp_path / "noisy.png", (noisy * 255).round().astype(np.uint8))
    plan = plan_of(path, dcgan)
    # the estimate is within 10 % of 16/255 (tests/test_noise_estimate.py), so the threshold lies
    # between (0.9 sigma)^2 + eps and (1.1 sigma)^2 + eps
    sigma = 16 / 255
    assert (0.9 * sigma) ** 2 + 2e-3 <= plan.threshold <= (1.1 * sigma) ** 2 + 2e-3
    res = search(dcgan, plan)
    best = int(res.l2.argmin())
    assert bool(res.converged[best])
    own = bicubic_downsample(res.hr[best:best + 1], 4)[0]
    assert l2(own, clean) <= 3e-3  # the target: close to the clean input


def test_transparent_pixels_are_unknown(dcgan, tmp_path: Path) -> None:
    x = face(dcgan, 4)
    lr = to8(bicubic_downsample(x, 4)[0])
    rgba = np.dstack([lr, np.full((16, 16), 255, np.uint8)])
    rgba[:6, :6, :3] = (0, 255, 0)  # garbage under fully transparent pixels
    rgba[:6, :6, 3] = 0
    path = saved(tmp_path / "rgba.png", rgba)
    plan = plan_of(path, dcgan)
    assert plan.mask is not None and int((~plan.mask).sum()) == 36 and not bool(plan.mask[6:, :].all() is False)
    res = search(dcgan, plan)
    best = int(res.l2.argmin())
    assert bool(res.converged[best])
    known = plan.mask.expand(3, -1, -1)
    err = (res.lr[best] - plan.target).pow(2)[known].mean()
    assert float(err) == pytest.approx(float(res.l2[best]), rel=1e-4)  # L2 over known pixels only
    # the garbage was ignored: the face under it is not green
    assert float(err) <= 2e-3 and float((res.lr[best][1, :6, :6] - 1).abs().mean()) > 0.1


def test_faithful_pins_bicubic_rgb_no_noise_latent_range(dcgan, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    y = luma(bicubic_downsample(face(dcgan, 5), 4))[0]
    noisy = np.clip(y[0].numpy()[:, :, None] + rng.normal(0, 16 / 255, (16, 16, 3)), 0, 1)  # a colour sensor's
    path = saved(tmp_path / "old.png", (noisy * 255).round().astype(np.uint8))
    auto = plan_of(path, dcgan)
    # noisy RGB whose channels agree only up to noise is matched as colour (input_plan._noisy_colour)
    assert not auto.grey and auto.threshold > 2e-3
    # regression: a noisy grey-mode file read as three equal channels gave a noise estimate of 0
    # (32 px: one-channel estimates are used from 32 px on, input_plan.MIN_NOISE_SIDE)
    y32 = luma(bicubic_downsample(face(dcgan, 5), 2))[0, 0].numpy()
    grey_file = saved(tmp_path / "old_l.png", (np.clip(y32 + rng.normal(0, 16 / 255, (32, 32)), 0, 1)
                                                * 255).round().astype(np.uint8))
    assert plan_of(grey_file, dcgan).noise_sigma >= 0.9 * 16 / 255
    plan = plan_of(path, dcgan, faithful=True)
    assert plan.operator.describe()["name"] == "bicubic" and not plan.grey and plan.target.shape[0] == 3
    assert plan.threshold == 2e-3 and plan.noise_sigma == 0.0
    s = build_settings({}, faithful=True)
    assert (s.range, s.mode, s.start_pool, s.compile) == ("latent", "faithful", 1, "off")
    assert build_settings({}).range == "auto"


def test_photo_points_to_restore_and_mosaic_grid_error_names_the_grid(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from pulse_sr.cli import main

    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 100)[None, :, None].repeat(100, 0).repeat(3, 2)
    photo = saved(tmp_path / "photo.png", np.clip(smooth + rng.normal(0, 2, smooth.shape), 0, 255).astype(np.uint8))
    grid = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    mosaic = saved(tmp_path / "grid12.png", np.repeat(np.repeat(grid, 8, 0), 8, 1))
    code = main(["run", str(photo), str(mosaic), "-o", str(tmp_path / "out"), "--generator", "tiny", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "pulse-sr restore" in err and "--align" in err
    assert "mosaic of 8 px blocks detected" in err and "12x12 block grid" in err
    assert "resize the block grid to the nearest: 8" in err or "resize the block grid to the nearest: 16" in err


def test_run_writes_the_plan_into_report_and_target_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pulse_sr.cli import main
    from pulse_sr.generators.tiny import make_tiny_generator

    gen = make_tiny_generator()
    y = luma(bicubic_downsample(face(gen, 6), 2))[0]
    path = saved(tmp_path / "bw.png", to8(y))
    code = main(["run", str(path), "-o", str(tmp_path / "out"), "--generator", "tiny", "--steps", "3", "--n", "1",
                 "--quiet", "--range", "latent"])
    cap = capsys.readouterr()
    out = cap.out + cap.err
    assert code in (0, 3) and "grey input matched on luma, faces in colour" in out
    rep = json.loads((tmp_path / "out" / "bw" / "report.json").read_text())
    assert rep["input"]["grey"] and rep["input"]["operator"]["name"] == "grey"
    assert rep["input"]["faces"] == "colour" and rep["lr_compares_with"] == "target.png"
    assert "chroma_distance" in rep["candidates"][0] and rep["threshold"] == rep["input"]["threshold"]
    with Image.open(tmp_path / "out" / "bw" / "lr_00.png") as im:
        a = np.asarray(im.convert("RGB")).astype(int)
    assert (a[..., 0] == a[..., 1]).all()  # lr in the input's own terms: luma
    with Image.open(tmp_path / "out" / "bw" / "hr_00.png") as im:
        h = np.asarray(im.convert("RGB")).astype(int)
    assert not (h[..., 0] == h[..., 1]).all()  # the face in colour
    code = main(["run", str(path), "-o", str(tmp_path / "out2"), "--generator", "tiny", "--steps", "3", "--n", "1",
                 "--quiet", "--range", "latent", "--grey-output"])
    with Image.open(tmp_path / "out2" / "bw" / "hr_00.png") as im:
        h = np.asarray(im.convert("RGB")).astype(int)
    assert (h[..., 0] == h[..., 1]).all()
    assert json.loads((tmp_path / "out2" / "bw" / "report.json").read_text())["input"]["faces"] == "grey"


def test_bad_degradation_or_noise_sigma_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pulse_sr.cli import main

    path = saved(tmp_path / "a.png", np.zeros((16, 16, 3), np.uint8))
    for flag, value in (("--degradation", "foo"), ("--noise-sigma", "loud"), ("--noise-sigma", "300")):
        code = main(["run", str(path), "-o", str(tmp_path / "out"), "--generator", "tiny", flag, value])
        err = capsys.readouterr().err
        assert code == 2 and flag in err and "Traceback" not in err
    assert not (tmp_path / "out" / "a").exists()

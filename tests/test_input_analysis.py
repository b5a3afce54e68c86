"""Input analysis: face / mosaic / photo in that order, black-and-white detection, the
noise sigma of what is matched, reasons, JSON-safe reports."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from pulse_sr.degradations import make_operator, masked_l2
from pulse_sr.degradations.detect import LUMA_NOISE_FACTOR, analyse_input
from pulse_sr.degradations.greyscale import is_grey
from pulse_sr.errors import SizeError

import skimage.data as skdata  # noqa: E402 - the test extra installs scikit-image; never skipped


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def lfw_face(i: int, side: int) -> np.ndarray:
    f = skdata.lfw_subset()[i]
    a = np.asarray(Image.fromarray((f * 255).round().astype(np.uint8)).resize((side, side), Image.BICUBIC))
    return np.repeat(a[:, :, None], 3, axis=2)


def astronaut_face(side: int) -> np.ndarray:
    crop = skdata.astronaut()[20:200, 150:330]
    return np.asarray(Image.fromarray(crop).resize((side, side), Image.BICUBIC))


def blocks(grid: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(grid, k, 0), k, 1)


# ---------------------------------------------------------------- black and white


@pytest.mark.parametrize("quality", [None, 70, 80, 90, 95])
def test_grey_images_are_grey_through_jpeg(quality: int | None) -> None:
    greys = [lfw_face(i, 32) for i in range(5)]
    greys.append(np.asarray(Image.fromarray(skdata.astronaut()).convert("L").convert("RGB")))
    for img in greys:
        assert is_grey(img if quality is None else jpeg(img, quality))


@pytest.mark.parametrize("quality", [None, 70, 95])
@pytest.mark.parametrize("saturation", [1.0, 0.3, 0.15])
def test_colour_faces_even_desaturated_are_not_grey(saturation: float, quality: int | None) -> None:
    for img in (astronaut_face(16), astronaut_face(32), astronaut_face(64), skdata.chelsea()):
        d = np.asarray(ImageEnhance.Color(Image.fromarray(img)).enhance(saturation))
        assert not is_grey(d if quality is None else jpeg(d, quality)), (saturation, quality, img.shape)


def test_noisy_grey_scan_is_grey_and_grey_modes_are_grey() -> None:
    rng = np.random.default_rng(0)
    img = lfw_face(3, 32) / 255
    noisy = np.clip(img + rng.normal(0, 16 / 255, img.shape), 0, 1)  # noise per channel, as a colour sensor's
    assert is_grey(noisy)
    assert is_grey(np.zeros((8, 8)))
    assert is_grey(astronaut_face(16), mode="L")
    assert not is_grey(astronaut_face(16), mode="RGB")


# ---------------------------------------------------------------- kinds


def test_valid_size_is_a_face_even_if_it_looks_like_a_mosaic() -> None:
    img = blocks(astronaut_face(16), 2)  # 32x32 of 2 px blocks: a valid size comes first
    a = analyse_input(img, 64)
    assert a.kind == "face" and a.operator == "bicubic" and a.factor == 2 and a.mosaic is None
    np.testing.assert_allclose(a.target, img.transpose(2, 0, 1) / 255, rtol=0, atol=2.0**-24)
    assert "a face" in a.reasons[0]


def test_grey_face_target_is_luma_and_noise_is_in_luma_terms() -> None:
    rng = np.random.default_rng(1)
    clean = lfw_face(7, 32)
    noisy = (np.clip(clean / 255 + rng.normal(0, 16 / 255, clean.shape), 0, 1) * 255).round().astype(np.uint8)
    a = analyse_input(noisy, 64)
    assert a.kind == "face" and a.grey and a.target.shape == (1, 32, 32)
    luma = (noisy / 255) @ np.array([0.299, 0.587, 0.114])
    # float32 of a float64 luma: 2**-24 relative on values <= 1
    np.testing.assert_allclose(a.target[0], luma, rtol=0, atol=2.0**-24)
    true = np.sqrt(((noisy / 255 - clean / 255) ** 2).mean())
    # 32 px grey-as-RGB faces are within 10% (tests/test_noise_estimate.py)
    assert a.noise.sigma == pytest.approx(true, rel=0.10)
    assert a.noise_sigma == pytest.approx(a.noise.sigma * LUMA_NOISE_FACTOR, rel=1e-12)
    assert any("noise sigma" in r for r in a.reasons) and any("black and white" in r for r in a.reasons)


def test_clean_colour_face_has_no_noise_and_keeps_rgb() -> None:
    a = analyse_input(astronaut_face(16), 64)
    assert a.kind == "face" and not a.grey and a.target.shape == (3, 16, 16)
    assert a.noise_sigma == 0.0 and any("no noise detected" in r for r in a.reasons)


def test_mosaic_of_a_generator_face_is_the_box_target(dcgan) -> None:
    """Planted: a DCGAN face, box-downscaled to 16x16, shown as 8 px blocks with a phase,
    saved as JPEG q 90; the analysis must hand back a target the face itself matches."""
    z = torch.randn(1, dcgan.z_dim, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        hr = ((dcgan(z) + 1) / 2).clamp(0, 1)
    op = make_operator("box", factor=4)
    lr = op(hr)[0].permute(1, 2, 0).numpy()
    grid = (lr * 255).round().astype(np.uint8)
    img = jpeg(blocks(grid, 8), 90)
    a = analyse_input(img, 64)
    assert a.kind == "mosaic" and a.operator == "box" and a.factor == 4 and not a.grey
    a.check_target()  # fits: no error
    assert a.mosaic is not None and a.mosaic.describe() == "mosaic of 8 px blocks detected, offset (0, 0)"
    assert a.reasons[0].endswith("a 16x16 grid of block means")
    target = torch.from_numpy(a.target)[None]
    mask = None if a.mask is None else torch.from_numpy(a.mask)
    # 8-bit rounding (<= 0.5/255) plus JPEG q 90 on 64 px means: far inside eps = 2e-3
    assert masked_l2(op(hr), target, mask).item() <= 0.25 * 2e-3


def test_mosaic_with_a_phase_reports_the_grid_it_found() -> None:
    grid = astronaut_face(16)
    big = blocks(np.pad(grid, ((0, 1), (0, 1), (0, 0)), mode="edge"), 6)
    img = big[3 : 3 + 96, 2 : 2 + 96]  # starts mid-block: 17x17 cells shown
    a = analyse_input(img, 64)
    assert a.kind == "mosaic" and a.mosaic.offset == (4, 3) and a.mosaic.shape == (17, 17)
    assert a.factor is None and not a.target_valid
    assert any("17x17 block grid is not a valid input size (valid: 4, 8, 16, 32)" in r for r in a.reasons)
    with pytest.raises(SizeError) as err:
        a.check_target()
    e = err.value
    assert e.kind == "size" and e.data["size"] == [17, 17] and e.data["nearest"] == 16
    assert e.data["valid_sizes"] == [4, 8, 16, 32] and e.data["mosaic"]["k"] == 6
    assert str(e).startswith("mosaic of 6 px blocks detected, offset (4, 3), showing a 17x17 block grid")
    json.dumps(e.data)


def test_photo_is_a_photo() -> None:
    a = analyse_input(skdata.astronaut(), 64)
    assert a.kind == "photo" and a.operator is None and a.target is None
    assert "a photo" in a.reasons[0]
    with pytest.raises(SizeError) as err:
        a.check_target()
    assert err.value.data["size"] == [512, 512] and err.value.data["nearest"] == 32


def test_transparent_pixels_are_unknown_and_report_is_json_safe() -> None:
    img = np.dstack([astronaut_face(16), np.full((16, 16), 255, dtype=np.uint8)])
    img[:4, :4, 3] = 0
    a = analyse_input(img, 64)
    assert a.kind == "face" and a.mask is not None and (~a.mask).sum() == 16 and not a.mask[:4, :4].any()
    d = a.to_dict()
    assert json.loads(json.dumps(d)) == d and d["masked_pixels"] == 16
    g = analyse_input(lfw_face(0, 16)[:, :, 0], 64, mode_hint="L")
    assert g.grey and g.target.shape == (1, 16, 16)

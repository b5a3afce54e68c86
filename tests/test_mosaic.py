"""Mosaic detection: block sizes 2..32 at random phases, PNG and JPEG q 70..95, on real
faces (lfw_subset, the astronaut) and generator faces; photos, gradients, text and
noise are not mosaics."""
from __future__ import annotations

import io
import json
from functools import lru_cache

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pulse_sr.degradations.bicubic import bicubic_downsample
from pulse_sr.degradations.mosaic import Mosaic, detect_mosaic

import skimage.data as skdata  # noqa: E402 - the test extra installs scikit-image; never skipped

# Block means are the box operator's target, so their error eats into PULSE's eps (2e-3):
# a quarter of it for JPEG q >= 70 leaves the search most of its budget.
JPEG_GRID_MSE = 0.25 * 2e-3
# PNG: each cell is the float64 mean of equal uint8 values -> exact, then float32 rounding
# (relative 2**-24 of values <= 1)
PNG_GRID_ATOL = 2.0**-24


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def lfw_grids(n: int, side: int = 16) -> list[np.ndarray]:
    faces = skdata.lfw_subset()[:n]  # the first 100 are faces, 25x25 grey in [0, 1]
    out = []
    for f in faces:
        a = np.asarray(Image.fromarray((f * 255).round().astype(np.uint8)).resize((side, side), Image.BICUBIC))
        out.append(np.repeat(a[:, :, None], 3, axis=2))
    return out


def astronaut_face(side: int) -> np.ndarray:
    crop = skdata.astronaut()[20:200, 150:330]  # the aligned face, 180x180
    return np.asarray(Image.fromarray(crop).resize((side, side), Image.BICUBIC))


@pytest.fixture(scope="module")
def generator_grids(dcgan) -> list[np.ndarray]:
    z = torch.randn(2, dcgan.z_dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        x = ((dcgan(z) + 1) / 2).clamp(0, 1)
    small = bicubic_downsample(x, dcgan.resolution // 16).clamp(0, 1)
    return [(s.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for s in small]


def make_mosaic(grid: np.ndarray, k: int, phase: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A crop of a bigger mosaic starting ``phase = (py, px)`` px into a block; the image and
    the grid of cells it shows (partial border cells included)."""
    rows, cols = grid.shape[:2]
    big = np.repeat(np.repeat(np.pad(grid, ((0, 1), (0, 1), (0, 0)), mode="edge"), k, 0), k, 1)
    py, px = phase
    img = big[py : py + rows * k, px : px + cols * k]
    shown = np.pad(grid, ((0, 1), (0, 1), (0, 0)), mode="edge")[: rows + (py > 0), : cols + (px > 0)]
    return img, shown


def check_detected(m: Mosaic | None, k: int, phase: tuple[int, int], shown: np.ndarray, quality: int | None) -> None:
    assert m is not None, f"k={k} phase={phase} q={quality}: not detected"
    expected_offset = ((k - phase[1]) % k, (k - phase[0]) % k)
    assert (m.k, m.offset) == (k, expected_offset), f"q={quality}: found {m.describe()}"
    assert m.grid.shape == shown.shape
    truth = shown.astype(np.float64) / 255
    if quality is None:
        assert m.mask.all()
        np.testing.assert_allclose(m.grid, truth, rtol=0, atol=PNG_GRID_ATOL)
    else:
        assert m.mask.mean() >= 0.75
        mse = ((m.grid - truth) ** 2).mean(axis=-1)[m.mask].mean()
        assert mse <= JPEG_GRID_MSE, f"k={k} q={quality}: block means off by MSE {mse:.2e}"


def test_block_sizes_2_to_32_random_phases_png_and_jpeg(generator_grids: list[np.ndarray]) -> None:
    rng = np.random.default_rng(13)
    grids = lfw_grids(8) + [astronaut_face(16)] + generator_grids
    qualities = [None, 70, 80, 90, 95]
    for i, k in enumerate(range(2, 33)):
        for j in range(2):
            grid = grids[(2 * i + j) % len(grids)]
            phase = (int(rng.integers(0, k)), int(rng.integers(0, k)))
            quality = qualities[(i + 2 * j) % len(qualities)]
            img, shown = make_mosaic(grid, k, phase)
            if quality is not None:
                img = jpeg(img, quality)
            check_detected(detect_mosaic(img), k, phase, shown, quality)


@pytest.mark.parametrize("quality", [70, 80, 95])
@pytest.mark.parametrize("k", [2, 3, 4, 8, 16])
def test_colour_face_under_jpeg(k: int, quality: int) -> None:
    phase = (k // 3, (2 * k) // 3)
    img, shown = make_mosaic(astronaut_face(16), k, phase)
    check_detected(detect_mosaic(jpeg(img, quality)), k, phase, shown, quality)


def test_pillow_nearest_upscale_of_a_real_face_is_a_mosaic() -> None:
    face = lfw_grids(1, side=20)[0]
    img = np.asarray(Image.fromarray(face).resize((120, 120), Image.NEAREST))
    m = detect_mosaic(img)
    assert m is not None and (m.k, m.offset) == (6, (0, 0)) and m.shape == (20, 20)
    assert m.describe() == "mosaic of 6 px blocks detected, offset (0, 0)"
    d = m.to_dict()
    assert json.loads(json.dumps(d)) == d and d["grid_size"] == [20, 20]
    # grey and float inputs give the same answer
    assert detect_mosaic(img[:, :, 0]).k == 6
    assert detect_mosaic(img.astype(np.float32) / 255).offset == (0, 0)


def test_undecidable_partial_cell_is_masked() -> None:
    k, phase = 8, (0, 3)  # a 5 px wide partial column of cells on the left
    img, shown = make_mosaic(lfw_grids(1)[0], k, phase)
    img = img.copy()
    rng = np.random.default_rng(0)
    img[k : 2 * k, :5] = rng.integers(0, 256, (k, 5, 3), dtype=np.uint8)  # not a block's value
    m = detect_mosaic(img)
    assert m is not None and (m.k, m.offset) == (8, (5, 0))
    assert not m.mask[1, 0]
    assert m.mask.sum() == m.mask.size - 1
    known = m.mask[..., None].repeat(3, axis=2)
    np.testing.assert_allclose(m.grid[known], shown[known] / 255, rtol=0, atol=PNG_GRID_ATOL)


def _gradients() -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    out = {}
    for angle in (0.0, 0.3, 1.0, np.pi / 2):
        v = 0.2 + 0.5 * (np.cos(angle) * xx + np.sin(angle) * yy) / 1.5
        out[f"linear{angle:.1f}"] = np.stack([v, 0.9 * v, 0.8 * v], -1)
    out["radial"] = np.repeat(np.sqrt((xx - 0.5) ** 2 + (yy - 0.4) ** 2)[:, :, None], 3, axis=2)
    out["steep"] = np.repeat((0.5 + 0.5 * np.sin(xx * 9 + yy * 4))[:, :, None], 3, axis=2)
    return {name: (v.clip(0, 1) * 255).round().astype(np.uint8) for name, v in out.items()}


def _text(size: int | None) -> np.ndarray:
    im = Image.new("RGB", (256, 128), "white")
    draw = ImageDraw.Draw(im)
    for i in range(6 if size is None else 2):
        draw.text((5, 5 + (20 if size is None else 50) * i), "The quick brown fox 0123", fill="black", font_size=size)
    return np.asarray(im)


@lru_cache(maxsize=1)
def _not_mosaics() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    out = {
        "astronaut": skdata.astronaut()[:256, :256],
        "astronaut_face": skdata.astronaut()[20:200, 150:330],
        "coffee": skdata.coffee()[100:356, 100:356],
        "chelsea": skdata.chelsea()[50:250, 100:300],
        "face_64": astronaut_face(64),
        "noise": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
        "text_small": _text(None),
        "text_large": _text(40),
    }
    out.update(_gradients())
    return out


@pytest.mark.parametrize("quality", [None, 70, 90])
@pytest.mark.parametrize("name", sorted(_not_mosaics()))
def test_not_mosaics_are_not_detected(name: str, quality: int | None) -> None:
    img = _not_mosaics()[name]
    if quality is not None:
        img = jpeg(img, quality)
    m = detect_mosaic(img)
    assert m is None, f"{name} q={quality}: {m.describe()} {m.stats}"


def test_tiny_or_flat_images_are_not_mosaics() -> None:
    assert detect_mosaic(np.full((64, 64, 3), 128, dtype=np.uint8)) is None
    assert detect_mosaic(np.zeros((6, 6, 3), dtype=np.uint8)) is None
    with pytest.raises(ValueError):
        detect_mosaic(np.zeros((8, 8, 5)))

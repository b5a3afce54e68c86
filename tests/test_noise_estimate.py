"""Noise sigma estimates on real and generator faces: within 10% of the noise actually
added (sigma 8..32/255, clipped to [0, 1], 8-bit), and below 1/255 on clean inputs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pulse_sr.degradations.bicubic import bicubic_downsample
from pulse_sr.degradations.noise import DETECTION_LIMIT, estimate_noise, estimate_noise_sigma, robust_scale

import skimage.data as skdata  # noqa: E402 - the test extra installs scikit-image; never skipped

SIGMAS_255 = (8, 16, 24, 32)


def lfw_faces(side: int, n: int = 100) -> list[np.ndarray]:
    """lfw_subset's faces (grey, 25x25) resized, stored as RGB as a scan of a print would be."""
    out = []
    for f in skdata.lfw_subset()[:n]:
        a = np.asarray(Image.fromarray((f * 255).round().astype(np.uint8)).resize((side, side), Image.BICUBIC))
        out.append(np.repeat(a[:, :, None], 3, axis=2))
    return out


def astronaut_face(side: int) -> np.ndarray:
    crop = skdata.astronaut()[20:200, 150:330]
    return np.asarray(Image.fromarray(crop).resize((side, side), Image.BICUBIC))


def add_noise(img: np.ndarray, sigma_255: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Gaussian noise per pixel and channel, clipped to [0, 1], rounded to 8 bits; and the true
    sigma: the RMS of what was actually added (clipping shrinks it, rounding adds 1/12 LSB^2)."""
    clean = img.astype(np.float64) / 255
    noisy = np.clip(clean + rng.normal(0.0, sigma_255 / 255, img.shape), 0, 1)
    noisy8 = (noisy * 255).round().astype(np.uint8)
    return noisy8, float(np.sqrt(((noisy8 / 255 - clean) ** 2).mean()))


def relative_errors(images: list[np.ndarray], draws: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    errs = []
    for sigma in SIGMAS_255:
        for img in images:
            for _ in range(draws):
                noisy, true = add_noise(img, sigma, rng)
                errs.append(estimate_noise_sigma(noisy) / true - 1)
    return np.array(errs)


# Sampling error sets the bar. A sigma from m independent Gaussian values has a relative
# standard error of 1/sqrt(2m). A grey face stored as RGB has two opponent channels of pure
# noise: m ~ 2 x 256 at 16 px (SE ~3.1%, 3.5% after the robust estimator's ~80% efficiency),
# so 10% is ~2.9 SE: a 0.4% tail per case, plus the band selection's own noise; at 32 px
# m ~ 2 x 1024 (SE ~1.7%) puts 10% at ~6 SE. A colour face keeps fewer clean bands (the
# opponent channels carry its colour edges): at 32 px m ~ 2 x 256 again.


def test_grey_faces_16px_within_10_percent() -> None:
    errs = relative_errors(lfw_faces(16), draws=1, seed=16)
    assert (np.abs(errs) <= 0.10).mean() >= 0.95, np.sort(np.abs(errs))[-10:]
    assert abs(errs.mean()) <= 0.03  # no bias: +-3% is 1 SE of one case, ~20 SE of the mean of 400


def test_grey_faces_32px_within_10_percent() -> None:
    errs = relative_errors(lfw_faces(32), draws=1, seed=32)
    assert np.abs(errs).max() <= 0.10
    assert abs(errs.mean()) <= 0.02


@pytest.mark.parametrize("side,share", [(32, 0.95), (64, 1.0)])
def test_colour_face_within_10_percent(side: int, share: float) -> None:
    errs = relative_errors([astronaut_face(side)], draws=25, seed=side)
    assert (np.abs(errs) <= 0.10).mean() >= share, np.sort(np.abs(errs))[-5:]


def test_generator_faces_32px_within_10_percent(dcgan) -> None:
    # Colour faces: the opponent channels carry colour edges, which only add variance, so
    # errors lean high (about +4%) and sampling (SE ~3%) pushes some past 10%. The issue's
    # target is 9 in 10; and an estimate too low (the side that keeps a noisy input from
    # converging) stays within 10% in every case.
    errs = relative_errors(generator_faces(dcgan, 32, 10), draws=2, seed=3)
    assert (np.abs(errs) <= 0.10).mean() >= 0.9, np.sort(np.abs(errs))[-5:]
    assert errs.min() >= -0.10


def generator_faces(gen, side: int, n: int) -> list[np.ndarray]:
    z = torch.randn(n, gen.z_dim, generator=torch.Generator().manual_seed(21))
    with torch.no_grad():
        x = ((gen(z) + 1) / 2).clamp(0, 1)
    small = bicubic_downsample(x, gen.resolution // side).clamp(0, 1)
    return [(s.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for s in small]


@pytest.mark.parametrize("side", [16, 32])
def test_clean_inputs_below_one_level(dcgan, side: int) -> None:
    images = lfw_faces(side, 30) + [astronaut_face(side), astronaut_face(2 * side)] + generator_faces(dcgan, side, 20)
    for img in images:
        est = estimate_noise(img)
        assert est.sigma < 1 / 255, est
    # the float generator output itself (no 8-bit rounding) too
    z = torch.randn(4, dcgan.z_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        x = bicubic_downsample(((dcgan(z) + 1) / 2).clamp(0, 1), dcgan.resolution // side)
    for t in x:
        assert estimate_noise_sigma(t.permute(1, 2, 0).numpy()) < 1 / 255


def test_noise_below_the_detection_limit_reads_zero_but_raw_is_kept() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((64, 64, 3), 0.5)
    est = estimate_noise(flat + rng.normal(0, 2 / 255, flat.shape))
    assert est.sigma == 0.0 and not est.detected
    # raw: 2/255 on a flat image within 5 SE (m = 3 x 4096 values, SE 0.6%)
    assert est.raw == pytest.approx(2 / 255, rel=0.03)
    d = est.to_dict()
    assert json.loads(json.dumps(d)) == d and d["detection_limit_255"] == pytest.approx(DETECTION_LIMIT * 255)


def test_heavily_clipped_image_is_not_overestimated() -> None:
    rng = np.random.default_rng(1)
    img = np.zeros((64, 64, 3))
    img[:, 32:] = 0.5  # half black: noise there is clipped
    noisy = np.clip(img + rng.normal(0, 16 / 255, img.shape), 0, 1)
    est = estimate_noise_sigma(noisy)
    # positions touching a clipped pixel are left out, so the estimate is the unclipped sigma
    # from the grey half (m ~ 3 x 2000: SE ~0.9%)
    assert est == pytest.approx(16 / 255, rel=0.05)


def test_robust_scale_ignores_sparse_outliers() -> None:
    rng = np.random.default_rng(2)
    r = rng.normal(0, 1.0, 20000)
    r[:500] = 50.0  # 2.5% edges
    # MAD's breakdown handles the outliers; the truncated second moment is corrected
    # analytically; m = 20000 gives SE 0.5% (0.6% after efficiency), 3% is 5 SE
    # (plus the 2.5% outliers shifting the median by ~3% of a quartile: <1%)
    assert robust_scale(r) == pytest.approx(1.0, rel=0.03)
    assert robust_scale(np.zeros(10)) == 0.0


def test_grey_mode_single_channel_input_is_estimated() -> None:
    rng = np.random.default_rng(4)
    flat = np.full((64, 64), 0.4)
    noisy = flat + rng.normal(0, 12 / 255, flat.shape)
    # one channel x 4 bands x ~4000 positions, ~4000 independent values: SE ~1.1%
    assert estimate_noise_sigma(noisy) == pytest.approx(12 / 255, rel=0.05)
    assert not math.isnan(estimate_noise_sigma(np.zeros((1, 1))))

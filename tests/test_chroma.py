"""The chroma prior (search/chroma.py): BT.601 chroma, the fit, the penalty, the cache."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pulse_sr.search import chroma as chroma_mod
from pulse_sr.search.chroma import ChromaPrior, cached_chroma_prior, chroma_cache_path, fit_chroma_prior, mean_chroma

SAMPLES = 400


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny networks, one thread


@pytest.fixture(scope="module")
def tiny_prior(tiny) -> ChromaPrior:
    return fit_chroma_prior(tiny, samples=SAMPLES, seed=0)


def _samples(gen, count: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(count, gen.z_dim, generator=g)
    noise = [torch.randn(count, *s, generator=g) for s in gen.noise_shapes]
    with torch.no_grad():
        return ((gen(z, noise or None) + 1) / 2).clamp(0, 1)


def test_mean_chroma_matches_pillow_ycbcr() -> None:
    """Pillow's RGB -> YCbCr is BT.601 full range on 8-bit values, rounded: each pixel's Cb, Cr is
    within 0.5/255 (+ Pillow's fixed-point error, < 1/255) of the exact value, so the mean is too."""
    rgb = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    ycc = np.asarray(Image.fromarray(rgb).convert("YCbCr"), dtype=np.float64)[8:24, 8:24]
    expected = ycc[..., 1:].mean(axis=(0, 1)) / 255.0
    hr = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    got = mean_chroma(hr)[0].double().numpy()
    assert np.abs(got - expected).max() < 1.5 / 255


def test_grey_has_neutral_chroma() -> None:
    grey = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)).expand(-1, 3, -1, -1)
    # the Cb and Cr rows each sum to 0: grey gives 0.5 up to float32 rounding of a 3-term sum
    assert (mean_chroma(grey) - 0.5).abs().max() < 1e-6


def test_own_samples_inside_and_zero_penalty(tiny, tiny_prior: ChromaPrior) -> None:
    fresh = _samples(tiny, 200, seed=123)
    d = tiny_prior.distance(fresh)
    inside = d <= tiny_prior.radius
    assert torch.equal(tiny_prior.penalty(fresh)[inside], torch.zeros(int(inside.sum())))
    # 99% of the fit's samples by construction; on 200 fresh samples the share inside is binomial
    # (sd ~0.7%) around a coverage that the 400-sample quantile itself only pins to ~0.5%: >= 95%
    assert float(inside.float().mean()) >= 0.95


def test_fit_coverage_is_the_quantile(tiny) -> None:
    """On its own samples the region holds the requested share (empirical quantile, +-1 sample)."""
    prior = fit_chroma_prior(tiny, samples=200, seed=7, quantile=0.9)
    rng = torch.Generator().manual_seed(7)
    parts = []
    for _ in range(2):  # the fit's draws: batches of 100, z then the noise maps
        z = torch.randn(100, tiny.z_dim, generator=rng)
        noise = [torch.randn(100, *s, generator=rng) for s in tiny.noise_shapes]
        with torch.no_grad():
            parts.append(((tiny(z, noise) + 1) / 2).clamp(0, 1))
    hr = torch.cat(parts)
    share = float((prior.distance(hr) <= prior.radius * (1 + 1e-6)).float().mean())
    assert 0.9 - 1 / 200 <= share <= 0.9 + 2 / 200


def test_green_face_is_penalised_smoothly(dcgan) -> None:
    prior = fit_chroma_prior(dcgan, samples=200, seed=0)
    face = _samples(dcgan, 4, seed=5)
    inside = prior.plausible(face)
    assert inside.any()
    face = face[inside][:1]
    green = face.clone()
    green[:, 1] = (green[:, 1] + 0.25).clamp(max=1)
    green[:, 0] *= 0.6
    green[:, 2] *= 0.6
    green.requires_grad_(True)
    pen = prior.penalty(green)
    assert float(pen.detach()) > 0 and float(prior.distance(green.detach())) > prior.radius
    (grad,) = torch.autograd.grad(pen.sum(), [green])
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    # moving along -grad reduces the penalty: smooth, usable as a loss term
    assert float(prior.penalty(green.detach() - 1e-3 * grad / grad.abs().max())) < float(pen.detach())
    assert float(prior.penalty(face)) == 0.0


def test_cache_is_used_and_survives_corruption(tiny, tmp_path, monkeypatch) -> None:
    first = cached_chroma_prior(tiny, samples=50, seed=3, cache_dir=tmp_path)
    path = chroma_cache_path(tiny.weights_hash, 50, 3, tmp_path)
    assert path.is_file() and json.loads(path.read_text())["radius"] == first.radius

    def refuse(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(chroma_mod, "fit_chroma_prior", refuse)
    assert cached_chroma_prior(tiny, samples=50, seed=3, cache_dir=tmp_path) == first
    monkeypatch.undo()
    path.write_text('{"mean": [0.5, NaN], "cov": "x"}')
    again = cached_chroma_prior(tiny, samples=50, seed=3, cache_dir=tmp_path)
    assert again == first  # seeded: the recomputation gives the same numbers
    assert json.loads(path.read_text())["radius"] == first.radius

"""PULSE's Gaussian fit: chunked draws equal one big draw, float64 accumulation, caching."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pulse_sr.generators.stylegan1 import StyleGAN1Generator
from pulse_sr.search import gaussian_fit as gf
from pulse_sr.search.gaussian_fit import cached_gaussian_fit, fit_gaussian, gaussian_fit_cache_path

FAKE_HASH = "ab" * 32


@pytest.fixture(scope="module")
def small_gen() -> StyleGAN1Generator:
    g = StyleGAN1Generator(resolution=8, w_dim=32, fmap_max=16, init_generator=torch.Generator().manual_seed(0))
    g.eval().requires_grad_(False)
    g.weights_hash = FAKE_HASH
    return g


@pytest.mark.parametrize("samples,z_dim,chunk", [
    (1000, 512, 64), (1000, 512, 7), (1000, 3, 5), (1001, 3, 16), (993, 3, 16), (37, 5, 16), (5, 3, 16), (100, 16, 1),
])
def test_chunked_draws_equal_one_big_draw(samples: int, z_dim: int, chunk: int) -> None:
    sizes = gf._chunk_rows(samples, z_dim, chunk)
    assert sum(sizes) == samples
    assert all(s <= max(chunk, 16) + 16 for s in sizes)
    torch.manual_seed(0)
    big = torch.randn((samples, z_dim))
    rng = torch.Generator().manual_seed(0)
    chunks = torch.cat([torch.randn((s, z_dim), generator=rng) for s in sizes])
    assert torch.equal(big, chunks)


def _single_shot(gen: StyleGAN1Generator, samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PULSE's recipe verbatim (one big tensor, global RNG)."""
    state = torch.get_rng_state()
    try:
        torch.manual_seed(seed)
        z = torch.randn((samples, gen.z_dim))
        y = torch.nn.LeakyReLU(negative_slope=5)(gen.mapping(z))
        return y.mean(0), y.std(0)
    finally:
        torch.set_rng_state(state)


def test_chunked_fit_equals_single_shot(small_gen: StyleGAN1Generator) -> None:
    ref_mean, ref_std = _single_shot(small_gen, 3000, seed=7)
    rng_before = torch.get_rng_state()
    mean, std = fit_gaussian(small_gen, samples=3000, seed=7, chunk=100)
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    assert mean.dtype == std.dtype == torch.float32 and mean.device.type == "cpu"
    assert mean.shape == std.shape == (small_gen.w_dim,)
    scale = ref_mean.abs().max()
    # The same float32 mapping outputs (same draws), reduced in chunks of 100 vs all at once: only
    # the order of the 3000-term sums differs, each within sqrt(3000) x EPS32 = 6.5e-6 relative
    # of the sum of |y| (the std in float32 as well); 1e-5 of max |mean| and of each std
    assert (mean - ref_mean).abs().max() <= 1e-5 * scale
    assert ((std - ref_std).abs() / ref_std).max() <= 1e-5
    whole_mean, whole_std = fit_gaussian(small_gen, samples=3000, seed=7, chunk=3000)
    # both in fit_gaussian's own float64 accumulation: rounding ~1e-16 x 3000, then float32
    # output (one rounding, 6e-8): 1e-6 relative
    assert torch.allclose(mean, whole_mean, rtol=1e-6, atol=1e-6 * scale.item())
    assert torch.allclose(std, whole_std, rtol=1e-6)


def test_fit_returns_normal_tensors(small_gen: StyleGAN1Generator) -> None:
    mean, std = fit_gaussian(small_gen, samples=64, chunk=16)
    assert not mean.requires_grad and torch.isfinite(mean).all() and (std > 0).all()
    assert not mean.is_inference() and not std.is_inference()
    x = torch.randn(2, small_gen.w_dim, requires_grad=True)
    ((x - mean) / std).sum().backward()  # usable in the search's autograd graph
    assert x.grad is not None


def test_cache_written_once_and_reused(small_gen: StyleGAN1Generator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cache = tmp_path / "cache"
    first = cached_gaussian_fit(small_gen, samples=500, seed=1, cache_dir=cache)
    path = gaussian_fit_cache_path(FAKE_HASH, 500, 1, cache)
    assert path.is_file() and path.parent == cache / "gaussian_fit"
    assert list(path.parent.iterdir()) == [path]  # no temp files left behind
    assert list(cwd.iterdir()) == []

    def boom(*args, **kwargs):
        raise AssertionError("fit recomputed despite a valid cache")

    monkeypatch.setattr(gf, "fit_gaussian", boom)
    second = cached_gaussian_fit(small_gen, samples=500, seed=1, cache_dir=cache)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert list(cwd.iterdir()) == []


def test_cache_key_includes_samples_and_seed(small_gen: StyleGAN1Generator, tmp_path: Path) -> None:
    a = cached_gaussian_fit(small_gen, samples=300, seed=0, cache_dir=tmp_path)
    b = cached_gaussian_fit(small_gen, samples=300, seed=1, cache_dir=tmp_path)
    c = cached_gaussian_fit(small_gen, samples=400, seed=0, cache_dir=tmp_path)
    assert not torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    assert len(list((tmp_path / "gaussian_fit").iterdir())) == 3


def test_cache_dir_from_env(small_gen: StyleGAN1Generator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_SR_CACHE", str(tmp_path / "envcache"))
    monkeypatch.chdir(tmp_path)
    cached_gaussian_fit(small_gen, samples=200, seed=0)
    assert gaussian_fit_cache_path(FAKE_HASH, 200, 0, tmp_path / "envcache").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["envcache"]


@pytest.mark.parametrize("content", [b"", b"garbage", "list", "badshape"])
def test_corrupt_cache_is_recomputed(small_gen: StyleGAN1Generator, tmp_path: Path, content) -> None:
    expected = fit_gaussian(small_gen, samples=200, seed=0)
    path = gaussian_fit_cache_path(FAKE_HASH, 200, 0, tmp_path)
    path.parent.mkdir(parents=True)
    if content == "list":
        torch.save([1, 2, 3], path)
    elif content == "badshape":
        torch.save({"mean": torch.zeros(3), "std": torch.ones(3)}, path)
    else:
        path.write_bytes(content)
    got = cached_gaussian_fit(small_gen, samples=200, seed=0, cache_dir=tmp_path)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    stored = torch.load(path, map_location="cpu", weights_only=True)  # overwritten with a good file
    assert torch.equal(stored["mean"], expected[0]) and torch.equal(stored["std"], expected[1])


@pytest.mark.parametrize("tag", ["", "random-init"])
def test_no_cache_without_sha256(small_gen: StyleGAN1Generator, tmp_path: Path, tag: str,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(small_gen, "weights_hash", tag)
    mean, std = cached_gaussian_fit(small_gen, samples=200, seed=0, cache_dir=tmp_path)
    assert mean.shape == (small_gen.w_dim,)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_cache_still_returns(small_gen: StyleGAN1Generator, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    mean, std = cached_gaussian_fit(small_gen, samples=200, seed=0, cache_dir=blocker)
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()

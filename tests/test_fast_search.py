"""Fast search: lean memory, truncated synthesis, fitted heads, coarse-to-fine mode, w_avg start."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from pulse_sr.degradations.bicubic import bicubic_downsample
from pulse_sr.generators.stylegan2 import StyleGAN2Generator
from pulse_sr.search.coarse import choose_side, coarse_step_count
from pulse_sr.search.gaussian_fit import fit_gaussian
from pulse_sr.search.heads import _sample_ws, cached_head, fit_head, head_cache_path, _fit_tag
from pulse_sr.search.losses import l2_per_image
from pulse_sr.search.pulse import pulse_search

from conftest import planted  # noqa: E402 - shared test helper


# -- truncated synthesis: same numbers and gradients as the full eager network ----------------------
def test_truncated_synthesis_matches_full_network(tiny) -> None:
    g = torch.Generator().manual_seed(3)
    ws = torch.randn(2, tiny.num_ws, tiny.w_dim, generator=g)
    noise = [torch.randn(2, *s, generator=g) for s in tiny.noise_shapes]
    img, tapped = tiny.synthesis_with_features(ws, noise, 16)
    assert torch.equal(img, tiny.synthesis(ws, noise))
    feat = tiny.synthesis_features(ws, noise, 16)
    assert feat.shape == (2, tiny.feature_channels(16), 16, 16)
    assert torch.equal(feat, tapped)
    # layers above the side do not matter
    ws2 = ws.clone()
    ws2[:, 6:] += 1.0
    assert torch.equal(tiny.synthesis_features(ws2, noise, 16), feat)
    # gradients w.r.t. ws through the truncated path == through the full network's tap (float32, eager)
    probe = torch.randn(feat.shape, generator=g)
    a = ws.clone().requires_grad_(True)
    (tiny.synthesis_features(a, noise, 16) * probe).sum().backward()
    b = ws.clone().requires_grad_(True)
    (tiny.synthesis_with_features(b, noise, 16)[1] * probe).sum().backward()
    assert a.grad is not None and b.grad is not None and a.grad.abs().max() > 0
    assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-7)
    assert torch.equal(a.grad[:, 6:], torch.zeros_like(a.grad[:, 6:]))
    with pytest.raises(ValueError, match="no block of side 12"):
        tiny.synthesis_features(ws, noise, 12)


# -- heads ------------------------------------------------------------------------------------------
def test_head_predicts_the_true_downscale(tiny, tiny_fit) -> None:
    head = fit_head(tiny, 16, 8, gaussian_fit=tiny_fit, samples=24)
    g = torch.Generator().manual_seed(99)  # held-out latents
    ws = _sample_ws(tiny, tiny_fit, g, 8)
    noise = [torch.randn(8, *s, generator=g) for s in tiny.noise_shapes]
    with torch.no_grad():
        img, feat = tiny.synthesis_with_features(ws, noise, 16)
        truth = bicubic_downsample((img + 1) / 2, 4)
        pred = head.predict(feat)
    err = (pred - truth).pow(2).mean()
    baseline = (truth - truth.mean(dim=(0, 2, 3), keepdim=True)).pow(2).mean()
    # a random-weight network is hard to read linearly; the head must still carry information
    assert err < 0.95 * baseline, f"head MSE {err:.3g} vs predicting the mean {baseline:.3g}"
    assert head.rmse > 0 and head.weight.shape == (3, tiny.feature_channels(16))


def test_head_is_cached_per_weights(tiny, tiny_fit, tmp_path) -> None:
    first = cached_head(tiny, 16, 8, gaussian_fit=tiny_fit, samples=3, cache_dir=tmp_path)
    path = head_cache_path(tiny.weights_hash, 16, 8, 3, 12345, _fit_tag(tiny_fit), tmp_path)
    assert path.is_file()
    again = cached_head(tiny, 16, 8, gaussian_fit=tiny_fit, samples=3, cache_dir=tmp_path)
    assert torch.equal(first.weight, again.weight)
    path.write_bytes(b"garbage")  # a corrupt cache is recomputed
    third = cached_head(tiny, 16, 8, gaussian_fit=tiny_fit, samples=3, cache_dir=tmp_path)
    assert torch.allclose(first.weight, third.weight)


def test_choose_side_and_step_count(tiny) -> None:
    assert choose_side(tiny, 8) == 16  # wanted 32 == resolution: fall back to the largest side below it
    assert choose_side(tiny, 4) == 16
    assert choose_side(tiny, 8, 8) == 8
    with pytest.raises(ValueError, match="coarse_side 4"):
        choose_side(tiny, 8, 4)
    assert coarse_step_count(100, -1) == 80
    assert coarse_step_count(10, 50) == 9  # the last step always runs the full network


# -- fast mode: planted solutions, eps on the true output -------------------------------------------
def test_fast_mode_planted_tiny(tiny, tiny_fit) -> None:
    hits = 0
    for problem in (0, 1, 3):
        target = planted(tiny, problem, 4)
        res = pulse_search(tiny, target, n=2, seed=problem, gaussian_fit=tiny_fit, mode="fast",
                           steps=100, refresh_every=5)
        assert res.full_steps is not None
        # most steps were coarse: the full network ran at refreshes and in the last 20 steps only
        assert int(res.full_steps.max()) < int(res.steps.max())
        with torch.no_grad():
            true_hr = ((tiny.synthesis(res.ws, res.noise) + 1) / 2).clamp(0, 1)
        for k in range(res.n):
            # what is returned is the true network's output for the returned latents ...
            assert torch.allclose(res.hr[k], true_hr[k], atol=1e-5)
            # ... its LR is its own downscale, and the flag tells the truth about eps
            assert torch.allclose(res.lr[k], bicubic_downsample(res.hr[k:k + 1], 4)[0], atol=1e-6)
            l2 = float(l2_per_image(res.lr[k:k + 1], target[None]))
            assert bool(res.converged[k]) == (l2 <= res.eps)
        hits += int(res.converged.any())
    assert hits >= 2, f"fast mode found a match within eps on only {hits}/3 planted problems"


def test_fast_mode_on_generator_without_truncation_is_the_faithful_loop(dcgan) -> None:
    target = planted(dcgan, 1, 4)
    a = pulse_search(dcgan, target, n=2, seed=3, steps=12, run_all_steps=True)
    b = pulse_search(dcgan, target, n=2, seed=3, steps=12, run_all_steps=True, mode="fast")
    assert torch.equal(a.l2_history, b.l2_history) and torch.equal(a.hr, b.hr)


def test_lean_memory_gives_identical_gradients(tmp_path) -> None:
    """mallopt changes where tensors live, never the numbers: same gradients with and without."""
    code = (
        "import json, os, torch\n"
        "from pulse_sr.search.lean import keep_freed_memory, malloc_is_lean\n"
        "keep_freed_memory()\n"
        "from pulse_sr.generators.tiny import make_tiny_generator\n"
        "G = make_tiny_generator(resolution=64, channels=64)\n"
        "g = torch.Generator().manual_seed(5)\n"
        "ws = torch.randn(2, G.num_ws, G.w_dim, generator=g).requires_grad_(True)\n"
        "noise = [torch.randn(2, *s, generator=g) for s in G.noise_shapes]\n"
        "big = [torch.randn(4096, 4096) for _ in range(3)]; del big\n"  # > mmap threshold, freed
        "for _ in range(2):\n"
        "    ws.grad = None\n"
        "    G.synthesis(ws, noise).square().mean().backward()\n"
        "print(json.dumps({'lean': malloc_is_lean(), 'grad': ws.grad.flatten()[::97].tolist(),\n"
        "                  'norm': float(ws.grad.norm())}))\n"
    )
    outs = {}
    for label, extra in (("plain", {"PULSE_SR_NO_MALLOPT": "1"}), ("lean", {})):
        env = {k: v for k, v in os.environ.items() if k != "PULSE_SR_NO_MALLOPT"}
        env.update(extra)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                              timeout=300, check=True)
        outs[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outs["plain"]["lean"] is False and outs["lean"]["lean"] is (sys.platform.startswith("linux"))
    assert outs["plain"]["norm"] > 0
    assert outs["plain"]["grad"] == outs["lean"]["grad"] and outs["plain"]["norm"] == outs["lean"]["norm"]


# -- settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "turbo"}, "unknown mode"),
    ({"start": "zero"}, "unknown start"),
    ({"coarse_steps": -2}, "coarse_steps"),
    ({"refresh_every": 0}, "refresh_every"),
])
def test_bad_fast_settings(tiny, tiny_fit, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        pulse_search(tiny, torch.rand(3, 8, 8), gaussian_fit=tiny_fit, **kwargs)


# -- start at w_avg ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_sg2():
    G = StyleGAN2Generator(z_dim=32, w_dim=32, img_resolution=16, channel_base=256, channel_max=32,
                           mapping_kwargs={"num_layers": 2},
                           init_generator=torch.Generator().manual_seed(0)).eval().requires_grad_(False)
    with torch.no_grad():
        G.mapping_net.w_avg.copy_(torch.randn(32, generator=torch.Generator().manual_seed(1)))
    return G


def test_w_avg_start(small_sg2) -> None:
    G = small_sg2
    fit = fit_gaussian(G, samples=4096)
    target = torch.rand(3, 4, 4)
    res = pulse_search(G, target, n=2, seed=0, steps=1, gaussian_fit=fit, start="w_avg")
    # with one step no update happens: what synthesis received is w_avg on every layer
    expected = G.mapping_net.w_avg.expand(2, G.num_ws, -1)
    assert torch.allclose(res.ws, expected, rtol=1e-4, atol=1e-4)
    gauss = pulse_search(G, target, n=2, seed=0, steps=1, gaussian_fit=fit)
    assert not torch.allclose(gauss.ws, expected, atol=1e-2)
    # the search moves away from it and keeps its guarantees
    moved = pulse_search(G, target, n=1, seed=0, steps=5, gaussian_fit=fit, start="w_avg", run_all_steps=True)
    assert float(moved.l2_history[-1, 0]) < float(moved.l2_history[0, 0])


def test_w_avg_start_needs_a_w_avg(tiny, tiny_fit) -> None:
    with pytest.raises(ValueError, match="w_avg.*stylegan1.*start='gaussian'"):
        pulse_search(tiny, torch.rand(3, 8, 8), gaussian_fit=tiny_fit, start="w_avg")


# -- command line ----------------------------------------------------------------------------------
def _cli(args: list, capsys) -> tuple[int, str, str]:
    from pulse_sr import cli

    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _write_input(path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(40, 216, (8, 8, 3), dtype=np.uint8)).save(path)


def test_cli_mode_and_start_flags(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PULSE_SR_CACHE", str(tmp_path / "cache"))
    _write_input(tmp_path / "f.png")
    base = ["run", tmp_path / "f.png", "--generator", "tiny", "--steps", "6", "--n", "1", "--quiet"]
    code, _, err = _cli([*base, "-o", tmp_path / "a", "--start", "w_avg"], capsys)
    assert code == 2 and err.count("\n") == 1 and "w_avg" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()
    code, _, err = _cli([*base, "-o", tmp_path / "b", "--faithful", "--mode", "fast"], capsys)
    assert code == 2 and "--faithful contradicts --mode fast" in err
    code, _, _ = _cli([*base, "-o", tmp_path / "c", "--mode", "fast", "--run-all-steps"], capsys)
    report = json.loads((tmp_path / "c" / "f" / "report.json").read_text())
    assert code in (0, 3) and report["settings"]["mode"] == "fast" and report["settings"]["start"] == "gaussian"
    code, _, _ = _cli([*base, "-o", tmp_path / "d", "--faithful", "--max-batch", "1", "--lean-memory"], capsys)
    report = json.loads((tmp_path / "d" / "f" / "report.json").read_text())
    assert code in (0, 3) and report["settings"]["mode"] == "faithful"
    assert report["settings"]["max_batch"] == 1 and report["settings"]["lean_memory"] is True


def test_max_batch_gives_the_same_search(tiny, tiny_fit) -> None:
    """Chunked full steps: each candidate's gradient is its own, so the search is the same (up to
    float rounding of batch-size-dependent convolution kernels, which a long search amplifies)."""
    target = planted(tiny, 2, 4)
    whole = pulse_search(tiny, target, n=3, seed=4, steps=4, gaussian_fit=tiny_fit, run_all_steps=True)
    for chunk in (1, 2):
        parts = pulse_search(tiny, target, n=3, seed=4, steps=4, gaussian_fit=tiny_fit, run_all_steps=True,
                             max_batch=chunk)
        assert parts.settings.max_batch == chunk
        assert torch.allclose(parts.l2_history, whole.l2_history, rtol=2e-4, atol=1e-8)
    # the gradients handed to the optimiser, step 0, whole batch vs one candidate at a time
    from pulse_sr.search.pulse import Search
    from pulse_sr.search.settings import SearchSettings

    captured = {}
    for chunk in (0, 1):
        search = Search(tiny, target, n=3, seed=4, settings=SearchSettings(max_batch=chunk), device=None,
                        gaussian_fit=tiny_fit, callback=None, callback_images=False)
        search.apply = lambda grads, _c=chunk: captured.__setitem__(_c, [g.clone() for g in grads])
        search.full_step(0)
    assert len(captured[0]) == len(captured[1]) == 6  # latent + 5 trainable noise maps
    scale = float(captured[0][0].abs().max())
    assert scale > 0  # (the tiny generator's noise strengths are 0, so its noise gradients are too)
    for a, b in zip(captured[0], captured[1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * scale)
    with pytest.raises(ValueError, match="max_batch"):
        pulse_search(tiny, target, gaussian_fit=tiny_fit, max_batch=-1)

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
from pulse_sr.search.pulse import full_step, pulse_search

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
    # the same float32 ops on the same inputs up to the tap; only the summation order of the
    # weight-gradient reductions may differ between the two graphs: a few ulps (rtol 1e-6 = 8 EPS32)
    # of gradients of size ~1, atol 1e-7 for entries near 0. A wrong path differs by O(1).
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
            # the same network, maybe at another batch size (other conv kernels): float32 rounding of
            # the tiny net, conftest.float32_rel_error(9 * 32, 8) = 1.1e-5 of the image scale (~1),
            # halved by (x + 1) / 2: 5.7e-6 <= 1e-5
            assert torch.allclose(res.hr[k], true_hr[k], atol=1e-5)
            # ... its LR is its own downscale, and the flag tells the truth about eps
            # values in [0, 1], 16 x 16 taps summed in two passes of 16: sqrt(32) x EPS32 = 7e-7 <= 1e-6
            assert torch.allclose(res.lr[k], bicubic_downsample(res.hr[k:k + 1], 4)[0], atol=1e-6)
            l2 = float(l2_per_image(res.lr[k:k + 1], target[None]))
            assert bool(res.converged[k]) == (l2 <= res.eps)
        hits += int(res.converged.any())
    assert hits >= 2, f"fast mode found a match within eps on only {hits}/3 planted problems"


def test_fast_mode_on_generator_without_truncation_is_the_faithful_loop_with_its_preset(dcgan) -> None:
    target = planted(dcgan, 1, 4)
    a = pulse_search(dcgan, target, n=2, seed=3, steps=12, run_all_steps=True, lr=1.5, start_pool=8)
    b = pulse_search(dcgan, target, n=2, seed=3, steps=12, run_all_steps=True, mode="fast")
    assert (a.settings.mode, b.settings.mode) == ("faithful", "fast")
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
    # w_avg goes through the sphere parametrisation and back (normalise, multiply by the Gaussian
    # fit's std, LeakyReLU and its inverse): a dozen float32 ops on a 32-vector, each within
    # EPS32 of |w| ~ 1-3; 1e-4 is loose, and still 100x below the Gaussian start's distance (1e-2)
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
        # each step's gradients differ by float32 rounding of batch-size-dependent kernels (~1e-6
        # relative, see below); Adam normalises steps, so 4 steps of lr 0.4 can move an L2 of
        # ~1e-2 by about 4 x 1e-6 x (its sensitivity, ~10 per unit step) = 4e-5 relative: 2e-4
        # has 5x margin and fails a chunking bug (another candidate's gradient: O(1) change)
        assert torch.allclose(parts.l2_history, whole.l2_history, rtol=2e-4, atol=1e-8)
    # the gradients handed to the optimiser, step 0, whole batch vs one candidate at a time
    captured = {chunk: _first_step_gradients(tiny, target, tiny_fit, n=3, seed=4, max_batch=chunk)
                for chunk in (0, 1)}
    assert len(captured[0]) == len(captured[1]) == 6  # latent + 5 trainable noise maps
    scale = float(captured[0][0].abs().max())
    assert scale > 0  # (the tiny generator's noise strengths are 0, so its noise gradients are too)
    # one backward through the tiny net at batch 3 vs 1: conftest.float32_rel_error(9 * 32, 8)
    # = 1.1e-5 of the gradient's scale; rtol 1e-4 (and atol 1e-6 x scale for entries near 0)
    for a, b in zip(captured[0], captured[1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * scale)
    with pytest.raises(ValueError, match="max_batch"):
        pulse_search(tiny, target, gaussian_fit=tiny_fit, max_batch=-1)


# -- torch.compile'd full steps -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def noisy_tiny():
    """The tiny generator with noise strengths drawn N(0, 0.3), so noise gradients are not all 0."""
    from pulse_sr.generators.tiny import make_tiny_generator

    G = make_tiny_generator(seed=3)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return G


def _new_search(G, target, fit=None, *, n: int, seed: int, **settings):
    """The loop's state (a ``SearchState``) with these settings and no callback, before any step."""
    from pulse_sr.search.pulse import make_state
    from pulse_sr.search.settings import SearchSettings

    return make_state(G, target, n=n, seed=seed, settings=SearchSettings(**settings), gaussian_fit=fit)


def _first_step_gradients(G, target, fit, *, n: int = 2, seed: int = 1, **settings) -> list[torch.Tensor]:
    """The gradients step 0 hands to the optimiser: latent, then each trainable noise map."""
    search = _new_search(G, target, fit, n=n, seed=seed, **settings)
    captured: list[torch.Tensor] = []
    search.apply = lambda grads: captured.extend(g.clone() for g in grads)
    full_step(search, 0)
    return captured


def test_compiled_full_step_gives_the_eager_gradients(noisy_tiny) -> None:
    """The same function: step-0 gradients through torch.compile agree with eager float32 (batch 1,
    where channels-last once gave a gradient with cosine 0.25 to the true one)."""
    fit = fit_gaussian(noisy_tiny, samples=5_000)
    target = planted(noisy_tiny, 4, 4)
    eager = _first_step_gradients(noisy_tiny, target, fit, max_batch=1)
    compiled = _first_step_gradients(noisy_tiny, target, fit, max_batch=1, compile="on")
    assert len(eager) == len(compiled) == 6
    assert all(float(g.abs().max()) > 0 for g in eager)  # latent and every trainable noise map
    # inductor fuses and reorders float32 sums: a rounding-level change of 1e-5 relative or so
    # per op (conftest.float32_rel_error(9 * 32, 8) = 1.1e-5) through forward and backward
    # (~20 layers, growth ~sqrt(2) x): well below the 2e-3 relative and cos 1 - 1e-5 asked here;
    # the channels-last bug this guards against gave a cosine of 0.25
    for a, b in zip(eager, compiled):
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        relative = float((a - b).norm() / a.norm())
        assert float(cos) > 0.99999 and relative < 2e-3, (float(cos), relative)
    # and a short search follows the eager one
    runs = [pulse_search(noisy_tiny, target, n=2, seed=1, steps=5, gaussian_fit=fit, max_batch=1,
                         run_all_steps=True, compile=c) for c in ("off", "on")]
    assert runs[1].settings.compile == "on"
    # 5 Adam steps amplify the ~1e-5 gradient differences (as in test_max_batch_gives_the_same_search)
    assert torch.allclose(runs[0].l2_history, runs[1].l2_history, rtol=1e-3)


def test_compile_failure_falls_back_to_eager(noisy_tiny, monkeypatch) -> None:
    def broken_compile(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("no C++ compiler found\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    fit = fit_gaussian(noisy_tiny, samples=5_000)
    target = planted(noisy_tiny, 5, 4)
    eager = pulse_search(noisy_tiny, target, n=2, seed=2, steps=4, gaussian_fit=fit, run_all_steps=True)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no C\\+\\+ compiler found\\); using the eager"):
        fallback = pulse_search(noisy_tiny, target, n=2, seed=2, steps=4, gaussian_fit=fit, run_all_steps=True,
                                compile="on")
    assert torch.equal(eager.l2_history, fallback.l2_history) and torch.equal(eager.hr, fallback.hr)


def test_compile_auto_and_bad_value(tiny, tiny_fit) -> None:
    target = planted(tiny, 0, 4)
    res = pulse_search(tiny, target, steps=1, gaussian_fit=tiny_fit, compile="auto")
    assert res.settings.compile == "off"  # 32 px: below the 512 px where compiling pays
    with pytest.raises(ValueError, match="compile must be one of off, on, auto"):
        pulse_search(tiny, target, gaussian_fit=tiny_fit, compile="yes")


def test_cli_faithful_never_compiles(tmp_path, capsys, monkeypatch) -> None:
    _write_input(tmp_path / "f.png")
    base = ["run", tmp_path / "f.png", "--generator", "tiny", "--steps", "3", "--n", "1", "--quiet"]
    code, _, err = _cli([*base, "-o", tmp_path / "a", "--faithful", "--compile", "on"], capsys)
    assert code == 2 and "--faithful contradicts --compile on" in err and not (tmp_path / "a").exists()
    code, _, _ = _cli([*base, "-o", tmp_path / "b", "--faithful"], capsys)
    assert code in (0, 3)
    assert json.loads((tmp_path / "b" / "f" / "report.json").read_text())["settings"]["compile"] == "off"


# -- start pool and the per-backend fast preset ---------------------------------------------------
def test_start_pool_picks_the_best_draw_and_keeps_pulse_draw_in_the_pool(dcgan) -> None:
    target = planted(dcgan, 2, 4)
    searches = {pool: _new_search(dcgan, target, n=3, seed=7, start_pool=pool) for pool in (1, 8)}
    plain, pooled = searches[1], searches[8]
    plain_l2 = plain._start_l2(plain.latent.detach(), plain.noise)
    pooled_l2 = pooled._start_l2(pooled.latent.detach(), pooled.noise)
    assert bool((pooled_l2 <= plain_l2).all()) and bool((pooled_l2 < plain_l2).any())
    # the pool's winners are fresh draws on the sqrt(d) sphere, distinct per candidate
    norms = pooled.latent.detach().norm(dim=-1)
    # a norm of 100 float32 squares and a rescale: sqrt(100) x EPS32 = 1.2e-6 relative <= 1e-5
    assert torch.allclose(norms, torch.full_like(norms, dcgan.w_dim ** 0.5), rtol=1e-5)
    assert len({tuple(v.flatten()[:4].tolist()) for v in pooled.latent.detach()}) == 3
    # pool 1 is PULSE's start; a pool is reproducible
    again = _new_search(dcgan, target, n=3, seed=7, start_pool=8)
    assert torch.equal(again.latent, pooled.latent)
    with pytest.raises(ValueError, match="start_pool"):
        pulse_search(dcgan, target, start_pool=0)


def test_auto_mode_and_fast_presets(dcgan, tiny) -> None:
    from pulse_sr.search.pulse import resolve_settings
    from pulse_sr.search.settings import SearchSettings

    s = resolve_settings(SearchSettings(mode="auto"), dcgan)
    assert (s.mode, s.lr, s.start_pool) == ("fast", 1.5, 8)
    s = resolve_settings(SearchSettings(mode="fast", lr=0.9, start_pool=3), dcgan)  # the caller's values win
    assert (s.lr, s.start_pool) == (0.9, 3)
    s = resolve_settings(SearchSettings(), dcgan)  # the library default stays the original loop
    assert (s.mode, s.lr, s.start_pool, s.compile) == ("faithful", 0.4, 1, "off")
    s = resolve_settings(SearchSettings(mode="auto", compile="auto"), tiny)  # no preset: faithful
    assert (s.mode, s.lr, s.start_pool, s.compile) == ("faithful", 0.4, 1, "off")


def test_dcgan_fast_preset_planted(dcgan) -> None:
    """The preset's faces still carry their proof: each downscales to the input as reported."""
    hits = 0
    for problem in (0, 1, 2):
        target = planted(dcgan, problem, 4)
        res = pulse_search(dcgan, target, n=2, seed=problem, mode="auto")
        assert res.settings.mode == "fast" and res.settings.lr == 1.5
        for k in range(res.n):
            lr = bicubic_downsample(res.hr[k:k + 1], 4)
            l2 = float(l2_per_image(lr, target[None]))
            # recomputed from hr: the same downscale and mean of ~768 squares of values <= 1, in float32:
            # sqrt(768) x EPS32 x L2 (< 1e-2) << 1e-6
            assert abs(l2 - float(res.l2[k])) < 1e-6 and bool(res.converged[k]) == (l2 <= res.eps)
        hits += int(res.converged.any())
    assert hits >= 2, f"the dcgan fast preset matched only {hits}/3 planted problems within eps"


def test_cli_default_mode_is_auto(tmp_path, capsys, monkeypatch) -> None:
    from PIL import Image

    rng = __import__("numpy").random.default_rng(1)
    Image.fromarray(rng.integers(40, 216, (16, 16, 3), dtype="uint8")).save(tmp_path / "f.png")
    base = ["run", tmp_path / "f.png", "--steps", "3", "--n", "1", "--quiet"]
    code, _, _ = _cli([*base, "-o", tmp_path / "a"], capsys)
    settings = json.loads((tmp_path / "a" / "f" / "report.json").read_text())["settings"]
    assert code in (0, 3) and (settings["mode"], settings["lr"], settings["start_pool"]) == ("fast", 1.5, 8)
    code, _, _ = _cli([*base, "-o", tmp_path / "b", "--faithful"], capsys)
    settings = json.loads((tmp_path / "b" / "f" / "report.json").read_text())["settings"]
    assert code in (0, 3) and (settings["mode"], settings["lr"], settings["start_pool"]) == ("faithful", 0.4, 1)
    code, _, err = _cli([*base, "-o", tmp_path / "c", "--faithful", "--start-pool", "4"], capsys)
    assert code == 2 and "--faithful contradicts --start-pool 4" in err
    code, _, err = _cli([*base, "-o", tmp_path / "d", "--faithful", "--schedule", "cosine_restart"], capsys)
    assert code == 2 and "--faithful contradicts --schedule cosine_restart" in err
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_cosine_restart_schedule_planted(tiny, tiny_fit) -> None:
    """The opt-in schedule is an ordinary PULSE search otherwise: planted problems are solved, and
    what is returned carries its proof."""
    hits = 0
    for problem in (0, 1, 3):
        target = planted(tiny, problem, 4)
        res = pulse_search(tiny, target, n=2, seed=problem, gaussian_fit=tiny_fit, schedule="cosine_restart")
        assert res.settings.schedule == "cosine_restart"
        for k in range(res.n):
            l2 = float(l2_per_image(bicubic_downsample(res.hr[k:k + 1], 4), target[None]))
            # recomputed from hr: the same downscale and mean of ~768 squares of values <= 1, in float32:
            # sqrt(768) x EPS32 x L2 (< 1e-2) << 1e-6
            assert abs(l2 - float(res.l2[k])) < 1e-6 and bool(res.converged[k]) == (l2 <= res.eps)
        hits += int(res.converged.any())
    assert hits >= 2, f"cosine_restart matched only {hits}/3 planted problems within eps"


def test_cli_says_when_it_will_compile(tiny, capsys) -> None:
    from pulse_sr.cli.common import announce_compile
    from pulse_sr.search.settings import SearchSettings

    announce_compile(SearchSettings(compile="auto"), tiny, quiet=False)  # 32 px: auto stays eager
    announce_compile(SearchSettings(compile="on"), tiny, quiet=True)
    assert capsys.readouterr().err == ""
    announce_compile(SearchSettings(compile="on"), tiny, quiet=False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torch.compile" in err and "--compile off" in err

"""The PULSE search: planted solutions, the original's bugs fixed, faithfulness, purity."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pulse_sr.degradations.bicubic import bicubic_downsample
from pulse_sr.errors import SizeError
from pulse_sr.generators.tiny import make_tiny_generator
from pulse_sr.search.losses import l2_per_image
from pulse_sr.search.pulse import pulse_search
from pulse_sr.search.schedules import lr_multiplier
from pulse_sr.search.settings import SearchSettings

from conftest import EPS32, planted  # noqa: E402 - shared test helper


def assert_proof(result, target: torch.Tensor, eps: float) -> None:
    """Each candidate's LR is the downscale of its own HR, and the flags tell the truth."""
    for k in range(result.n):
        lr = bicubic_downsample(result.hr[k : k + 1], result.hr.shape[-1] // target.shape[-1])
        # the same float32 downscale of the same hr (maybe at another batch size): values in
        # [0, 1], two passes of 4f taps (sum |w| 1.2), f <= 16: sqrt(128) x 6e-8 x 1.2 = 8e-7 <= 1e-6
        assert float((lr[0] - result.lr[k]).abs().max()) <= 1e-6
        l2 = l2_per_image(lr, target[None]).item()
        # L2 = mean(d^2): with every |delta lr| <= 1e-6 (asserted above), Cauchy-Schwarz gives
        # |delta L2| <= 2e-6 x sqrt(L2) + 1e-12; the float32 mean adds sqrt(n) x EPS32 x L2
        tol = 2e-6 * l2 ** 0.5 + 1e-12 + lr.numel() ** 0.5 * EPS32 * l2
        assert l2 == pytest.approx(result.l2[k].item(), rel=0, abs=tol)
        assert bool(result.converged[k]) == (l2 <= eps)
        assert 0 <= result.hr[k].min() and result.hr[k].max() <= 1


# -- planted solutions -------------------------------------------------------------------------
def solved_planted(gen, factor: int, problems: int = 10) -> int:
    """How many planted problems have at least one of n=4 candidates within eps (defaults)."""
    hits = 0
    for seed in range(problems):
        target = planted(gen, seed, factor)
        result = pulse_search(gen, target, n=4, seed=seed)
        assert_proof(result, target, 2e-3)
        hits += bool(result.converged.any())
    return hits


def test_planted_tiny_8_of_10(tiny) -> None:
    hits = solved_planted(tiny, 4)  # 8x8 -> 32x32
    assert hits >= 8, f"only {hits}/10 planted problems solved within eps"


@pytest.mark.slow
def test_planted_dcgan_digiface_8_of_10(dcgan) -> None:
    hits = solved_planted(dcgan, 4)  # 16x16 -> 64x64
    assert hits >= 8, f"only {hits}/10 planted problems solved within eps"


# -- the original's bugs, each fixed -----------------------------------------------------------
def test_seed_zero_is_a_seed(tiny, tiny_fit) -> None:
    target = planted(tiny, 0, 4)
    runs = [pulse_search(tiny, target, seed=0, steps=3, gaussian_fit=tiny_fit) for _ in range(2)]
    assert torch.equal(runs[0].hr, runs[1].hr)
    # Start == what the original draws after torch.manual_seed(0) (latent first).
    torch.manual_seed(0)
    start = torch.randn(1, tiny.num_ws, tiny.w_dim)
    one_step = pulse_search(tiny, target, seed=0, steps=1, gaussian_fit=tiny_fit)
    assert torch.equal(one_step.latents, start)
    other = pulse_search(tiny, target, seed=1, steps=3, gaussian_fit=tiny_fit)
    assert not torch.allclose(other.hr, runs[0].hr)


def test_candidates_differ(tiny, tiny_fit) -> None:
    target = planted(tiny, 3, 4)
    result = pulse_search(tiny, target, n=3, seed=5, steps=20, gaussian_fit=tiny_fit)
    assert result.seeds == [5, 6, 7]
    for i in range(3):
        for j in range(i + 1, 3):
            assert (result.hr[i] - result.hr[j]).abs().mean() > 1e-2  # distinct faces, not rounding


@pytest.mark.parametrize("optimizer, steps, lr, rel", [("adam", 1, 0.4, 1e-5), ("sgd", 10, 0.05, 1e-4)])
def test_batch_equals_independent_runs(tiny, tiny_fit, optimizer: str, steps: int, lr: float, rel: float) -> None:
    # Candidates in one batch do not interact: candidate k follows the same path as a
    # run of its own with seed + k. Batched convolutions round differently; Adam turns
    # rounding-level gradients into full-size steps (g / sqrt(v)), so its paths are
    # compared on the first step, SGD's (linear in the gradient) over many.
    target = planted(tiny, 1, 4)
    common = dict(gaussian_fit=tiny_fit, steps=steps, eps=1e-9, optimizer=optimizer, lr=lr)
    batch = pulse_search(tiny, target, n=3, seed=10, **common)
    for k in range(3):
        single = pulse_search(tiny, target, n=1, seed=10 + k, **common)
        # Adam, 1 step: L2 of the start (batch-size rounding of the tiny net, float32_rel_error(
        # 9 * 32, 8) = 1.1e-5 of the image scale, times ~2 / sqrt(L2) for the square: rel 1e-5 is
        # a few ulps of the L2 itself, since the L2 sums over the same rounded pixels). SGD, 10
        # steps: rounding grows by the (contractive) step map, kept at 1e-4; an interaction
        # between candidates moves L2 by O(1). hr within 1e-3 of pixel range [0, 1] likewise.
        assert single.l2_history[:, 0].tolist() == pytest.approx(batch.l2_history[:, k].tolist(), rel=rel)
        assert (single.hr[0] - batch.hr[k]).abs().max() < 1e-3
    if steps > 1:
        assert batch.l2_history[-1, 0] < batch.l2_history[0, 0]  # the SGD run does move


def test_per_candidate_early_stop(tiny, tiny_fit) -> None:
    target = planted(tiny, 2, 4)
    result = pulse_search(tiny, target, n=4, seed=0, gaussian_fit=tiny_fit)
    stopped = result.converged & (result.steps < 100)
    assert stopped.any()
    for k in torch.nonzero(stopped).flatten().tolist():
        # It stopped at the first step under eps, and that step is the one returned.
        hist = result.l2_history[:, k]
        first = int(torch.nonzero(hist <= 2e-3)[0]) + 1
        assert int(result.steps[k]) == first == int(result.best_step[k])
        assert torch.isnan(hist[first:]).all()
    if (~result.converged).any():
        assert (result.steps[~result.converged] == 100).all()
    everything = pulse_search(tiny, target, n=4, seed=0, gaussian_fit=tiny_fit, run_all_steps=True)
    assert (everything.steps == 100).all()
    assert (everything.converged >= result.converged).all()


def test_returned_hr_is_the_best_and_lr_is_its_own(tiny, tiny_fit) -> None:
    target = planted(tiny, 4, 4)
    result = pulse_search(tiny, target, n=2, seed=3, steps=40, eps=1e-9, gaussian_fit=tiny_fit)
    assert_proof(result, target, 1e-9)
    for k in range(2):
        best = int(result.best_step[k])
        hist = result.l2_history[:, k]
        assert hist[best - 1] == hist.min()  # lowest L2 seen, not the last step
        # the history records the clamped image's L2 at each step; l2 is recomputed from the
        # returned hr of that step (float32 rounding, ~1e-6 relative): rel 1e-3 tells the best
        # step (hist.min) from the last one, which differ by more on a 40-step descent
        assert result.l2[k].item() == pytest.approx(hist.min().item(), rel=1e-3)


def test_missed_eps_is_returned_and_marked(tiny, tiny_fit) -> None:
    target = planted(tiny, 5, 4)
    result = pulse_search(tiny, target, n=2, seed=0, steps=2, eps=1e-12, gaussian_fit=tiny_fit)
    assert result.n == 2 and not result.converged.any()
    assert (result.l2 > 1e-12).all() and result.hr.shape == (2, 3, 32, 32)
    cands = result.candidates()
    assert [c.converged for c in cands] == [False, False]
    assert all(c.summary()["steps_run"] == 2 for c in cands)


# -- faithful to the original loop -------------------------------------------------------------
def original_loop_l2(gen, target, fit, seed: int, steps: int) -> list[float]:
    """A direct transcription of the original's loop (batch 1, summed loss, LambdaLR)."""
    mean, std = fit
    torch.manual_seed(seed)
    latent = torch.randn((1, gen.num_ws, gen.w_dim), requires_grad=True)
    noise, noise_vars = [], []
    for i, shape in enumerate(gen.noise_shapes):
        t = torch.randn((1, *shape))
        if i < 5:
            t.requires_grad = True
            noise_vars.append(t)
        noise.append(t)
    params = [latent] + noise_vars
    radii = {p: (p.pow(2).sum(tuple(range(2, p.ndim)), keepdim=True) + 1e-9).sqrt() for p in params}
    opt = torch.optim.Adam(params, lr=0.4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda x: lr_multiplier("linear1cycledrop")(x, steps))
    out = []
    for _ in range(steps):
        opt.zero_grad()
        latent_in = F.leaky_relu(latent * std + mean, 0.2)  # the original's LeakyReLU(0.2)
        gen_im = (gen.synthesis(latent_in, noise) + 1) / 2
        lr = bicubic_downsample(gen_im, gen.resolution // target.shape[-1])
        l2 = (lr - target[None]).pow(2).mean((1, 2, 3))
        with torch.no_grad():  # what is recorded and checked: the clamped image's downscale
            lr_clamped = bicubic_downsample(gen_im.clamp(0, 1), gen.resolution // target.shape[-1])
            out.append((lr_clamped - target[None]).pow(2).mean().item())
        x, y = latent_in.view(-1, 1, gen.num_ws, gen.w_dim), latent_in.view(-1, gen.num_ws, 1, gen.w_dim)
        d = 2 * torch.atan2(((x - y).pow(2).sum(-1) + 1e-9).sqrt(), ((x + y).pow(2).sum(-1) + 1e-9).sqrt())
        geo = ((d.pow(2) * 512).mean((1, 2)) / 8.0).sum()
        loss = 100 * l2.clamp(min=2e-3).sum() + 0.05 * geo
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p in params:
                p.div_((p.pow(2).sum(tuple(range(2, p.ndim)), keepdim=True) + 1e-9).sqrt()).mul_(radii[p])
        sched.step()
    return out


def test_reproduces_original_loop(tiny, tiny_fit) -> None:
    target = planted(tiny, 6, 4)
    expected = original_loop_l2(tiny, target, tiny_fit, seed=7, steps=25)
    result = pulse_search(tiny, target, seed=7, steps=25, run_all_steps=True, gaussian_fit=tiny_fit)
    got = result.l2_history[:, 0].tolist()
    # The same arithmetic in another order (fused parametrisation, batched losses): rounding of
    # ~1e-6 relative a step (the tiny net's float32_rel_error(9 * 32, 8) = 1.1e-5 is the bound of
    # one forward), which Adam's normalised steps carry over 25 steps without much growth at lr
    # 0.4 x the schedule: rel 1e-4. A different loop (other noise layers, no sphere projection,
    # other schedule) changes the L2 curve by > 1e-2 within a few steps.
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-7)


# -- options -----------------------------------------------------------------------------------
def test_noise_types_and_sphere(tiny, tiny_fit) -> None:
    target = planted(tiny, 7, 4)
    common = dict(seed=1, steps=10, eps=1e-9, gaussian_fit=tiny_fit)
    zero = pulse_search(tiny, target, noise="zero", **common)
    assert all((t == 0).all() for t in zero.noise)
    fixed = pulse_search(tiny, target, noise="fixed", **common)
    rng = torch.Generator().manual_seed(1)
    torch.randn((1, tiny.num_ws, tiny.w_dim), generator=rng)
    start_noise = [torch.randn((1, *s), generator=rng) for s in tiny.noise_shapes]
    assert all(torch.equal(a, b) for a, b in zip(fixed.noise, start_noise))
    trainable = pulse_search(tiny, target, noise="trainable", bad_noise_layers=(6,), num_trainable_noise=5, **common)
    changed = [not torch.equal(a, b) for a, b in zip(trainable.noise, start_noise)]
    assert changed[:5] == [True] * 5 and not changed[5]
    # Layer 6 is zeroed and, as in the original, draws nothing: layer 7 gets the next draw.
    assert torch.equal(trainable.noise[7], start_noise[6])
    assert (trainable.noise[6] == 0).all()
    # kept on their spheres: each step renormalises (a norm over <= 1024 values: sqrt(1024) x
    # EPS32 = 3.8e-6 relative, over 10 steps <= 4e-5): rtol 1e-4; a missing projection drifts by > 1e-2
    for a, b in zip(trainable.noise[:5], start_noise[:5]):
        assert a.norm().item() == pytest.approx(b.norm().item(), rel=1e-4)
    start_latent = torch.randn((1, tiny.num_ws, tiny.w_dim), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(trainable.latents.norm(dim=-1), start_latent.norm(dim=-1), rtol=1e-4)


def test_dcgan_latent_on_sqrt_d_sphere(dcgan) -> None:
    # No mapping network: z itself is searched, on the sphere of radius sqrt(100).
    result = pulse_search(dcgan, planted(dcgan, 1, 4), n=2, steps=3, eps=1e-9)
    assert result.latents.shape == (2, 1, 100)
    # 3 renormalisations of a 100-vector of norm 10: 3 x sqrt(100) x EPS32 x 10 = 3.6e-5 <= 1e-4
    assert torch.allclose(result.latents.norm(dim=-1), torch.full((2, 1), 10.0), atol=1e-4)
    assert torch.equal(result.ws, result.latents)


def test_tile_latent_and_optimizers(tiny, tiny_fit) -> None:
    target = planted(tiny, 8, 4)
    tiled = pulse_search(tiny, target, tile_latent=True, steps=5, gaussian_fit=tiny_fit)
    assert tiled.latents.shape == (1, 1, tiny.w_dim)
    assert torch.allclose(tiled.ws[0], tiled.ws[0, :1].expand(tiny.num_ws, -1))
    for opt in ("sgd", "sgdm", "adamax"):
        r = pulse_search(tiny, target, optimizer=opt, schedule="fixed", steps=5, gaussian_fit=tiny_fit, lr=0.1)
        assert torch.isfinite(r.l2_history).all()
        assert r.l2_history[-1, 0] != r.l2_history[0, 0]


def test_callback_sees_every_step(tiny, tiny_fit) -> None:
    seen = []
    pulse_search(tiny, planted(tiny, 9, 4), n=2, steps=4, eps=1e-9, gaussian_fit=tiny_fit,
                 callback=seen.append, callback_images=True)
    assert [s.step for s in seen] == [1, 2, 3, 4]
    assert seen[-1].hr.shape == (2, 3, 32, 32) and seen[-1].total_steps == 4
    assert not torch.equal(seen[0].hr, seen[-1].hr)


def test_never_mutates_the_callers_model(tiny_fit) -> None:
    gen = make_tiny_generator(seed=3)
    gen.requires_grad_(True).train()  # even a caller's trainable, train-mode module
    before = copy.deepcopy(gen.state_dict())
    pulse_search(gen, planted(gen, 0, 4), steps=3, gaussian_fit=tiny_fit)
    assert gen.training
    assert all(p.grad is None for p in gen.parameters())
    assert all(torch.equal(before[k], v) for k, v in gen.state_dict().items())


def test_dcgan_train_mode_batchnorm_untouched(dcgan) -> None:
    gen = copy.deepcopy(dcgan).train()
    before = copy.deepcopy(gen.state_dict())
    result = pulse_search(gen, planted(dcgan, 0, 4), steps=2)
    assert all(torch.equal(before[k], v) for k, v in gen.state_dict().items())
    eval_result = pulse_search(dcgan, planted(dcgan, 0, 4), steps=2)
    assert torch.allclose(result.hr, eval_result.hr)  # searched in eval mode either way


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(steps=0), ValueError, "steps"),
        (dict(eps=0.0), ValueError, "eps"),
        (dict(lr=-1.0), ValueError, "lr"),
        (dict(optimizer="rmsprop"), ValueError, "optimizer"),
        (dict(noise="random"), ValueError, "noise"),
        (dict(schedule="cosine"), ValueError, "schedule"),
        (dict(loss="100*L3"), ValueError, "loss term"),
        (dict(n=0), ValueError, "n must"),
        (dict(seed=-1), ValueError, "seed"),
    ],
)
def test_bad_settings(tiny, tiny_fit, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        pulse_search(tiny, torch.rand(3, 8, 8), gaussian_fit=tiny_fit, **kwargs)


@pytest.mark.parametrize("shape, match", [((3, 8, 6), "square"), ((3, 7, 7), "takes 4, 8, 16 pixel"), ((3, 32, 32), "takes"), ((1, 8, 8), "RGB")])
def test_bad_target_sizes(tiny, tiny_fit, shape, match) -> None:
    with pytest.raises(SizeError, match=match):
        pulse_search(tiny, torch.rand(*shape), gaussian_fit=tiny_fit)


def test_other_factors(tiny, tiny_fit) -> None:
    for side in (4, 16):
        r = pulse_search(tiny, torch.rand(3, side, side), steps=2, gaussian_fit=tiny_fit)
        assert r.lr.shape == (1, 3, side, side)


def test_settings_object_and_overrides(tiny, tiny_fit) -> None:
    base = SearchSettings(steps=2, eps=1e-9)
    assert pulse_search(tiny, torch.rand(3, 8, 8), settings=base, gaussian_fit=tiny_fit).l2_history.shape == (2, 1)
    result = pulse_search(tiny, torch.rand(3, 8, 8), settings=base, steps=3, gaussian_fit=tiny_fit)
    assert result.l2_history.shape == (3, 1) and result.settings.steps == 3 and base.steps == 2
    assert SearchSettings().to_dict()["loss"] == "100*L2+0.05*GEOCROSS"

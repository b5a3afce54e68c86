"""Extended-range search (ILO): split helpers, planted solutions, the radius bound, a real face.

Split helpers: the two halves run exactly the ops of ``synthesis`` in the same order on the
same tensors (a split only names an intermediate result), so on one machine the composition
is bitwise equal to the full synthesis: ``torch.equal``, no tolerance.
"""
from __future__ import annotations

import pytest
import torch

from pulse_sr.generators.split import Split, activation_at, default_layer, split_layers, synthesis_from
from pulse_sr.generators.stylegan2 import StyleGAN2Generator
from pulse_sr.generators.stylegan3 import StyleGAN3Generator

SG2_SMALL = dict(z_dim=8, w_dim=8, img_resolution=16, channel_base=64, channel_max=8)
SG3_SMALL = dict(z_dim=8, w_dim=8, img_resolution=32, channel_base=256, channel_max=16, num_layers=6,
                 mapping_kwargs={"num_layers": 2})


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny networks, one thread


def _small_generators(tiny, dcgan) -> dict:
    seed = torch.Generator().manual_seed(0)
    sg2 = StyleGAN2Generator(**SG2_SMALL, init_generator=seed).eval().requires_grad_(False)
    sg3 = StyleGAN3Generator(**SG3_SMALL, init_generator=torch.Generator().manual_seed(0)).eval().requires_grad_(False)
    return {"dcgan": dcgan, "tiny": tiny, "stylegan2": sg2, "stylegan3": sg3}


def _random_inputs(gen, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ws = torch.randn(batch, gen.num_ws, gen.w_dim, generator=g)
    noise = [torch.randn(batch, *s, generator=g) for s in gen.noise_shapes] if gen.noise_shapes else None
    return ws, noise


@pytest.mark.parametrize("name", ["dcgan", "tiny", "stylegan2", "stylegan3"])
def test_split_composes_to_full_synthesis(name: str, tiny, dcgan) -> None:
    gen = _small_generators(tiny, dcgan)[name]
    ws, noise = _random_inputs(gen, 2, seed=3)
    with torch.no_grad():
        full = gen.synthesis(ws, noise)
        for layer in split_layers(gen):
            split = activation_at(gen, ws, noise, layer)
            assert split.act.shape[0] == 2 and split.act.ndim == 4
            assert torch.equal(synthesis_from(gen, split, ws, noise), full), f"layer {layer}"
        # the second half really uses the activation: moving it moves the image
        split = activation_at(gen, ws, noise, default_layer(gen))
        moved = Split(split.act * 1.5 + 0.1, split.layer, split.skip)
        assert (synthesis_from(gen, moved, ws, noise) - full).abs().max() > 1e-3


def test_dcgan_default_layer_is_first_feature_map(dcgan) -> None:
    ws, _ = _random_inputs(dcgan, 1, seed=0)
    assert activation_at(dcgan, ws, None, default_layer(dcgan)).act.shape == (1, 512, 4, 4)


# -- the extended search ------------------------------------------------------------------------
from pulse_sr.degradations.bicubic import BicubicDownsample  # noqa: E402
from pulse_sr.search.extended import extended_search, project_l1_ball  # noqa: E402


def _luma(factor: int):
    """Local BT.601 luma of PULSE's bicubic: [n, 3, R, R] -> [n, 1, h, w] (until the grey wrapper lands)."""
    down = BicubicDownsample(factor)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return lambda x: (down(x) * weights).sum(dim=1, keepdim=True)


def _tiny_problem(tiny, seed: int, batch: int = 2):
    """Latents of ``batch`` tiny samples: ws [batch, num_ws, w_dim], noise list."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, tiny.z_dim, generator=g)
    with torch.no_grad():
        ws = tiny.mapping(z)[:, None].expand(-1, tiny.num_ws, -1).contiguous()
    noise = [torch.randn(batch, *s, generator=g) for s in tiny.noise_shapes]
    return ws, noise


def _image(gen, split, ws, noise):
    with torch.no_grad():
        return ((synthesis_from(gen, split, ws, noise) + 1) / 2).clamp(0, 1)


def test_project_l1_ball_matches_bisection() -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(4, 300, generator=g, dtype=torch.float64)
    z = torch.tensor([0.0, 2.0, 30.0, 1e4], dtype=torch.float64)
    w = project_l1_ball(v, z)
    assert torch.equal(w[3], v[3])  # already inside
    assert torch.equal(w[0], torch.zeros_like(w[0]))
    for i in (1, 2):
        lo, hi = 0.0, float(v[i].abs().max())
        for _ in range(200):  # bisection on the soft threshold theta: sum(max(|v| - theta, 0)) = z
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if float((v[i].abs() - mid).clamp(min=0).sum()) > float(z[i]) else (lo, mid)
        ref = v[i].sign() * (v[i].abs() - hi).clamp(min=0)
        # float64: 200 halvings pin theta to ~1e-16 of max |v|; sums of 300 terms add ~300 ulp
        assert (w[i] - ref).abs().max() < 1e-12
        assert abs(float(w[i].abs().sum()) - float(z[i])) < 1e-12 * float(z[i]) * 300


def test_planted_at_latent_stays_put(tiny) -> None:
    """x = A(G(w)): starting at w, the extended search keeps L2 ~0 and never leaves the range."""
    ws, noise = _tiny_problem(tiny, seed=1)
    op = BicubicDownsample(4)
    layer = default_layer(tiny)
    target = op(_image(tiny, activation_at(tiny, ws, noise, layer), ws, noise))
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    res = extended_search(tiny, target, operator=op, start_ws=ws, start_noise=noise, layer=layer, radius=0.1,
                          steps=20, lr=0.05, threshold=2e-3, seed=0)
    # the same ops on the same tensors as the target's: L2 is 0 up to batched-kernel rounding
    # (|diff| a few float32 ulp of values <= 1, squared: < 1e-12)
    assert float(res.l2.max()) < 1e-12
    assert res.converged.all() and not res.left_range.any()
    assert torch.equal(res.radius_used, torch.zeros(2, dtype=res.radius_used.dtype))
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())  # pure
    assert all(p.grad is None for p in tiny.parameters())


def test_planted_in_the_ball_is_found(tiny) -> None:
    """x = A(G_from(a0 + d)) with ||d||_1 = radius/2 ||a0||_1: found within the threshold from a0."""
    ws, noise = _tiny_problem(tiny, seed=2)
    layer, radius = 2, 0.2
    s0 = activation_at(tiny, ws, noise, layer)
    g = torch.Generator().manual_seed(5)
    d = torch.randn(s0.act.shape, generator=g) * (torch.rand(s0.act.shape, generator=g) < 0.1)
    norm0 = s0.act.abs().flatten(1).sum(1)
    d = d / d.abs().flatten(1).sum(1).view(-1, 1, 1, 1) * (radius / 2 * norm0).view(-1, 1, 1, 1)
    op = BicubicDownsample(2)
    target = op(_image(tiny, Split(s0.act + d, layer, s0.skip), ws, noise))
    threshold = 1e-5
    start = (op(_image(tiny, s0, ws, noise)) - target).pow(2).mean(dim=(1, 2, 3))
    assert (start > 10 * threshold).all()  # the planted face really is off the latent's
    res = extended_search(tiny, target, operator=op, start_ws=ws, start_noise=noise, layer=layer, radius=radius,
                          steps=300, lr=0.05, threshold=threshold, seed=0)
    assert res.converged.all(), res.l2
    assert res.left_range.all() and (res.radius_used <= radius).all()


def test_radius_never_exceeded(tiny) -> None:
    """A target far off the range pushes every candidate to the ball's surface: the distance
    reported after every step (and the result's) is <= radius, and the bound is reached."""
    ws, noise = _tiny_problem(tiny, seed=3, batch=3)
    target = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    seen: list[torch.Tensor] = []
    radius = 0.05

    def record(info) -> None:
        seen.extend([info.radius_used, info.radius_now])

    res = extended_search(tiny, target, operator=BicubicDownsample(4), start_ws=ws, start_noise=noise,
                          layer=1, radius=radius, steps=15, lr=0.5, threshold=torch.tensor([0.0, 0.0, 0.0]),
                          seed=0, callback=record)
    assert len(seen) == 2 * 16
    assert max(float(t.max()) for t in seen) <= radius
    assert (res.radius_used <= radius).all()
    # the projection is active: the ball's surface is reached (within the float32 safety margin)
    assert float(res.radius_used.min()) > radius * (1 - 1e-4)
    assert not res.converged.any() and res.left_range.all()


def test_each_candidate_its_own_threshold_and_mask(tiny) -> None:
    ws, noise = _tiny_problem(tiny, seed=4)
    op = BicubicDownsample(4)
    target = op(_image(tiny, activation_at(tiny, ws, noise, 1), ws, noise))
    garbage = target.clone()
    garbage[..., :, :3] = 1.0 - garbage[..., :, :3]
    mask = torch.ones(8, 8)
    mask[:, :3] = 0
    res = extended_search(tiny, garbage, operator=op, start_ws=ws, start_noise=noise, layer=1, radius=0.1,
                          steps=3, lr=0.05, threshold=torch.tensor([1e-3, 1e-3]), mask=mask, seed=0)
    assert float(res.l2.max()) < 1e-12 and not res.left_range.any()  # unknown pixels add nothing
    unmasked = extended_search(tiny, garbage, operator=op, start_ws=ws, start_noise=noise, layer=1, radius=0.1,
                               steps=3, lr=0.05, threshold=torch.tensor([0.0, 1.0]), seed=0)
    assert not bool(unmasked.converged[0]) and bool(unmasked.converged[1])
    assert float(unmasked.radius_used[1]) == 0.0 and float(unmasked.radius_used[0]) > 0


def _lfw_face(index: int) -> torch.Tensor:
    """lfw_subset face ``index`` (25x25 grey) resized to 16x16 with Pillow bicubic, 8-bit: [1, 16, 16] in [0, 1]."""
    import numpy as np
    from PIL import Image
    from skimage import data

    face = data.lfw_subset()[index]
    img = Image.fromarray(np.round(face * 255).astype(np.uint8), mode="L").resize((16, 16), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]


def test_real_face_outside_range_reaches_eps(dcgan) -> None:
    """A real (LFW) grey face: the latent search misses eps on luma, the extended search meets it,
    within its radius, with plausible colour."""
    from pulse_sr.search.chroma import fit_chroma_prior
    from pulse_sr.search.pulse import pulse_search
    from pulse_sr.search.settings import SearchSettings

    eps, radius = 2e-3, 0.3
    grey = _lfw_face(1)
    op = _luma(4)
    latent = pulse_search(dcgan, grey.expand(3, -1, -1).contiguous(), n=1, seed=0, settings=SearchSettings(mode="auto"))
    with torch.no_grad():
        latent_l2 = float((op(latent.hr) - grey[None]).pow(2).mean())
    assert latent_l2 > eps
    prior = fit_chroma_prior(dcgan, samples=200, seed=0)
    res = extended_search(dcgan, grey, operator=op, start_ws=latent.ws, start_noise=latent.noise, layer=1,
                          radius=radius, steps=200, lr=0.1, threshold=eps, seed=0, chroma=prior)
    assert bool(res.converged[0]) and float(res.l2[0]) <= eps, (latent_l2, res.l2)
    assert bool(res.left_range[0]) and 0 < float(res.radius_used[0]) <= radius
    assert float(res.chroma_distance[0]) <= prior.radius

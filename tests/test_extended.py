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


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks gain nothing from threads on a shared machine; restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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

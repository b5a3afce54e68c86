"""``tiny``: a small StyleGAN-like generator for tests and demos of the search logic.

Same architecture as :mod:`pulse_sr.generators.stylegan1` (per-layer latents,
explicit noise inputs, mapping network) at 32x32 with 32 channels, randomly
initialised from a fixed seed, so it runs a whole search in seconds. It has
not been trained: its images are texture, not faces. Its RGB layer is scaled
by ``rgb_gain`` (0.1) so images mostly stay inside [-1, 1], as a trained
generator's do; unscaled random weights saturate and make the search
artificially hard.
"""
from __future__ import annotations

import hashlib

import torch

from pulse_sr.generators.stylegan1 import StyleGAN1Generator


def state_dict_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, shapes and float32 bytes), hex."""
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        h.update(key.encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def make_tiny_generator(
    *, seed: int = 0, resolution: int = 32, w_dim: int = 32, channels: int = 32, mapping_layers: int = 4,
    rgb_gain: float = 0.1,
    device: str | torch.device = "cpu",
) -> StyleGAN1Generator:
    """A seeded random-init StyleGAN1-like generator: ``num_ws = 2 log2(R) - 2``
    (8 at 32x32), noise inputs ``[1, 2**(i//2+2), ...]``, output ``[N, 3, R, R]``."""
    gen = StyleGAN1Generator(
        resolution=resolution,
        w_dim=w_dim,
        mapping_layers=mapping_layers,
        fmap_base=channels * 16,
        fmap_max=channels,
        init_generator=torch.Generator().manual_seed(seed),
    )
    with torch.no_grad():
        gen.synthesis_net.torgb.weight.mul_(rgb_gain)
    gen.name = "tiny"
    gen.weights_source = f"random init, seed {seed}"
    gen.weights_hash = state_dict_sha256(gen)
    return gen.eval().requires_grad_(False).to(device)

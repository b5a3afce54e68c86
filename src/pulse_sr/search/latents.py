"""Starting points of the search: latents and noise per candidate, seeded.

Candidate ``k`` draws from its own ``torch.Generator`` seeded with ``seed + k``,
in the original's order: the latent first, then each noise map that is not
zero. A run with ``n = 1`` therefore starts exactly where the original PULSE
code started with the same seed on a CPU (and seed 0 is a seed like any other).

For a generator without a mapping network (the latent *is* ``z ~ N(0, I_d)``),
the draw is put on the sphere of radius ``sqrt(d)`` where the prior's mass lies;
with a mapping network each row keeps the norm of its draw, as in the original.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pulse_sr.generators.base import FaceGenerator
from pulse_sr.search.settings import SearchSettings


@dataclass
class StartState:
    """latent [n, L, w_dim] (L = 1 when tiled); noise: list of [n, 1, H, W];
    trainable[i] tells whether noise[i] is optimised."""

    latent: Tensor
    noise: list[Tensor]
    trainable: list[bool]


def noise_plan(generator: FaceGenerator, settings: SearchSettings) -> list[str]:
    """Per noise input: ``"zero"``, ``"fixed"`` or ``"trainable"``."""
    plan = []
    bad = set(settings.bad_noise_layers)
    for i in range(len(generator.noise_shapes)):
        if settings.noise == "zero" or i in bad:
            plan.append("zero")
        elif settings.noise == "fixed":
            plan.append("fixed")
        elif settings.noise == "trainable":
            plan.append("trainable" if i < settings.num_trainable_noise else "fixed")
        else:
            raise ValueError(f"unknown noise type {settings.noise!r}")
    return plan


def initial_state(
    generator: FaceGenerator, settings: SearchSettings, *, n: int, seed: int, device: torch.device
) -> StartState:
    """Draw the start of ``n`` candidates; candidate k uses seed + k."""
    layers = 1 if settings.tile_latent else generator.num_ws
    plan = noise_plan(generator, settings)
    latents: list[Tensor] = []
    noises: list[list[Tensor]] = [[] for _ in plan]
    for k in range(n):
        rng = torch.Generator().manual_seed(seed + k)
        latents.append(torch.randn((1, layers, generator.w_dim), generator=rng))
        for i, (kind, shape) in enumerate(zip(plan, generator.noise_shapes)):
            if kind == "zero":
                noises[i].append(torch.zeros((1, *shape)))
            else:
                noises[i].append(torch.randn((1, *shape), generator=rng))
    latent = torch.cat(latents)
    if not generator.has_mapping:
        latent = latent * (generator.w_dim**0.5 / latent.norm(dim=-1, keepdim=True))
    return StartState(
        latent=latent.to(device),
        noise=[torch.cat(maps).to(device) for maps in noises],
        trainable=[kind == "trainable" for kind in plan],
    )

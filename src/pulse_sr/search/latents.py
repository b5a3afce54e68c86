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
from typing import Callable

import torch
from torch import Tensor

from pulse_sr.generators.base import FaceGenerator
from pulse_sr.search.seeds import stream_seed
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


def w_avg_latent(generator: FaceGenerator, gaussian_fit: tuple[Tensor, Tensor] | None) -> Tensor:
    """The search latent ``[w_dim]`` that the search maps to the mapping's tracked ``w_avg``.

    The search maps ``u -> leaky_relu(u * std + mean, 0.2)``, so ``u = (leaky_relu(w_avg, 5) - mean) / std``.
    Raises ValueError when the generator tracks no ``w_avg`` (e.g. PULSE's StyleGAN1).
    """
    w_avg = getattr(generator, "w_avg", None)
    if not isinstance(w_avg, Tensor) or w_avg.shape != (generator.w_dim,):
        raise ValueError(
            f"start='w_avg' needs a mapping network with a tracked w_avg; the {generator.backend} "
            f"generator{' ' + repr(generator.name) if generator.name else ''} has none (use start='gaussian')"
        )
    w_avg = w_avg.detach().float().cpu()
    if gaussian_fit is None:
        return w_avg
    mean, std = (t.detach().float().cpu() for t in gaussian_fit)
    return (torch.nn.functional.leaky_relu(w_avg, 5.0) - mean) / std


def initial_state(
    generator: FaceGenerator, settings: SearchSettings, *, n: int, seed: int, device: torch.device,
    gaussian_fit: tuple[Tensor, Tensor] | None = None,
) -> StartState:
    """Draw the start of ``n`` candidates; candidate k uses seed + k.

    With ``settings.start == "w_avg"`` every latent row starts at :func:`w_avg_latent`
    (the draw of the latent is still made, so the noise maps are those of the Gaussian start).
    """
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
    if settings.start == "w_avg":
        latent = w_avg_latent(generator, gaussian_fit).expand_as(latent).clone()
    else:
        latent = _onto_prior_sphere(generator, latent)
    return StartState(
        latent=latent.to(device),
        noise=[torch.cat(maps).to(device) for maps in noises],
        trainable=[kind == "trainable" for kind in plan],
    )


def _onto_prior_sphere(generator: FaceGenerator, latent: Tensor) -> Tensor:
    """Without a mapping network each row goes onto the ``sqrt(d)`` sphere; else unchanged."""
    if generator.has_mapping:
        return latent
    return latent * (generator.w_dim**0.5 / latent.norm(dim=-1, keepdim=True))


#: pool draws of candidate k come from ``manual_seed(stream_seed(POOL_STREAM, seed, k))``, a stream
#: apart from the PULSE draws (seeded ``seed + k``). It used to be seeded ``(1 << 40) + seed + k``,
#: which a CPU generator truncates to ``seed + k``: the pool's first draw repeated the start.
POOL_STREAM = "start-pool"


def best_of_pool(
    generator: FaceGenerator, start: StartState, settings: SearchSettings, *, seed: int,
    score: Callable[[Tensor, list[Tensor], int], Tensor],
) -> Tensor:
    """Per candidate, the latent ``[L, w_dim]`` with the lowest ``score`` among its own start and
    ``settings.start_pool - 1`` more seeded draws (same noise maps); returns ``[n, L, w_dim]`` on the
    start's device.

    ``score(latents [B, L, w_dim], noise list of [B, 1, H, W], k) -> [B]`` (lower is better; ``k``: the
    candidate whose draws these are, so each is scored against its own input), called on
    at most ``settings.max_batch`` draws at a time (all at once when 0).
    With ``start == "w_avg"`` every draw would be the same point: the start is returned unchanged.
    """
    pool = settings.start_pool
    if settings.start == "w_avg" or pool <= 1:
        return start.latent
    n, layers, dim = start.latent.shape
    chunk = settings.max_batch or pool
    chosen = []
    for k in range(n):
        rng = torch.Generator().manual_seed(stream_seed(POOL_STREAM, seed, k))
        extra = _onto_prior_sphere(generator, torch.randn((pool - 1, layers, dim), generator=rng))
        draws = torch.cat([start.latent[k:k + 1], extra.to(start.latent.device)])
        scores = []
        for part in draws.split(chunk):
            noise = [t[k:k + 1].expand(len(part), *t.shape[1:]) for t in start.noise]
            scores.append(score(part, noise, k))
        chosen.append(draws[int(torch.cat(scores).argmin())])
    return torch.stack(chosen)

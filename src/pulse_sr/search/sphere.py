"""Sphere projection used by PULSE's spherical optimizer.

Each latent row ``[..., D]`` (and each noise map ``[..., H, W]``) keeps the norm
it had at initialisation: after every optimiser step it is rescaled back onto
its sphere. For a standard normal draw that norm is about ``sqrt(D)``.
"""
from __future__ import annotations

import torch
from torch import Tensor


def sphere_norm(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Euclidean norm over ``dims`` (kept), with PULSE's 1e-9 inside the root."""
    return (x.pow(2).sum(dim=dims, keepdim=True) + 1e-9).sqrt()


@torch.no_grad()
def project_to_sphere_(x: Tensor, radius: Tensor, dims: tuple[int, ...]) -> Tensor:
    """In place: rescale ``x`` so its norm over ``dims`` equals ``radius``; returns ``x``."""
    x.div_(sphere_norm(x, dims)).mul_(radius)
    return x


def latent_dims(x: Tensor) -> tuple[int, ...]:
    """Latents ``[N, L, D]``: each row of ``D`` values is one sphere."""
    return (x.ndim - 1,)


def noise_dims(x: Tensor) -> tuple[int, ...]:
    """Noise ``[N, 1, H, W]``: each map is one sphere (the original's ``dims >= 2``)."""
    return tuple(range(2, x.ndim))

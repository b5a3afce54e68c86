"""Run a generator's synthesis in two halves, split at an intermediate activation.

The extended-range search (``search/extended.py``, ILO) optimises the activation at
a split point instead of the latent. For every backend this module gives

- :func:`activation_at`: ``(ws, noise) -> Split``, the activation the latent produces
  at ``layer`` (plus whatever else the second half needs that is *not* optimised,
  e.g. StyleGAN2's skip image), and
- :func:`synthesis_from`: ``(Split, ws, noise) -> [N, 3, R, R]``, the rest of the
  synthesis from that activation on (later ws and noise as they are),

so that ``synthesis_from(activation_at(ws, noise, layer), ws, noise)`` runs exactly the
ops of ``generator.synthesis(ws, noise)``, in the same order, on the same tensors.

``layer`` counts the stages run before the split:

- ``dcgan``: ConvTranspose-BatchNorm-ReLU stages, 1..4; 1 (default) is the first
  feature map ``[N, 512, 4, 4]``.
- ``stylegan1`` (and ``tiny``): synthesis blocks, 1..num_blocks-1; ``layer = k`` is the
  input of the block of side ``4 * 2**k`` (the output of the block before it).
- ``stylegan2``: blocks as for StyleGAN1; the activation is the block's ``x`` input,
  the running skip image ``img`` travels unchanged in ``Split.skip``.
- ``stylegan3``: synthesis layers, 1..len(layers)-1; ``layer = k`` is the input of the
  layer after the Fourier input and the first ``k`` layers (``L0`` .. ``L{k-1}``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from pulse_sr.errors import SettingsError


@dataclass
class Split:
    """The state of the synthesis at a split point.

    ``act``: the activation ``[N, C, H, W]`` (what ILO optimises); ``skip``: state the
    second half needs but that is not optimised (StyleGAN2's running RGB image
    ``[N, 3, H, W]``), else ``None``; ``layer``: where the split is.
    """

    act: Tensor
    layer: int
    skip: Tensor | None = None


def _backend(generator: torch.nn.Module) -> str:
    backend = str(getattr(generator, "backend", ""))
    if backend not in ("dcgan", "stylegan1", "stylegan2", "stylegan3"):
        raise SettingsError(f"the extended search has no split point for the {backend or 'unknown'} backend",
                            backend=backend)
    return backend


def split_layers(generator: torch.nn.Module) -> list[int]:
    """The valid ``layer`` values for this generator."""
    backend = _backend(generator)
    if backend == "dcgan":
        return [1, 2, 3, 4]
    if backend == "stylegan1":
        return list(range(1, len(generator.synthesis_net.blocks)))
    if backend == "stylegan2":
        return list(range(1, len(generator.synthesis_net.block_resolutions)))
    return list(range(1, len(generator.synthesis_net.layer_names)))


def default_layer(generator: torch.nn.Module) -> int:
    """The default split: the first feature map (DCGAN 4x4x512, StyleGAN1/2 the 4x4 block's output,
    StyleGAN3 the output of its first layer)."""
    return split_layers(generator)[0]


def check_layer(generator: torch.nn.Module, layer: int) -> int:
    layers = split_layers(generator)
    if not isinstance(layer, int) or layer not in layers:
        raise SettingsError(f"layer must be one of {layers} for {generator.backend}, got {layer!r}",
                            layer=layer, allowed=layers)
    return layer


# -- per backend ------------------------------------------------------------------------------
def _dcgan_stages(generator: torch.nn.Module) -> list[torch.nn.Module]:
    mods = list(generator.main.children())
    # stages of three (ConvT, BN, ReLU) x4, then (ConvT, Tanh)
    return [torch.nn.Sequential(*mods[3 * i:3 * i + 3]) for i in range(4)] + [torch.nn.Sequential(*mods[12:])]


def _sg1_noise(noise: Sequence[Tensor] | None, b: int) -> list[Tensor | None]:
    return [None, None] if noise is None else [noise[2 * b], noise[2 * b + 1]]


def _sg2_blocks(generator: torch.nn.Module, ws: Tensor, noise: Sequence[Tensor] | None):
    """Yield (index, block, block_ws, block_noise) in order, as SynthesisNetwork.forward does."""
    net = generator.synthesis_net
    w_idx = 0
    for i, block in enumerate(net.blocks()):
        block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
        block_noise = None if noise is None or not net.use_noise else list(noise)[w_idx:w_idx + block.num_conv]
        yield i, block, block_ws, block_noise
        w_idx += block.num_conv


def _sg3_rows(generator: torch.nn.Module, ws: Tensor) -> tuple[torch.nn.Module, tuple[Tensor, ...]]:
    return generator.synthesis_net, ws.unbind(dim=1)


# -- the two halves -----------------------------------------------------------------------------
def activation_at(generator: torch.nn.Module, ws: Tensor, noise: Sequence[Tensor] | None, layer: int) -> Split:
    """The first half: ``ws [N, num_ws, w_dim]``, noise as ``generator.synthesis`` takes it -> :class:`Split`.

    Differentiable; the generator is not modified.
    """
    backend = _backend(generator)
    check_layer(generator, layer)
    generator.check_ws(ws)
    if backend != "stylegan3":
        noise = generator.check_noise(noise, ws.shape[0])
    if backend == "dcgan":
        x = ws[:, 0, :, None, None]
        for stage in _dcgan_stages(generator)[:layer]:
            x = stage(x)
        return Split(x, layer)
    if backend == "stylegan1":
        x: Tensor | None = None
        for b, block in enumerate(generator.synthesis_net.blocks.values()):
            if b == layer:
                break
            x = block(x, ws[:, 2 * b:2 * b + 2], _sg1_noise(noise, b))
        assert x is not None
        return Split(x, layer)
    if backend == "stylegan2":
        x2: Tensor | None = None
        img: Tensor | None = None
        for i, block, block_ws, block_noise in _sg2_blocks(generator, ws, noise):
            if i == layer:
                break
            x2, img = block(x2, img, block_ws, block_noise)
        assert x2 is not None and img is not None
        return Split(x2, layer, skip=img)
    net, rows = _sg3_rows(generator, ws)
    _check_sg3_noise(noise)
    x3 = net.input(rows[0])
    for lay, w in zip(net.layers()[:layer], rows[1:layer + 1]):
        x3 = lay(x3, w)
    return Split(x3, layer)


def synthesis_from(generator: torch.nn.Module, split: Split, ws: Tensor,
                   noise: Sequence[Tensor] | None) -> Tensor:
    """The second half: ``split.act`` (possibly moved off the generator's range), the same ``ws``
    and noise -> ``[N, 3, R, R]`` in about [-1, 1] (not clamped), as ``generator.synthesis``."""
    backend = _backend(generator)
    layer = check_layer(generator, split.layer)
    generator.check_ws(ws)
    if backend != "stylegan3":
        noise = generator.check_noise(noise, ws.shape[0])
    x = split.act
    if backend == "dcgan":
        for stage in _dcgan_stages(generator)[layer:]:
            x = stage(x)
        return x
    if backend == "stylegan1":
        net = generator.synthesis_net
        for b, block in enumerate(net.blocks.values()):
            if b >= layer:
                x = block(x, ws[:, 2 * b:2 * b + 2], _sg1_noise(noise, b))
        return net.torgb(x)
    if backend == "stylegan2":
        img = split.skip
        for i, block, block_ws, block_noise in _sg2_blocks(generator, ws, noise):
            if i >= layer:
                x, img = block(x, img, block_ws, block_noise)
        assert img is not None
        return img
    net, rows = _sg3_rows(generator, ws)
    _check_sg3_noise(noise)
    for lay, w in zip(net.layers()[layer:], rows[layer + 1:]):
        x = lay(x, w)
    x = x * net.output_scale if net.output_scale != 1 else x
    return x.contiguous()


def _check_sg3_noise(noise: Sequence[Tensor] | None) -> None:
    if noise is not None and len(list(noise)) != 0:
        raise ValueError(f"stylegan3: expected 0 noise tensors, got {len(list(noise))}")

"""``stylegan2``: NVIDIA's StyleGAN2 generator (config F, ``skip`` architecture), in our own code.

A clean-room port written from the published description and reference
values (no NVIDIA code). The module tree reproduces the state-dict keys of
``G_ema`` in NVIDIA's PyTorch pickles (stylegan2-ada-pytorch / stylegan3),
in the same order, so their tensors load strictly:

- ``mapping``: ``w_avg`` (buffer), ``fc0`` .. ``fc<L-1>``. ``z`` is normalised
  to unit second moment, then each FC layer (run-time weight gain
  ``lr_multiplier / sqrt(fan_in)``, bias gain ``lr_multiplier``) applies
  LeakyReLU(0.2) times ``sqrt(2)``.
- ``synthesis.b<R>`` for R = 4, 8, ..., resolution. ``b4`` starts from the
  learned ``const [C, 4, 4]``; every other block has ``conv0`` (2x upsampling
  modulated conv) and ``conv1``. Every block has a ``torgb`` (modulated 1x1,
  no demodulation) whose output is added to the running image, upsampled 2x
  with the ``[1,3,3,1]`` FIR filter (``skip`` architecture).
- Each synthesis layer: ``affine`` (FC, ``w -> styles``), modulated and
  demodulated 3x3 conv, ``+ noise * noise_strength``, ``+ bias``, LeakyReLU(0.2)
  times ``sqrt(2)``. ``noise_const [R, R]`` is the layer's fixed noise buffer.

Style rows: ``b4`` uses ``ws`` rows 0 (conv1) and 1 (torgb); ``b<R>`` with
R >= 8 uses rows ``k, k+1, k+2`` (conv0, conv1, torgb), ``k = 2*log2(R) - 5``.
``num_ws = 2*log2(resolution) - 2`` (18 at 1024).

Naming: NVIDIA's keys start with ``synthesis.`` and ``mapping.``, which are
also the names of the :class:`FaceGenerator` interface methods. As in NVIDIA's
own ``Generator``, ``gen.synthesis`` and ``gen.mapping`` *are* the two
sub-networks: they are registered in ``self._modules`` under those names (so
``state_dict``, ``named_parameters``, ``get_submodule``, ``functional_call`` ...
all use NVIDIA's names) and exposed by read-only properties that override the
base-class methods. Calling them is the interface: ``gen.synthesis(ws, noise)``
and ``gen.mapping(z)`` run the modules' ``forward``, which validate their
inputs like :meth:`FaceGenerator.check_ws` / :meth:`~FaceGenerator.check_noise`.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pulse_sr.errors import WeightsError
from pulse_sr.generators.base import FaceGenerator, state_dict_mismatch
from pulse_sr.generators.stylegan2_ops import (
    bias_act,
    modulated_conv2d,
    normalize_2nd_moment,
    setup_filter,
    upsample2d,
)

RESAMPLE_FILTER = (1, 3, 3, 1)


def _randn(shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
    return torch.randn(tuple(shape), generator=generator)


# -- layers ------------------------------------------------------------------------------
class FullyConnectedLayer(nn.Module):
    """``[N, in] -> [N, out]``; run-time gains ``lr_multiplier / sqrt(in)`` (weight), ``lr_multiplier`` (bias)."""

    def __init__(self, in_features: int, out_features: int, *, lrelu: bool = False, bias_init: float = 0.0,
                 lr_multiplier: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.lrelu = lrelu
        self.bias_init = bias_init
        self.lr_multiplier = lr_multiplier
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.weight.copy_(_randn(self.weight.shape, generator) / self.lr_multiplier)
        self.bias.fill_(self.bias_init / self.lr_multiplier)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias_gain != 1 else self.bias
        if not self.lrelu:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, lrelu=True)

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, lrelu={self.lrelu}, lr_multiplier={self.lr_multiplier}"


def use_fused(fused_modconv: bool, styles: Tensor) -> bool:
    """The form a modulated conv runs in: the grouped (fused) form only when no gradient flows
    through ``styles``. With one, the fused form's per-sample kernels need a weight gradient (one
    more convolution per layer in the backward, a third of a PULSE step's FLOPs); the other form
    scales activations around a shared, constant kernel and needs only the input gradient. Both
    are the same function (different float rounding, see ``modulated_conv2d``)."""
    return fused_modconv and not (styles.requires_grad and torch.is_grad_enabled())


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv + noise + bias + LeakyReLU: ``x [N, I, H, W]``, ``w [N, w_dim]`` -> ``[N, O, up*H, up*W]``."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, *, up: int = 1,
                 use_noise: bool = True, conv_clamp: float | None = None,
                 resample_filter: Sequence[float] = RESAMPLE_FILTER) -> None:
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.conv_clamp = conv_clamp
        self.fused_modconv = True
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        # registration order = NVIDIA's key order: weight, noise_strength, bias; resample_filter, noise_const
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        if use_noise:
            self.noise_strength = nn.Parameter(torch.empty([]))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        if use_noise:
            self.register_buffer("noise_const", torch.empty(resolution, resolution))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.weight.copy_(_randn(self.weight.shape, generator))
        self.bias.zero_()
        if self.use_noise:
            self.noise_strength.zero_()
            self.noise_const.copy_(_randn(self.noise_const.shape, generator))

    def forward(self, x: Tensor, w: Tensor, noise: Tensor | None = None) -> Tensor:
        """``noise [N or 1, 1, up*H, up*W]`` (scaled by ``noise_strength`` here) or ``None`` for none."""
        styles = self.affine(w)
        if noise is not None and self.use_noise:
            noise = noise * self.noise_strength
        else:
            noise = None
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=1,
                             resample_filter=self.resample_filter, fused=use_fused(self.fused_modconv, styles))
        return bias_act(x, self.bias, lrelu=True, clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        out_ch, in_ch = self.weight.shape[:2]
        return f"in={in_ch}, out={out_ch}, resolution={self.resolution}, up={self.up}, noise={self.use_noise}"


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv (no demodulation) + bias: ``x [N, I, H, W]``, ``w [N, w_dim]`` -> ``[N, img_channels, H, W]``."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, *, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.fused_modconv = True
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.weight.copy_(_randn(self.weight.shape, generator))
        self.bias.zero_()

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=use_fused(self.fused_modconv, styles))
        return bias_act(x, self.bias, lrelu=False, clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}"


class SynthesisBlock(nn.Module):
    """One resolution: ``(x [N, I, R/2, R/2] or None, img [N, 3, R/2, R/2] or None)`` -> ``(x [N, O, R, R], img [N, 3, R, R])``."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int, *,
                 use_noise: bool = True, conv_clamp: float | None = None,
                 resample_filter: Sequence[float] = RESAMPLE_FILTER) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        if in_channels == 0:
            self.const = nn.Parameter(torch.empty(out_channels, resolution, resolution))
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        kw: dict[str, Any] = {"use_noise": use_noise, "conv_clamp": conv_clamp, "resample_filter": resample_filter}
        if in_channels != 0:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, **kw)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, **kw)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        if self.in_channels == 0:
            self.const.copy_(_randn(self.const.shape, generator))

    def conv_layers(self) -> list[SynthesisLayer]:
        return [self.conv1] if self.in_channels == 0 else [self.conv0, self.conv1]

    def forward(self, x: Tensor | None, img: Tensor | None, ws: Tensor,
                noise: Sequence[Tensor | None] | None = None) -> tuple[Tensor, Tensor]:
        """``ws [N, num_conv + 1, w_dim]`` (conv rows, then the torgb row); ``noise``: one per conv layer."""
        layer_noise: Sequence[Tensor | None] = [None] * self.num_conv if noise is None else noise
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
        assert x is not None
        for i, layer in enumerate(self.conv_layers()):
            x = layer(x, ws[:, i], layer_noise[i])
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, ws[:, self.num_conv])
        return x, (y if img is None else img + y)


# -- networks ----------------------------------------------------------------------------
class MappingNetwork(nn.Module):
    """``z [N, z_dim] -> w [N, w_dim]``: 2nd-moment normalisation, then ``num_layers`` FC + LeakyReLU.

    This is ``StyleGAN2Generator.mapping`` (the interface's ``mapping(z)``).
    """

    def __init__(self, z_dim: int, w_dim: int, *, num_layers: int = 8, lr_multiplier: float = 0.01,
                 w_avg_beta: float | None = 0.998) -> None:
        super().__init__()
        self.z_dim, self.w_dim = z_dim, w_dim
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta  # training-only EMA rate; kept for reference
        self.register_buffer("w_avg", torch.zeros(w_dim))
        for i in range(num_layers):
            fan_in = z_dim if i == 0 else w_dim
            self.add_module(f"fc{i}", FullyConnectedLayer(fan_in, w_dim, lrelu=True, lr_multiplier=lr_multiplier))

    def forward(self, z: Tensor, truncation_psi: float = 1.0) -> Tensor:
        """``z [N, z_dim]`` -> ``w [N, w_dim]``; ``truncation_psi < 1`` pulls ``w`` towards ``w_avg``."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"stylegan2: z must be [N, {self.z_dim}], got {list(z.shape)}")
        x = normalize_2nd_moment(z)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x


class SynthesisNetwork(nn.Module):
    """``ws [N, num_ws, w_dim]``, per-layer noise -> ``[N, img_channels, R, R]`` (not clamped).

    This is ``StyleGAN2Generator.synthesis`` (the interface's ``synthesis(ws, noise)``).
    """

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, *, channel_base: int = 32768,
                 channel_max: int = 512, use_noise: bool = True, conv_clamp: float | None = None,
                 resample_filter: Sequence[float] = RESAMPLE_FILTER) -> None:
        super().__init__()
        log2 = int(math.log2(img_resolution)) if img_resolution >= 4 else 0
        if img_resolution < 4 or 2**log2 != img_resolution:
            raise ValueError(f"stylegan2: img_resolution must be a power of two >= 4, got {img_resolution}")
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        self.use_noise = use_noise
        channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        for r in self.block_resolutions:
            in_ch = channels[r // 2] if r > 4 else 0
            block = SynthesisBlock(in_ch, channels[r], w_dim, r, img_channels, use_noise=use_noise,
                                   conv_clamp=conv_clamp, resample_filter=resample_filter)
            self.add_module(f"b{r}", block)
        self.w_dim = w_dim
        self.num_ws = sum(b.num_conv for b in self.blocks()) + 1
        self.noise_shapes = [(1, layer.resolution, layer.resolution)
                             for layer in self.conv_layers() if layer.use_noise]

    def blocks(self) -> Iterator[SynthesisBlock]:
        for r in self.block_resolutions:
            yield getattr(self, f"b{r}")

    def conv_layers(self) -> list[SynthesisLayer]:
        """Every conv layer in NVIDIA's order: b4.conv1, b8.conv0, b8.conv1, ..."""
        return [layer for b in self.blocks() for layer in b.conv_layers()]

    def forward(self, ws: Tensor, noise: Sequence[Tensor] | None = None) -> Tensor:
        """``ws [N, num_ws, w_dim]``; ``noise``: one ``[N or 1, 1, R, R]`` per entry of ``noise_shapes``
        (multiplied by the layer's ``noise_strength``), or ``None`` for no noise."""
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"stylegan2: ws must be [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        if noise is not None:
            noise = list(noise)
            if len(noise) != len(self.noise_shapes):
                raise ValueError(f"stylegan2: expected {len(self.noise_shapes)} noise tensors, got {len(noise)}")
            for i, (n, shape) in enumerate(zip(noise, self.noise_shapes)):
                if n.ndim != 4 or tuple(n.shape[1:]) != shape or n.shape[0] not in (1, ws.shape[0]):
                    raise ValueError(f"stylegan2: noise[{i}] must be [N, {', '.join(map(str, shape))}], "
                                     f"got {list(n.shape)}")
        x = img = None
        w_idx = 0
        for block in self.blocks():
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            block_noise = None if noise is None or not self.use_noise else noise[w_idx:w_idx + block.num_conv]
            x, img = block(x, img, block_ws, block_noise)
            w_idx += block.num_conv
        assert img is not None
        return img.contiguous()  # the upsampling runs channels-last; hand back the usual layout


# -- the generator -----------------------------------------------------------------------
class NvidiaSubnetworks(FaceGenerator):
    """``synthesis`` and ``mapping`` ARE the sub-networks, registered under NVIDIA's names (as in
    NVIDIA's code, so state dicts keep their keys); shared by the StyleGAN2 and StyleGAN3 ports."""

    @property
    def synthesis(self) -> nn.Module:  # type: ignore[override]
        """The synthesis network; call it as ``synthesis(ws, noise=None)``."""
        return self._modules["synthesis"]  # type: ignore[return-value]

    @property
    def mapping(self) -> nn.Module:  # type: ignore[override]
        """The mapping network; call it as ``mapping(z, truncation_psi=1.0)``."""
        return self._modules["mapping"]  # type: ignore[return-value]

    @property
    def synthesis_net(self) -> Any:
        """Alias of :attr:`synthesis` (same name as in the StyleGAN1 backend)."""
        return self._modules["synthesis"]

    @property
    def mapping_net(self) -> Any:
        """Alias of :attr:`mapping`."""
        return self._modules["mapping"]

    @property
    def w_avg(self) -> Tensor:
        """``[w_dim]``: the tracked mean of ``w`` (truncation centre; zeros in an untrained network)."""
        return self.mapping_net.w_avg


class StyleGAN2Generator(NvidiaSubnetworks):
    """NVIDIA's StyleGAN2 ``Generator`` (``c_dim = 0``, ``skip``): ``z [N, z_dim] -> w``; ``ws [N, num_ws, w_dim] -> [N, C, R, R]``.

    Constructor arguments mirror NVIDIA's (``synthesis_kwargs`` flattened).
    ``num_fp16_res`` is accepted and ignored: everything runs in the
    parameters' dtype (NVIDIA's code also runs float32 on a CPU).
    ``fused_modconv`` picks the grouped-convolution form of the modulated conv
    (NVIDIA's inference default) or the scale-activations form, for forward passes without a
    gradient; a backward through the styles (a search step) always runs the scale-activations
    form (:func:`use_fused`).
    """

    backend = "stylegan2"

    def __init__(self, z_dim: int = 512, w_dim: int = 512, img_resolution: int = 1024, img_channels: int = 3, *,
                 c_dim: int = 0, channel_base: int = 32768, channel_max: int = 512, num_fp16_res: int = 0,
                 conv_clamp: float | None = None, architecture: str = "skip",
                 resample_filter: Sequence[float] = RESAMPLE_FILTER, use_noise: bool = True,
                 activation: str = "lrelu", mapping_kwargs: Mapping[str, Any] | None = None,
                 fused_modconv: bool = True, init_generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.record_constructor(
            z_dim=z_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, c_dim=c_dim,
            channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res,
            conv_clamp=None if conv_clamp is None else float(conv_clamp), architecture=architecture,
            resample_filter=[float(t) for t in resample_filter], use_noise=use_noise, activation=activation,
            mapping_kwargs=dict(mapping_kwargs or {}), fused_modconv=fused_modconv)
        if c_dim != 0:
            raise ValueError(f"stylegan2: conditional generators are not supported (c_dim={c_dim})")
        if architecture != "skip":
            raise ValueError(f"stylegan2: only architecture='skip' is supported, got {architecture!r}")
        mk = dict(mapping_kwargs or {})
        for key, allowed in (("embed_features", (None, 0)), ("layer_features", (None, w_dim))):
            if mk.pop(key, None) not in allowed:
                raise ValueError(f"stylegan2: mapping {key} must be {allowed[0]} or {allowed[1]}")
        for act in (activation, mk.pop("activation", "lrelu")):
            if act != "lrelu":
                raise ValueError(f"stylegan2: only activation='lrelu' is supported, got {act!r}")
        self.z_dim, self.w_dim = z_dim, w_dim
        self.resolution = self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        # registered under NVIDIA's names; see the module docstring
        self._modules["synthesis"] = SynthesisNetwork(
            w_dim, img_resolution, img_channels, channel_base=channel_base, channel_max=channel_max,
            use_noise=use_noise, conv_clamp=conv_clamp, resample_filter=resample_filter)
        self._modules["mapping"] = MappingNetwork(z_dim, w_dim, **mk)
        self.num_ws = self.synthesis_net.num_ws
        self.noise_shapes = list(self.synthesis_net.noise_shapes)
        self.has_mapping = True
        self.set_fused_modconv(fused_modconv)
        self.reset_parameters(init_generator)

    def constructor_args(self) -> dict[str, Any]:
        """The recorded constructor arguments, with the current ``fused_modconv`` choice."""
        args = super().constructor_args()
        args["fused_modconv"] = bool(self.fused_modconv)
        return args

    def set_fused_modconv(self, fused: bool) -> None:
        """Choose the grouped-conv (``True``) or scale-activations (``False``) modulated conv everywhere."""
        self.fused_modconv = fused
        for m in self.modules():
            if isinstance(m, (SynthesisLayer, ToRGBLayer)):
                m.fused_modconv = fused

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """NVIDIA's init: conv/affine/FC weights ``randn`` (mapping ``/ lr_multiplier``), affine biases 1,
        other biases and noise strengths 0, ``const`` and ``noise_const`` ``randn``, ``w_avg`` 0.

        Deterministic given ``generator`` (a CPU ``torch.Generator``) or torch's global RNG.
        """
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters(generator)
        self.mapping_net.w_avg.zero_()

    def const_noise(self) -> list[Tensor]:
        """The layers' ``noise_const`` buffers as noise inputs ``[1, 1, R, R]`` (NVIDIA's ``noise_mode='const'``)."""
        return [layer.noise_const[None, None] for layer in self.synthesis_net.conv_layers() if layer.use_noise]


# -- loading state dicts -----------------------------------------------------------------
#: NVIDIA constructor arguments that do not change the function computed on a CPU
_IGNORED_KWARGS = {"fp16_channels_last", "fused_modconv_default", "num_fp16_res"}
_KNOWN_KWARGS = {"z_dim", "w_dim", "img_resolution", "img_channels", "c_dim", "channel_base", "channel_max",
                 "conv_clamp", "architecture", "resample_filter", "use_noise", "activation", "mapping_kwargs"}
_MAPPING_KWARGS = {"num_layers", "embed_features", "layer_features", "activation", "lr_multiplier", "w_avg_beta"}


def stylegan2_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """NVIDIA ``Generator`` init kwargs (flat as in stylegan3, or with ``synthesis_kwargs`` as in
    stylegan2-ada-pytorch) -> :class:`StyleGAN2Generator` kwargs. Raises WeightsError on unknown ones."""
    flat = {k: v for k, v in kwargs.items() if k != "synthesis_kwargs"}
    flat.update(kwargs.get("synthesis_kwargs") or {})
    unknown = sorted(set(flat) - _KNOWN_KWARGS - _IGNORED_KWARGS)
    mapping = dict(flat.get("mapping_kwargs") or {})
    unknown += [f"mapping_kwargs.{k}" for k in sorted(set(mapping) - _MAPPING_KWARGS)]
    if unknown:
        raise WeightsError(f"stylegan2: unsupported generator arguments: {', '.join(unknown)}")
    out = {k: v for k, v in flat.items() if k in _KNOWN_KWARGS}
    out["mapping_kwargs"] = mapping
    return out


def check_state_dict(state: Mapping[str, Any], gen: nn.Module, what: str = "StyleGAN2") -> None:
    """Strict match of keys and shapes against ``gen.state_dict()``; one-line WeightsError otherwise."""
    bad = sorted(k for k, v in state.items() if not isinstance(v, Tensor))
    if bad:
        raise WeightsError(f"{what} state dict: non-tensor values for {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}")
    problems = state_dict_mismatch(state, gen)
    if problems:
        raise WeightsError(f"not a {what} state dict for these arguments: {problems}")


def load_stylegan2_state_dict(state: Mapping[str, Tensor], kwargs: Mapping[str, Any], *,
                              device: str | torch.device = "cpu") -> StyleGAN2Generator:
    """Build ``StyleGAN2Generator`` from NVIDIA's init kwargs and load ``G_ema``'s state dict (strict keys
    and shapes), in eval mode with frozen parameters. Arguments, size, shapes, dtypes and values are
    validated first (:mod:`pulse_sr.generators.limits`); tensors are converted to float32."""
    from pulse_sr.generators.limits import load_checked_state_dict

    return load_checked_state_dict(StyleGAN2Generator, stylegan2_kwargs(kwargs), state, name="stylegan2", label="StyleGAN2",
                                   device=device)

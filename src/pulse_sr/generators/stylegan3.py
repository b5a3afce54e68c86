"""``stylegan3``: NVIDIA's StyleGAN3 generator (config T and R), in our own code.

A clean-room port written from the paper ("Alias-Free Generative Adversarial
Networks", 2021) and reference values (no NVIDIA code). The module tree
reproduces the state-dict keys of ``G_ema`` in NVIDIA's stylegan3 pickles, in
the same order, so their tensors load strictly:

- ``mapping``: as in StyleGAN2 (``w_avg`` buffer, ``fc0`` .. ``fc<L-1>``), 2 layers.
- ``synthesis.input``: Fourier features on a ``size x size`` grid (36 with the
  default margin of 10): ``channels`` sinusoids with fixed ``freqs [C, 2]`` and
  ``phases [C]``, rotated and translated per sample by ``affine(ws[:, 0])``
  and by the user ``transform`` buffer ``[3, 3]``; frequencies pushed beyond
  the band are damped. A learned ``weight [C, C]`` mixes the channels.
- ``synthesis.L<i>_<size>_<channels>`` for i = 0 .. num_layers: modulated conv
  (3x3 for T, 1x1 for R; the last layer is a 1x1 ToRGB without demodulation),
  then the filtered LeakyReLU (bias, upsample, activation, clamp, downsample),
  each with its own sampling rate, cutoff and Kaiser filters
  (``up_filter``, ``down_filter`` buffers; 2-D radial down filters for R).
  ``magnitude_ema`` gives the input gain ``rsqrt(magnitude_ema)``.
- The output is multiplied by ``output_scale`` (0.25).

Style rows: row 0 feeds ``input``, row ``i + 1`` feeds ``L<i>``; ``num_ws = num_layers + 2``.
There are no noise inputs. As in the StyleGAN2 backend, ``gen.synthesis`` and
``gen.mapping`` are the two sub-networks (NVIDIA's names) and calling them is the interface.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pulse_sr.errors import WeightsError
from pulse_sr.generators.stylegan2 import (
    FullyConnectedLayer, MappingNetwork as _SG2Mapping, NvidiaSubnetworks,
)
from pulse_sr.generators.stylegan3_ops import design_lowpass_filter, filtered_lrelu, modulated_conv2d


# -- layer geometry ------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSpec:
    """Hyperparameters of one synthesis layer (the same numbers NVIDIA derives)."""

    name: str
    is_torgb: bool
    is_critically_sampled: bool
    in_channels: int
    out_channels: int
    in_size: int
    out_size: int
    in_sampling_rate: float
    out_sampling_rate: float
    tmp_sampling_rate: float
    in_cutoff: float
    out_cutoff: float
    in_half_width: float
    out_half_width: float
    conv_kernel: int
    up_factor: int
    down_factor: int
    up_taps: int
    down_taps: int
    down_radial: bool
    padding: tuple[int, int, int, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def synthesis_geometry(img_resolution: int, img_channels: int, *, channel_base: int = 32768, channel_max: int = 512,
                       num_layers: int = 14, num_critical: int = 2, first_cutoff: float = 2,
                       first_stopband: float = 2**2.1, last_stopband_rel: float = 2**0.3, margin_size: int = 10,
                       conv_kernel: int = 3, filter_size: int = 6, lrelu_upsampling: int = 2,
                       use_radial_filters: bool = False) -> tuple[dict[str, Any], list[LayerSpec]]:
    """``(input spec, layer specs)``: cutoffs and stopbands grow geometrically from
    ``first_*`` to half the output resolution over the first ``num_layers - num_critical``
    layers; sampling rates are the next power of two above twice the stopband; sizes
    add ``margin_size`` on each side except for the last two layers (exactly the image)."""
    if num_layers <= num_critical:
        raise ValueError(f"stylegan3: num_layers ({num_layers}) must exceed num_critical ({num_critical})")
    last_cutoff = img_resolution / 2
    last_stopband = last_cutoff * last_stopband_rel
    exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
    stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + margin_size * 2
    sizes[-2:] = img_resolution
    channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
    channels[-1] = img_channels
    input_spec = {"channels": int(channels[0]), "size": int(sizes[0]), "sampling_rate": float(rates[0]),
                  "bandwidth": float(cutoffs[0])}
    specs = []
    for idx in range(num_layers + 1):
        prev = max(idx - 1, 0)
        is_torgb = idx == num_layers
        critical = idx >= num_layers - num_critical
        in_rate, out_rate = int(rates[prev]), int(rates[idx])
        tmp_rate = max(in_rate, out_rate) * (1 if is_torgb else lrelu_upsampling)
        up, down = int(round(tmp_rate / in_rate)), int(round(tmp_rate / out_rate))
        kernel = 1 if is_torgb else conv_kernel
        up_taps = filter_size * up if up > 1 and not is_torgb else 1
        down_taps = filter_size * down if down > 1 and not is_torgb else 1
        in_size, out_size = int(sizes[prev]), int(sizes[idx])
        # output size before downsampling minus the upsampled input, plus what the filters eat
        pad_total = (out_size - 1) * down + 1 - (in_size + kernel - 1) * up + up_taps + down_taps - 2
        pad_lo = (pad_total + up) // 2  # symmetric sample positions (paper, appendix C.3)
        pad_hi = pad_total - pad_lo
        out_ch = int(channels[idx])
        specs.append(LayerSpec(
            name=f"L{idx}_{out_size}_{out_ch}", is_torgb=is_torgb, is_critically_sampled=critical,
            in_channels=int(channels[prev]), out_channels=out_ch, in_size=in_size, out_size=out_size,
            in_sampling_rate=float(in_rate), out_sampling_rate=float(out_rate), tmp_sampling_rate=float(tmp_rate),
            in_cutoff=float(cutoffs[prev]), out_cutoff=float(cutoffs[idx]),
            in_half_width=float(half_widths[prev]), out_half_width=float(half_widths[idx]),
            conv_kernel=kernel, up_factor=up, down_factor=down, up_taps=up_taps, down_taps=down_taps,
            down_radial=bool(use_radial_filters and not critical),
            padding=(pad_lo, pad_hi, pad_lo, pad_hi)))
    return input_spec, specs


# -- layers ------------------------------------------------------------------------------
class SynthesisInput(nn.Module):
    """Fourier features: ``w [N, w_dim]`` -> ``[N, channels, size, size]``."""

    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float) -> None:
        super().__init__()
        self.w_dim, self.channels, self.size = w_dim, channels, size
        self.sampling_rate, self.bandwidth = float(sampling_rate), float(bandwidth)
        # registration order = NVIDIA's key order: weight; transform, freqs, phases; affine
        self.weight = nn.Parameter(torch.empty(channels, channels))
        self.register_buffer("transform", torch.eye(3))
        self.register_buffer("freqs", torch.empty(channels, 2))
        self.register_buffer("phases", torch.empty(channels))
        self.affine = FullyConnectedLayer(w_dim, 4)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Frequencies uniform in the disc of radius ``bandwidth`` (approximately), phases
        uniform in [-0.5, 0.5), mixing weight ``randn``, affine 0 with bias ``[1, 0, 0, 0]``
        (identity rotation, no translation)."""
        f = torch.randn(self.channels, 2, generator=generator)
        radii = f.square().sum(dim=1, keepdim=True).sqrt()
        self.freqs.copy_(f / (radii * radii.square().exp().pow(0.25)) * self.bandwidth)
        self.phases.copy_(torch.rand(self.channels, generator=generator) - 0.5)
        self.weight.copy_(torch.randn(self.channels, self.channels, generator=generator))
        self.transform.copy_(torch.eye(3))
        self.affine.weight.zero_()
        self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))

    def transformed(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample ``(freqs [N, C, 2], phases [N, C])`` after the learned rotation/translation
        ``affine(w) = (cos, sin, tx, ty)`` (normalised by ``|(cos, sin)|``) and ``transform``."""
        t = self.affine(w)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        c, s, tx, ty = t.unbind(dim=1)
        zero, one = torch.zeros_like(c), torch.ones_like(c)
        rot = torch.stack([c, -s, zero, s, c, zero, zero, zero, one], dim=1).reshape(-1, 3, 3)
        shift = torch.stack([one, zero, -tx, zero, one, -ty, zero, zero, one], dim=1).reshape(-1, 3, 3)
        m = rot @ shift @ self.transform.to(w.dtype)
        freqs = self.freqs.to(w.dtype)
        phases = self.phases.to(w.dtype) + (freqs @ m[:, :2, 2:]).squeeze(2)
        return freqs @ m[:, :2, :2], phases

    def forward(self, w: Tensor) -> Tensor:
        freqs, phases = self.transformed(w)
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        # pixel centres, in units of the sampling period, centred on the image
        grid = (torch.arange(self.size, dtype=w.dtype, device=w.device) + 0.5 - self.size / 2) / self.sampling_rate
        fx, fy = freqs[:, :, 0, None, None], freqs[:, :, 1, None, None]  # [N, C, 1, 1]
        arg = grid[None, None, None, :] * fx + grid[None, None, :, None] * fy + phases[:, :, None, None]
        x = torch.sin(arg * (2 * math.pi)) * amplitudes[:, :, None, None]  # [N, C, H, W]
        weight = self.weight / math.sqrt(self.channels)
        return torch.einsum("nchw,dc->ndhw", x, weight.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, size={self.size}, sampling_rate={self.sampling_rate:g}, "
                f"bandwidth={self.bandwidth:g}")


class SynthesisLayer(nn.Module):
    """Modulated conv + filtered LeakyReLU: ``x [N, I, in_size, in_size]``, ``w [N, w_dim]`` ->
    ``[N, O, out_size, out_size]``. The ToRGB layer (1x1, no demodulation) uses the same code."""

    def __init__(self, w_dim: int, spec: LayerSpec, *, conv_clamp: float | None = 256,
                 magnitude_ema_beta: float = 0.999) -> None:
        super().__init__()
        self.spec = spec
        self.w_dim = w_dim
        self.conv_clamp = conv_clamp
        self.magnitude_ema_beta = magnitude_ema_beta  # training only; kept for reference
        k = spec.conv_kernel
        self.weight = nn.Parameter(torch.empty(spec.out_channels, spec.in_channels, k, k))
        self.bias = nn.Parameter(torch.empty(spec.out_channels))
        self.register_buffer("magnitude_ema", torch.ones([]))
        self.register_buffer("up_filter", design_lowpass_filter(
            spec.up_taps, spec.in_cutoff, spec.in_half_width * 2, spec.tmp_sampling_rate))
        self.register_buffer("down_filter", design_lowpass_filter(
            spec.down_taps, spec.out_cutoff, spec.out_half_width * 2, spec.tmp_sampling_rate, radial=spec.down_radial))
        self.affine = FullyConnectedLayer(w_dim, spec.in_channels, bias_init=1.0)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.weight.copy_(torch.randn(self.weight.shape, generator=generator))
        self.bias.zero_()
        self.magnitude_ema.fill_(1.0)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        spec = self.spec
        styles = self.affine(w)
        if spec.is_torgb:
            styles = styles * (1 / math.sqrt(spec.in_channels * spec.conv_kernel**2))
        x = modulated_conv2d(x, self.weight.to(x.dtype), styles, demodulate=not spec.is_torgb,
                             padding=spec.conv_kernel - 1, input_gain=self.magnitude_ema.to(x.dtype).rsqrt())
        return filtered_lrelu(x, self.up_filter, self.down_filter, self.bias, up=spec.up_factor,
                              down=spec.down_factor, padding=spec.padding,
                              gain=1.0 if spec.is_torgb else math.sqrt(2), slope=1.0 if spec.is_torgb else 0.2,
                              clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"in={s.in_channels}, out={s.out_channels}, size={s.in_size}->{s.out_size}, "
                f"rate={s.in_sampling_rate:g}->{s.out_sampling_rate:g}, up={s.up_factor}, down={s.down_factor}, "
                f"radial={s.down_radial}, torgb={s.is_torgb}")


# -- networks ----------------------------------------------------------------------------
class MappingNetwork(_SG2Mapping):
    """``z [N, z_dim] -> w [N, w_dim]`` (StyleGAN2's mapping; 2 layers by default).

    This is ``StyleGAN3Generator.mapping`` (the interface's ``mapping(z)``).
    """

    def __init__(self, z_dim: int, w_dim: int, *, num_layers: int = 2, lr_multiplier: float = 0.01,
                 w_avg_beta: float | None = 0.998) -> None:
        super().__init__(z_dim, w_dim, num_layers=num_layers, lr_multiplier=lr_multiplier, w_avg_beta=w_avg_beta)

    def forward(self, z: Tensor, truncation_psi: float = 1.0) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"stylegan3: z must be [N, {self.z_dim}], got {list(z.shape)}")
        return super().forward(z, truncation_psi)


class SynthesisNetwork(nn.Module):
    """``ws [N, num_ws, w_dim]`` -> ``[N, img_channels, R, R]`` (times ``output_scale``, not clamped).

    This is ``StyleGAN3Generator.synthesis`` (the interface's ``synthesis(ws, noise)``).
    """

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, *, output_scale: float = 0.25,
                 filter_size: int = 6, conv_clamp: float | None = 256, magnitude_ema_beta: float = 0.999,
                 **geometry: Any) -> None:
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.output_scale = output_scale
        input_spec, specs = synthesis_geometry(img_resolution, img_channels, filter_size=filter_size, **geometry)
        self.input_spec = input_spec
        self.input = SynthesisInput(w_dim, **input_spec)
        self.layer_names = [s.name for s in specs]
        for spec in specs:
            self.add_module(spec.name, SynthesisLayer(w_dim, spec, conv_clamp=conv_clamp,
                                                      magnitude_ema_beta=magnitude_ema_beta))
        self.num_ws = len(specs) + 1

    def layers(self) -> list[SynthesisLayer]:
        return [getattr(self, name) for name in self.layer_names]

    def forward(self, ws: Tensor, noise: Sequence[Tensor] | None = None) -> Tensor:
        """``ws [N, num_ws, w_dim]``; ``noise`` must be ``None`` or empty (StyleGAN3 takes none)."""
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"stylegan3: ws must be [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        if noise is not None and len(list(noise)) != 0:
            raise ValueError(f"stylegan3: expected 0 noise tensors, got {len(list(noise))}")
        rows = ws.unbind(dim=1)
        x = self.input(rows[0])
        for layer, w in zip(self.layers(), rows[1:]):
            x = layer(x, w)
        x = x * self.output_scale if self.output_scale != 1 else x
        return x.contiguous()  # the layers work in channels_last; hand back the usual layout


# -- the generator -----------------------------------------------------------------------
class StyleGAN3Generator(NvidiaSubnetworks):
    """NVIDIA's StyleGAN3 ``Generator`` (``c_dim = 0``): ``z [N, z_dim] -> w``; ``ws [N, num_ws, w_dim] -> [N, C, R, R]``.

    Constructor arguments mirror NVIDIA's (synthesis and layer arguments flat).
    ``num_fp16_res`` is accepted and ignored: everything runs in the parameters'
    dtype (NVIDIA's code also runs float32 on a CPU). Config T: ``conv_kernel=3``;
    config R: ``conv_kernel=1, use_radial_filters=True`` (and doubled channels).
    """

    backend = "stylegan3"

    def __init__(self, z_dim: int = 512, w_dim: int = 512, img_resolution: int = 1024, img_channels: int = 3, *,
                 c_dim: int = 0, channel_base: int = 32768, channel_max: int = 512, num_layers: int = 14,
                 num_critical: int = 2, first_cutoff: float = 2, first_stopband: float = 2**2.1,
                 last_stopband_rel: float = 2**0.3, margin_size: int = 10, output_scale: float = 0.25,
                 num_fp16_res: int = 0, conv_kernel: int = 3, filter_size: int = 6, lrelu_upsampling: int = 2,
                 use_radial_filters: bool = False, conv_clamp: float | None = 256, magnitude_ema_beta: float = 0.999,
                 mapping_kwargs: Mapping[str, Any] | None = None,
                 init_generator: torch.Generator | None = None) -> None:
        super().__init__()
        if c_dim != 0:
            raise ValueError(f"stylegan3: conditional generators are not supported (c_dim={c_dim})")
        mk = {k: v for k, v in dict(mapping_kwargs or {}).items() if k not in ("freeze_layers", "freeze_embed")}
        self.constructor_kwargs: dict[str, Any] = {
            "z_dim": int(z_dim), "w_dim": int(w_dim), "img_resolution": int(img_resolution),
            "img_channels": int(img_channels), "c_dim": 0, "channel_base": int(channel_base),
            "channel_max": int(channel_max), "num_layers": int(num_layers), "num_critical": int(num_critical),
            "first_cutoff": float(first_cutoff), "first_stopband": float(first_stopband),
            "last_stopband_rel": float(last_stopband_rel), "margin_size": int(margin_size),
            "output_scale": float(output_scale), "num_fp16_res": int(num_fp16_res), "conv_kernel": int(conv_kernel),
            "filter_size": int(filter_size), "lrelu_upsampling": int(lrelu_upsampling),
            "use_radial_filters": bool(use_radial_filters),
            "conv_clamp": None if conv_clamp is None else float(conv_clamp),
            "magnitude_ema_beta": float(magnitude_ema_beta),
            "mapping_kwargs": {k: (None if v is None else (int(v) if k == "num_layers" else float(v)))
                               for k, v in mk.items()},
        }
        self.record_constructor(**self.constructor_kwargs)
        self.z_dim, self.w_dim = z_dim, w_dim
        self.resolution = self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        self._modules["synthesis"] = SynthesisNetwork(
            w_dim, img_resolution, img_channels, output_scale=output_scale, filter_size=filter_size,
            conv_clamp=conv_clamp, magnitude_ema_beta=magnitude_ema_beta, channel_base=channel_base,
            channel_max=channel_max, num_layers=num_layers, num_critical=num_critical, first_cutoff=first_cutoff,
            first_stopband=first_stopband, last_stopband_rel=last_stopband_rel, margin_size=margin_size,
            conv_kernel=conv_kernel, lrelu_upsampling=lrelu_upsampling, use_radial_filters=use_radial_filters)
        self._modules["mapping"] = MappingNetwork(z_dim, w_dim, **mk)
        self.num_ws = self.synthesis_net.num_ws
        self.noise_shapes = []
        self.has_mapping = True
        self.reset_parameters(init_generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """NVIDIA's init (conv/affine/FC weights ``randn``, mapping ``/ lr_multiplier``, affine biases 1,
        other biases 0, input affine 0 with bias [1, 0, 0, 0], random Fourier frequencies and phases),
        deterministic given ``generator`` or torch's global RNG. Filters are designed, not drawn."""
        inp = self.synthesis_net.input
        for module in self.modules():
            if module is not self and module is not inp and hasattr(module, "reset_parameters"):
                module.reset_parameters(generator)
        inp.reset_parameters(generator)  # after its affine's generic reset, which it overrides
        self.mapping_net.w_avg.zero_()

    def describe(self) -> dict:
        info = super().describe()
        info["config"] = "R" if self.constructor_kwargs["use_radial_filters"] else "T"
        return info


# -- loading state dicts -----------------------------------------------------------------
_IGNORED_KWARGS = {"num_fp16_res"}
_KNOWN_KWARGS = {"z_dim", "w_dim", "img_resolution", "img_channels", "c_dim", "channel_base", "channel_max",
                 "num_layers", "num_critical", "first_cutoff", "first_stopband", "last_stopband_rel",
                 "margin_size", "output_scale", "conv_kernel", "filter_size", "lrelu_upsampling",
                 "use_radial_filters", "conv_clamp", "magnitude_ema_beta", "mapping_kwargs"}
_MAPPING_KWARGS = {"num_layers", "lr_multiplier", "w_avg_beta", "freeze_layers", "freeze_embed"}


def _plain(value: Any) -> Any:
    """numpy scalars (NVIDIA's pickles keep some) -> Python numbers."""
    return value.item() if isinstance(value, np.generic) else value


def stylegan3_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """NVIDIA ``Generator`` init kwargs -> :class:`StyleGAN3Generator` kwargs. WeightsError on unknown ones."""
    flat = {k: _plain(v) for k, v in kwargs.items() if k != "synthesis_kwargs"}
    flat.update({k: _plain(v) for k, v in (kwargs.get("synthesis_kwargs") or {}).items()})
    mapping = {k: _plain(v) for k, v in dict(flat.get("mapping_kwargs") or {}).items()}
    unknown = sorted(set(flat) - _KNOWN_KWARGS - _IGNORED_KWARGS)
    unknown += [f"mapping_kwargs.{k}" for k in sorted(set(mapping) - _MAPPING_KWARGS)]
    if unknown:
        raise WeightsError(f"stylegan3: unsupported generator arguments: {', '.join(unknown)}")
    out = {k: v for k, v in flat.items() if k in _KNOWN_KWARGS}
    out["mapping_kwargs"] = mapping
    return out


def load_stylegan3_state_dict(state: Mapping[str, Tensor], kwargs: Mapping[str, Any], *,
                              device: str | torch.device = "cpu") -> StyleGAN3Generator:
    """Build ``StyleGAN3Generator`` from NVIDIA's init kwargs and load ``G_ema``'s state dict (strict keys
    and shapes), in eval mode with frozen parameters. Arguments, size, shapes, dtypes and values are
    validated first (:mod:`pulse_sr.generators.limits`); tensors are converted to float32."""
    from pulse_sr.generators.limits import load_checked_state_dict

    return load_checked_state_dict(StyleGAN3Generator, stylegan3_kwargs(kwargs), state, name="stylegan3", label="StyleGAN3", seed=0,
                                   device=device)

"""``stylegan1``: the StyleGAN1 generator used by PULSE, in our own code.

Loads PULSE's weight files ``synthesis.pt`` and ``mapping.pt`` (plain state
dicts) with strict key matching. The module tree reproduces PULSE's key names:

- ``mapping.pt``: ``dense0`` .. ``dense7`` (pixel norm, then 8 x linear + LeakyReLU(0.2)).
- ``synthesis.pt``: ``torgb`` (1x1 conv to RGB) and ``blocks.<R>x<R>`` for
  R = 4, 8, ..., resolution. The 4x4 block starts from a learned constant;
  every other block upsamples 2x (``conv0_up``), then convolves (``conv1``).
  After each convolution an epilogue (``epi1``/``epi2``) adds scaled noise,
  applies LeakyReLU(0.2) and instance norm, then the style modulation
  ``x * (1 + scale(w)) + shift(w)``.

All weights use the equalized learning rate: stored weights are multiplied at
run time by ``gain * fan_in**-0.5 * lrmul`` and biases by ``lrmul``.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pulse_sr.errors import WeightsError
from pulse_sr.generators.base import FaceGenerator, file_sha256, state_dict_mismatch

SQRT2 = math.sqrt(2.0)
#: mapping-network learning-rate multiplier (weights are stored scaled by 1/lrmul)
MAPPING_LRMUL = 0.01
#: from this output side on, ``conv0_up`` uses the fused transposed convolution
FUSED_UPSCALE_MIN_SIDE = 128


def _randn_like(t: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)


# -- layers ------------------------------------------------------------------------------
class EqualizedLinear(nn.Module):
    """``[N, in] -> [N, out]`` with run-time weight scale ``gain / sqrt(in) * lrmul``."""

    def __init__(self, in_features: int, out_features: int, *, gain: float = SQRT2, lrmul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.lrmul = lrmul
        self.w_mul = gain * in_features ** -0.5 * lrmul
        self.b_mul = lrmul

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.weight.copy_(_randn_like(self.weight, generator) / self.lrmul)
        self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.w_mul, self.bias * self.b_mul)


class Blur(nn.Module):
    """Depthwise 3x3 ``[1,2,1] x [1,2,1] / 16`` blur, padding 1: ``[N, C, H, W] -> same``."""

    def __init__(self) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        k = k[:, None] * k[None, :]
        self.register_buffer("kernel", (k / k.sum())[None, None])

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        k = torch.tensor([1.0, 2.0, 1.0])
        k = k[:, None] * k[None, :]
        self.kernel.copy_((k / k.sum())[None, None])

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        kernel = self.kernel.flip(-1, -2).expand(channels, -1, -1, -1)
        return F.conv2d(x, kernel, padding=self.kernel.shape[-1] // 2, groups=channels)


class EqualizedConv2d(nn.Module):
    """``k x k`` conv with equalized learning rate, optionally 2x upscaling with a blur.

    ``[N, in, H, W] -> [N, out, H, W]`` (or ``2H, 2W`` when ``upscale``). With
    ``upscale`` the block is: upsample, conv (no bias), blur, add bias. The
    upsample+conv is nearest-neighbour then conv for outputs under 128 pixels,
    and one fused stride-2 transposed conv with a 4x4 kernel from 128 on. As in
    the original network (whose trained weights rely on it), the fused path
    equals nearest-neighbour then conv with the 3x3 kernel flipped spatially.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, gain: float = SQRT2,
                 upscale: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.w_mul = gain * (in_channels * kernel_size**2) ** -0.5
        self.upscale = upscale
        self.intermediate = Blur() if upscale else None

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.weight.copy_(_randn_like(self.weight, generator))
        self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight * self.w_mul
        if not self.upscale:
            return F.conv2d(x, w, self.bias, padding=w.shape[-1] // 2)
        if min(x.shape[2:]) * 2 >= FUSED_UPSCALE_MIN_SIDE:
            # Fused: stride-2 transposed conv whose 4x4 kernel sums the four shifted
            # copies of the 3x3 kernel (== nearest 2x upsampling, conv with flipped kernel).
            w = F.pad(w.permute(1, 0, 2, 3), (1, 1, 1, 1))
            w = w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]
            x = F.conv_transpose2d(x, w, stride=2, padding=(w.shape[-1] - 1) // 2)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = F.conv2d(x, w, padding=w.shape[-1] // 2)
        assert self.intermediate is not None
        x = self.intermediate(x)
        return x + self.bias.view(1, -1, 1, 1)


class NoiseInput(nn.Module):
    """Adds per-channel scaled noise: ``x + weight[c] * noise`` with noise ``[N or 1, 1, H, W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.weight.zero_()

    def forward(self, x: Tensor, noise: Tensor | None) -> Tensor:
        if noise is None:  # all-zero noise adds nothing
            return x
        return x + self.weight.view(1, -1, 1, 1) * noise


class StyleMod(nn.Module):
    """``x [N, C, H, W]``, ``w [N, w_dim]`` -> ``x * (1 + scale) + shift`` with ``(scale, shift) = lin(w)``."""

    def __init__(self, w_dim: int, channels: int) -> None:
        super().__init__()
        self.lin = EqualizedLinear(w_dim, 2 * channels, gain=1.0)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        style = self.lin(w).view(-1, 2, x.shape[1], 1, 1)
        return x * (style[:, 0] + 1.0) + style[:, 1]


class Epilogue(nn.Module):
    """After each conv: noise, LeakyReLU(0.2), instance norm, style modulation (shape-preserving)."""

    def __init__(self, channels: int, w_dim: int) -> None:
        super().__init__()
        self.noise = NoiseInput(channels)
        self.style_mod = StyleMod(w_dim, channels)

    def forward(self, x: Tensor, w: Tensor, noise: Tensor | None) -> Tensor:
        x = self.noise(x, noise)
        x = F.leaky_relu(x, 0.2)
        x = F.instance_norm(x, eps=1e-5)
        return self.style_mod(x, w)


# -- blocks and networks -----------------------------------------------------------------
class InputBlock(nn.Module):
    """4x4 block: learned constant ``[1, C, 4, 4]`` + bias, epi1, 3x3 conv, epi2 -> ``[N, C, 4, 4]``."""

    def __init__(self, channels: int, w_dim: int) -> None:
        super().__init__()
        self.const = nn.Parameter(torch.empty(1, channels, 4, 4))
        self.bias = nn.Parameter(torch.empty(channels))
        self.epi1 = Epilogue(channels, w_dim)
        self.conv = EqualizedConv2d(channels, channels, 3)
        self.epi2 = Epilogue(channels, w_dim)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.const.fill_(1.0)
        self.bias.fill_(1.0)

    def forward(self, x: Tensor | None, ws: Tensor, noise: Sequence[Tensor | None]) -> Tensor:
        """``x`` is ignored (``None``); ``ws [N, 2, w_dim]``; ``noise``: two entries."""
        batch = ws.shape[0]
        x = self.const.expand(batch, -1, -1, -1) + self.bias.view(1, -1, 1, 1)
        x = self.epi1(x, ws[:, 0], noise[0])
        x = self.conv(x)
        return self.epi2(x, ws[:, 1], noise[1])


class UpBlock(nn.Module):
    """``[N, in, H, W] -> [N, out, 2H, 2W]``: conv0_up, epi1, conv1, epi2."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv0_up = EqualizedConv2d(in_channels, out_channels, 3, upscale=True)
        self.epi1 = Epilogue(out_channels, w_dim)
        self.conv1 = EqualizedConv2d(out_channels, out_channels, 3)
        self.epi2 = Epilogue(out_channels, w_dim)

    def forward(self, x: Tensor | None, ws: Tensor, noise: Sequence[Tensor | None]) -> Tensor:
        assert x is not None
        x = self.epi1(self.conv0_up(x), ws[:, 0], noise[0])
        return self.epi2(self.conv1(x), ws[:, 1], noise[1])


class MappingNetwork(nn.Module):
    """``z [N, z_dim] -> w [N, w_dim]``: pixel norm, then ``layers`` x (linear + LeakyReLU(0.2))."""

    def __init__(self, z_dim: int = 512, w_dim: int = 512, layers: int = 8) -> None:
        super().__init__()
        self.num_layers = layers
        for i in range(layers):
            fan_in = z_dim if i == 0 else w_dim
            self.add_module(f"dense{i}", EqualizedLinear(fan_in, w_dim, gain=SQRT2, lrmul=MAPPING_LRMUL))

    def forward(self, z: Tensor) -> Tensor:
        x = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        for i in range(self.num_layers):
            x = F.leaky_relu(getattr(self, f"dense{i}")(x), 0.2)
        return x


class SynthesisNetwork(nn.Module):
    """``ws [N, 2*log2(R)-2, w_dim]``, noise list -> ``[N, 3, R, R]`` (not clamped)."""

    def __init__(self, resolution: int = 1024, w_dim: int = 512, fmap_base: int = 8192, fmap_max: int = 512) -> None:
        super().__init__()
        log2 = int(math.log2(resolution))
        if resolution < 4 or 2**log2 != resolution:
            raise ValueError(f"stylegan1: resolution must be a power of two >= 4, got {resolution}")

        def nf(stage: int) -> int:
            return min(int(fmap_base / 2.0**stage), fmap_max)

        # registration order gives PULSE's key order: torgb first, then the blocks
        self.torgb = EqualizedConv2d(nf(log2 - 1), 3, 1, gain=1.0)
        blocks: dict[str, nn.Module] = {"4x4": InputBlock(nf(1), w_dim)}
        for r in range(3, log2 + 1):
            blocks[f"{2**r}x{2**r}"] = UpBlock(nf(r - 2), nf(r - 1), w_dim)
        self.blocks = nn.ModuleDict(blocks)

    def forward(self, ws: Tensor, noise: Sequence[Tensor] | None = None) -> Tensor:
        return self.torgb(self.features(ws, noise))

    def features(self, ws: Tensor, noise: Sequence[Tensor] | None = None, *, upto: int | None = None,
                 tap: int | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Run the blocks up to side ``upto`` (default: all) -> features ``[N, C, upto, upto]``.

        Only ``ws[:, :2*log2(upto)-2]`` and the matching noise are used. With ``tap``
        (a side <= ``upto``) also return the features at that side: ``(x_upto, x_tap)``.
        """
        x: Tensor | None = None
        tapped: Tensor | None = None
        for b, block in enumerate(self.blocks.values()):
            side = 4 * 2**b
            if upto is not None and side > upto:
                break
            layer_noise = [None, None] if noise is None else [noise[2 * b], noise[2 * b + 1]]
            x = block(x, ws[:, 2 * b:2 * b + 2], layer_noise)
            if side == tap:
                tapped = x
        assert x is not None
        if tap is not None:
            assert tapped is not None, f"no block of side {tap}"
            return x, tapped
        return x


# -- the generator -----------------------------------------------------------------------
class StyleGAN1Generator(FaceGenerator):
    """PULSE's StyleGAN1: ``z [N, z_dim]`` -> ``w [N, w_dim]``; ``ws [N, num_ws, w_dim]`` -> ``[N, 3, R, R]``.

    ``num_ws = 2*log2(R) - 2`` (18 at 1024). Layer ``i`` uses ``ws[:, i]`` and
    ``noise[i]`` of shape ``[N or 1, 1, 2**(i//2+2), 2**(i//2+2)]``.
    """

    backend = "stylegan1"

    def __init__(self, *, resolution: int = 1024, w_dim: int = 512, z_dim: int | None = None,
                 mapping_layers: int = 8, fmap_base: int = 8192, fmap_max: int = 512,
                 init_generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.resolution = resolution
        self.w_dim = w_dim
        self.z_dim = w_dim if z_dim is None else z_dim
        self.record_constructor(resolution=resolution, w_dim=w_dim, z_dim=self.z_dim, mapping_layers=mapping_layers,
                                fmap_base=fmap_base, fmap_max=fmap_max)
        self.synthesis_net = SynthesisNetwork(resolution, w_dim, fmap_base, fmap_max)
        self.mapping_net = MappingNetwork(self.z_dim, w_dim, mapping_layers)
        self.num_ws = 2 * int(math.log2(resolution)) - 2
        self.noise_shapes = [(1, 2 ** (i // 2 + 2), 2 ** (i // 2 + 2)) for i in range(self.num_ws)]
        self.has_mapping = True
        self.reset_parameters(init_generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Fresh init: weights ``randn`` (mapping ``randn * 100``), biases 0, constant 1, noise weights 0.

        Deterministic given ``generator`` (a CPU ``torch.Generator``) or torch's global RNG.
        """
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters(generator)

    def mapping(self, z: Tensor) -> Tensor:
        """``z [N, z_dim]`` (any scale; pixel-normed) -> ``w [N, w_dim]``."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"{self.backend}: z must be [N, {self.z_dim}], got {list(z.shape)}")
        return self.mapping_net(z)

    def synthesis(self, ws: Tensor, noise: Sequence[Tensor] | None = None) -> Tensor:
        """``ws [N, num_ws, w_dim]``, noise list (batch N or 1) or ``None`` (zeros) -> ``[N, 3, R, R]``, about [-1, 1]."""
        self.check_ws(ws)
        checked = self.check_noise(noise, ws.shape[0])
        return self.synthesis_net(ws, checked)

    # -- intermediate resolutions (coarse-to-fine search) ------------------------------------
    def feature_sides(self) -> list[int]:
        """Sides of the blocks' outputs: 4, 8, ..., resolution."""
        return [4 * 2**b for b in range(len(self.synthesis_net.blocks))]

    def feature_channels(self, side: int) -> int:
        """Channels of the block output at ``side``."""
        block = self.synthesis_net.blocks[f"{side}x{side}"]
        return int(block.epi2.noise.weight.shape[0])

    def synthesis_features(self, ws: Tensor, noise: Sequence[Tensor] | None, side: int) -> Tensor:
        """Synthesis truncated after the block of ``side``: ``[N, C, side, side]`` (before any toRGB).

        ``ws [N, num_ws, w_dim]``; layers above ``side`` are not run (their ws and noise are ignored).
        """
        self.check_ws(ws)
        if side not in self.feature_sides():
            raise ValueError(f"{self.backend}: no block of side {side}; sides: {self.feature_sides()}")
        checked = self.check_noise(noise, ws.shape[0])
        out = self.synthesis_net.features(ws, checked, upto=side)
        assert isinstance(out, Tensor)
        return out

    def synthesis_with_features(self, ws: Tensor, noise: Sequence[Tensor] | None,
                                side: int) -> tuple[Tensor, Tensor]:
        """The full image ``[N, 3, R, R]`` and the features at ``side`` from the same pass."""
        self.check_ws(ws)
        checked = self.check_noise(noise, ws.shape[0])
        x, tapped = self.synthesis_net.features(ws, checked, tap=side)  # type: ignore[misc]
        return self.synthesis_net.torgb(x), tapped


# -- loading PULSE's weight files --------------------------------------------------------
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)x(\d+)\.")


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """``torch.load`` (weights only) a plain ``{key: tensor}`` dict, or raise WeightsError naming ``path``."""
    if not path.is_file():
        raise WeightsError(f"{path}: file not found (a PULSE StyleGAN1 folder holds synthesis.pt and mapping.pt)")
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, not a torch file, unsafe pickle
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise WeightsError(f"{path}: cannot read weights ({type(exc).__name__}: {detail[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise WeightsError(f"{path}: not a state dict (expected a dict of tensors, got {type(state).__name__})")
    return state


def _check_keys(path: Path, what: str, state: dict[str, Tensor], module: nn.Module) -> None:
    """Strict match of keys and shapes against ``module.state_dict()``; one-line WeightsError otherwise."""
    problems = state_dict_mismatch(state, module)
    if problems:
        raise WeightsError(f"{path}: not a PULSE StyleGAN1 {what} state dict: {problems}")


def _infer_resolution(state: dict[str, Tensor], default: int = 1024) -> int:
    """Largest ``blocks.<R>x<R>`` in the synthesis keys (``default`` if none is usable)."""
    sides = [int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)) and m.group(1) == m.group(2)]
    res = max(sides, default=default)
    return res if res >= 4 and res & (res - 1) == 0 else default


def load_stylegan1(weights_dir: str | Path, *, device: str | torch.device = "cpu") -> StyleGAN1Generator:
    """Load PULSE's ``synthesis.pt`` + ``mapping.pt`` from ``weights_dir`` (strict keys), in eval mode, frozen."""
    folder = Path(weights_dir)
    if not folder.is_dir():
        raise WeightsError(f"{folder}: not a folder (expected a folder holding PULSE's synthesis.pt and mapping.pt)")
    syn_path, map_path = folder / "synthesis.pt", folder / "mapping.pt"
    syn_state = _read_state_dict(syn_path)
    map_state = _read_state_dict(map_path)
    from pulse_sr.generators.limits import build_checked, check_tensors

    try:  # the inferred resolution is bounded before anything is allocated
        gen = build_checked(StyleGAN1Generator, {"resolution": _infer_resolution(syn_state)}, what="StyleGAN1 generator")
    except WeightsError as exc:
        raise WeightsError(f"{syn_path}: {exc}", **exc.data) from None
    _check_keys(syn_path, "synthesis", syn_state, gen.synthesis_net)
    _check_keys(map_path, "mapping", map_state, gen.mapping_net)
    for where, state, module in ((syn_path, syn_state, gen.synthesis_net), (map_path, map_state, gen.mapping_net)):
        try:
            check_tensors(state, module)
        except WeightsError as exc:
            raise WeightsError(f"{where}: {exc}", **exc.data) from None
    gen.synthesis_net.load_state_dict(syn_state, strict=True)
    gen.mapping_net.load_state_dict(map_state, strict=True)
    gen.name = "stylegan1"
    gen.weights_hash = file_sha256(syn_path, map_path)
    gen.weights_source = str(folder)
    return gen.eval().requires_grad_(False).to(device)

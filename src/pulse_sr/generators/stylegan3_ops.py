"""Tensor operations of the StyleGAN3 generator, in plain PyTorch (our own code).

Written from the paper ("Alias-Free Generative Adversarial Networks", Karras et
al. 2021, appendices C-D) and checked against reference values of NVIDIA's
networks (no NVIDIA code). Three pieces:

- :func:`design_lowpass_filter`: the Kaiser-windowed low-pass filters every
  layer uses (1-D separable sinc, or 2-D radial jinc for StyleGAN3-R).
- :func:`modulated_conv2d`: StyleGAN3's modulated convolution (weights and
  styles pre-normalised, demodulated, per-layer input gain).
- :func:`filtered_lrelu`: bias, upsample (zero insertion + FIR), LeakyReLU with
  gain and clamp, FIR + downsample. Separable filters run as two 1-D
  depthwise convolutions (a strided transposed convolution does the zero
  insertion and the upsampling filter in one go, without building the
  zero-stuffed tensor); a 2-D radial filter runs as one strided depthwise conv.

Filter convention: FIR filters are applied as true convolutions (flipped),
upsampling filters get gain ``up`` per axis, downsampling filters gain 1.
Paddings are ``[x0, x1, y0, y1]`` (negative = crop), applied to the
upsampled signal as in NVIDIA's ``upfirdn2d``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


# -- filter design -------------------------------------------------------------------------
def _kaiser_beta(atten_db: float) -> float:
    """Kaiser's empirical window parameter for a stopband attenuation in dB."""
    if atten_db > 50:
        return 0.1102 * (atten_db - 8.7)
    if atten_db > 21:
        return 0.5842 * (atten_db - 21) ** 0.4 + 0.07886 * (atten_db - 21)
    return 0.0


def _kaiser_atten(numtaps: int, width: float) -> float:
    """Attenuation (dB) of a Kaiser FIR filter with ``numtaps`` taps and transition
    width ``width`` (as a fraction of the Nyquist rate)."""
    return 2.285 * (numtaps - 1) * math.pi * width + 7.95


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float, *,
                          radial: bool = False) -> Tensor | None:
    """Kaiser-windowed low-pass filter (float32), ``None`` when ``numtaps == 1``.

    Separable: 1-D ``[numtaps]`` windowed sinc with cutoff ``cutoff`` and
    transition width ``width`` (both in the units of the sampling rate ``fs``),
    normalised to unit DC gain. Radial: 2-D ``[numtaps, numtaps]`` windowed
    jinc (circularly symmetric), window = outer product of the 1-D Kaiser
    window, normalised to unit sum. Computed in float64, always on the CPU (also inside a
    ``torch.device("meta")`` build, which only needs shapes).
    """
    if numtaps < 1:
        raise ValueError(f"numtaps must be >= 1, got {numtaps}")
    if numtaps == 1:
        return None
    nyq = fs / 2
    beta = _kaiser_beta(_kaiser_atten(numtaps, width / nyq))
    window = np.kaiser(numtaps, beta)
    if not radial:
        m = np.arange(numtaps) - (numtaps - 1) / 2
        c = cutoff / nyq
        h = c * np.sinc(c * m) * window
        return torch.as_tensor(h / h.sum(), dtype=torch.float32, device="cpu")
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = torch.as_tensor(np.hypot(*np.meshgrid(x, x)), dtype=torch.float64, device="cpu")
    if bool((r == 0).any()):
        raise ValueError("radial filters need an even number of taps")
    f = torch.special.bessel_j1(2 * cutoff * math.pi * r) / (math.pi * r)
    f = f * torch.as_tensor(np.outer(window, window), device="cpu")
    return (f / f.sum()).to(torch.float32)


# -- modulated convolution -----------------------------------------------------------------
def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, *, demodulate: bool = True,
                     padding: int = 0, input_gain: Tensor | None = None) -> Tensor:
    """StyleGAN3 modulated convolution, in the scale-the-activations form.

    ``x [N, I, H, W]``, ``weight [O, I, k, k]``, ``styles [N, I]``, ``input_gain``
    (scalar tensor) -> ``[N, O, H + 2p - k + 1, ...]``.

    With ``demodulate``, the weight is first normalised per output channel to
    unit mean square and each sample's styles to unit mean square; the kernel of
    sample ``n`` is ``weight * styles[n]`` divided by its per-output-channel norm
    (``rsqrt(sum + 1e-8)``). ``input_gain`` then scales the kernel. Here the
    styles and gain scale the input and the demodulation scales the output of one
    shared convolution (same function, batch-independent).

    NVIDIA normalises the styles by their mean square over the whole batch; with
    demodulation that factor cancels (up to the 1e-8), so the per-sample form
    gives the same images and keeps samples independent.
    """
    batch, in_ch = styles.shape
    if demodulate:
        weight = weight * weight.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean(dim=1, keepdim=True).rsqrt()
    scale = styles if input_gain is None else styles * input_gain
    y = F.conv2d(x * scale.reshape(batch, in_ch, 1, 1), weight, padding=padding)
    if demodulate:
        # sum_{i,kh,kw} (w[o,i] * s[n,i])^2 = s^2 @ (sum_k w^2)^T
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [N, O]
        y = y * dcoefs.reshape(batch, -1, 1, 1)
    return y


# -- filtered leaky ReLU ------------------------------------------------------------------
def _depthwise(f: Tensor, channels: int, dim: int, dtype: torch.dtype) -> Tensor:
    """1-D taps ``[K]`` -> depthwise kernel ``[C, 1, K, 1]`` (dim 2) or ``[C, 1, 1, K]`` (dim 3)."""
    shape = (1, 1, -1, 1) if dim == 2 else (1, 1, 1, -1)
    return f.to(dtype).reshape(shape).expand(channels, -1, -1, -1)


def _pad_axis(x: Tensor, before: int, after: int, dim: int) -> Tensor:
    """Zero-pad (or crop, when negative) axis ``dim`` (2 or 3) of ``[N, C, H, W]``."""
    if before == 0 and after == 0:
        return x
    pads = [0, 0, before, after] if dim == 2 else [before, after, 0, 0]
    return F.pad(x, pads)


def upsample_axis(x: Tensor, f: Tensor | None, up: int, pad: tuple[int, int], dim: int) -> Tensor:
    """NVIDIA's ``upfirdn2d`` along one axis: zero insertion (``up``), pad/crop ``pad``,
    convolution with ``f * up`` (1-D ``[K]``; ``None`` = identity tap).

    ``[N, C, H, W]`` -> length ``L*up + pad[0] + pad[1] - K + 1`` along ``dim``.
    A strided transposed convolution computes the full convolution of the
    zero-stuffed signal; output ``n`` of upfirdn is its sample ``n + K - 1 - pad[0]``.
    """
    p0, p1 = pad
    if f is None:
        if up == 1:
            return _pad_axis(x, p0, p1, dim)
        f = torch.ones(1, dtype=x.dtype, device=x.device)
    k = f.numel()
    before, after = p0 - (k - 1), up + p1 - k  # relative to the full transposed-conv output
    crop = max(0, min(-before, -after))  # cropped symmetrically by conv_transpose2d itself
    stride = (up, 1) if dim == 2 else (1, up)
    padding = (crop, 0) if dim == 2 else (0, crop)
    y = F.conv_transpose2d(x, _depthwise(f * up, x.shape[1], dim, x.dtype), stride=stride, padding=padding,
                           groups=x.shape[1])
    return _pad_axis(y, before + crop, after + crop, dim)


def downsample_axis(x: Tensor, f: Tensor | None, down: int, dim: int) -> Tensor:
    """NVIDIA's ``upfirdn2d`` along one axis without padding: convolve with ``f``
    (``[K]``, ``None`` = identity), keep every ``down``-th sample from the first."""
    if f is None:
        return x if down == 1 else (x[:, :, ::down] if dim == 2 else x[:, :, :, ::down])
    stride = (down, 1) if dim == 2 else (1, down)
    return F.conv2d(x, _depthwise(f.flip(0), x.shape[1], dim, x.dtype), stride=stride, groups=x.shape[1])


def filtered_lrelu(x: Tensor, fu: Tensor | None, fd: Tensor | None, b: Tensor | None, *, up: int = 1,
                   down: int = 1, padding: Sequence[int] = (0, 0, 0, 0), gain: float = math.sqrt(2),
                   slope: float = 0.2, clamp: float | None = None) -> Tensor:
    """Alias-free nonlinearity: ``x [N, C, H, W]`` -> ``[N, C, H', W']``.

    ``x + b``, upsample by ``up`` with the separable filter ``fu`` (``[K]``, gain
    ``up**2``) and ``padding = [x0, x1, y0, y1]``, LeakyReLU(``slope``) times
    ``gain``, clamp to ``[-clamp, clamp]``, then filter with ``fd`` (``[K]``
    separable or ``[K, K]`` non-separable) and keep every ``down``-th sample.
    ``W' = (W*up + x0 + x1 - Ku + 1 - Kd + down) // down`` (``K = 1`` for ``None``).
    """
    if fu is not None and fu.ndim != 1:
        raise ValueError("filtered_lrelu: the upsampling filter must be 1-D (separable)")
    px0, px1, py0, py1 = (int(p) for p in padding)
    x_in = x
    # depthwise convolutions are vectorised over channels in this layout (about 2x faster on a CPU)
    x = x.contiguous(memory_format=torch.channels_last)
    if b is not None:
        x = x + b.to(x.dtype).reshape(1, -1, 1, 1)
    x = upsample_axis(x, fu, up, (px0, px1), 3)
    x = upsample_axis(x, fu, up, (py0, py1), 2)
    # gain * clamp(lrelu(x), c / gain) == clamp(gain * lrelu(x), c); the gain moves into the
    # downsampling filter, saving a pass over the largest tensor of the layer
    if slope != 1:
        # in place on our own intermediate (nothing saved it for backward)
        x = F.leaky_relu_(x, slope) if x is not x_in else F.leaky_relu(x, slope)
    if clamp is not None:
        limit = clamp / gain
        flat = x.detach().permute(0, 2, 3, 1).reshape(-1)  # a view: reductions are slow on channels_last
        lo, hi = torch.aminmax(flat)
        if lo.item() < -limit or hi.item() > limit:  # rare: skip the pass when nothing would change
            x = x.clamp(-limit, limit)
    if fd is None:
        x = x if down == 1 else x[:, :, ::down, ::down]
        return x * gain if gain != 1 else x
    if fd.ndim == 2:
        kernel = (fd * gain).flip([0, 1]).to(x.dtype)[None, None].expand(x.shape[1], -1, -1, -1)
        return F.conv2d(x, kernel, stride=down, groups=x.shape[1])
    fd = fd * math.sqrt(gain)  # applied once per axis
    x = downsample_axis(x, fd, down, 3)
    return downsample_axis(x, fd, down, 2)

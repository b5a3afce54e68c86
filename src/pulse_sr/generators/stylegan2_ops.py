"""Tensor operations of the StyleGAN2 generator, in plain PyTorch (our own code).

These reproduce the numerical behaviour of NVIDIA's StyleGAN2 ops as the
reference describes them (``upfirdn2d``, ``bias_act``, ``conv2d_resample``,
``modulated_conv2d``), restricted to what the generator needs: no
downsampling, 2x upsampling only, float32/float64 (no fp16 tricks).

Filters are 2-D ``[kh, kw]`` tensors (NVIDIA's ``resample_filter`` buffers,
e.g. ``outer([1,3,3,1]) / 64``). Paddings are ``(before, after)`` and apply
to both spatial axes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

SQRT2 = math.sqrt(2.0)


def setup_filter(taps: Sequence[float]) -> Tensor:
    """1-D taps ``[k]`` -> normalised separable 2-D filter ``outer(taps, taps) / sum^2`` ``[k, k]`` (float32)."""
    f = torch.as_tensor(list(taps), dtype=torch.float32)
    if f.ndim != 1 or f.numel() == 0:
        raise ValueError(f"resample_filter must be a non-empty list of taps, got {list(taps)!r}")
    f = f[:, None] * f[None, :]
    return f / f.sum()


def normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    """``[N, C] -> [N, C]``: divide each row by its root mean square."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def bias_act(x: Tensor, b: Tensor | None, *, lrelu: bool, clamp: float | None = None) -> Tensor:
    """Add the per-channel bias ``b [C]`` (channel axis 1), then optionally
    LeakyReLU(0.2) with gain ``sqrt(2)``, then optionally clamp to ``[-clamp, clamp]``."""
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    if lrelu:
        x = F.leaky_relu(x, 0.2) * SQRT2
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def upfirdn2d(x: Tensor, f: Tensor, *, up: int = 1, pad: tuple[int, int] = (0, 0), gain: float = 1.0) -> Tensor:
    """Upsample by zero insertion, pad (negative = crop), convolve with the FIR filter ``f * gain``.

    ``x [N, C, H, W] -> [N, C, H*up + pad[0] + pad[1] - kh + 1, ...]``. The filter
    is applied as a true convolution (flipped), depthwise.
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    x = x[:, :, max(-p0, 0):x.shape[2] - max(-p1, 0), max(-p0, 0):x.shape[3] - max(-p1, 0)]
    f = (f * gain ** (f.ndim / 2)).to(x.dtype).flip([0, 1])
    # depthwise convolutions run about 2.4x faster forward and backward in channels-last on a CPU
    # (measured: [1, 32, 1027, 1027] with a 4x4 filter); a no-op when x already is
    x = x.contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, f[None, None].expand(c, 1, -1, -1), groups=c)


def upsample2d(x: Tensor, f: Tensor, up: int = 2) -> Tensor:
    """``[N, C, H, W] -> [N, C, up*H, up*W]``: zero insertion and FIR filter with gain ``up**2``."""
    fw = f.shape[-1]
    return upfirdn2d(x, f, up=up, pad=((fw + up - 1) // 2, (fw - up) // 2), gain=up * up)


def conv2d_resample(x: Tensor, w: Tensor, f: Tensor | None = None, *, up: int = 1, padding: int = 0,
                    groups: int = 1) -> Tensor:
    """Convolution ``w [O, I/groups, k, k]`` (cross-correlation, as ``F.conv2d``), optionally 2x up.

    ``up == 1``: ``F.conv2d`` with ``padding`` -> ``[N, O, H, W]`` for ``padding = k // 2``.
    ``up == 2``: stride-2 transposed convolution with the same (unflipped) kernel,
    then the FIR filter ``f`` with gain ``up**2`` and the padding that makes the
    output ``[N, O, 2H, 2W]`` (NVIDIA's ``conv2d_resample`` for kernels larger than 1x1).
    """
    if up == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    if f is None:
        raise ValueError("upsampling needs a resample filter")
    out_ch, in_per_group, kh, kw = w.shape
    fw = f.shape[-1]
    p0 = padding + (fw + up - 1) // 2 - (kw - 1)
    p1 = padding + (fw - up) // 2 - (kw - up)
    pt = max(min(-p0, -p1), 0)
    # conv_transpose2d wants [in, out/groups, k, k]
    wt = w.reshape(groups, out_ch // groups, in_per_group, kh, kw).transpose(1, 2)
    wt = wt.reshape(groups * in_per_group, out_ch // groups, kh, kw)
    # channels-last in, channels-last out: the FIR filter after it needs no layout copy of the
    # 4x larger output
    x = F.conv_transpose2d(x.contiguous(memory_format=torch.channels_last), wt, stride=up, padding=pt, groups=groups)
    return upfirdn2d(x, f, pad=(p0 + pt, p1 + pt), gain=up * up)


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, *, noise: Tensor | None = None,
                     demodulate: bool = True, up: int = 1, padding: int = 0,
                     resample_filter: Tensor | None = None, fused: bool = True) -> Tensor:
    """StyleGAN2 modulated convolution.

    ``x [N, I, H, W]``, ``weight [O, I, k, k]``, ``styles [N, I]``, optional
    ``noise`` broadcastable to the output (added after demodulation) ->
    ``[N, O, up*H, up*W]`` (with ``padding = k // 2``).

    The kernel of sample ``n`` is ``weight * styles[n]`` (scaled per input
    channel), and with ``demodulate`` each output channel's kernel is divided by
    its norm (``rsqrt(sum(w^2) + 1e-8)``). ``fused`` runs one grouped convolution
    with per-sample kernels; otherwise the styles scale the activations before a
    shared convolution and the demodulation scales its output (same function,
    different rounding).
    """
    batch = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    w = dcoefs = None
    if demodulate or fused:
        w = weight[None] * styles.reshape(batch, 1, in_ch, 1, 1)  # [N, O, I, k, k]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]
    if not fused:
        x = x * styles.reshape(batch, in_ch, 1, 1)
        x = conv2d_resample(x, weight, resample_filter, up=up, padding=padding)
        if dcoefs is not None and noise is not None:
            return torch.addcmul(noise, x, dcoefs.reshape(batch, out_ch, 1, 1))
        if dcoefs is not None:
            return x * dcoefs.reshape(batch, out_ch, 1, 1)
        return x + noise if noise is not None else x
    if dcoefs is not None:
        w = w * dcoefs.reshape(batch, out_ch, 1, 1, 1)
    x = x.reshape(1, batch * in_ch, *x.shape[2:])
    x = conv2d_resample(x, w.reshape(batch * out_ch, in_ch, kh, kw), resample_filter, up=up,
                        padding=padding, groups=batch)
    x = x.reshape(batch, out_ch, *x.shape[2:])
    return x + noise if noise is not None else x

"""NIQE, the Natural Image Quality Evaluator (Mittal, Soundararajan and Bovik, 2013).

A no-reference quality score: lower is more natural. Our own numpy
implementation of the algorithm as BasicSR's ``calculate_niqe`` computes it
(BasicSR 1.4.2, ``basicsr/metrics/niqe.py``; BasicSR says it reproduces the
official MATLAB release), so scores are comparable with published BasicSR
numbers; ``tests/test_metrics.py`` checks the agreement on fixed images.

Steps, for one RGB image in [0, 1]:

1. Y channel of ITU-R BT.601 YCbCr in [16, 235] (MATLAB's ``rgb2ycbcr``),
   ``crop_border`` pixels removed from each edge, rounded to integers.
2. Cropped to whole 96x96 blocks (top-left kept).
3. At two scales (the image, then its MATLAB-style bicubic half with
   antialiasing): MSCN coefficients ``(Y - mu) / (sigma + 1)`` with the
   pristine model's 7x7 Gaussian window (edge-replicated borders); for each
   block (96 px, then 48 px) 18 features: an AGGD fit of the coefficients
   (shape, mean scale) and of the products with their horizontal, vertical and
   two diagonal neighbours (circular shifts; shape, mean, left and right scale).
   AGGD shapes come from a lookup over 0.2, 0.201, ..., 10.
4. A Gaussian fit of the 36-dim block features (NaN-aware mean; covariance over
   blocks without NaN) and its distance to the pristine model:
   ``sqrt(d^T pinv((cov_pris + cov) / 2) d)``, ``d = mu_pris - mu``.

Step 3's arithmetic runs in float32 as in BasicSR: the AGGD shape lookup
picks a grid point, so float64 arithmetic moves scores by up to ~1e-3
relative (BasicSR's own code does the same when fed float64). With float32 the
scores agree with BasicSR's to about 1e-6 relative on the test images.

Limits: the image needs at least two whole 96x96 blocks after ``crop_border``
(96x192 or 192x96; with one block the covariance is undefined and BasicSR
fails) or ValueError; an image without texture (flat) scores NaN. A 1024x1024
image takes about 3 s on a 2-core CPU (numpy, single image at a time).

NOTICE: ``niqe_pris_params.npz`` (the pristine model: ``mu_pris_param``,
``cov_pris_param``, ``gaussian_window``) is copied unchanged from the BasicSR
1.4.2 source distribution, Copyright 2018-2022 BasicSR Authors, licensed under
the Apache License 2.0; see ``NOTICE-basicsr.txt`` beside this file. The code
here is pulse-sr's own.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

BLOCK = 96
_PARAMS = Path(__file__).with_name("niqe_pris_params.npz")
#: ITU-R BT.601 luma for R, G, B in [0, 1] -> Y in [16, 235] (before the +16)
_Y_COEFFS = np.array([65.481, 128.553, 24.966])
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


@lru_cache(maxsize=1)
def pristine_model() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mu [36], cov [36, 36], gaussian_window [7, 7])`` of the pristine model (float64)."""
    with np.load(_PARAMS) as data:
        mu = np.asarray(data["mu_pris_param"], dtype=np.float64).reshape(-1)
        cov = np.asarray(data["cov_pris_param"], dtype=np.float64)
        window = np.asarray(data["gaussian_window"], dtype=np.float64)
    for a in (mu, cov, window):
        a.setflags(write=False)
    return mu, cov, window


@lru_cache(maxsize=1)
def _aggd_table() -> tuple[np.ndarray, np.ndarray]:
    """Shape grid ``alpha`` and ``Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a))`` for each."""
    alphas = np.arange(0.2, 10.001, 0.001)
    lg = np.vectorize(math.lgamma)
    ratio = np.exp(2.0 * lg(2.0 / alphas) - lg(1.0 / alphas) - lg(3.0 / alphas))
    return alphas, ratio


def _aggd_fit(x: np.ndarray) -> tuple[float, float, float]:
    """Asymmetric generalised Gaussian fit of the values ``x`` -> ``(alpha, beta_left, beta_right)``.

    Moment matching as in the NIQE paper (eq. 7), in the dtype of ``x`` (float32
    as BasicSR: the shape lookup is sensitive to rounding). A side without values
    gives NaN scales and, as in BasicSR, the first shape of the grid.
    """
    x = x.ravel()
    nan = x.dtype.type(math.nan)
    neg, pos = x[x < 0], x[x > 0]
    left = np.sqrt(np.mean(neg * neg)) if neg.size else nan
    right = np.sqrt(np.mean(pos * pos)) if pos.size else nan
    alphas, ratio = _aggd_table()
    mean_sq = np.mean(x * x)
    if np.isnan(left) or np.isnan(right) or mean_sq == 0:
        alpha = float(alphas[0])
    else:
        g = left / right
        rhat = np.mean(np.abs(x)) ** 2 / mean_sq
        rhat_norm = rhat * (g**3 + 1) * (g + 1) / ((g**2 + 1) ** 2)
        alpha = float(alphas[np.argmin((ratio - rhat_norm) ** 2)])
    factor = math.sqrt(math.gamma(1.0 / alpha) / math.gamma(3.0 / alpha))
    return alpha, float(left) * factor, float(right) * factor


def _block_features(block: np.ndarray) -> list[float]:
    """18 features of one block of MSCN coefficients ``[h, w]``."""
    alpha, bl, br = _aggd_fit(block)
    feats = [alpha, (bl + br) / 2.0]
    for shift in _SHIFTS:
        alpha, bl, br = _aggd_fit(block * np.roll(block, shift, axis=(0, 1)))
        mean = (br - bl) * math.gamma(2.0 / alpha) / math.gamma(1.0 / alpha)
        feats += [alpha, mean, bl, br]
    return feats


def _filter_nearest(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    """2-D convolution of ``img [H, W]`` with ``window [k, k]`` (odd k), edges replicated -> ``[H, W]``
    (summed in float64, returned in ``img``'s dtype)."""
    k = window.shape[0]
    h, w = img.shape
    padded = np.pad(img.astype(np.float64), k // 2, mode="edge")
    flipped = window[::-1, ::-1]
    out = np.zeros((h, w))
    for dy in range(k):
        for dx in range(k):
            out += flipped[dy, dx] * padded[dy:dy + h, dx:dx + w]
    return out.astype(img.dtype)


def _mscn(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    mu = _filter_nearest(img, window)
    sigma = np.sqrt(np.abs(_filter_nearest(img * img, window) - mu * mu))
    return (img - mu) / (sigma + 1.0)


def _cubic(x: Tensor) -> Tensor:
    ax = x.abs()
    return ((1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1).to(x.dtype)
            + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)).to(x.dtype))


def _resize_taps(n_in: int, scale: float) -> tuple[Tensor, Tensor]:
    """MATLAB ``imresize`` (bicubic, antialiased when shrinking) along one axis: per output pixel,
    ``weights [n_out, taps]`` (float32, rows sum to 1) and 0-based source indices ``[n_out, taps]``
    with MATLAB's symmetric border (the edge pixel repeated)."""
    n_out = math.ceil(n_in * scale)
    width = 4.0 / scale if scale < 1 else 4.0
    taps = math.ceil(width) + 2
    # 1-based input coordinates of the output pixel centres
    u = torch.linspace(1, n_out, n_out, dtype=torch.float32) / scale + 0.5 * (1 - 1 / scale)
    idx = torch.floor(u - width / 2)[:, None] + torch.linspace(0, taps - 1, taps, dtype=torch.float32)[None, :]
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if scale < 1 else _cubic(dist)
    w = w / w.sum(dim=1, keepdim=True)
    src = idx.long() - 1
    src = torch.where(src < 0, -src - 1, src)
    src = torch.where(src >= n_in, 2 * n_in - 1 - src, src)
    return w, src


def _resize_axis0(img: Tensor, scale: float) -> Tensor:
    """Resize ``img [H, W]`` (float32) along its first axis -> ``[ceil(H*scale), W]``."""
    w, src = _resize_taps(img.shape[0], scale)
    return torch.stack([img[s].t().mv(wr) for wr, s in zip(w, src)])


def _imresize_half(img: np.ndarray) -> np.ndarray:
    """``[H, W] -> [ceil(H/2), ceil(W/2)]``: MATLAB's ``imresize(img, 0.5)`` (bicubic, antialiased), float32."""
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    x = _resize_axis0(x, 0.5)
    x = _resize_axis0(x.t().contiguous(), 0.5).t()
    return x.numpy()


def _nan_mean_cov(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means ignoring NaN, covariance over the rows without NaN (NaN if fewer than 2)."""
    finite = ~np.isnan(feats)
    counts = finite.sum(axis=0)
    sums = np.where(finite, feats, 0.0).sum(axis=0)
    mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    rows = feats[finite.all(axis=1)]
    if rows.shape[0] < 2:
        return mean, np.full((feats.shape[1], feats.shape[1]), np.nan)
    return mean, np.cov(rows, rowvar=False)


def niqe_y(y: np.ndarray) -> float:
    """NIQE of a luma image ``y [H, W]`` in [0, 255] (already rounded and cropped as wanted).

    Needs at least two whole 96x96 blocks; returns NaN when the image has too
    little texture to fit (e.g. flat: every block's features are NaN).
    """
    y = np.asarray(y, dtype=np.float32)  # BasicSR's precision; see _aggd_fit
    if y.ndim != 2:
        raise ValueError(f"niqe: expected a [H, W] luma image, got shape {list(y.shape)}")
    nh, nw = y.shape[0] // BLOCK, y.shape[1] // BLOCK
    if nh * nw < 2:
        raise ValueError(f"niqe: needs at least two whole {BLOCK}x{BLOCK} blocks (at least {BLOCK}x{2 * BLOCK} "
                         f"or {2 * BLOCK}x{BLOCK} after crop_border), got {y.shape[0]}x{y.shape[1]}")
    mu_pris, cov_pris, window = pristine_model()
    img = y[: nh * BLOCK, : nw * BLOCK]
    per_scale = []
    for scale in (1, 2):
        mscn = _mscn(img, window)
        size = BLOCK // scale
        per_scale.append(np.array([_block_features(mscn[i * size:(i + 1) * size, j * size:(j + 1) * size])
                                   for j in range(nw) for i in range(nh)]))
        if scale == 1:
            img = _imresize_half(img / np.float32(255.0)) * np.float32(255.0)
    mean, cov = _nan_mean_cov(np.concatenate(per_scale, axis=1))
    if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
        return math.nan
    d = mu_pris - mean
    return float(math.sqrt(max(float(d @ np.linalg.pinv((cov_pris + cov) / 2.0) @ d), 0.0)))


def rgb_to_y(img: Tensor | np.ndarray) -> np.ndarray:
    """``[3, H, W]`` RGB in [0, 1] -> ``[H, W]`` float64 BT.601 luma in [16, 235] (not rounded)."""
    rgb = img.detach().to("cpu", torch.float64).numpy() if isinstance(img, Tensor) else np.asarray(img, np.float64)
    return np.tensordot(_Y_COEFFS, rgb, axes=(0, 0)) + 16.0


def niqe(img: Tensor, crop_border: int = 0) -> float | Tensor:
    """NIQE of ``img [3, H, W]`` (-> float) or of each of ``[N, 3, H, W]`` (-> float64 Tensor ``[N]``).

    RGB in [0, 1]; lower is better. ``crop_border`` pixels are dropped from each
    edge first. Raises ValueError for other shapes, non-finite values, or images
    smaller than two 96x96 blocks after the crop (see :func:`niqe_y`).
    """
    if not isinstance(img, Tensor):
        raise TypeError(f"niqe: expected a torch.Tensor, got {type(img).__name__}")
    if img.ndim not in (3, 4) or img.shape[-3] != 3:
        raise ValueError(f"niqe: expected [3, H, W] or [N, 3, H, W] RGB, got {list(img.shape)}")
    if crop_border < 0:
        raise ValueError(f"niqe: crop_border must be >= 0, got {crop_border}")
    if not torch.isfinite(img).all():
        raise ValueError("niqe: the image has NaN or infinite values")
    batch = img if img.ndim == 4 else img[None]
    scores = []
    for one in batch:
        y = rgb_to_y(one)
        if crop_border:
            y = y[crop_border:-crop_border, crop_border:-crop_border]
        scores.append(niqe_y(np.round(y)))
    if img.ndim == 3:
        return scores[0]
    return torch.tensor(scores, dtype=torch.float64)

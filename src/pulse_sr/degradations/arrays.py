"""Image arrays for input analysis (numpy): any supported layout to HxWxC float, luma."""
from __future__ import annotations

import numpy as np

#: ITU-R BT.601 luma weights (R, G, B), as Pillow's ``convert("L")``
BT601 = (0.299, 0.587, 0.114)


def as_float_image(img: np.ndarray) -> np.ndarray:
    """HxW, HxWx{1,2,3,4} (alpha, the last of 2 or 4, dropped), uint8, uint16 or float in
    [0, 1] -> HxWxC float64 (C = 1 or 3)."""
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an HxW or HxWx{{1,2,3,4}} image, got shape {a.shape}")
    if a.shape[2] in (2, 4):
        a = a[:, :, :-1]
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float64) / 65535.0
    return a.astype(np.float64, copy=False)


def luma_levels(img: np.ndarray) -> np.ndarray:
    """HxWxC float [0, 1] -> HxW BT.601 luma in 8-bit levels (0..255)."""
    if img.shape[2] == 1:
        return img[:, :, 0] * 255.0
    return (img[:, :, :3] @ np.array(BT601)) * 255.0


#: statistics (noise, colour) look at most this many px per side: a central crop
MAX_STAT_SIDE = 512


def central_crop(a: np.ndarray, max_side: int = MAX_STAT_SIDE) -> np.ndarray:
    """The central ``max_side x max_side`` part of HxW[xC] ``a`` (all of it when smaller)."""
    h, w = a.shape[:2]
    top, left = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
    return a[top : top + max_side, left : left + max_side]

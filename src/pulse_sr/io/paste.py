"""Put super-resolved faces back into an upscaled copy of their photo.

Each face ``[3, R, R]`` comes with the ``[3, 3]`` matrix that aligned it
(:func:`pulse_sr.io.align.crop_matrix`: face frame -> photo coordinates, pixel
``(i, j)`` covering ``[i, i + 1) x [j, j + 1)``). The canvas is the photo
upscaled with bicubic by ``(sx, sy)``; every canvas pixel near a face is mapped
through the inverse of ``diag(sx, sy, 1) @ matrix`` into the face, sampled
(bicubic) and blended with a mask that is 1 inside the frame and falls smoothly
to 0 over the outer ``feather`` fraction of it, so no seam shows. Pixels whose
centre maps outside every face frame keep the bicubic upscale exactly.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_FEATHER = 0.1
DEFAULT_MAX_SIDE = 4096


def output_scale(width: int, height: int, face_pixels: Sequence[float], resolution: int, *,
                 max_side: int = DEFAULT_MAX_SIDE, scale: float | None = None) -> float:
    """How much to enlarge a ``width x height`` photo before pasting faces back.

    Default: enough for the smallest face frame (``face_pixels``, its side in photo
    pixels) to get all ``resolution`` pixels of the generator's output, at least 1
    (never shrink), then capped so the longer side is at most ``max_side``
    (which may shrink a photo larger than ``max_side``). ``scale`` replaces the
    first rule; the cap still applies.
    """
    if scale is None:
        scale = max([1.0] + [resolution / p for p in face_pixels if p > 0])
    return min(float(scale), max_side / max(width, height))


def upscale_photo(photo: np.ndarray | Tensor, width: int, height: int) -> Tensor:
    """``photo`` (``[H, W, 3]`` uint8 or ``[3, H, W]`` in [0, 1]) -> ``[3, height, width]``
    float32 in [0, 1], bicubic (antialiased when shrinking).

    A uint8 photo that shrinks is resized by Pillow (antialiased bicubic) before it
    becomes float, so a huge photo never exists as a float tensor.
    """
    if isinstance(photo, np.ndarray) and (width < photo.shape[1] or height < photo.shape[0]):
        return _pil_resize(photo, width, height, nearest=False)
    x = photo_tensor(photo)
    h, w = int(x.shape[1]), int(x.shape[2])
    if (h, w) == (height, width):
        return x.clone()
    out = F.interpolate(x[None], size=(height, width), mode="bicubic", align_corners=False,
                        antialias=height < h or width < w)[0]
    return out.clamp_(0.0, 1.0)


def _pil_resize(photo: np.ndarray, width: int, height: int, *, nearest: bool) -> Tensor:
    """uint8 ``[H, W, 3]`` resized by Pillow -> ``[3, height, width]`` float32 in [0, 1]."""
    from PIL import Image

    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
    small = np.asarray(Image.fromarray(np.ascontiguousarray(photo)).resize((width, height), method))
    return torch.from_numpy(small.copy()).permute(2, 0, 1).float().div_(255.0)


def photo_tensor(photo: np.ndarray | Tensor) -> Tensor:
    """``[H, W, 3]`` uint8 or ``[3, H, W]`` in [0, 1] -> ``[3, H, W]`` float32 in [0, 1] (CPU)."""
    if isinstance(photo, Tensor):
        if photo.ndim != 3 or photo.shape[0] != 3:
            raise ValueError(f"expected a [3, H, W] photo, got {list(photo.shape)}")
        return photo.detach().to("cpu", torch.float32)
    if photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] photo, got {list(photo.shape)}")
    return torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1).float().div_(255.0)


def edge_mask(u: Tensor, v: Tensor, resolution: int, feather: float) -> Tensor:
    """Blend weight at face coordinates ``(u, v)`` (any shape): 0 outside the ``R x R``
    frame, 1 deeper than ``feather * R`` inside it, smoothstep in between."""
    r = float(resolution)
    d = torch.minimum(torch.minimum(u, r - u), torch.minimum(v, r - v))
    if feather <= 0:
        return (d >= 0).float()
    t = (d / (feather * r)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def paste_face(canvas: Tensor, face: Tensor, matrix: np.ndarray, scale_xy: tuple[float, float], *,
               feather: float = DEFAULT_FEATHER) -> Tensor:
    """Blend ``face [3, R, R]`` (in [0, 1]) into ``canvas [3, H', W']`` in place; returns
    the ``[H', W']`` mask used (zeros where the face does not reach).

    ``matrix``: face frame -> photo coordinates; ``scale_xy``: canvas pixels per photo
    pixel along x and y.
    """
    res = int(face.shape[-1])
    full = np.diag([scale_xy[0], scale_xy[1], 1.0]) @ np.asarray(matrix, dtype=np.float64)
    # A face much larger than its place on the canvas is shrunk first (antialiased),
    # so the bicubic sampling below does not alias.
    src = face.detach().to("cpu", torch.float32)[None]
    per_face_px = math.sqrt(abs(float(np.linalg.det(full[:2, :2]))))
    if per_face_px < 0.75:
        side = max(8, round(res * per_face_px))
        src = F.interpolate(src, size=(side, side), mode="bicubic", align_corners=False, antialias=True)
        full = full @ np.diag([res / side, res / side, 1.0])
        res = side
    hc, wc = int(canvas.shape[1]), int(canvas.shape[2])
    mask_full = torch.zeros((hc, wc))
    corners = (np.array([[0, 0, 1], [0, res, 1], [res, res, 1], [res, 0, 1]], float) @ full.T)[:, :2]
    x0 = max(0, math.floor(corners[:, 0].min()))
    x1 = min(wc, math.ceil(corners[:, 0].max()) + 1)
    y0 = max(0, math.floor(corners[:, 1].min()))
    y1 = min(hc, math.ceil(corners[:, 1].max()) + 1)
    if x1 <= x0 or y1 <= y0:
        return mask_full
    inv = np.linalg.inv(full)
    xs = np.arange(x0, x1, dtype=np.float64) + 0.5
    ys = np.arange(y0, y1, dtype=np.float64) + 0.5
    xx, yy = np.meshgrid(xs, ys)
    u = torch.from_numpy(inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]).float()
    v = torch.from_numpy(inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]).float()
    grid = torch.stack([2.0 * u / res - 1.0, 2.0 * v / res - 1.0], dim=-1)[None]
    sampled = F.grid_sample(src, grid, mode="bicubic", padding_mode="border", align_corners=False)[0]
    sampled = sampled.clamp(0.0, 1.0)
    mask = edge_mask(u, v, res, feather)
    region = canvas[:, y0:y1, x0:x1]
    region.mul_(1.0 - mask).add_(sampled * mask)
    mask_full[y0:y1, x0:x1] = mask
    return mask_full


def paste_faces(photo: np.ndarray | Tensor, faces: Sequence[tuple[Tensor, np.ndarray]], *,
                scale: float = 1.0, feather: float | Sequence[float] = DEFAULT_FEATHER,
                ) -> tuple[Tensor, tuple[float, float]]:
    """The photo enlarged by ``scale`` (bicubic) with every ``(face [3, R, R], matrix)`` pasted
    back, in order. Returns ``(canvas [3, H', W'] in [0, 1], (sx, sy))``: the exact
    per-axis factors after rounding the size to whole pixels."""
    x = photo_tensor(photo)
    h, w = int(x.shape[1]), int(x.shape[2])
    wo, ho = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = upscale_photo(x, wo, ho)
    sxy = (wo / w, ho / h)
    feathers = [feather] * len(faces) if isinstance(feather, (int, float)) else list(feather)
    for (face, matrix), fe in zip(faces, feathers):
        paste_face(canvas, face, matrix, sxy, feather=fe)
    return canvas, sxy


def side_by_side(left: np.ndarray | Tensor, right: Tensor, *, gap: int | None = None) -> Tensor:
    """``[3, H, W1 + gap + W2]``: ``left`` (``[H0, W0, 3]`` uint8 or ``[3, H0, W0]``) scaled to
    ``right``'s height (enlarged with nearest neighbour so its pixels stay visible,
    shrunk with antialiased bicubic), a white gap, then ``right [3, H, W2]``."""
    h = int(right.shape[1])
    h0, w0 = (left.shape[0], left.shape[1]) if isinstance(left, np.ndarray) else (left.shape[1], left.shape[2])
    w = max(1, round(int(w0) * h / int(h0)))
    if isinstance(left, np.ndarray):
        left = _pil_resize(left, w, h, nearest=h >= h0)
    elif int(h0) != h:
        if h > int(h0):
            left = F.interpolate(left[None].float(), size=(h, w), mode="nearest-exact")[0]
        else:
            left = F.interpolate(left[None].float(), size=(h, w), mode="bicubic", antialias=True,
                                 align_corners=False)[0].clamp(0.0, 1.0)
    if gap is None:
        gap = max(2, h // 100)
    white = torch.ones((3, h, gap))
    return torch.cat([left.float(), white, right.float()], dim=2)

"""MTCNN face detection (Zhang et al. 2016): small faces and 5 landmarks.

Pipeline for one photo ``[H, W, 3]`` uint8 RGB (coordinates: photo pixels, x right,
y down, continuous; pixel ``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``):

1. Image pyramid: scales ``12 / min_face * factor**k`` while the scaled photo's
   shorter side is at least 12 pixels, so a face of ``min_face`` pixels fills
   P-Net's ``12 x 12`` window at the first scale.
2. P-Net on every scale: each output cell whose face probability reaches
   ``thresholds[0]`` proposes its window (12 pixels, stride 2, mapped back to the
   photo); non-maximum suppression per scale (IoU 0.5) and over all scales (0.7);
   box regression; boxes made square.
3. R-Net on ``24 x 24`` crops of the proposals: keep probability >= ``thresholds[1]``,
   suppress (IoU 0.7), regress, make square.
4. O-Net on ``48 x 48`` crops: keep probability >= ``thresholds[2]``, read the 5
   landmarks, regress, suppress (intersection over the smaller box, 0.7).

Crops outside the photo are filled with black, as the detector was trained.
The networks are in :mod:`pulse_sr.io.mtcnn_nets`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pulse_sr.errors import SettingsError

DEFAULT_MIN_FACE = 12
DEFAULT_FACTOR = 0.709
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)
#: most pixels in the pyramid's largest level (bounds memory before allocating)
MAX_PYRAMID_PIXELS = 40_000_000
#: most proposals carried from one stage to the next (highest probabilities kept)
MAX_PROPOSALS = 4000
CELL, STRIDE = 12, 2


@dataclass
class MtcnnFace:
    """One face: ``box`` (left, top, right, bottom), ``score`` (O-Net face probability
    in [0, 1]) and ``points`` ``[5, 2]``: left eye, right eye, nose, left and right
    mouth corner (left = image left), photo coordinates."""

    box: tuple[float, float, float, float]
    score: float
    points: np.ndarray


@functools.lru_cache(maxsize=1)
def _nets() -> tuple:
    from pulse_sr.io.mtcnn_nets import load_mtcnn_nets

    return load_mtcnn_nets()


# -- boxes ---------------------------------------------------------------------------------
def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Indices of ``boxes [N, 4]`` (x1, y1, x2, y2) kept by greedy non-maximum
    suppression, best score first: a box is dropped when its overlap with a kept
    box exceeds ``threshold``; overlap is intersection over union (``"union"``) or
    over the smaller box's area (``"min"``)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        ih = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = iw * ih
        if mode == "min":
            denom = np.minimum(area[i], area[rest])
        else:
            denom = area[i] + area[rest] - inter
        overlap = inter / np.maximum(denom, 1e-12)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``boxes [N, 4]`` moved by ``offsets [N, 4]`` (fractions of each box's width/height)."""
    wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    return boxes + offsets * np.concatenate([wh, wh], axis=1)


def squared(boxes: np.ndarray) -> np.ndarray:
    """``boxes [N, 4]`` made square (side = the longer side) about their centres."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    half = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])[:, None] / 2.0
    return np.concatenate([c - half, c + half], axis=1)


def _top(keep: np.ndarray, scores: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` of the indices ``keep``, highest ``scores`` first."""
    if len(keep) <= limit:
        return keep
    return keep[np.argsort(-scores[keep], kind="stable")[:limit]]


# -- the photo -----------------------------------------------------------------------------
def _normalise(x: Tensor) -> Tensor:
    """Pixels in [0, 255] -> the nets' input range ``(x - 127.5) / 128``."""
    return (x - 127.5) * 0.0078125


def pyramid_scales(height: int, width: int, min_face: float, factor: float) -> list[float]:
    """Scales at which a face of ``min_face`` .. the photo's size fills P-Net's window."""
    if not min_face >= 4:
        raise SettingsError(f"min_face {min_face}: must be at least 4 pixels", field="min_face", value=min_face)
    if not 0.1 <= factor < 1.0:
        raise SettingsError(f"pyramid factor {factor}: must be in [0.1, 1)", field="factor", value=factor)
    first = CELL / float(min_face)
    if height * width * first * first > MAX_PYRAMID_PIXELS:
        raise SettingsError(
            f"a {width}x{height} photo with min_face {min_face} needs a pyramid level over "
            f"{MAX_PYRAMID_PIXELS} pixels: shrink the photo or raise min_face",
            field="min_face", value=min_face)
    scales, s = [], first
    while min(height, width) * s >= CELL:
        scales.append(s)
        s *= factor
    return scales


def _proposals(img: Tensor, scales: list[float], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """P-Net over the pyramid of ``img [1, 3, H, W]`` (pixels in [0, 255]):
    regressed square boxes ``[N, 4]`` and their probabilities ``[N]``."""
    pnet = _nets()[0]
    h, w = img.shape[2:]
    all_boxes, all_scores, all_offsets = [], [], []
    for s in scales:
        sh, sw = max(CELL, math.ceil(h * s)), max(CELL, math.ceil(w * s))
        level = img if (sh, sw) == (h, w) else F.interpolate(
            img, size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)
        prob, off = pnet(_normalise(level))
        prob, off = prob[0].numpy(), off[0].numpy()
        iy, ix = np.nonzero(prob >= threshold)
        if iy.size == 0:
            continue
        if iy.size > 4 * MAX_PROPOSALS:  # bound the suppression's work on textured photos
            best = np.argsort(-prob[iy, ix], kind="stable")[:4 * MAX_PROPOSALS]
            iy, ix = iy[best], ix[best]
        kx, ky = sw / w, sh / h  # the actual scale on each axis
        boxes = np.stack([STRIDE * ix / kx, STRIDE * iy / ky,
                          (STRIDE * ix + CELL) / kx, (STRIDE * iy + CELL) / ky], axis=1)
        scores = prob[iy, ix]
        keep = _top(nms(boxes, scores, 0.5), scores, MAX_PROPOSALS)
        all_boxes.append(boxes[keep])
        all_scores.append(scores[keep])
        all_offsets.append(off[:, iy[keep], ix[keep]].T)
    if not all_boxes:
        return np.zeros((0, 4)), np.zeros(0)
    boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
    offsets = np.concatenate(all_offsets)
    keep = _top(nms(boxes, scores, 0.7), scores, MAX_PROPOSALS)
    return squared(regress(boxes[keep], offsets[keep])), scores[keep]


def crop_boxes(img: Tensor, boxes: np.ndarray, size: int) -> tuple[Tensor, np.ndarray]:
    """Square crops of ``img [1, 3, H, W]`` (pixels in [0, 255]) resampled to
    ``[N, 3, size, size]`` (normalised for the nets), and the boxes ``[N, 4]`` actually
    cropped (``boxes`` rounded to whole pixels). Outside the photo is black."""
    h, w = img.shape[2:]
    used = np.round(boxes).astype(np.int64)
    used[:, 2:] = np.maximum(used[:, 2:], used[:, :2] + 1)
    out = torch.zeros(len(boxes), 3, size, size)
    for n, (x1, y1, x2, y2) in enumerate(used.tolist()):
        patch = torch.zeros(1, 3, y2 - y1, x2 - x1)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if sx2 > sx1 and sy2 > sy1:
            patch[:, :, sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = img[:, :, sy1:sy2, sx1:sx2]
        out[n] = F.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=True)[0]
    return _normalise(out), used.astype(np.float64)


def _refine(img: Tensor, boxes: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """R-Net on the proposals: kept, regressed, squared boxes and their probabilities."""
    if len(boxes) == 0:
        return boxes, np.zeros(0)
    crops, used = crop_boxes(img, boxes, 24)
    prob, off = (t.numpy() for t in _nets()[1](crops))
    ok = np.nonzero(prob >= threshold)[0]
    used, prob, off = used[ok], prob[ok], off[ok]
    keep = nms(used, prob, 0.7)
    return squared(regress(used[keep], off[keep])), prob[keep]


def _output(img: Tensor, boxes: np.ndarray, threshold: float) -> list[MtcnnFace]:
    """O-Net on the refined boxes: the final faces with their 5 landmarks."""
    if len(boxes) == 0:
        return []
    crops, used = crop_boxes(img, boxes, 48)
    prob, off, marks = (t.numpy().astype(np.float64) for t in _nets()[2](crops))
    ok = np.nonzero(prob >= threshold)[0]
    used, prob, off, marks = used[ok], prob[ok], off[ok], marks[ok]
    side = (used[:, 2:] - used[:, :2])  # [N, 2] width, height
    px = used[:, 0:1] + marks[:, 0:5] * side[:, 0:1]
    py = used[:, 1:2] + marks[:, 5:10] * side[:, 1:2]
    final = regress(used, off)
    keep = nms(final, prob, 0.7, mode="min")
    return [MtcnnFace(box=tuple(float(v) for v in final[i]), score=float(prob[i]),
                      points=np.stack([px[i], py[i]], axis=1)) for i in keep]


def detect_mtcnn(photo: np.ndarray, *, min_face: float = DEFAULT_MIN_FACE,
                 factor: float = DEFAULT_FACTOR,
                 thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS) -> list[MtcnnFace]:
    """Faces in ``photo [H, W, 3]`` uint8 RGB of at least about ``min_face`` pixels,
    ordered left to right.

    Raises :class:`~pulse_sr.errors.WeightsError` when the MTCNN weights are missing
    (``pip install --no-deps facenet-pytorch``) and
    :class:`~pulse_sr.errors.SettingsError` for impossible settings.
    """
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise ValueError(f"expected an [H, W, 3] uint8 photo, got {photo.dtype} {list(photo.shape)}")
    h, w = photo.shape[:2]
    scales = pyramid_scales(h, w, min_face, factor)
    img = torch.tensor(photo).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        boxes, _ = _proposals(img, scales, thresholds[0])
        boxes, _ = _refine(img, boxes, thresholds[1])
        faces = _output(img, boxes, thresholds[2])
    faces.sort(key=lambda f: (f.points[:, 0].mean(), f.points[:, 1].mean()))
    return faces

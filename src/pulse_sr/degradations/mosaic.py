"""Mosaic detection: is an image made of ``k x k`` constant blocks (a Pixelate filter's output)?

Works on luma (BT.601, recomputed from RGB: JPEG's chroma subsampling and
upsampling leave it intact) in 8-bit levels. For every block size ``k`` and
grid phase, the absolute differences between neighbouring pixels are split
into those that cross a grid line ("boundary") and those inside blocks
("interior"). A mosaic's interiors are flat up to compression noise while its
boundaries carry the jumps between block values; a photo, a smooth gradient,
text or noise has no grid that separates the two. The largest ``k`` that
passes on both axes with the same phase wins (divisors of the true ``k`` pass
too; its multiples do not, since they leave real jumps inside their blocks).

The grid of block means is the target for the ``box`` operator. A partial
block at the image border still shows its whole block's value, so it is a
cell; a cell whose pixels are not constant up to the image's own block noise
is undecidable and masked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pulse_sr.degradations.arrays import as_float_image, luma_levels

#: a grid line must carry a mean jump of at least this many 8-bit levels (per axis):
#: below it a grid is indistinguishable from the rounding steps of a smooth gradient
#: (one level) plus JPEG's own 8x8 block edges (about one level at q 70)
MIN_CONTRAST = 2.0
#: mean |difference| inside blocks / mean across grid lines, at most (photos and noise
#: sit near 1, since no grid separates their edges; JPEG q 70 on 2 px blocks, the
#: hardest mosaic, reaches about 0.5)
MAX_MEAN_RATIO = 0.65
#: the roughest position inside blocks / mean across grid lines, at most (a multiple of
#: the true k leaves a whole grid line inside its blocks: about 1; text reaches 2)
MAX_PEAK_RATIO = 0.95
#: share of the image's luma variance the block means must explain (random noise at
#: k = 2 explains 1/4, a mosaic under JPEG q 70 about 0.99)
MIN_EXPLAINED = 0.8
#: a grid needs at least this many full blocks per axis
MIN_CELLS = 4
#: largest block size tried
MAX_BLOCK = 64
#: a cell is masked (undecidable) when its luma RMS about its mean exceeds both this
#: many levels and CELL_RMS_FACTOR x the median full cell's: a block is constant, so
#: only compression noise may vary inside it, and that noise is alike across the image
CELL_RMS_LEVELS = 8.0
CELL_RMS_FACTOR = 3.0
#: at most this share of full cells may be masked for the grid to be a mosaic
MAX_MASKED_SHARE = 0.25


@dataclass
class Mosaic:
    """A detected mosaic. ``offset = (dx, dy)``: the first block boundary (top-left corner
    of the first full block), ``0 <= dx, dy < k``; ``grid`` ``[rows, cols, C]`` block means
    in [0, 1] (partial border blocks included); ``mask`` ``[rows, cols]`` True = known."""

    k: int
    offset: tuple[int, int]
    grid: np.ndarray
    mask: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.grid.shape[0]), int(self.grid.shape[1])

    def describe(self) -> str:
        dx, dy = self.offset
        return f"mosaic of {self.k} px blocks detected, offset ({dx}, {dy})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (the grid itself is not included)."""
        return {
            "k": self.k,
            "offset": list(self.offset),
            "grid_size": list(self.shape),
            "masked_cells": int((~self.mask).sum()),
            "stats": {k: float(v) for k, v in self.stats.items()},
            "description": self.describe(),
        }


def _axis_phase(profile: np.ndarray, k: int) -> tuple[int, float, float, float]:
    """Best grid phase ``b`` on one axis (grid lines after positions ``x % k == b``).

    ``profile`` [n]: mean |difference| between pixel ``x`` and ``x + 1`` over the other
    axis, in levels. Returns ``(b, contrast, mean_ratio, peak_ratio)``.
    """
    pos = np.arange(profile.size) % k
    means = np.array([profile[pos == b].mean() for b in range(k)])
    b = int(np.argmax(means))
    inside = profile[pos != b]
    contrast = float(means[b])
    if contrast <= 0:
        return b, 0.0, float("inf"), float("inf")
    return b, contrast, float(inside.mean() / contrast), float(inside.max() / contrast)


def _passes(stats: tuple[int, float, float, float]) -> bool:
    _, contrast, mean_ratio, peak_ratio = stats
    return contrast >= MIN_CONTRAST and mean_ratio <= MAX_MEAN_RATIO and peak_ratio <= MAX_PEAK_RATIO


def _axis_cells(side: int, k: int, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel along an axis whose first full block starts at ``start``: its cell index,
    whether it lies in the cell's core (``k // 4`` px away from grid lines, not from the
    image border), and each cell's width."""
    idx = np.arange(side)
    cell = (idx - start) // k + (1 if start > 0 else 0)
    begin = np.where(idx < start, 0, start + ((idx - start) // k) * k)
    end = np.minimum(np.where(idx < start, start, begin + k), side)
    t = k // 4  # JPEG ringing and chroma bleed hug the grid lines; means use the cell's core
    lo = begin + np.where(begin > 0, t, 0)
    hi = end - np.where(end < side, t, 0)
    core = (idx >= lo) & (idx < hi)
    widths = np.bincount(cell)
    return cell, core, widths


def _grid(img: np.ndarray, y: np.ndarray, k: int, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block means [rows, cols, C] (over each cell's core; the whole cell where the core is
    empty), the luma RMS about the mean in each cell's core, and whether each cell is full."""
    h, w = y.shape
    rcell, rcore, rwidth = _axis_cells(h, k, dy)
    ccell, ccore, cwidth = _axis_cells(w, k, dx)
    rows, cols = rwidth.size, cwidth.size
    cell = (rcell[:, None] * cols + ccell[None, :]).ravel()
    core = (rcore[:, None] & ccore[None, :]).ravel()
    n_core = np.bincount(cell[core], minlength=rows * cols)
    use = core | (n_core[cell] == 0)  # a cell too thin for a core uses all its pixels
    n = np.bincount(cell[use], minlength=rows * cols).astype(np.float64)
    flat = img.reshape(-1, img.shape[2])
    sums = [np.bincount(cell[use], weights=flat[use, c], minlength=rows * cols) for c in range(flat.shape[1])]
    grid = np.stack(sums, axis=-1)
    grid /= n[:, None]
    yv = y.ravel()[use]
    mean_y = np.bincount(cell[use], weights=yv, minlength=rows * cols) / n
    var_y = np.bincount(cell[use], weights=(yv - mean_y[cell[use]]) ** 2, minlength=rows * cols) / n
    full = (rwidth[:, None] == k) & (cwidth[None, :] == k)
    return grid.reshape(rows, cols, -1), np.sqrt(var_y).reshape(rows, cols), full


def _explained(y: np.ndarray, k: int, dx: int, dy: int) -> float:
    """Share of luma variance explained by the block means of the (untrimmed) grid."""
    h, w = y.shape
    rid = (np.arange(h) - dy) // k + (1 if dy else 0)
    cid = (np.arange(w) - dx) // k + (1 if dx else 0)
    cell = rid[:, None] * (cid.max() + 1) + cid[None, :]
    sums = np.bincount(cell.ravel(), weights=y.ravel())
    counts = np.bincount(cell.ravel())
    fit = (sums / np.maximum(counts, 1))[cell]
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - fit) ** 2).sum()) / total if total > 0 else 0.0


def detect_mosaic(img: np.ndarray, *, max_block: int = MAX_BLOCK) -> Mosaic | None:
    """The mosaic an image shows, or None.

    ``img``: HxW or HxWx{1,3,4} (alpha ignored), uint8 or float in [0, 1].
    Block sizes ``2..max_block`` with at least ``MIN_CELLS`` full blocks per axis;
    the largest passing ``k`` wins.
    """
    a = as_float_image(img)
    y = luma_levels(a)
    h, w = y.shape
    prof_x = np.abs(np.diff(y, axis=1)).mean(axis=0)  # [w - 1]
    prof_y = np.abs(np.diff(y, axis=0)).mean(axis=1)  # [h - 1]
    kmax = min(max_block, h // MIN_CELLS, w // MIN_CELLS)
    for k in range(kmax, 1, -1):
        sx = _axis_phase(prof_x, k)
        if not _passes(sx):
            continue
        sy = _axis_phase(prof_y, k)
        if not _passes(sy):
            continue
        dx, dy = (sx[0] + 1) % k, (sy[0] + 1) % k
        explained = _explained(y, k, dx, dy)
        if explained < MIN_EXPLAINED:
            continue
        grid, rms, full = _grid(a, y, k, dx, dy)
        if not full.any():
            continue
        mask = rms <= max(CELL_RMS_LEVELS, CELL_RMS_FACTOR * float(np.median(rms[full])))
        if (~mask[full]).mean() > MAX_MASKED_SHARE:
            continue
        stats = {
            "contrast_x": sx[1], "mean_ratio_x": sx[2], "peak_ratio_x": sx[3],
            "contrast_y": sy[1], "mean_ratio_y": sy[2], "peak_ratio_y": sy[3],
            "explained": explained, "cell_rms_median": float(np.median(rms[full])),
        }
        return Mosaic(k=k, offset=(dx, dy), grid=grid.astype(np.float32), mask=mask, stats=stats)
    return None

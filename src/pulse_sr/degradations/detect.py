"""What an input is, decided from the image: ``analyse_input``.

Order (issue 13): a square input whose side is a valid input size for the generator is a
face (PULSE's ``bicubic``); else a detected mosaic is a mosaic (its block means are the
target of the ``box`` operator); else it is a photo (for ``restore`` / ``--align``).
Besides: black and white or colour, and the noise sigma of what will be matched. Every
decision is written down in ``reasons``. Pure numpy; nothing here reads files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pulse_sr.degradations.arrays import BT601, as_float_image
from pulse_sr.degradations.bicubic import valid_input_sizes
from pulse_sr.degradations.greyscale import GREY_MODES, is_grey
from pulse_sr.degradations.mosaic import Mosaic, detect_mosaic
from pulse_sr.degradations.noise import DETECTION_LIMIT, NoiseEstimate, estimate_noise
from pulse_sr.errors import SizeError

#: luma = w . RGB: i.i.d. noise sigma per channel becomes |w| sigma in luma
LUMA_NOISE_FACTOR = math.sqrt(sum(w * w for w in BT601))

KINDS = ("face", "mosaic", "photo")


@dataclass
class InputAnalysis:
    """What an input is and how to match it.

    ``kind`` in ``face | mosaic | photo``; ``operator``: degradation spec (``bicubic``,
    ``box``; None for a photo); ``grey``: match luma only; ``target`` ``[C, s, s]`` float32
    in [0, 1] (C = 1 for grey, else 3; None for a photo); ``mask`` ``[s, s]`` bool, True =
    known (None = all known); ``noise`` the estimate on the input; ``noise_sigma`` the
    sigma in the observation as matched (luma for grey), 0..1 scale; ``factor`` =
    resolution / target side when that is a valid size, else None.
    """

    kind: str
    size: tuple[int, int]
    resolution: int
    operator: str | None
    grey: bool
    noise: NoiseEstimate
    noise_sigma: float
    target: np.ndarray | None = None
    mask: np.ndarray | None = None
    factor: int | None = None
    mosaic: Mosaic | None = None
    valid_sizes: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def target_valid(self) -> bool:
        return self.factor is not None

    def check_target(self) -> None:
        """Raise ``SizeError`` unless the target fits the generator: a photo, or a mosaic whose
        block grid is not a valid input size (data: ``size`` of the grid, ``valid_sizes``,
        ``nearest``, ``square``, ``mosaic``)."""
        if self.kind == "face" or self.target_valid:
            return
        if self.mosaic is None:
            w, h = self.size[1], self.size[0]
            raise SizeError(
                f"input is {w}x{h}, not a valid input size for a {self.resolution} px generator, and not a mosaic",
                size=[w, h], valid_sizes=list(self.valid_sizes), nearest=_nearest(min(w, h), self.valid_sizes),
                square=w == h, mosaic=None,
            )
        rows, cols = self.mosaic.shape
        sizes = ", ".join(str(s) for s in self.valid_sizes)
        raise SizeError(
            f"{self.mosaic.describe()}, showing a {cols}x{rows} block grid; a {self.resolution} px generator "
            f"takes {sizes} block grids",
            size=[cols, rows], valid_sizes=list(self.valid_sizes), nearest=_nearest(min(rows, cols), self.valid_sizes),
            square=rows == cols, mosaic=self.mosaic.to_dict(),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no pixel arrays)."""
        return {
            "kind": self.kind,
            "size": list(self.size),
            "resolution": self.resolution,
            "operator": self.operator,
            "grey": self.grey,
            "noise": self.noise.to_dict(),
            "noise_sigma": self.noise_sigma,
            "noise_sigma_255": round(self.noise_sigma * 255, 3),
            "target_size": None if self.target is None else [int(self.target.shape[1]), int(self.target.shape[2])],
            "masked_pixels": 0 if self.mask is None else int((~self.mask).sum()),
            "factor": self.factor,
            "mosaic": None if self.mosaic is None else self.mosaic.to_dict(),
            "valid_sizes": list(self.valid_sizes),
            "reasons": list(self.reasons),
        }


def _nearest(side: int, sizes: list[int]) -> int | None:
    """The size nearest to ``side`` in log scale, ties to the larger (as io.images does)."""
    if not sizes:
        return None
    return min(sizes, key=lambda s: (max(s, side) / min(s, side), -s))


def _target(rgb: np.ndarray, grey: bool) -> np.ndarray:
    """HxWx{1,3} float in [0, 1] -> [C, H, W] float32 (luma when grey)."""
    if grey:
        y = rgb[:, :, 0] if rgb.shape[2] == 1 else rgb @ np.array(BT601)
        return y[None].astype(np.float32)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return rgb.transpose(2, 0, 1).astype(np.float32)


def _alpha_mask(img: np.ndarray) -> np.ndarray | None:
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] in (2, 4):
        known = a[:, :, -1] > 0
        return None if known.all() else known
    return None


def _grey_decision(img: np.ndarray, mode_hint: str | None, reasons: list[str]) -> bool:
    if mode_hint is not None and mode_hint in GREY_MODES:
        reasons.append(f"black and white: a grey-mode ({mode_hint}) file; matched on luma (BT.601)")
        return True
    if is_grey(img):
        a = np.asarray(img)
        why = "one channel" if a.ndim == 2 or a.shape[2] in (1, 2) else "R, G and B equal up to compression or noise"
        reasons.append(f"black and white: {why}; matched on luma (BT.601), faces stay in colour")
        return True
    reasons.append("colour: matched on R, G and B")
    return False


def _noise(observed: np.ndarray, grey: bool, reasons: list[str]) -> tuple[NoiseEstimate, float]:
    """Estimate on the image as observed (HxWxC float); sigma in the matched channels."""
    est = estimate_noise(observed)
    sigma = est.sigma * (LUMA_NOISE_FACTOR if grey and observed.shape[2] == 3 else 1.0)
    if est.detected:
        where = f" (x {LUMA_NOISE_FACTOR:.2f} in luma)" if grey and observed.shape[2] == 3 else ""
        reasons.append(f"noise sigma {est.sigma * 255:.1f}/255 estimated{where}")
    else:
        reasons.append(f"no noise detected (estimate {est.raw * 255:.2f}/255, below {DETECTION_LIMIT * 255:g}/255)")
    return est, sigma


def analyse_input(img: np.ndarray, resolution: int, *, mode_hint: str | None = None) -> InputAnalysis:
    """Decide what ``img`` (HxW or HxWx{1,2,3,4}, uint8 or float in [0, 1]) is for a
    ``resolution`` px generator. ``mode_hint``: the file's Pillow mode, if known."""
    a = as_float_image(img)
    h, w = a.shape[:2]
    valid = valid_input_sizes(resolution)
    reasons: list[str] = []
    grey = _grey_decision(img, mode_hint, reasons)
    common = {"size": (h, w), "resolution": resolution, "grey": grey, "valid_sizes": valid}
    if h == w and h in valid:
        reasons.insert(0, f"{w}x{h} is a valid input size for a {resolution} px generator (x{resolution // h}): a face")
        noise, sigma = _noise(a, grey, reasons)
        return InputAnalysis(
            kind="face", operator="bicubic", noise=noise, noise_sigma=sigma, target=_target(a, grey),
            mask=_alpha_mask(img), factor=resolution // h, reasons=reasons, **common,
        )
    mosaic = detect_mosaic(a)
    if mosaic is not None:
        rows, cols = mosaic.shape
        lines = [f"{w}x{h} is not a valid input size; {mosaic.describe()}: a {cols}x{rows} grid of block means"]
        ok = rows == cols and rows in valid
        if ok:
            lines.append(f"matched with the box operator (block means, x{resolution // rows})")
        else:
            sizes = ", ".join(str(s) for s in valid)
            lines.append(f"the {cols}x{rows} block grid is not a valid input size (valid: {sizes})")
        if not mosaic.mask.all():
            lines.append(f"{int((~mosaic.mask).sum())} undecidable cells masked")
        reasons[:0] = lines
        noise, sigma = _noise(mosaic.grid.astype(np.float64), grey, reasons)
        return InputAnalysis(
            kind="mosaic", operator="box", noise=noise, noise_sigma=sigma,
            target=_target(mosaic.grid.astype(np.float64), grey), mask=None if mosaic.mask.all() else mosaic.mask,
            factor=resolution // rows if ok else None, mosaic=mosaic, reasons=reasons, **common,
        )
    reasons.insert(0, f"{w}x{h} is not a valid input size and shows no mosaic: a photo (align its faces first)")
    noise, sigma = _noise(a, grey, reasons)
    return InputAnalysis(kind="photo", operator=None, noise=noise, noise_sigma=sigma, reasons=reasons, **common)

"""What the front ends match for one input file: :func:`plan_input` (issue 13).

The command line (``run``, ``restore``'s aligned faces) and the web app hand an input image
here with the user's choices (``degradation``, ``noise_sigma``, ``mask``, ``grey_output``,
``resize``, ``center_crop``, ``faithful``; their defaults live in
:data:`pulse_sr.front_end.INPUT_DEFAULTS`) and get an :class:`InputPlan`: the target, the
operator, the mask, the match threshold, and why. What an input is comes from
:func:`pulse_sr.degradations.detect.analyse_input`: a valid size is a face; else a detected
mosaic (its block means are the target of ``box``); else a photo, which goes to
``restore`` / ``--align``. ``faithful``: today's PULSE input, untouched (RGB, bicubic, no
noise, transparency on white; only an explicit mask is used). Torch is imported lazily.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pulse_sr.errors import SizeError

if TYPE_CHECKING:
    from torch import Tensor

    from pulse_sr.degradations.base import Degradation
    from pulse_sr.degradations.detect import InputAnalysis

#: inputs smaller than this (longer side) that are neither faces nor mosaics keep the ``--resize``
#: hint; larger ones are photos, pointed to ``restore`` / ``--align`` (as the CLI's TINY_SIDE)
PHOTO_SIDE = 64
#: an estimated noise sigma (per channel, 0..1) above this says the input is mostly noise, not a
#: noisy face: the issue's noisy inputs go to 32/255, and the estimate is within 10% there
#: (tests/test_noise_estimate.py), so 40/255 is never reached by them. Such an estimate is
#: reported but not used (the threshold stays eps; ``--noise-sigma S`` still sets one), and
#: the channels' agreement "up to noise" does not make such an input grey.
NOISE_CAP = 40 / 255
#: the noise estimate is used for targets of at least this side (by the channels it was made
#: on); on smaller ones a face's own edges dominate the high-pass residual and read as noise,
#: which would raise a clean input's threshold. Measured: clean planted 8x8 RGB generator faces
#: read 4 to 10/255 (tiny) and up to 4.4/255 (dcgan); one-channel (grey) 16x16 faces 5.9/255 (a
#: clean dcgan face) and 9.5/255 (lfw_subset), while 16x16 RGB faces stay under 4/255 (three
#: channels give three times the coefficients). Below, the threshold stays eps unless --noise-sigma S.
MIN_NOISE_SIDE = {3: 16, 1: 32}


@dataclass
class InputPlan:
    """One input as the search matches it. ``image`` ``[3, H, W]`` in [0, 1]: the input as given
    (after a crop or resize of its pixels); ``target`` ``[C, s, s]`` float32 in [0, 1] (C = 1 for a
    grey input, the block grid for a mosaic); ``operator``: HR ``[n, 3, R, R]`` -> ``[n, C, s, s]``;
    ``mask`` ``[s, s]`` bool (True = known) or None; ``noise_sigma``: 0..1, in the observation as
    matched; ``threshold``: sigma^2 + eps, or eps below 1/255."""

    image: "Tensor"
    target: "Tensor"
    operator: "Degradation"
    mask: "Tensor | None"
    threshold: float
    noise_sigma: float
    noise_source: str
    degradation: str
    degradation_source: str
    kind: str
    grey: bool
    grey_output: bool
    analysis: "InputAnalysis | None"
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """JSON-safe: what report.json records under ``input``."""
        return {
            "kind": self.kind,
            "operator": self.operator.describe(),
            "degradation": self.degradation,
            "degradation_source": self.degradation_source,
            "grey": self.grey,
            "faces": "grey" if self.grey_output else "colour",
            "noise_sigma": self.noise_sigma,
            "noise_sigma_255": round(self.noise_sigma * 255, 3),
            "noise_source": self.noise_source,
            "threshold": self.threshold,
            "masked_pixels": 0 if self.mask is None else int((~self.mask).sum()),
            "analysis": None if self.analysis is None else self.analysis.to_dict(),
        }

    def matched(self) -> "Tensor | None":
        """The target when it is not the input image itself (grey luma, a mosaic's block grid): what
        ``lr_KK.png`` compares with, written as ``target.png``; else None."""
        same = self.target.shape == self.image.shape and bool((self.target == self.image).all())
        return None if same else self.target

    def summary(self) -> str:
        """One short clause for the CLI line: what was decided."""
        parts = [f"{self.kind}, {self.degradation} ({self.degradation_source})"]
        if self.analysis is not None and self.analysis.mosaic is not None and self.kind == "mosaic":
            parts[0] = f"{self.analysis.mosaic.describe()}, {self.degradation} ({self.degradation_source})"
        if self.grey:
            parts.append("grey input matched on luma, faces " + ("grey" if self.grey_output else "in colour"))
        if self.noise_sigma >= 1 / 255:
            parts.append(f"noise sigma {self.noise_sigma * 255:.1f}/255 ({self.noise_source}), "
                         f"threshold {self.threshold:.2e}")
        if self.mask is not None:
            parts.append(f"{int((~self.mask).sum())} unknown pixels masked")
        return "; ".join(parts)


def parse_noise_sigma(text: str | float | None) -> float | None:
    """``auto`` / None -> None (estimate); ``S`` on the 0..255 scale -> S / 255. A bad value is a
    :class:`~pulse_sr.errors.SettingsError`."""
    from pulse_sr.errors import SettingsError

    if text is None or (isinstance(text, str) and text.strip().lower() == "auto"):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise SettingsError(f"noise sigma {text!r}: expected auto or a number of 8-bit levels (0..255)",
                            field="noise_sigma", value=str(text)) from None
    if not 0 <= value <= 255:
        raise SettingsError(f"noise sigma {text!r}: must be between 0 and 255", field="noise_sigma", value=value)
    return value / 255.0


def plan_input(image: "Tensor", resolution: int, *, eps: float, name: str = "input", mode: str | None = None,
               known: np.ndarray | None = None, mask: np.ndarray | None = None, degradation: str = "auto",
               noise_sigma: str | float | None = "auto", grey_output: bool = False, resize: bool = False,
               center_crop: bool = False, faithful: bool = False) -> InputPlan:
    """The plan for ``image [3, H, W]`` in [0, 1] (transparency composited on white) for a
    ``resolution`` px generator. ``known``: ``[H, W]`` bool, False where the file is fully
    transparent; ``mask``: ``[H, W]`` bool from ``--mask`` (True = known); ``mode``: the file's
    Pillow mode. Errors are :class:`~pulse_sr.errors.SizeError` / ``SettingsError`` naming ``name``."""
    import torch

    from pulse_sr.degradations.registry import parse_spec

    if degradation != "auto":
        parse_spec(degradation)
    sigma_given = parse_noise_sigma(noise_sigma)
    if faithful:
        return _faithful(image, resolution, eps=eps, name=name, mask=mask, resize=resize, center_crop=center_crop)
    notes: list[str] = []
    known = _combine(known, mask, image, name)
    image, known = _crop(image, known, center_crop, notes)
    analysis = _analyse(image, resolution, mode)
    if analysis.kind == "face":  # a valid size: fitted (checked) as every input was before issue 13
        from pulse_sr.io.images import fit_to_generator

        fit_to_generator(image, resolution, resize=resize, center_crop=False, name=name)
    if analysis.kind == "photo":
        image, known, analysis = _photo(image, known, resolution, mode, resize=resize, name=name, notes=notes)
    analysis = _noisy_colour(_cap_noise(analysis, image, mode), image, mode)
    target = torch.from_numpy(np.ascontiguousarray(analysis.target)).float()
    cells = _target_mask(analysis, known)
    if analysis.kind == "mosaic" and not analysis.target_valid:
        target, cells = _resize_grid(analysis, target, cells, resize=resize, name=name, notes=notes)
    side = int(target.shape[-1])
    spec = analysis.operator if degradation == "auto" else degradation
    source = "auto: " + analysis.reasons[0] if degradation == "auto" else "given"
    from pulse_sr.degradations.registry import make_operator
    from pulse_sr.search.observations import match_threshold

    operator = make_operator(spec, factor=resolution // side, grey=analysis.grey)
    min_side = MIN_NOISE_SIDE[3 if analysis.noise.bands >= 12 else 1]
    if sigma_given is None and side < min_side and analysis.noise_sigma > 0:
        analysis.reasons.append(f"the noise estimate is not used on a {side}x{side} target read from "
                                f"{'three channels' if min_side == 16 else 'one channel'} (from "
                                f"{min_side}x{min_side} on): threshold eps")
        sigma, noise_source = 0.0, f"estimate not used below {min_side} px"
    elif sigma_given is None:
        sigma, noise_source = analysis.noise_sigma, "estimated"
    else:
        sigma, noise_source = sigma_given, "given"
    mask_t = None if cells is None else torch.from_numpy(cells)
    return InputPlan(image=image, target=target, operator=operator, mask=mask_t,
                     threshold=match_threshold(eps, sigma), noise_sigma=float(sigma), noise_source=noise_source,
                     degradation=spec, degradation_source=source, kind=analysis.kind, grey=analysis.grey,
                     grey_output=grey_output, analysis=analysis, notes=notes)


def _faithful(image: "Tensor", resolution: int, *, eps: float, name: str, mask: np.ndarray | None,
              resize: bool, center_crop: bool) -> InputPlan:
    """PULSE's input: the RGB image fitted as today, bicubic, threshold eps; only ``--mask`` is used."""
    import torch

    from pulse_sr.degradations.bicubic import BicubicDownsample
    from pulse_sr.io.images import fit_to_generator

    target, notes = fit_to_generator(image, resolution, resize=resize, center_crop=center_crop, name=name)
    cells = None
    if mask is not None:
        if tuple(mask.shape) != tuple(target.shape[-2:]):
            raise SizeError(f"{name}: the mask is {mask.shape[1]}x{mask.shape[0]}, the input used is "
                            f"{target.shape[-1]}x{target.shape[-2]}", path=name)
        cells = torch.from_numpy(np.ascontiguousarray(mask))
    return InputPlan(image=target, target=target, operator=BicubicDownsample(resolution // int(target.shape[-1])),
                     mask=cells, threshold=float(eps), noise_sigma=0.0, noise_source="faithful: none",
                     degradation="bicubic", degradation_source="faithful", kind="face", grey=False,
                     grey_output=False, analysis=None, notes=notes)


def _combine(known: np.ndarray | None, mask: np.ndarray | None, image: "Tensor", name: str) -> np.ndarray | None:
    """Known pixels ``[H, W]`` bool from transparency and ``--mask`` (None: all known)."""
    h, w = int(image.shape[1]), int(image.shape[2])
    if mask is not None and tuple(mask.shape) != (h, w):
        raise SizeError(f"{name}: the mask is {mask.shape[1]}x{mask.shape[0]}, the input {w}x{h}; "
                        "a mask must have the input's size", path=name, size=[w, h])
    out = known if mask is None else (mask if known is None else known & mask)
    if out is not None and out.all():
        return None
    if out is not None and not out.any():
        raise SizeError(f"{name}: every pixel is masked or transparent: there is nothing to match", path=name)
    return out


def _crop(image: "Tensor", known: np.ndarray | None, center_crop: bool,
          notes: list[str]) -> tuple["Tensor", np.ndarray | None]:
    """The central square when ``center_crop`` and the image is not square."""
    h, w = int(image.shape[1]), int(image.shape[2])
    if not center_crop or h == w:
        return image, known
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    notes.append(f"center-cropped {w}x{h} to the central {s}x{s} (left {left}, top {top})")
    return image[:, top:top + s, left:left + s], None if known is None else known[top:top + s, left:left + s]


def _analyse(image: "Tensor", resolution: int, mode: str | None) -> "InputAnalysis":
    """The analysis of ``image [3, H, W]``; an image whose channels are exactly equal (a grey file,
    or grey saved as RGB) is analysed as one channel: the noise estimate reads 0 on three equal
    channels (measured: 0.00/255 for a 16/255 noisy grey face), one channel gives it right."""
    from pulse_sr.degradations.detect import analyse_input

    a = image.permute(1, 2, 0).numpy()
    if bool((image[0] == image[1]).all() and (image[1] == image[2]).all()):
        a = a[:, :, :1]
    return analyse_input(a, resolution, mode_hint=mode)


def _photo(image: "Tensor", known: np.ndarray | None, resolution: int, mode: str | None, *, resize: bool,
           name: str, notes: list[str]) -> tuple["Tensor", np.ndarray | None, "InputAnalysis"]:
    """A photo: resized whole with ``--resize`` (then analysed as the face it became), else a
    SizeError: small images keep the ``--resize`` hint, larger ones point to ``restore``."""
    from pulse_sr.io.images import fit_to_generator

    h, w = int(image.shape[1]), int(image.shape[2])
    if max(h, w) >= PHOTO_SIDE and not resize:
        from pulse_sr.degradations.bicubic import valid_input_sizes

        sizes = valid_input_sizes(resolution)
        raise SizeError(
            f"{name}: input is {w}x{h}, not a valid input size for a {resolution}x{resolution} generator "
            f"({', '.join(map(str, sizes))} px squares) and not a mosaic: a photo",
            path=name, size=[w, h], valid_sizes=sizes, nearest=None, square=h == w, photo=True)
    image, fit_notes = fit_to_generator(image, resolution, resize=resize, center_crop=False, name=name)
    notes.extend(fit_notes)
    if known is not None and fit_notes:
        notes.append("transparency dropped: the image was resized")
        known = None
    return image, known, _analyse(image, resolution, mode)


def _cap_noise(analysis: "InputAnalysis", image: "Tensor", mode: str | None) -> "InputAnalysis":
    """``analysis`` with an estimate above ``NOISE_CAP`` set aside (see there)."""
    import dataclasses

    from pulse_sr.degradations.greyscale import GREY_MODES

    if analysis.noise.sigma <= NOISE_CAP:
        return analysis
    reasons = [*analysis.reasons, f"the noise estimate {analysis.noise.sigma * 255:.1f}/255 is above "
               f"{NOISE_CAP * 255:.0f}/255: mostly noise, not a noisy face; not used (threshold eps)"]
    grey = analysis.grey and mode in GREY_MODES
    target = analysis.target
    if analysis.grey and not grey and target is not None:
        reasons.append("so its channels' agreement up to noise does not make it grey: matched on R, G and B")
        rgb = analysis.mosaic.grid if analysis.kind == "mosaic" and analysis.mosaic is not None else \
            image.permute(1, 2, 0).numpy()
        target = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1)
    return dataclasses.replace(analysis, noise_sigma=0.0, grey=grey, target=target, reasons=reasons)


def _noisy_colour(analysis: "InputAnalysis", image: "Tensor", mode: str | None) -> "InputAnalysis":
    """An RGB file with detected noise whose channels only agree "up to noise" is matched on R, G and
    B: the issue takes RGB as grey when its channels agree up to JPEG noise, and per-channel noise
    widens the grey test's allowance until desaturated colour faces pass it (measured: 3 of 20
    generator faces with noise 16/255). Matching RGB loses nothing on a truly grey input (its grey
    target asks for a grey face, as PULSE does); matching luma on a colour one drops its colour."""
    import dataclasses

    from pulse_sr.degradations.greyscale import GREY_MODES

    if not analysis.grey or mode in GREY_MODES or not analysis.noise.detected or analysis.noise.bands < 12:
        return analysis
    rgb = analysis.mosaic.grid if analysis.kind == "mosaic" and analysis.mosaic is not None else \
        image.permute(1, 2, 0).numpy()
    reasons = [*analysis.reasons, "with noise detected, R, G and B that agree only up to noise are matched "
               "as colour (grey needs a grey file or channels equal up to JPEG rounding)"]
    return dataclasses.replace(analysis, grey=False, target=np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1),
                               noise_sigma=analysis.noise.sigma, reasons=reasons)


def _target_mask(analysis: "InputAnalysis", known: np.ndarray | None) -> np.ndarray | None:
    """Known target pixels ``[s, s]`` bool (None: all): pixels for a face; for a mosaic a cell is
    known when the detector could decide it and all its pixels are known."""
    if analysis.kind != "mosaic" or analysis.mosaic is None:
        return known
    cells = np.ones(analysis.mosaic.shape, dtype=bool) if analysis.mask is None else analysis.mask.copy()
    if known is not None:
        k, (dx, dy) = analysis.mosaic.k, analysis.mosaic.offset
        cy, cx = _cell_index(known.shape[0], k, dy), _cell_index(known.shape[1], k, dx)
        np.logical_and.at(cells, (cy[:, None], cx[None, :]), known)
    return None if cells.all() else cells


def _cell_index(side: int, k: int, start: int) -> np.ndarray:
    """Per pixel along an axis, its cell of a grid of ``k`` px blocks whose first full block
    starts at ``start`` (a partial block before it is cell 0); as degradations/mosaic.py."""
    idx = np.arange(side)
    return (idx - start) // k + (1 if start > 0 else 0)


def _resize_grid(analysis: "InputAnalysis", target: "Tensor", cells: np.ndarray | None, *, resize: bool,
                 name: str, notes: list[str]) -> tuple["Tensor", np.ndarray | None]:
    """A block grid of a size the generator does not take: resized (the grid, not the pixels) with
    ``resize``, else the analysis's SizeError (what grid was found, what would work)."""
    import torch
    import torch.nn.functional as F

    from pulse_sr.io.images import nearest_size

    rows, cols = analysis.mosaic.shape if analysis.mosaic is not None else target.shape[-2:]
    if not resize or rows != cols or not analysis.valid_sizes:
        try:
            analysis.check_target()
        except SizeError as e:
            raise SizeError(f"{name}: {e}", path=name, **e.data) from None
    s = nearest_size(int(rows), analysis.valid_sizes)
    out = F.interpolate(target[None], size=(s, s), mode="bicubic", antialias=True, align_corners=False)[0]
    notes.append(f"resized the {cols}x{rows} block grid to {s}x{s} (bicubic, antialiased)")
    if cells is not None:
        m = F.interpolate(torch.from_numpy(cells)[None, None].float(), size=(s, s), mode="nearest")[0, 0]
        cells = m.numpy() > 0.5
        cells = None if cells.all() else cells
    return out.clamp(0, 1).contiguous(), cells


def grey_faces(result: Any) -> Any:
    """``result`` with its faces ``hr [n, 3, R, R]`` reduced to luma (BT.601, repeated in R, G, B):
    ``--grey-output``. Their observations ``lr`` are unchanged (a luma operator gives the same
    values for the colour face and its grey version: luma is linear and per pixel)."""
    import dataclasses

    from pulse_sr.degradations.grey import luma

    return dataclasses.replace(result, hr=luma(result.hr).expand(-1, 3, -1, -1).contiguous())

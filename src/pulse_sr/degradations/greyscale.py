"""Is an image black and white? A grey-mode file, or RGB whose channels agree up to JPEG
(or sensor) noise.

Test on the opponent channels ``(R-G)/sqrt2`` and ``(R+G-2B)/sqrt6`` (8-bit levels):
they are 0 for grey. Grey through JPEG stays within a level or two (its chroma planes
are constant, only the decoder's rounding differs); per-channel noise on a grey image
makes them white noise that averages out over blocks. A colour image, even a
desaturated one, has coherent colour: skin, lips, background tint, which survives
block averaging. So: block means of the opponent channels (b x b blocks, b = side/8,
at least 2) must stay within ``GREY_LEVELS`` plus 4 standard errors of white noise of
the channels' own high-frequency scale.
"""
from __future__ import annotations

import math

import numpy as np

from pulse_sr.degradations.arrays import as_float_image, central_crop
from pulse_sr.degradations.noise import robust_scale

#: Pillow modes that are black and white
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})
#: colour a grey image may show after JPEG's decoder rounding (8-bit levels, per opponent
#: channel): the decoder rounds R, G, B separately, so they differ by at most 1 level,
#: which puts an opponent channel within 2/sqrt(6) ~ 0.8 level; 1.5 leaves room for
#: Pillow's fixed-point colour conversion
GREY_LEVELS = 1.5
#: block means may exceed the white-noise scale by this many standard errors
NOISE_SE = 4.0


def _block_means(c: np.ndarray, b: int) -> np.ndarray:
    h, w = (c.shape[0] // b) * b, (c.shape[1] // b) * b
    return c[:h, :w].reshape(h // b, b, w // b, b).mean(axis=(1, 3))


def chroma_excess(img: np.ndarray) -> float:
    """How far the image's block-averaged colour exceeds what grey + noise explains
    (8-bit levels above the allowance; <= 0 for grey). HxWx3 uint8 or float; a large image
    is judged on its central 512 px."""
    x = as_float_image(central_crop(np.asarray(img))) * 255.0
    if x.shape[2] == 1:
        return -math.inf
    r, g, bl = x[:, :, 0], x[:, :, 1], x[:, :, 2]
    chans = [(r - g) / math.sqrt(2), (r + g - 2 * bl) / math.sqrt(6)]
    b = max(2, min(x.shape[0], x.shape[1]) // 8)
    worst = -math.inf
    for c in chans:
        # the channel's high-frequency scale (HH band): the noise a grey image would show
        hh = (c[:-1:2, :-1:2] - c[:-1:2, 1::2] - c[1::2, :-1:2] + c[1::2, 1::2]) / 2
        sigma = robust_scale(hh) if hh.size else 0.0
        allowance = GREY_LEVELS + NOISE_SE * sigma / b
        means = _block_means(c, b) if min(c.shape) >= b else np.array([c.mean()])
        worst = max(worst, float(np.abs(means).max()) - allowance)
    return worst


def is_grey(img: np.ndarray, mode: str | None = None) -> bool:
    """True for a grey-mode file (``mode`` its Pillow mode, or an HxW / HxWx1 array) or an RGB
    image whose channels are equal up to JPEG or per-channel noise."""
    if mode is not None and mode in GREY_MODES:
        return True
    a = np.asarray(img)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 2)):
        return True
    return chroma_excess(a) <= 0

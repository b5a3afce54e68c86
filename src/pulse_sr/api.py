"""The Python API: load a generator, upsample an image, downscale like PULSE.

Searching writes caches and may set process-wide options: see :func:`pulse_search`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pulse_sr.degradations.base import Degradation
from pulse_sr.degradations.bicubic import bicubic_downsample
from pulse_sr.generators.base import FaceGenerator
from pulse_sr.generators.registry import DEFAULT_GENERATOR, GENERATORS, load_generator
from pulse_sr.search.pulse import Callback, pulse_search
from pulse_sr.search.settings import Candidate, SearchResult, SearchSettings

__all__ = [
    "GENERATORS",
    "Candidate",
    "SearchResult",
    "SearchSettings",
    "bicubic_downsample",
    "load_generator",
    "pulse_search",
    "upsample",
]


def _as_target(image: Any) -> Tensor:
    """Path / PIL image / tensor ``[3, h, w]`` or ``[1, 3, h, w]`` in [0, 1] -> ``[3, h, w]``."""
    if isinstance(image, (str, Path)):
        from pulse_sr.io.images import load_image

        return load_image(image)
    if isinstance(image, Tensor):
        return image[0] if image.ndim == 4 else image
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        import numpy as np

        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    raise TypeError(f"image must be a path, a PIL image or a [3, h, w] tensor, got {type(image).__name__}")


def upsample(
    image: Any,
    *,
    generator: str | Path | FaceGenerator = DEFAULT_GENERATOR,
    weights: str | Path | None = None,
    n: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    callback: Callback | None = None,
    operator: Degradation | None = None,
    mask: Tensor | None = None,
    **settings: Any,
) -> list[Candidate]:
    """Faces whose downscale matches ``image``: one :class:`Candidate` per seed.

    ``image``: path, PIL image or ``[3, h, w]`` tensor in [0, 1], square, with the
    generator's resolution an integer multiple of its side. ``operator`` / ``mask``: as
    :func:`pulse_search`'s (default PULSE's bicubic downscale, every pixel known).
    ``settings``: any :class:`SearchSettings` field (``steps``, ``eps``, ``loss``, ``lr`` ...).
    Each candidate has ``.hr`` ``[3, R, R]``, ``.lr`` (its own downscale),
    ``.l2`` and ``.converged``; candidates that miss eps are included.
    """
    gen = generator if isinstance(generator, FaceGenerator) else load_generator(generator, weights=weights, device=device)
    result = pulse_search(gen, _as_target(image), n=n, seed=seed, device=device, callback=callback,
                          operator=operator, mask=mask, **settings)
    return result.candidates()

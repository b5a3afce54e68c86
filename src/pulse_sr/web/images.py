"""Pictures the web page shows besides the results: live previews and the spread map."""
from __future__ import annotations

import base64
import io
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image
    from torch import Tensor

#: heat colour ramp for the spread map (value 0 -> first colour, 1 -> last)
HEAT_STOPS = (
    (0.00, (0, 0, 4)),
    (0.25, (87, 16, 110)),
    (0.50, (188, 55, 84)),
    (0.75, (249, 142, 9)),
    (1.00, (252, 255, 164)),
)


def preview_image(img: "Tensor", max_side: int) -> "Image.Image":
    """``[3, H, W]`` in [0, 1] -> RGB Pillow image no larger than ``max_side`` (Lanczos)."""
    from PIL import Image

    from pulse_sr.io.images import to_pil

    pil = to_pil(img)
    if max(pil.size) > max_side:
        scale = max_side / max(pil.size)
        size = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
        pil = pil.resize(size, Image.Resampling.LANCZOS)
    return pil


def png_data_url(pil: "Image.Image") -> str:
    """A ``data:image/png;base64,...`` URL of a Pillow image."""
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def spread(hr: "Tensor") -> "Tensor":
    """Per-pixel spread across candidates: ``hr [n, 3, R, R]`` in [0, 1] -> ``[R, R]``.

    The standard deviation over the n candidates (population, n in the
    denominator) of each pixel and channel, averaged over RGB. 0 where all
    candidates agree; at most 0.5. All zeros for n = 1.
    """
    if hr.ndim != 4 or hr.shape[1] != 3:
        raise ValueError(f"expected [n, 3, R, R] images, got {list(hr.shape)}")
    return hr.float().std(dim=0, unbiased=False).mean(dim=0)


def heat_image(values: "Tensor", vmax: float) -> "Image.Image":
    """``[H, W]`` values in [0, vmax] -> RGB heat image (dark = 0, bright yellow = vmax)."""
    import numpy as np
    from PIL import Image

    v = values.detach().cpu().numpy().astype(np.float64)
    t = np.clip(v / vmax, 0.0, 1.0) if vmax > 0 else np.zeros_like(v)
    xs = [s[0] for s in HEAT_STOPS]
    rgb = np.stack([np.interp(t, xs, [s[1][c] for s in HEAT_STOPS]) for c in range(3)], axis=-1)
    return Image.fromarray(np.round(rgb).astype(np.uint8), "RGB")


def identifiable(path: "str | os.PathLike[str]") -> bool:
    """Whether Pillow recognises the file as one of the image formats pulse-sr reads (its
    header only; the image may still be broken). Picks 415 vs 400 for a refused upload."""
    from PIL import Image, UnidentifiedImageError

    from pulse_sr.io.images import FORMATS

    Image.init()
    try:
        with Image.open(path, formats=[f for f in FORMATS if f in Image.OPEN]):
            return True
    except UnidentifiedImageError:
        return False
    except Exception:  # noqa: BLE001 - recognised, but too big or broken: not a type problem
        return True

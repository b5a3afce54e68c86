"""Load input images as RGB tensors, fit them to a generator, save PNGs.

Tensors are ``[3, H, W]`` float32 in [0, 1]. Every problem with an input is an
:class:`~pulse_sr.errors.ImageError` (or :class:`~pulse_sr.errors.SizeError`)
with one line naming the file.
"""
from __future__ import annotations

import io
import os
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from pulse_sr.degradations.bicubic import MIN_SIDE, valid_input_sizes
from pulse_sr.errors import ImageError, SizeError
from pulse_sr.io.files import atomic_write_bytes

#: Pillow formats we decode (no Ghostscript, no exotic plugins)
FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "TIFF", "GIF")
DEFAULT_MAX_PIXELS = 4096 * 4096


def load_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
    """Read an image file as ``[3, H, W]`` float32 RGB in [0, 1].

    EXIF orientation is applied; transparency is composited on white; 16-bit
    images keep their full range; animated images give their first frame.
    """
    return _to_tensor(open_image(path, max_pixels=max_pixels))


def load_input(path: str | os.PathLike[str], *,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Tensor, np.ndarray | None, str]:
    """An input for the search: ``(image [3, H, W] float32 in [0, 1] as load_image gives it,
    known [H, W] bool (False where fully transparent; None when no pixel is), the file's mode)``."""
    img = open_image(path, max_pixels=max_pixels)
    known = None
    if img.mode not in _WIDE_MODES:
        rgba = _rgb_or_rgba(img)
        if rgba.mode == "RGBA":
            alpha = np.asarray(rgba)[:, :, 3]
            known = None if bool((alpha > 0).all()) else alpha > 0
    return _to_tensor(img), known, img.mode


def load_mask(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A mask file: ``[H, W]`` bool, True (known) where its luma is at least half white."""
    img = open_image(path, max_pixels=max_pixels)
    return np.asarray(to_rgb8(img).astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) >= 127.5


def load_rgb8(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as ``[H, W, 3]`` uint8 RGB (for photos: a quarter of the memory
    of :func:`load_image`); same orientation, transparency and mode rules."""
    return to_rgb8(open_image(path, max_pixels=max_pixels))


def _bad(name: str, problem: str) -> ImageError:
    """``ImageError("<name>: <problem>", path=name, problem=problem)``."""
    return ImageError(f"{name}: {problem}", path=name, problem=problem)


def open_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read, check and decode an image file into a Pillow image, EXIF orientation applied.

    The mode is left as stored (convert with :func:`to_rgb8` or :func:`load_image`).
    Every problem is an :class:`ImageError` naming the file.
    """
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise _bad(name, "file not found")
    if p.is_dir():
        raise _bad(name, "is a directory, not an image file")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise _bad(name, f"cannot read ({e.strerror or e})") from None
    if size == 0:
        raise _bad(name, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p, formats=_formats()) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise _bad(name, f"too many pixels ({w}x{h} = {w * h:,}; the limit is {max_pixels:,})")
                if w < MIN_SIDE or h < MIN_SIDE:
                    raise _bad(name, f"too small ({w}x{h}; at least {MIN_SIDE}x{MIN_SIDE} needed)")
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                try:
                    img.load()
                except Image.DecompressionBombError:
                    raise
                except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
                    raise _bad(name, f"truncated or corrupt image data ({_short(e)})") from None
                _check_finite(img, name)
                return _orient(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise _bad(name, f"too many pixels ({_short(e)})") from None
    except UnidentifiedImageError:
        raise _bad(name, "not an image (or not a supported format: PNG, JPEG, WebP, BMP, TIFF, GIF)") from None
    except PermissionError:
        raise _bad(name, "permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise _bad(name, f"cannot read image ({_short(e)})") from None


def _check_finite(img: Image.Image, name: str) -> None:
    """Float images (mode ``F``, e.g. 32-bit TIFF) must hold finite pixels: one ``inf`` would
    otherwise rescale the whole image and a ``nan`` turn black."""
    if img.mode == "F" and not np.isfinite(np.asarray(img)).all():
        raise _bad(name, "non-finite pixel values (NaN or infinity) in a floating-point image")


def _formats() -> list[str]:
    """Our formats that this Pillow build can open (JPEG also yields camera MPO files)."""
    Image.init()
    return [f for f in FORMATS if f in Image.OPEN]


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _orient(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation; a broken EXIF block is ignored (image used as stored)."""
    try:
        out = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - malformed EXIF must not make a good image unreadable
        return img
    return out if out is not None else img


_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_rgb8(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> ``[H, W, 3]`` uint8 RGB, with the rules of :func:`load_image`
    (transparency on white, 16-bit and float modes rescaled)."""
    if img.mode in _WIDE_MODES:
        return to_uint8(_to_tensor(img))
    img = _rgb_or_rgba(img)
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return np.array(img.convert("RGB"))  # writable (np.asarray of a Pillow image is not)


def _rgb_or_rgba(img: Image.Image) -> Image.Image:
    """An 8-bit Pillow image as ``RGB`` or ``RGBA`` (``RGBA`` only when it has transparency)."""
    mode = img.mode
    if mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if mode in ("L", "1") and "transparency" in img.info:
        return img.convert("RGBA")
    if mode in ("LA", "La", "PA", "RGBa"):
        return img.convert("RGBA")
    if mode == "RGB" and "transparency" in img.info:
        return img.convert("RGBA")
    if mode not in ("RGB", "RGBA"):
        return img.convert("RGBA" if "A" in img.getbands() else "RGB")
    return img


def _to_tensor(img: Image.Image) -> Tensor:
    """Any Pillow mode -> ``[3, H, W]`` float32 in [0, 1]."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img).astype(np.float64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            a = np.clip(a, 0, None) / float(2**31 - 1)  # 32-bit integer data
        else:
            a = a / 65535.0
        grey = np.clip(a, 0.0, 1.0).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(grey))[None].expand(3, -1, -1).contiguous()
    if mode == "F":
        a = np.asarray(img).astype(np.float32)
        a = np.nan_to_num(a, nan=0.0)
        if a.size and a.max() > 1.0:
            a = a / 255.0
        grey = np.clip(a, 0.0, 1.0)
        return torch.from_numpy(np.ascontiguousarray(grey))[None].expand(3, -1, -1).contiguous()

    img = _rgb_or_rgba(img)
    a = np.asarray(img)
    scale = 65535.0 if a.dtype == np.uint16 else 255.0
    x = a.astype(np.float32) / scale
    if x.ndim == 2:
        x = np.repeat(x[:, :, None], 3, axis=2)
    if x.shape[2] == 4:
        rgb, alpha = x[:, :, :3], x[:, :, 3:4]
        x = rgb * alpha + (1.0 - alpha)  # composite on white
    x = np.clip(x[:, :, :3], 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def _or_list(items: list[int]) -> str:
    words = [str(i) for i in items]
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


def nearest_size(side: int, sizes: list[int]) -> int:
    """The size nearest to ``side`` in log scale (ties go to the larger size)."""
    def key(s: int) -> tuple[Fraction, int]:
        return Fraction(max(s, side), min(s, side)), -s

    return min(sizes, key=key)


def fit_to_generator(
    img: Tensor,
    resolution: int,
    *,
    resize: bool = False,
    center_crop: bool = False,
    name: str = "input",
) -> tuple[Tensor, list[str]]:
    """Make ``img [3, H, W]`` a valid search target; returns ``(target, notes)``.

    Non-square inputs need ``center_crop``; sides the generator cannot take
    need ``resize`` (bicubic, antialiased, to the nearest valid size). Otherwise a
    :class:`SizeError` with ``data``: ``path``, ``size`` ``[w, h]``, ``valid_sizes``,
    ``nearest`` (the valid size a resize would give), ``square``, ``resolution``; front ends
    render their own hint (a flag, a tick box) from these.
    """
    if img.ndim != 3 or img.shape[0] != 3:
        raise SizeError(f"{name}: expected a [3, H, W] RGB image, got shape {list(img.shape)}",
                        path=name, size=None, valid_sizes=valid_input_sizes(resolution), nearest=None,
                        square=False)
    notes: list[str] = []
    h, w = int(img.shape[1]), int(img.shape[2])
    sizes = valid_input_sizes(resolution)
    data = {"path": name, "size": [w, h], "valid_sizes": sizes, "resolution": resolution}
    if h != w:
        s = min(h, w)
        if not center_crop:
            nearest = nearest_size(s, sizes) if sizes else None
            raise SizeError(f"{name}: input is {w}x{h}, not square", **data, nearest=nearest, square=False)
        top, left = (h - s) // 2, (w - s) // 2
        img = img[:, top : top + s, left : left + s]
        notes.append(f"center-cropped {w}x{h} to the central {s}x{s} (left {left}, top {top})")
        h = w = s
    if not sizes:
        raise SizeError(f"{name}: a {resolution}x{resolution} generator takes no input size",
                        **data, nearest=None, square=True)
    if h not in sizes:
        target = nearest_size(h, sizes)
        if not resize:
            raise SizeError(
                f"{name}: input is {w}x{h}; a {resolution}x{resolution} generator takes "
                f"{_or_list(sizes)} pixel squares (nearest: {target})",
                **data, nearest=target, square=True,
            )
        img = resize_image(img, target)
        notes.append(f"resized {w}x{h} to {target}x{target} (bicubic, antialiased)")
    return img.contiguous().float(), notes


def resize_image(img: Tensor, size: int) -> Tensor:
    """Bicubic, antialiased resize of ``[3, H, W]`` to ``size x size``, clamped to [0, 1]."""
    out = F.interpolate(
        img[None].float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False
    )[0]
    return out.clamp(0.0, 1.0)


def to_uint8(img: Tensor) -> np.ndarray:
    """``[3, H, W]`` (or ``[1, H, W]``) in [0, 1] -> ``[H, W, 3]`` uint8 (rounded, clamped)."""
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"expected a [3, H, W] image, got shape {list(img.shape)}")
    x = img.detach().to("cpu", torch.float32)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    x = torch.nan_to_num(x, nan=0.0).mul(255.0).round().clamp(0, 255).to(torch.uint8)
    return x.permute(1, 2, 0).contiguous().numpy()


def to_pil(img: Tensor) -> Image.Image:
    """``[3, H, W]`` in [0, 1] -> 8-bit RGB Pillow image."""
    return Image.fromarray(to_uint8(img))


def png_bytes(img: Tensor) -> bytes:
    """Encode ``[3, H, W]`` in [0, 1] as 8-bit RGB PNG bytes."""
    buf = io.BytesIO()
    to_pil(img).save(buf, format="PNG")
    return buf.getvalue()


def save_png(img: Tensor, path: str | os.PathLike[str], *, provenance: str | None = None,
             generator: str = "") -> None:
    """Save ``[3, H, W]`` in [0, 1] as an 8-bit RGB PNG, atomically.

    ``provenance`` (``"generated"`` or ``"composite"``): the file carries pulse-sr's
    provenance chunks naming ``generator`` (:mod:`pulse_sr.io.provenance`); ``None`` for
    the user's own pixels (``input.png``, aligned crops of their photo)."""
    data = png_bytes(img)
    if provenance is not None:
        from pulse_sr.io.provenance import png_with_provenance

        data = png_with_provenance(data, provenance, generator)  # type: ignore[arg-type]
    atomic_write_bytes(path, data)

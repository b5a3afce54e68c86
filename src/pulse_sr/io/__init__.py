"""Reading inputs and writing outputs (images, atomic files, staged folders).

Kept free of heavy imports: import :mod:`pulse_sr.io.images` (torch, Pillow)
or :mod:`pulse_sr.io.files` (standard library only) directly.
"""
from __future__ import annotations

#: file extensions (lower case) read from input folders (a GIF: its first frame)
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")

__all__ = ["IMAGE_EXTENSIONS"]

"""Photos in the web app: the bridge to face alignment (:mod:`pulse_sr.io.align`) and
paste-back (:mod:`pulse_sr.io.paste`).

An upload that is not a usable tiny face (larger than the server's small-input
side) goes through :func:`detect_faces` when alignment is installed; the user
picks a face; :func:`align_face` aligns it for the chosen generator (FFHQ
alignment with that generator's framing) and its bicubic downscale is the search
input; after the search :func:`paste_back` puts each candidate back into an
enlarged copy of the photo (the before/after slider). Without alignment the page
says so and offers centre-crop + resize of the whole image instead.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

ALIGN_HINT = "face alignment is not installed (pip install 'pulse-sr[align]')"
#: most faces offered from one photo (the largest ones)
MAX_FACES = 12
#: longer side of a restored photo (and its "before" copy) at most
RESTORED_MAX_SIDE = 2048


@dataclass
class DetectedFace:
    """One face found in a photo.

    box: ``(left, top, right, bottom)`` in photo pixels; crop: a ``[3, h, w]``
    thumbnail (in [0, 1]) of the box with a margin; handle: alignment's detection.
    """

    index: int
    box: tuple[int, int, int, int]
    crop: "Tensor"
    handle: Any = None


def align_module() -> ModuleType | None:
    """:mod:`pulse_sr.io.align` when it imports, else ``None`` (dlib itself loads lazily)."""
    try:
        return importlib.import_module("pulse_sr.io.align")
    except ImportError:
        return None


def align_status() -> tuple[bool, str]:
    """``(available, why not)`` for the page."""
    mod = align_module()
    if mod is None or not hasattr(mod, "alignment_status"):
        return False, ALIGN_HINT
    ok, why = mod.alignment_status()
    return bool(ok), str(why)


def detect_faces(img: "Tensor") -> list[DetectedFace]:
    """Faces in ``img [3, H, W]`` (in [0, 1]), left to right, at most :data:`MAX_FACES`.

    Raises alignment's error (a PulseError) when dlib or its model is missing.
    """
    mod = align_module()
    if mod is None:
        raise RuntimeError(ALIGN_HINT)
    dets = mod.keep_largest(mod.detect_faces(img), MAX_FACES)
    h, w = int(img.shape[1]), int(img.shape[2])
    faces = []
    for i, d in enumerate(dets):
        left, top, right, bottom = d.box
        m = 0.3 * max(right - left, bottom - top)
        x0, y0 = max(0, int(left - m)), max(0, int(top - m))
        x1, y1 = min(w, int(right + m + 1)), min(h, int(bottom + m + 1))
        box = (round(left), round(top), round(right), round(bottom))
        faces.append(DetectedFace(index=i, box=box, crop=img[:, y0:y1, x0:x1], handle=d))
    return faces


def align_face(photo: "Tensor", face: DetectedFace, generator_name: str, resolution: int) -> Any:
    """The :class:`pulse_sr.io.align.AlignedFace` of ``face`` for a generator (its framing)."""
    mod = align_module()
    if mod is None:
        raise RuntimeError(ALIGN_HINT)
    return mod.align_detections(photo, [face.handle], resolution=resolution,
                                framing=mod.framing_for(generator_name))[0]


def paste_back(photo: "Tensor", aligned: Any, faces: "Tensor") -> tuple["Tensor", list["Tensor"]]:
    """``(before, [after per face])``: the photo enlarged (bicubic) so the face gets the
    generator's pixels (longer side at most :data:`RESTORED_MAX_SIDE`), and the same with
    each of ``faces [n, 3, R, R]`` pasted back, all ``[3, H', W']`` in [0, 1]."""
    from pulse_sr.io import paste

    h, w = int(photo.shape[1]), int(photo.shape[2])
    scale = paste.output_scale(w, h, [aligned.face_pixels], aligned.resolution,
                               max_side=RESTORED_MAX_SIDE)
    after = [paste.paste_faces(photo, [(f, aligned.matrix)], scale=scale)[0] for f in faces]
    before = paste.upscale_photo(photo, int(after[0].shape[2]), int(after[0].shape[1]))
    return before, after

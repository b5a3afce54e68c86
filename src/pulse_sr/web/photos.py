"""Photos in the web app: the bridge to face alignment (:mod:`pulse_sr.io.align`) and
paste-back (:mod:`pulse_sr.io.paste`).

An upload that is not a usable tiny face (larger than the server's small-input
side) goes through :func:`detect_faces` (MTCNN, which finds faces down to about
12 px, on a copy shrunk to at most ``DETECT_MAX_SIDE``) when its weights are
installed; each face gets the verdict of :mod:`pulse_sr.io.face_gain` per offered
generator (skipped when the photo already holds as many pixels as the generator
draws); the user picks a face; :func:`align_face` aligns it for the chosen generator
(FFHQ alignment with that generator's framing) and its bicubic downscale is the search
input; after the search :func:`paste_back` puts each candidate back into an
enlarged copy of the photo (the before/after slider). Without a detector the page
says so and offers centre-crop + resize of the whole image instead.

Photos are kept as ``[H, W, 3]`` uint8 (:func:`load_photo`): a 100-MP phone photo is
300 MB so, never a float tensor at full size.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

ALIGN_HINT = "face alignment is not installed (pip install 'pulse-sr[align]')"
#: the face detector of the web app: MTCNN finds the small faces a generator can add to
DETECTOR = "mtcnn"
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
    #: generator name -> :func:`face_gains` verdict (decision, reason, size, resolution)
    gains: dict[str, Any] = field(default_factory=dict)


def align_module() -> ModuleType | None:
    """:mod:`pulse_sr.io.align` when it imports, else ``None`` (dlib itself loads lazily)."""
    try:
        return importlib.import_module("pulse_sr.io.align")
    except ImportError:
        return None


def align_status() -> tuple[bool, str]:
    """``(available, why not)`` for the page."""
    mod = align_module()
    if mod is None:
        return False, ALIGN_HINT
    from pulse_sr.io import mtcnn_nets

    if mtcnn_nets.weights_dir() is None:
        return False, f"the face detector's weights are not installed ({mtcnn_nets.INSTALL_LINE})"
    return True, ""


def load_photo(path: Any, max_pixels: int) -> Any:
    """A photo upload as ``[H, W, 3]`` uint8 (a :class:`~pulse_sr.errors.PulseError` when
    it is refused: not an image, more than ``max_pixels``)."""
    from pulse_sr.io.images import load_rgb8

    return load_rgb8(path, max_pixels=max_pixels)


def shrunk_photo(path: Any, max_pixels: int, pixels: int) -> tuple["Tensor", list[str]]:
    """A big photo shrunk to about ``pixels`` pixels as uint8 (Pillow, antialiased bicubic),
    then ``[3, H, W]`` in [0, 1] (never a float copy at full size), and a note saying so."""
    import math

    from pulse_sr.io.paste import upscale_photo

    rgb = load_photo(path, max_pixels)
    h, w = int(rgb.shape[0]), int(rgb.shape[1])
    f = min(1.0, math.sqrt(pixels / (w * h)))
    wo, ho = max(1, int(w * f)), max(1, int(h * f))
    return upscale_photo(rgb, wo, ho), [f"shrunk from {w}x{h} to {wo}x{ho} first"]


def detect_faces(img: Any) -> list[DetectedFace]:
    """Faces in ``img [H, W, 3]`` uint8, left to right, at most :data:`MAX_FACES` (the
    largest). ``crop`` of each is ``[3, h, w]`` in [0, 1].

    Raises the detector's error (a PulseError) when its weights are missing.
    """
    import torch

    mod = align_module()
    if mod is None:
        raise RuntimeError(ALIGN_HINT)
    dets = mod.keep_largest(mod.find_faces(img, detector=DETECTOR), MAX_FACES)
    h, w = int(img.shape[0]), int(img.shape[1])
    faces = []
    for i, d in enumerate(dets):
        left, top, right, bottom = d.box
        m = 0.3 * max(right - left, bottom - top)
        x0, y0 = max(0, int(left - m)), max(0, int(top - m))
        x1, y1 = min(w, int(right + m + 1)), min(h, int(bottom + m + 1))
        box = (round(left), round(top), round(right), round(bottom))
        crop = torch.from_numpy(img[y0:y1, x0:x1].copy()).permute(2, 0, 1).float().div_(255.0)
        faces.append(DetectedFace(index=i, box=box, crop=crop, handle=d))
    return faces


def face_gains(face: DetectedFace, generators: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Per generator (``name -> resolution``): the :mod:`pulse_sr.io.face_gain` verdict for
    ``face`` aligned with that generator's framing, as plain data."""
    from pulse_sr.io.face_gain import judge_size

    mod = align_module()
    if mod is None or face.handle is None:
        return {}
    quad = mod.ffhq_quad(face.handle.landmarks)
    out = {}
    for name, res in generators.items():
        side = quad.side / mod.framing_for(name).side  # the frame's side in photo pixels
        out[name] = judge_size(side, int(res)).to_dict()
    return out


def align_face(photo: "Tensor", face: DetectedFace, generator_name: str, resolution: int) -> Any:
    """The :class:`pulse_sr.io.align.AlignedFace` of ``face`` for a generator (its framing)."""
    mod = align_module()
    if mod is None:
        raise RuntimeError(ALIGN_HINT)
    return mod.align_detections(photo, [face.handle], resolution=resolution,
                                framing=mod.framing_for(generator_name))[0]


def paste_back(photo: Any, aligned: Any, faces: "Tensor") -> tuple["Tensor", list["Tensor"]]:
    """``(before, [after per face])``: the photo (``[H, W, 3]`` uint8) enlarged (bicubic) so
    the face gets the generator's pixels (longer side at most :data:`RESTORED_MAX_SIDE`), and
    the same with each of ``faces [n, 3, R, R]`` pasted back, all ``[3, H', W']`` in [0, 1].
    A photo that shrinks is shrunk as uint8 first (never a float copy at full size)."""
    import numpy as np

    from pulse_sr.io import paste

    h, w = int(photo.shape[0]), int(photo.shape[1])
    scale = paste.output_scale(w, h, [aligned.face_pixels], aligned.resolution,
                               max_side=RESTORED_MAX_SIDE)
    matrix = aligned.matrix
    if scale < 1.0:
        wo, ho = max(1, round(w * scale)), max(1, round(h * scale))
        photo = paste.upscale_photo(photo, wo, ho)  # Pillow on uint8, then float
        matrix = np.diag([wo / w, ho / h, 1.0]) @ np.asarray(matrix, dtype=np.float64)
        scale = 1.0
    after = [paste.paste_faces(photo, [(f, matrix)], scale=scale)[0] for f in faces]
    before = paste.upscale_photo(photo, int(after[0].shape[2]), int(after[0].shape[1]))
    return before, after

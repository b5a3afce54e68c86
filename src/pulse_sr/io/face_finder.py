"""Every face of a photo, small or large, aligned without mirrored borders.

Detection (:func:`detect_photo_faces`): MTCNN for all sizes, dlib's 68 points where dlib
finds the face too. Measured on photos composed from scikit-image's astronaut
(``tests/test_mtcnn.py``): MTCNN found every face of 16 to 64 px, dlib none below about
50 px; neither found a face in scikit-image's ``coffee`` or ``chelsea``. So MTCNN finds
the faces, and a face dlib also finds (the larger ones) keeps dlib's 68-point landmarks,
whose eye centres are averages of 6 points each. Either detector alone is used when the
other is not installed.

Tight face crops (the face filling the frame) give the detectors no context and put
the FFHQ frame outside the photo: detection is retried on a copy with a neutral border
(:func:`neutral_pad`), and every face is resampled from such a copy when its frame
leaves the photo, so no mirrored second mouth or chin appears in the aligned crop.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pulse_sr.io.align import (
    AlignedFace, AlignError, Detection, Framing, crop_matrix, detect_faces, detect_faces_mtcnn, ffhq_quad,
    frame_corners, warp_face,
)

#: a detection of one detector is the same face as one of the other when their FFHQ quad
#: centres are closer than this fraction of the larger quad's side
SAME_FACE = 0.3
#: retry detection with a border this fraction of the photo's longer side ...
RETRY_PAD = 0.3
#: ... on photos whose longer side is at most this (tight face crops are small)
RETRY_MAX_SIDE = 1024


def neutral_pad(photo: np.ndarray, pad: int) -> np.ndarray:
    """``photo [H, W, 3]`` uint8 with a ``pad``-pixel border on every side: the edge pixels
    stretched outwards and blurred, fading into the photo's mean colour (never mirrored,
    so no feature is repeated). The photo itself is unchanged in the middle."""
    from PIL import Image, ImageFilter

    if pad <= 0:
        return photo
    h, w = photo.shape[:2]
    edge = np.pad(photo, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    blurred = np.asarray(Image.fromarray(edge).filter(ImageFilter.GaussianBlur(max(1.0, pad / 4))), np.float32)
    ys = np.abs(np.arange(h + 2 * pad) - pad - (h - 1) / 2) - (h - 1) / 2
    xs = np.abs(np.arange(w + 2 * pad) - pad - (w - 1) / 2) - (w - 1) / 2
    dist = np.hypot(np.maximum(ys, 0)[:, None], np.maximum(xs, 0)[None, :])  # 0 inside the photo
    alpha = np.exp(-dist / max(1.0, pad / 3))[..., None]
    mean = photo.reshape(-1, 3).mean(0).astype(np.float32)
    out = np.clip(np.round(alpha * blurred + (1 - alpha) * mean), 0, 255).astype(np.uint8)
    out[pad:pad + h, pad:pad + w] = photo
    return out


def _same_face(a: Detection, b: Detection) -> bool:
    qa, qb = ffhq_quad(a.landmarks), ffhq_quad(b.landmarks)
    return float(np.hypot(*(qa.c - qb.c))) < SAME_FACE * max(qa.side, qb.side)


def detect_photo_faces(photo: np.ndarray, *, min_score: float,
                       detect_max_side: int) -> tuple[list[Detection], list[str]]:
    """Faces in ``photo [H, W, 3]`` uint8, left to right: MTCNN's, each replaced by dlib's
    detection of the same face when dlib finds it (``min_score`` is dlib's), plus any face
    only dlib finds. Returns ``(detections, notes)``; raises :class:`AlignError` when
    neither detector is installed."""
    from pulse_sr.errors import WeightsError

    notes: list[str] = []
    try:
        mt: list[Detection] | None = detect_faces_mtcnn(photo, detect_max_side=detect_max_side)
    except WeightsError as e:
        mt, mt_error = None, str(e)
    try:
        dl: list[Detection] | None = detect_faces(photo, min_score=min_score, detect_max_side=detect_max_side)
    except AlignError as e:
        dl, dl_error = None, str(e)
    if mt is None and dl is None:
        raise AlignError(f"no face detector installed: {mt_error}; or {dl_error}")
    if mt is None:
        notes.append(f"MTCNN is not installed ({mt_error}): dlib alone misses faces under about 50 px")
        return list(dl or []), notes
    dl = dl or []
    found = [next((d for d in dl if _same_face(m, d)), m) for m in mt]
    found += [d for d in dl if not any(_same_face(m, d) for m in mt)]
    found.sort(key=lambda d: (d.landmarks[:, 0].mean(), d.landmarks[:, 1].mean()))
    return found, notes


def _shifted(det: Detection, dx: float, dy: float) -> Detection:
    b = det.box
    return Detection(box=(b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy), score=det.score,
                     landmarks=det.landmarks + np.array([dx, dy]), detector=det.detector)


def detect_with_retry(photo: np.ndarray, *, min_score: float,
                      detect_max_side: int) -> tuple[list[Detection], list[str]]:
    """:func:`detect_photo_faces`, retried on a :func:`neutral_pad` copy when a photo of at
    most :data:`RETRY_MAX_SIDE` pixels shows none (a tight face crop); detections are in
    ``photo``'s pixels either way."""
    dets, notes = detect_photo_faces(photo, min_score=min_score, detect_max_side=detect_max_side)
    h, w = photo.shape[:2]
    if dets or max(h, w) > RETRY_MAX_SIDE:
        return dets, notes
    pad = max(8, round(RETRY_PAD * max(h, w)))
    dets, _ = detect_photo_faces(neutral_pad(photo, pad), min_score=min_score,
                                 detect_max_side=detect_max_side + 2 * pad)
    if dets:
        notes.append("face found on a copy with a neutral border (a tight face crop)")
    return [_shifted(d, -pad, -pad) for d in dets], notes


def align_without_mirror(photo: np.ndarray, detections: list[Detection], *, resolution: int,
                         framing: Framing) -> list[AlignedFace]:
    """:func:`pulse_sr.io.align.align_detections`, except that a face whose frame leaves the
    photo is resampled from a :func:`neutral_pad` copy (``warp_face`` alone would reflect
    the photo at its edges). Matrices stay in ``photo``'s pixels."""
    h, w = photo.shape[:2]
    faces, padded, pad = [], None, 0
    for i, det in enumerate(detections):
        quad = ffhq_quad(det.landmarks)
        m = crop_matrix(quad, framing, resolution)
        corners = frame_corners(m, resolution)
        over = max(0.0, float(-corners.min()), float(corners[:, 0].max() - w), float(corners[:, 1].max() - h))
        if over > 0:
            need = min(int(np.ceil(over)) + 2, 2 * max(h, w))  # bounded before allocating
            if need > pad:
                padded, pad = neutral_pad(photo, need), need
            shift = np.eye(3)
            shift[:2, 2] = pad
            aligned = warp_face(padded, shift @ m, resolution)
        else:
            aligned = warp_face(photo, m, resolution)
        faces.append(AlignedFace(index=i, matrix=m, resolution=resolution, aligned=aligned, framing=framing,
                                 detection=det, quad=quad))
    return faces


def face_summary(faces: list[Any]) -> str:
    """``"3 faces (16, 25, 40 px)"``: how many, and each one's frame side in photo pixels."""
    sizes = ", ".join(f"{f.face_pixels:.0f}" for f in faces)
    return f"{len(faces)} face{'s' if len(faces) != 1 else ''} ({sizes} px)"

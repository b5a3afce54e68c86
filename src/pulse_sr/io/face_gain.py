"""Whether a face in a photo has anything to gain from a generator.

A face's *size* is the side of its aligned crop in photo pixels: the generator's
``R x R`` output frame mapped into the photo by the alignment matrix
(:func:`pulse_sr.io.align.crop_matrix`, FFHQ framing or the generator's own). The
generator draws ``R`` pixels across that same frame, so the comparison is like for
like:

- ``size >= R``: the photo already holds at least as many pixels across the face as the
  generator would draw: nothing to gain. Skipped by default (:data:`SKIP`), with a
  reason; ``force=True`` restores it anyway (:data:`RESTORE`, reason kept).
- ``R / 2 <= size < R``: less than one octave below the generator; the result is mostly
  an invention at no higher resolution: restored with a warning (:data:`WARN`).
- ``size < R / 2``: the generator has at least twice the linear resolution:
  restored (:data:`RESTORE`), no warning.

For the 64-px default generator: faces of 64 px and up are skipped, 32 to 63 px warned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

RESTORE, WARN, SKIP = "restore", "warn", "skip"
#: below ``resolution * WARN_FRACTION`` a face gains at least an octave: no warning
WARN_FRACTION = 0.5
INVENTION_WARNING = "the result is an invention at no higher resolution"


@dataclass(frozen=True)
class FaceGain:
    """The rule's verdict for one face.

    decision: :data:`RESTORE`, :data:`WARN` or :data:`SKIP`; reason: one line for the
    user (empty for a plain restore); size: the face's aligned side in photo pixels;
    resolution: the generator's output side; forced: ``force=True`` overrode a skip.
    """

    decision: str
    reason: str
    size: float
    resolution: int
    forced: bool = False

    @property
    def restore(self) -> bool:
        """Whether the face is to be restored (``RESTORE`` or ``WARN``)."""
        return self.decision != SKIP

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "reason": self.reason, "size": round(self.size, 2),
                "resolution": self.resolution, "forced": self.forced}


def face_size(matrix: Any, resolution: int) -> float:
    """Side in photo pixels of the ``resolution``-px face frame that ``matrix [3, 3]``
    (face frame -> photo, :func:`pulse_sr.io.align.crop_matrix`) maps into the photo:
    ``sqrt(|det A|) * resolution`` with ``A`` its linear part."""
    a = np.asarray(matrix, dtype=np.float64)[:2, :2]
    return float(np.sqrt(abs(np.linalg.det(a)))) * int(resolution)


def judge_size(size: float, resolution: int, *, force: bool = False) -> FaceGain:
    """The verdict for a face ``size`` photo pixels across, for a ``resolution``-px generator."""
    if resolution < 1 or not np.isfinite(size) or size <= 0:
        raise ValueError(f"face size {size!r} / resolution {resolution!r}: need positive numbers")
    px = f"{size:.0f}"
    if size >= resolution:
        reason = (f"this face is already {px} px across, at least the generator's {resolution} px: "
                  "it has nothing to gain, and a restored face would be an invention at no "
                  "higher resolution")
        if force:
            return FaceGain(WARN, reason + " (restored anyway on request)", size, resolution, forced=True)
        return FaceGain(SKIP, reason, size, resolution)
    if size >= resolution * WARN_FRACTION:
        reason = (f"this face is {px} px across and the generator draws {resolution} px: "
                  f"{INVENTION_WARNING}")
        return FaceGain(WARN, reason, size, resolution)
    return FaceGain(RESTORE, "", size, resolution)


def judge_face(face: Any, *, force: bool = False) -> FaceGain:
    """The verdict for an :class:`pulse_sr.io.align.AlignedFace` (its matrix and resolution)."""
    return judge_size(face_size(face.matrix, face.resolution), int(face.resolution), force=force)

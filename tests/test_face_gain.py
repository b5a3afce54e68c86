"""The rule for faces too large to gain from a generator (:mod:`pulse_sr.io.face_gain`)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pulse_sr.io.align import FFHQ_FRAMING, Framing, crop_matrix, quad_from_points
from pulse_sr.io.face_gain import RESTORE, SKIP, WARN, face_size, judge_face, judge_size


def _quad(eye_dist: float, angle_deg: float = 0.0, centre=(300.0, 200.0)):
    """An upright face (eye distance = eye-to-mouth distance = ``eye_dist``), rotated by
    ``angle_deg`` about ``centre``. FFHQ's quad side is then 2 * max(2 d, 1.8 d) = 4 d."""
    t = math.radians(angle_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    d = eye_dist
    pts = np.array([[-d / 2, 0], [d / 2, 0], [-d / 3, d], [d / 3, d]]) @ rot.T + np.array(centre)
    return quad_from_points(*pts)


@pytest.mark.parametrize("angle", [0.0, 17.0, -90.0])
def test_face_size_is_the_ffhq_quad_side_in_photo_pixels(angle: float) -> None:
    quad = _quad(10.0, angle)
    # float64: a handful of products and one sqrt on numbers ~1e2: error ~1e-13, so 1e-9
    assert quad.side == pytest.approx(40.0, abs=1e-9)
    for res in (32, 64, 1024):  # independent of the generator's resolution with FFHQ framing
        assert face_size(crop_matrix(quad, FFHQ_FRAMING, res), res) == pytest.approx(40.0, abs=1e-9)


def test_face_size_follows_the_generators_framing() -> None:
    # dcgan-digiface frames the quad 1.28 frames wide: its frame covers 80 / 1.28 photo pixels
    quad = _quad(20.0)
    m = crop_matrix(quad, Framing(0.5, 0.5, 1.28), 64)
    assert face_size(m, 64) == pytest.approx(80.0 / 1.28, abs=1e-9)
    assert judge_size(face_size(m, 64), 64).decision == WARN  # 62.5 px: in between


@pytest.mark.parametrize("size, decision", [
    (200.0, SKIP), (64.0, SKIP), (63.99, WARN), (40.0, WARN), (32.0, WARN), (31.99, RESTORE), (12.0, RESTORE),
])
def test_thresholds_for_a_64px_generator(size: float, decision: str) -> None:
    gain = judge_size(size, 64)
    assert gain.decision == decision
    assert gain.size == size and gain.resolution == 64
    assert gain.restore == (decision != SKIP)
    if decision == SKIP:
        assert "nothing to gain" in gain.reason and f"{size:.0f} px" in gain.reason
    elif decision == WARN:
        assert "invention at no higher resolution" in gain.reason
    else:
        assert gain.reason == ""


def test_force_restores_a_large_face_and_keeps_the_reason() -> None:
    gain = judge_size(135.0, 64, force=True)
    assert gain.restore and gain.forced and gain.decision == WARN
    assert "nothing to gain" in gain.reason and "anyway" in gain.reason
    assert judge_size(20.0, 64, force=True).decision == RESTORE  # force changes nothing below


def test_judge_face_reads_an_aligned_face() -> None:
    class Face:  # what judge_face reads of an AlignedFace
        resolution = 1024
        matrix = crop_matrix(_quad(100.0, 30.0), FFHQ_FRAMING, 1024)

    gain = judge_face(Face())
    assert gain.size == pytest.approx(400.0, abs=1e-9)
    assert gain.decision == RESTORE  # 400 < 512 = 1024 / 2
    assert gain.to_dict()["size"] == 400.0


@pytest.mark.parametrize("size, res", [(0.0, 64), (-3.0, 64), (float("nan"), 64), (10.0, 0)])
def test_nonsense_is_refused(size: float, res: int) -> None:
    with pytest.raises(ValueError):
        judge_size(size, res)

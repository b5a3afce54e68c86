"""Face detection and FFHQ alignment on real and composed photos, and ``pulse-sr align``.

The photos: scikit-image's public-domain astronaut portrait (NASA), and photos
composed here by placing its head, rotated and scaled with Pillow's own affine
transform (an independent implementation), into larger backgrounds.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from pulse_sr import cli
from pulse_sr.cli import align as align_cli
from pulse_sr.degradations.bicubic import bicubic_downsample
from pulse_sr.io import align, paste
from pulse_sr.io.align import (
    FFHQ_FRAMING, Framing, align_detections, crop_matrix, detect_faces, ffhq_quad, quad_from_points,
    warp_face,
)

# Read by eye from the astronaut image (512 x 512), not from the code under test:
# the face (hairline to chin, ear to ear) and the centres of the pupils.
FACE_BOX = (172.0, 68.0, 282.0, 192.0)  # left, top, right, bottom
EYES = ((204.0, 102.0), (245.0, 103.0))
HEAD_CENTRE, HEAD_RADII = (225.0, 120.0), (100.0, 115.0)


@pytest.fixture(scope="module")
def astro() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="module")
def astro_face(astro: np.ndarray) -> align.Detection:
    faces = detect_faces(astro)
    assert len(faces) == 1
    return faces[0]


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def to_t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1).float() / 255.0


def background(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth colour gradient with a little noise (no faces)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([80 + 100 * xx / w, 120 + 60 * yy / h, 160 - 80 * xx / w], axis=-1)
    a += rng.normal(0, 4, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def similarity(angle_deg: float, scale: float, src_pt: tuple[float, float],
               dst_pt: tuple[float, float]) -> np.ndarray:
    """``[3, 3]`` map of source to destination coordinates: rotate by ``angle`` (clockwise
    on screen) and scale about ``src_pt``, which lands on ``dst_pt``."""
    a = math.radians(angle_deg)
    r = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    m = np.eye(3)
    m[:2, :2] = r
    m[:2, 2] = np.asarray(dst_pt) - r @ np.asarray(src_pt)
    return m


def place_heads(bg: Image.Image, src: np.ndarray, transforms: list[np.ndarray]) -> np.ndarray:
    """Composite the astronaut's head (soft ellipse) into ``bg`` through each transform."""
    src_im = Image.fromarray(src)
    mask = Image.new("L", src_im.size, 0)
    (cx, cy), (rx, ry) = HEAD_CENTRE, HEAD_RADII
    ImageDraw.Draw(mask).ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(6))
    out = bg.copy()
    for t in transforms:
        inv = np.linalg.inv(t)
        data = (inv[0, 0], inv[0, 1], inv[0, 2], inv[1, 0], inv[1, 1], inv[1, 2])
        face = src_im.transform(bg.size, Image.Transform.AFFINE, data, Image.Resampling.BICUBIC)
        m = mask.transform(bg.size, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
        out = Image.composite(face, out, m)
    return np.asarray(out).copy()


def apply(t: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ t[:2, :2].T + t[:2, 2]


# -- the astronaut -------------------------------------------------------------------------
def test_astronaut_landmarks_inside_the_face(astro_face: align.Detection) -> None:
    lm = astro_face.landmarks
    assert lm.shape == (68, 2)
    left, top, right, bottom = FACE_BOX
    assert (lm[:, 0] > left).all() and (lm[:, 0] < right).all()
    assert (lm[:, 1] > top).all() and (lm[:, 1] < bottom).all()
    for got, want in zip((lm[36:42].mean(0), lm[42:48].mean(0)), EYES):
        assert np.hypot(*(got - np.array(want))) < 6.0, (got, want)
    assert lm[48:60, 1].min() > max(EYES[0][1], EYES[1][1]) + 20  # the mouth is below the eyes
    assert astro_face.score > align.DEFAULT_MIN_SCORE


def test_aligned_crop_is_centred_and_level(astro: np.ndarray, astro_face: align.Detection) -> None:
    face = align_detections(astro, [astro_face], resolution=256)[0]
    crop = (face.aligned.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    again = detect_faces(np.ascontiguousarray(crop))
    assert len(again) == 1
    lm = again[0].landmarks
    el, er = lm[36:42].mean(0), lm[42:48].mean(0)
    tilt = math.degrees(math.atan2(er[1] - el[1], er[0] - el[0]))
    assert abs(tilt) < 3.0
    assert abs((el[0] + er[0]) / 2 - 128) < 0.03 * 256
    # Aligning the aligned crop again gives (nearly) the whole frame: the same quad.
    q = ffhq_quad(lm)
    assert np.allclose(q.c, [128, 128], atol=0.03 * 256)
    assert abs(q.side / 256 - 1) < 0.05
    # The astronaut's head is tilted by a few degrees in the photo (eyes 102 -> 103, read by eye).
    assert 0.0 < face.quad.angle < 5.0


def test_quad_from_points_by_hand() -> None:
    # Upright face: eyes 20 apart at y=50, mouth 20 below. x = (20 + 20, 0) scaled to
    # max(2 * 20, 1.8 * 20) = 40; centre = eye midpoint + 0.1 * (0, 20).
    q = quad_from_points((40, 50), (60, 50), (42, 70), (58, 70))
    assert np.allclose(q.x, [40, 0]) and np.allclose(q.y, [0, 40]) and np.allclose(q.c, [50, 52])
    assert np.allclose(q.corners(), [[10, 12], [10, 92], [90, 92], [90, 12]])
    # Long face: the mouth distance rules (1.8 * 30 = 54 > 40).
    assert np.allclose(quad_from_points((40, 50), (60, 50), (42, 80), (58, 80)).x, [54, 0])
    # A similarity transform of the points transforms the quad the same way.
    t = similarity(30.0, 2.5, (50, 60), (300, 200))
    pts = np.array([(40, 50), (60, 50), (42, 70), (58, 70)], float)
    qt = quad_from_points(*apply(t, pts))
    # float64 geometry on coordinates of a few hundred px: rounding ~1e-13
    assert np.allclose(qt.corners(), apply(t, q.corners()), atol=1e-9)
    assert qt.angle == pytest.approx(30.0)


def test_crop_matrix_places_the_quad_by_framing() -> None:
    q = quad_from_points((40, 50), (60, 50), (42, 70), (58, 70))  # corners (10,12) ... (90,92)
    m = crop_matrix(q, FFHQ_FRAMING, 64)
    assert np.allclose(align.frame_corners(m, 64), q.corners())
    # A tighter framing: the quad spans 1.28 frames around the centre.
    m2 = crop_matrix(q, Framing(0.5, 0.5, 1.28), 64)
    corners = np.array([[32 - 0.64 * 64, 32 - 0.64 * 64, 1], [32 + 0.64 * 64, 32 + 0.64 * 64, 1]])
    assert np.allclose((corners @ m2.T)[:, :2], [[10, 12], [90, 92]])


def test_warp_is_exact_on_a_linear_ramp() -> None:
    """Bilinear sampling and box averaging reproduce a linear image exactly, so any
    half-pixel or orientation slip shows."""
    h, w = 300, 400
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5  # pixel centres
    ramp = np.stack([xx / w, yy / h, (xx + yy) / (w + h)])
    photo = torch.from_numpy(ramp).float()
    for angle, scale in ((0.0, 1.0), (25.0, 3.7), (-40.0, 0.6)):
        t = similarity(angle, scale, (0, 0), (200, 150))
        m = t @ np.array([[1, 0, -16], [0, 1, -16], [0, 0, 1]], float)  # frame centre at (200, 150)
        out = warp_face(photo, m, 32).double().numpy()
        c = np.arange(32) + 0.5
        uu, vv = np.meshgrid(c, c)
        px = m[0, 0] * uu + m[0, 1] * vv + m[0, 2]
        py = m[1, 0] * uu + m[1, 1] * vv + m[1, 2]
        want = np.stack([px / w, py / h, (px + py) / (w + h)])
        # exact in exact arithmetic; warp_face works in float32: sample positions of up to ~500 px
        # carry 500 x 6e-8 = 3e-5 px of rounding, i.e. 3e-5 / 300 px of ramp value, and the
        # interpolation weights and values (<= 1) a few ulps: ~1e-6 in all, so 1e-4 is loose;
        # a half-pixel slip moves values by 0.5 / 400 = 1.25e-3
        assert np.abs(out - want).max() < 1e-4, (angle, scale)


def test_warp_antialiases_when_shrinking() -> None:
    """A 1-pixel checkerboard shrunk 8x is flat grey, not a moire."""
    a = (np.indices((512, 512)).sum(0) % 2 * 255).astype(np.uint8)
    photo = np.repeat(a[:, :, None], 3, axis=2)
    m = np.diag([8.0, 8.0, 1.0])
    out = warp_face(photo, m, 64)
    assert abs(float(out.mean()) - 0.5) < 0.01 and float(out.std()) < 0.02


# -- composed photos -------------------------------------------------------------------------
@pytest.mark.parametrize("angle,scale", [(20.0, 1.5), (-12.0, 0.8)])
def test_rotated_scaled_face_recovered(astro: np.ndarray, astro_face: align.Detection,
                                       angle: float, scale: float) -> None:
    t = similarity(angle, scale, HEAD_CENTRE, (330, 260))
    photo = place_heads(background(700, 520), astro, [t])
    faces = detect_faces(photo)
    assert len(faces) == 1
    got = ffhq_quad(faces[0].landmarks)
    want = ffhq_quad(apply(t, astro_face.landmarks))
    ref = ffhq_quad(astro_face.landmarks)
    assert np.hypot(*(got.c - want.c)) < 0.04 * want.side
    # landmark detection on a re-rendered (rotated, scaled, resampled) face, not float rounding:
    # dlib's points move by a few px, hence 4% of the side for the centre, 6% in size and 3
    # degrees. A wrong transform misses by far more (sign of the angle: 24 to 40 degrees; the
    # scale inverted: 0.8 vs 1.25, 1.5 vs 0.67)
    assert got.side / want.side == pytest.approx(1.0, abs=0.06)
    assert got.angle == pytest.approx(ref.angle + angle, abs=3.0)


def test_two_faces_two_outputs(tmp_path: Path, astro: np.ndarray, capsys: pytest.CaptureFixture[str]) -> None:
    right = similarity(-15.0, 1.2, HEAD_CENTRE, (560, 250))
    left = similarity(10.0, 0.9, HEAD_CENTRE, (190, 270))
    photo = place_heads(background(800, 520, seed=1), astro, [right, left])
    faces = detect_faces(photo)
    assert len(faces) == 2
    xs = [f.landmarks[:, 0].mean() for f in faces]
    assert xs[0] < 400 < xs[1]
    kept = align.keep_largest(faces, 1)
    assert len(kept) == 1 and kept[0] is faces[1]  # the 1.2x face is the larger

    Image.fromarray(photo).save(tmp_path / "two.png")
    out = tmp_path / "out"
    code, _, err = run(["align", tmp_path / "two.png", "-o", out], capsys)
    assert code == 0, err
    rec = json.loads((out / "two.json").read_text())
    assert [f["file"] for f in rec["faces"]] == ["two_face_00.png", "two_face_01.png"]
    for f, t in zip(rec["faces"], (left, right)):
        want = ffhq_quad(apply(t, detect_faces(astro)[0].landmarks))
        assert np.hypot(*(np.array(f["ffhq_quad"]).mean(0) - want.c)) < 0.04 * want.side
        assert read_rgb(out / f["file"]).shape == (16, 16, 3)
    # --max-faces 1 keeps the larger (right) face; the second face's files go.
    code, _, err = run(["align", tmp_path / "two.png", "-o", out, "--max-faces", "1", "--overwrite"], capsys)
    assert code == 0, err
    rec = json.loads((out / "two.json").read_text())
    assert len(rec["faces"]) == 1 and np.array(rec["faces"][0]["ffhq_quad"]).mean(0)[0] > 400
    assert any("kept the 1 largest" in n for n in rec["input"]["notes"])
    assert sorted(p.name for p in out.glob("two_face_*.png")) == ["two_face_00.png"]
    assert not (out / "aligned" / "two_face_01.png").exists()


def test_dcgan_framing_matches_its_faces(dcgan) -> None:
    """Faces of dcgan-digiface, enlarged 4x, align to (nearly) their own frame: the
    :data:`FRAMINGS` entry describes where this generator puts faces."""
    torch.manual_seed(5)
    with torch.no_grad():
        x = ((dcgan(torch.randn(12, dcgan.z_dim)) + 1) / 2).clamp(0, 1)
    big = torch.nn.functional.interpolate(x, size=(256, 256), mode="bicubic", align_corners=False)
    framing = align.framing_for("dcgan-digiface")
    sides, offsets = [], []
    for img in big.clamp(0, 1):
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        dets = detect_faces(np.ascontiguousarray(arr))
        if len(dets) != 1:
            continue
        face = align_detections(arr, dets, resolution=64, framing=framing)[0]
        sides.append(face.face_pixels / 256)
        centre = align.frame_corners(face.matrix, 64).mean(0)
        offsets.append(np.hypot(*(centre - 128)) / 256)
    assert len(sides) >= 6
    assert abs(float(np.median(sides)) - 1) < 0.06
    assert float(np.median(offsets)) < 0.04
    assert align.framing_for("stylegan1") == FFHQ_FRAMING


def test_missing_dlib_says_what_to_install(monkeypatch: pytest.MonkeyPatch, astro: np.ndarray) -> None:
    monkeypatch.setattr(align, "landmark_model_path", lambda: None)
    ok, why = align.alignment_status()
    assert not ok and "pip install 'pulse-sr[align]'" in why
    align._dlib_models.cache_clear()
    try:
        with pytest.raises(align.AlignError, match=r"pulse-sr\[align\]"):
            detect_faces(astro)
    finally:
        align._dlib_models.cache_clear()


# -- pulse-sr align ---------------------------------------------------------------------------
def run(args: list, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_align_cli_astronaut(tmp_path: Path, astro: np.ndarray, capsys: pytest.CaptureFixture[str]) -> None:
    Image.fromarray(astro).save(tmp_path / "astro.png")
    code, out, err = run(["align", tmp_path / "astro.png", "-o", tmp_path / "out", "--size", "16"], capsys)
    assert code == 0, err
    rec = json.loads((tmp_path / "out" / "astro.json").read_text())
    assert rec["size"] == 16 and rec["generator"]["resolution"] == 64 and len(rec["faces"]) == 1
    face = rec["faces"][0]
    lr = read_rgb(tmp_path / "out" / face["file"])
    hr = read_rgb(tmp_path / "out" / face["aligned_file"])
    assert lr.shape == (16, 16, 3) and hr.shape == (64, 64, 3)
    # The low-resolution face is PULSE's bicubic downscale of the aligned crop.
    down = bicubic_downsample(to_t(hr)[None], 4)[0].clamp(0, 1)
    assert (down - to_t(lr)).abs().max() < 3 / 255
    # The aligned crop is the photo through the recorded matrix (same numbers re-used).
    again = warp_face(astro, np.array(face["matrix"]), 64)
    assert (again - to_t(hr)).abs().max() < 2 / 255
    assert len(face["landmarks"]) == 68 and len(face["ffhq_quad"]) == 4
    left, top, right, bottom = FACE_BOX
    centre = np.array(face["frame_corners"]).mean(0)
    assert left < centre[0] < right and top < centre[1] < bottom
    # Re-running skips the finished photo.
    code, out, _ = run(["align", tmp_path / "astro.png", "-o", tmp_path / "out"], capsys)
    assert code == 0 and "1 skipped" in out


def test_align_tiny_inputs_are_taken_as_aligned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "t16.png")
    b = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(b).save(tmp_path / "t24.png")
    code, _, err = run(["align", tmp_path / "t16.png", tmp_path / "t24.png", "-o", tmp_path / "o"], capsys)
    assert code == 0, err
    assert np.array_equal(read_rgb(tmp_path / "o" / "t16_face_00.png"), a)  # used as is
    rec = json.loads((tmp_path / "o" / "t24.json").read_text())
    assert rec["faces"][0]["mode"] == "aligned" and read_rgb(tmp_path / "o" / "t24_face_00.png").shape == (16, 16, 3)
    assert any("center-cropped 32x24" in n for n in rec["faces"][0]["notes"])
    # --detect on a 16x16 image: no face, nothing written for it.
    code, _, err = run(["align", tmp_path / "t16.png", "-o", tmp_path / "o2", "--detect"], capsys)
    assert code == 1 and "no face found" in err and "t16.png" in err
    assert not (tmp_path / "o2").exists()


def test_align_no_face_corrupt_and_odd_modes(tmp_path: Path, astro: np.ndarray,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    src.mkdir()
    background(300, 200).save(src / "noface.png")
    Image.fromarray(astro).save(src / "full.jpg", quality=90)
    data = (src / "full.jpg").read_bytes()
    (src / "full.jpg").unlink()
    (src / "corrupt.jpg").write_bytes(data[: len(data) // 3])
    Image.fromarray(astro).convert("L").save(src / "grey.png")
    rgba = Image.fromarray(astro).convert("RGBA")
    alpha = np.full((512, 512), 255, np.uint8)
    alpha[:, :40] = 0  # a transparent strip at the left
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(src / "rgba.png")
    Image.fromarray(astro).convert("P", palette=Image.Palette.ADAPTIVE).save(src / "pal.png")
    # Stored rotated 90 degrees counter-clockwise; EXIF orientation 6 turns it back upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(astro).transpose(Image.Transpose.ROTATE_90).save(src / "exif.jpg", exif=exif.tobytes(),
                                                                    quality=95)
    out = tmp_path / "out"
    code, stdout, err = run(["align", src, "-o", out], capsys)
    assert code == 1
    assert "summary: 4 done, 0 skipped, 2 failed" in stdout
    assert "noface.png: no face found" in err and "corrupt.jpg" in err and "Traceback" not in err
    assert not list(out.glob("noface*")) and not list(out.glob("corrupt*"))
    upright = None
    for stem in ("grey", "rgba", "pal", "exif"):
        rec = json.loads((out / f"{stem}.json").read_text())
        assert len(rec["faces"]) == 1, stem
        corners = np.array(rec["faces"][0]["ffhq_quad"])
        upright = corners if upright is None else upright
        assert np.abs(corners - upright).max() < 4.0, stem  # the same face in the same place
        assert rec["input"]["size"] == [512, 512]


def test_align_huge_photo_detects_small_crops_full(tmp_path: Path, astro: np.ndarray,
                                                   capsys: pytest.CaptureFixture[str],
                                                   astro_face: align.Detection) -> None:
    big = Image.fromarray(astro).resize((2048, 2048), Image.Resampling.BICUBIC)
    big.save(tmp_path / "big.png", compress_level=1)
    code, _, err = run(["align", tmp_path / "big.png", "-o", tmp_path / "o", "--detect-max-side", "400",
                        "--size", "16"], capsys)
    assert code == 0, err
    rec = json.loads((tmp_path / "o" / "big.json").read_text())
    assert len(rec["faces"]) == 1
    got = ffhq_quad(np.array(rec["faces"][0]["landmarks"]))
    want = ffhq_quad(astro_face.landmarks * 4)
    assert np.hypot(*(got.c - want.c)) < 0.04 * want.side and got.side / want.side == pytest.approx(1, abs=0.06)
    # The crop comes from the full-resolution photo: 64 px sampled from ~700 px of face.
    assert rec["faces"][0]["face_pixels"] > 500
    code, _, err = run(["align", tmp_path / "big.png", "-o", tmp_path / "o2", "--max-pixels", "1000000"], capsys)
    assert code == 1 and "too many pixels" in err


def test_cli_defaults_match_library() -> None:
    assert align_cli.MIN_SCORE == align.DEFAULT_MIN_SCORE
    assert align_cli.DETECT_MAX_SIDE == align.DEFAULT_DETECT_MAX_SIDE
    assert align_cli.FEATHER == paste.DEFAULT_FEATHER
    assert align_cli.MAX_SIDE == paste.DEFAULT_MAX_SIDE

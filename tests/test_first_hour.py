"""issue 15, "the first hour": what a newcomer meets on the command line.

Photos (small faces found, sharp faces left alone, tight crops, photos given to ``run``),
provenance read back from every file pulse-sr writes, and how the CLI talks (``-q``,
``-v``, ``--json``, ``--recursive``, GIF inputs, exit 3's hint, subcommand usage).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pulse_sr import cli
from pulse_sr.io import paste
from pulse_sr.io.align import NoFaceError, detect_faces, ffhq_quad, frame_corners, warp_face
from pulse_sr.io.provenance import COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA, TRAINED_ALGORITHMIC_MEDIA, read_provenance

sys.path.insert(0, str(Path(__file__).parent))
from test_align import HEAD_CENTRE  # noqa: E402
from test_mtcnn import SIZES, group_photo  # noqa: E402 - the composed photos of faces 16 to 64 px

#: the head's centre in the (mirrored) source image group_photo places
HEAD_CENTRE_MIRRORED = {False: HEAD_CENTRE, True: (512.0 - HEAD_CENTRE[0], HEAD_CENTRE[1])}

TINY = ["--generator", "tiny", "--steps", "2", "--n", "2", "--quiet"]
DCGAN = ["--generator", "dcgan-digiface", "--steps", "2", "--n", "1", "--quiet"]
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def _env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_SR_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)


@pytest.fixture(scope="module")
def astro() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def run(args: list, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def read(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float() / 255


def write_rgb(path: Path, h: int = 8, w: int = 8, seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).integers(40, 216, (h, w, 3), dtype=np.uint8)
    Image.fromarray(a).save(path)
    return a


# -- photos ----------------------------------------------------------------------------------
def test_small_faces_restore_finds_and_restores(tmp_path: Path, astro: np.ndarray,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """dlib found none of the faces under ~50 px; now every face of 16 to 64 px is found.
    Faces whose aligned crop is smaller than the 64-px generator are restored (those of 32 px
    and up with a warning); a crop already at least 64 px is left untouched unless --force."""
    photo, _ = group_photo(astro, 0.0, False)
    Image.fromarray(photo).save(tmp_path / "group.png")
    code, _, err = run(["restore", tmp_path / "group.png", "-o", tmp_path / "o", *DCGAN], capsys)
    assert code in (0, 3), err
    rep = json.loads((tmp_path / "o" / "group" / "report.json").read_text())
    faces = rep["faces"]
    assert len(faces) == len(SIZES)
    sides = [f["face_pixels"] for f in faces]
    assert sides == sorted(sides)  # left to right, as composed: smallest first
    for f in faces:
        if f["face_pixels"] >= 64:
            assert "already" in f["skipped"] and "folder" not in f
        else:
            assert "skipped" not in f and (tmp_path / "o" / "group" / f["folder"] / "hr_00.png").is_file()
            warned = any("invention at no higher resolution" in n for n in f.get("notes", []))
            assert warned == (f["face_pixels"] >= 32), f
    restored_n = sum("skipped" not in f for f in faces)
    assert restored_n >= 4 and f"{restored_n} faces restored, {len(SIZES) - restored_n} left untouched" in err
    # A skipped face's pixels are the photo's own bicubic enlargement, untouched.
    canvas = read(tmp_path / "o" / "group" / "restored.png")
    h, w = photo.shape[:2]
    plain = paste.upscale_photo(photo, int(canvas.shape[2]), int(canvas.shape[1]))
    sx, sy = rep["output"]["scale"]
    for f in faces:
        if "skipped" in f:
            x0, y0 = (np.array(f["frame_corners"]).min(0) * [sx, sy]).astype(int) + 2
            x1, y1 = (np.array(f["frame_corners"]).max(0) * [sx, sy]).astype(int) - 2
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, canvas.shape[2]), min(y1, canvas.shape[1])
            # 8-bit PNG of the same float canvas: exactly the rounded values
            assert torch.equal(canvas[:, y0:y1, x0:x1], plain[:, y0:y1, x0:x1].mul(255).round().div(255))
    # --force restores every face.
    code, _, err = run(["restore", tmp_path / "group.png", "-o", tmp_path / "f", *DCGAN, "--force"], capsys)
    assert code in (0, 3), err
    rep = json.loads((tmp_path / "f" / "group" / "report.json").read_text())
    assert all("skipped" not in f and "folder" in f for f in rep["faces"]) and rep["settings"]["force"]


def test_restore_makes_a_sharp_photo_worse_without_a_word(tmp_path: Path, astro: np.ndarray,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The astronaut's face is ~130 px: it used to be shrunk to 16 px and a blurrier 64-px
    invention pasted over it. Now it is left untouched, and the report and the line say why."""
    Image.fromarray(astro).save(tmp_path / "astro.png")
    code, _, err = run(["restore", tmp_path / "astro.png", "-o", tmp_path / "o", *DCGAN], capsys)
    assert code == 0, err
    d = tmp_path / "o" / "astro"
    rep = json.loads((d / "report.json").read_text())
    assert len(rep["faces"]) == 1 and rep["faces"][0]["face_pixels"] > 64
    assert "nothing to gain" in rep["faces"][0]["skipped"] and not (d / "face_00").exists()
    assert "0 faces restored, 1 left untouched" in err and "skipped:" in err and "--force" in err
    assert torch.equal(read(d / "restored.png"), torch.from_numpy(astro).permute(2, 0, 1).float() / 255)
    assert "kind" not in read_provenance(d / "restored.png")  # nothing generated in it


@pytest.mark.parametrize("side", [96, 120])
def test_tight_face_crop_found_and_not_mirrored(astro: np.ndarray, side: int) -> None:
    """A crop the face fills (no forehead, no chin margin): the detectors find nothing on it,
    so detection is retried on a copy with a neutral border; and the aligned frame, which
    reaches beyond the crop, is filled from that border, not mirrored (a mirror added a
    second mouth and chin)."""
    from pulse_sr.cli.align import find_faces
    from pulse_sr.cli.options import FaceOptions
    from pulse_sr.io.align import DIGIFACE_FRAMING
    from pulse_sr.io.face_finder import detect_photo_faces

    box = (195, 100, 265, 170)
    crop = np.asarray(Image.fromarray(astro[box[1]:box[3], box[0]:box[2]]).resize((side, side),
                                                                                 Image.Resampling.LANCZOS))
    assert detect_photo_faces(crop, min_score=0.3, detect_max_side=1600)[0] == []  # the old dead end
    faces, notes = find_faces(crop, FaceOptions(mode="detect"), resolution=64, framing=DIGIFACE_FRAMING)
    assert len(faces) == 1 and any("neutral border" in n for n in notes)
    # The same face as the full photo's, through the crop's transform. Tolerances: the quad is
    # from landmarks good to about a pixel on a ~70-px face: 5% of its side, 4 degrees.
    ref = ffhq_quad(detect_faces(astro)[0].landmarks)
    k = side / (box[2] - box[0])
    q = ffhq_quad(faces[0].detection.landmarks)
    assert np.hypot(*(q.c - (ref.c - np.array(box[:2])) * k)) < 0.05 * ref.side * k
    assert abs(q.side / (ref.side * k) - 1) < 0.05 and abs(q.angle - ref.angle) < 4.0
    # Beyond the crop the aligned face is smooth border, where a mirror repeats the face's
    # detail: compare the local contrast there with the mirrored warp of the same frame.
    m, res = faces[0].matrix, 64
    uv = (np.stack(np.meshgrid(np.arange(res), np.arange(res)), -1) + 0.5).reshape(-1, 2)
    xy = (uv @ m[:2, :2].T + m[:2, 2]).reshape(res, res, 2)
    outside = torch.from_numpy(((xy < -2) | (xy > side + 2)).any(-1))
    assert int(outside.sum()) > 200  # the frame does reach beyond the crop

    def detail(img: torch.Tensor) -> float:
        g = (img[:, 1:, 1:] - img[:, :-1, 1:]).abs() + (img[:, 1:, 1:] - img[:, 1:, :-1]).abs()
        return float(g.sum(0)[outside[1:, 1:]].mean())

    mirrored = warp_face(crop, m, res)
    assert detail(faces[0].aligned) < 0.5 * detail(mirrored)


@pytest.mark.parametrize("angle,mirror", [(12.0, True), (-12.0, False)])
def test_every_face_found_once_rotated_and_mirrored(astro: np.ndarray, angle: float, mirror: bool) -> None:
    """What restore and align detect with: MTCNN's faces and dlib's merged, each face once
    (the larger ones with dlib's 68 landmarks), left to right, at the composed places."""
    from pulse_sr.cli.align import find_faces
    from pulse_sr.cli.options import FaceOptions
    from pulse_sr.io.align import DIGIFACE_FRAMING

    photo, transforms = group_photo(astro, angle, mirror)
    faces, _ = find_faces(photo, FaceOptions(), resolution=64, framing=DIGIFACE_FRAMING)
    assert len(faces) == len(SIZES)
    for face, t in zip(faces, transforms):
        centre = frame_corners(face.matrix, 64).mean(0)
        # the frame's centre is near where the head was placed (t maps the head centre there);
        # the face sits a little below the head's centre: within half a frame
        placed = t[:2, :2] @ np.array(HEAD_CENTRE_MIRRORED[mirror]) + t[:2, 2]
        assert np.hypot(*(centre - placed)) < 0.5 * face.face_pixels
    assert {len(f.detection.landmarks) for f in faces} <= {5, 68}


@pytest.mark.parametrize("name", ["coffee", "chelsea"])
def test_no_false_faces_in_coffee_and_chelsea(name: str) -> None:
    from skimage import data

    from pulse_sr.cli.align import find_faces
    from pulse_sr.cli.options import FaceOptions
    from pulse_sr.io.align import DIGIFACE_FRAMING

    with pytest.raises(NoFaceError):
        find_faces(np.ascontiguousarray(getattr(data, name)()), FaceOptions(), resolution=64,
                   framing=DIGIFACE_FRAMING)


def test_photo_given_to_run_points_to_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It said "use --resize", which squashed the whole photo into a face-sized square."""
    write_rgb(tmp_path / "photo.png", 150, 200)
    write_rgb(tmp_path / "square.png", 100, 100, seed=1)
    write_rgb(tmp_path / "seven.png", 7, 7, seed=2)  # a small face of an unusable size: still --resize
    code, _, err = run(["run", tmp_path / "photo.png", tmp_path / "square.png", tmp_path / "seven.png",
                        "-o", tmp_path / "o", *TINY], capsys)
    assert code == 1
    lines = {p: [ln for ln in err.splitlines() if ln.startswith(f"error: {tmp_path / p}")]
             for p in ("photo.png", "square.png", "seven.png")}
    for p in ("photo.png", "square.png"):
        assert len(lines[p]) == 1 and "pulse-sr restore" in lines[p][0] and "--resize" not in lines[p][0]
        assert "--center-crop" not in lines[p][0]
    assert len(lines["seven.png"]) == 1 and "--resize" in lines["seven.png"][0]


# -- provenance --------------------------------------------------------------------------------
def test_every_generated_image_carries_provenance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_rgb(tmp_path / "face.png")
    code, _, err = run(["run", tmp_path / "face.png", "-o", tmp_path / "o", *TINY, "--save-intermediate"], capsys)
    assert code in (0, 3), err
    d = tmp_path / "o" / "face"
    for name in ("hr_00.png", "lr_00.png", "hr_01.png", "lr_01.png", "search_00.gif", "search_01.gif"):
        p = read_provenance(d / name)
        assert p["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA and p["kind"] == "generated", name
        assert p["not_recovered"], name
        if name.endswith(".png"):
            assert p["generator"] == "tiny" and "pulse-sr" in p["text"]["Software"]
            assert "generated, not recovered" in p["text"]["Comment"] and "tiny" in p["text"]["Comment"]
    assert "kind" not in read_provenance(d / "input.png") and not read_provenance(d / "input.png")["not_recovered"]
    # restore: the photo with generated faces in it is a composite; the faces are generated.
    code, _, err = run(["restore", tmp_path / "face.png", "-o", tmp_path / "r", *TINY], capsys)
    assert code in (0, 3), err
    r = tmp_path / "r" / "face"
    for name in ("restored.png", "comparison.png"):
        p = read_provenance(r / name)
        assert p["digital_source_type"] == COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA and p["kind"] == "composite"
        assert p["not_recovered"] and p["generator"] == "tiny"
    assert read_provenance(r / "face_00" / "hr_00.png")["kind"] == "generated"
    assert "kind" not in read_provenance(r / "face_00" / "input.png")
    assert "kind" not in read_provenance(r / "face_00" / "aligned.png")  # the user's pixels, resampled


# -- how the CLI talks ---------------------------------------------------------------------------
def test_short_flags_help_and_python_m(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_rgb(tmp_path / "face.png")
    code, _, err = run(["run", tmp_path / "face.png", "-o", tmp_path / "o", *TINY[:-1], "-q", "-v"], capsys)
    assert code in (0, 3), err
    steps = [ln for ln in err.splitlines() if " step " in ln]
    assert [ln.split(" step ")[1].split(":")[0] for ln in steps] == ["1/2", "2/2"]
    assert any("load " in ln and "search " in ln and "write " in ln for ln in err.splitlines())
    code, out, _ = run(["run", "--help"], capsys)
    assert code == 0 and "-o OUTDIR, --output OUTDIR, --outdir OUTDIR" in out
    assert "results go to OUTDIR/<input stem>/" in " ".join(out.split())
    assert "-q, --quiet" in out and "-v, --verbose" in out
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "pulse_sr", "--version"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("pulse-sr ")


def test_unknown_flag_shows_the_subcommands_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["run", tmp_path / "x.png", "-o", tmp_path / "o", "--bogus"], capsys)
    assert code == 2 and "usage: pulse-sr run " in err and "pulse-sr run: error: unrecognized arguments: --bogus" in err
    code, _, err = run(["restore", tmp_path / "x.png", "-o", tmp_path / "o", "--nope"], capsys)
    assert code == 2 and "usage: pulse-sr restore " in err
    assert not (tmp_path / "o").exists()


def test_json_one_object_per_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    write_rgb(src / "a.png", seed=1)
    write_rgb(src / "b.png", seed=2)
    (src / "bad.png").write_text("not an image")
    write_rgb(src / "sub" / "c.png", seed=3)
    code, out, err = run(["run", src, "-o", tmp_path / "o", *TINY, "--json", "--eps", "1"], capsys)
    assert code == 1
    recs = [json.loads(ln) for ln in out.splitlines()]  # every stdout line is one JSON object
    by = {Path(r["path"]).name: r for r in recs}
    assert sorted(by) == ["a.png", "b.png", "bad.png", "sub"]
    for name in ("a.png", "b.png"):
        r = by[name]
        rep = json.loads((tmp_path / "o" / name[0] / "report.json").read_text())
        assert r["status"] == "done" and r["converged"] is True and r["output"] == str(tmp_path / "o" / name[0])
        assert r["best_l2"] == rep["candidates"][rep["best_index"]]["final_l2"]
    assert by["bad.png"]["status"] == "failed" and "bad.png" not in by["bad.png"]["error"]
    assert by["sub"]["status"] == "skipped" and "--recursive" in by["sub"]["reason"]
    # human lines on stderr, each failure once
    assert "summary: 2 done, 1 skipped, 1 failed" in err and sum("bad.png" in ln for ln in err.splitlines()) == 1
    # --recursive descends into sub/
    code, out, err = run(["run", src, "-o", tmp_path / "r", *TINY, "--json", "--eps", "1", "--recursive"], capsys)
    by = {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}
    assert by["c.png"]["status"] == "done" and (tmp_path / "r" / "c" / "report.json").is_file()


def test_gif_inputs_in_folder_scans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A GIF in a folder used to be skipped as "not a supported image type"; now it is taken
    like a single file: its first frame."""
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(4)
    frames = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert("P", dither=0)
              for _ in range(2)]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    code, _, err = run(["run", src, "-o", tmp_path / "o", *TINY, "--eps", "1"], capsys)
    assert code == 0, err
    first = torch.from_numpy(np.asarray(frames[0].convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(read(tmp_path / "o" / "anim" / "input.png"), first)


def test_exit_3_says_what_to_try(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_rgb(tmp_path / "face.png")
    code, _, err = run(["run", tmp_path / "face.png", "-o", tmp_path / "o", *TINY, "--eps", "1e-9"], capsys)
    assert code == 3
    hint = [ln for ln in err.splitlines() if ln.startswith("no candidate within eps: try")]
    assert len(hint) == 1 and "--eps (now 1e-09)" in hint[0] and "more --steps (now 2)" in hint[0]


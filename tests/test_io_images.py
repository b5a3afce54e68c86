"""Input images: modes, orientation, formats, errors; fitting to a generator; saving."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pulse_sr.errors import ImageError, SizeError
from pulse_sr.io.files import atomic_write_json, staged_dir
from pulse_sr.io.images import (
    fit_to_generator,
    load_image,
    nearest_size,
    save_png,
    to_pil,
    valid_input_sizes,
)


def px(t: torch.Tensor, y: int, x: int) -> list[float]:
    return [round(float(v), 4) for v in t[:, y, x]]


# -- modes ---------------------------------------------------------------------------------
def test_rgba_composited_on_white(tmp_path: Path) -> None:
    a = np.zeros((8, 8, 4), np.uint8)
    a[..., :3] = (10, 20, 30)
    a[0, 0, 3] = 0  # transparent
    a[1, 1, 3] = 255  # opaque
    a[2, 2] = (200, 0, 0, 128)  # half
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    t = load_image(tmp_path / "a.png")
    assert t.shape == (3, 8, 8) and t.dtype == torch.float32
    assert px(t, 0, 0) == [1.0, 1.0, 1.0]
    assert torch.allclose(t[:, 1, 1], torch.tensor([10, 20, 30]) / 255.0)
    alpha = 128 / 255
    expect = torch.tensor([200 / 255 * alpha + 1 - alpha, 1 - alpha, 1 - alpha])
    # compositing in float32 on values <= 1: a few roundings of 6e-8; an 8-bit intermediate would
    # be off by up to 2e-3
    assert torch.allclose(t[:, 2, 2], expect, atol=1e-5)


def test_la_and_grey(tmp_path: Path) -> None:
    la = np.zeros((6, 6, 2), np.uint8)
    la[..., 0] = 50
    la[..., 1] = 255
    la[0, 0, 1] = 0
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    t = load_image(tmp_path / "la.png")
    assert px(t, 0, 0) == [1.0, 1.0, 1.0]
    assert torch.allclose(t[:, 3, 3], torch.full((3,), 50 / 255))

    g = np.arange(36, dtype=np.uint8).reshape(6, 6) * 7
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    t = load_image(tmp_path / "g.png")
    assert t.shape == (3, 6, 6)
    assert torch.allclose(t[0], torch.from_numpy(g).float() / 255)
    assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (5, 5), 1)
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (253 * 3))
    im.putpixel((0, 0), 2)
    im.save(tmp_path / "p.png")
    t = load_image(tmp_path / "p.png")
    assert px(t, 1, 1) == [1.0, 0.0, 0.0]
    assert px(t, 0, 0) == [0.0, 0.0, 1.0]

    im.save(tmp_path / "pt.png", transparency=2)
    t = load_image(tmp_path / "pt.png")
    assert px(t, 0, 0) == [1.0, 1.0, 1.0]  # transparent index -> white
    assert px(t, 1, 1) == [1.0, 0.0, 0.0]


def test_16bit_grey_keeps_full_range(tmp_path: Path) -> None:
    a = np.zeros((4, 4), np.uint16)
    a[0, 0] = 65535
    a[0, 1] = 32768
    a[0, 2] = 255
    Image.fromarray(a).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode in ("I;16", "I")
    t = load_image(tmp_path / "g16.png")
    assert t[0, 0, 0] == pytest.approx(1.0)
    # 32768 / 65535 = 0.5000076; an 8-bit path would give 128 / 255 = 0.50196 (off by 2e-3 > 1e-3)
    assert t[0, 0, 1] == pytest.approx(0.5, abs=1e-3)
    # float32 of 3.9e-3 is exact to 2e-10; an 8-bit path gives 0 or 1/255 = 3.9e-3 (also off by > 1e-6)
    assert t[0, 0, 2] == pytest.approx(255 / 65535, abs=1e-6)  # not clipped to 1
    assert float(t.max()) <= 1.0


def test_cmyk_to_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    t = load_image(tmp_path / "c.jpg")
    assert t[0].mean() > 0.9 and t[1].mean() < 0.1 and t[2].mean() < 0.1


def test_exif_orientation_applied(tmp_path: Path) -> None:
    # 16 wide x 8 high, red block in the top-left corner, the rest grey.
    a = np.full((8, 16, 3), 128, np.uint8)
    a[:4, :4] = (255, 0, 0)
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    im.save(tmp_path / "o.jpg", exif=exif.tobytes(), quality=98)
    t = load_image(tmp_path / "o.jpg")
    assert t.shape == (3, 16, 8)
    # After a 90-degree clockwise rotation the stored top-left lands top-right.
    assert t[0, 1, 6] > 0.9 and t[1, 1, 6] < 0.15
    assert t[0, 1, 1] < 0.6  # top-left is grey now
    assert t[0, 14, 1] < 0.6


@pytest.mark.parametrize("ext,kw,tol", [
    (".jpg", {"quality": 100}, 0.06),
    (".webp", {"lossless": True}, 1e-6),
    (".bmp", {}, 1e-6),
    (".tif", {}, 1e-6),
    (".tiff", {"compression": "tiff_lzw"}, 1e-6),
])
def test_format_round_trip(tmp_path: Path, ext: str, kw: dict, tol: float) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    if ext == ".jpg":
        a = np.repeat(np.repeat(a[::4, ::4], 4, 0), 4, 1)  # blocky: survives JPEG
    Image.fromarray(a).save(tmp_path / f"x{ext}", **kw)
    t = load_image(tmp_path / f"x{ext}")
    ref = torch.from_numpy(a).permute(2, 0, 1).float() / 255
    assert t.shape == ref.shape
    # lossless formats: the same k / 255 in float32 (1e-6 for rounding); JPEG at quality 100 still
    # subsamples chroma and quantises: a codec bound of 15/255 mean error on 4x4 blocks, while a
    # wrong channel order or orientation gives ~0.3
    assert float((t - ref).abs().mean()) <= tol


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    t = load_image(tmp_path / "anim.gif")
    assert t[0].mean() > 0.9 and t[1].mean() < 0.1


# -- errors --------------------------------------------------------------------------------
def _expect(path: Path, words: str, **kw: int) -> None:
    with pytest.raises(ImageError) as info:
        load_image(path, **kw)
    msg = str(info.value)
    assert path.name in msg and "\n" not in msg
    assert words in msg, msg


def test_errors(tmp_path: Path) -> None:
    _expect(tmp_path / "missing.png", "not found")
    (tmp_path / "dir.png").mkdir()
    _expect(tmp_path / "dir.png", "directory")
    (tmp_path / "empty.png").write_bytes(b"")
    _expect(tmp_path / "empty.png", "empty")
    (tmp_path / "text.png").write_text("hello, I am not a picture\n")
    _expect(tmp_path / "text.png", "not an image")

    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    _expect(tmp_path / "cut.png", "truncated")

    Image.new("RGB", (2, 2)).save(tmp_path / "tiny.png")
    _expect(tmp_path / "tiny.png", "too small")


def test_too_many_pixels_checked_before_decoding(tmp_path: Path) -> None:
    Image.new("L", (5000, 5000), 7).save(tmp_path / "big.png")
    assert (tmp_path / "big.png").stat().st_size < 200_000
    _expect(tmp_path / "big.png", "too many pixels", max_pixels=1000 * 1000)


def test_decompression_bomb_is_image_error(tmp_path: Path) -> None:
    Image.new("L", (5000, 5000), 7).save(tmp_path / "bomb.png")
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000  # PIL refuses > 2x this in open()
    try:
        _expect(tmp_path / "bomb.png", "too many pixels", max_pixels=10**9)
    finally:
        Image.MAX_IMAGE_PIXELS = old


# -- fitting -------------------------------------------------------------------------------
def test_valid_input_sizes() -> None:
    assert valid_input_sizes(1024) == [4, 8, 16, 32, 64, 128, 256, 512]
    assert valid_input_sizes(64) == [4, 8, 16, 32]
    assert valid_input_sizes(32) == [4, 8, 16]
    assert valid_input_sizes(48) == [4, 6, 8, 12, 16, 24]


def test_nearest_size_log_scale_ties_to_larger() -> None:
    sizes = [4, 8, 16, 32]
    assert nearest_size(20, sizes) == 16
    assert nearest_size(23, sizes) == 32  # 23/16 = 1.44 > 32/23 = 1.39
    assert nearest_size(100, sizes) == 32
    assert nearest_size(5, sizes) == 4
    assert nearest_size(6, [4, 9]) == 9  # exact tie in log scale


def test_fit_errors_list_sizes() -> None:
    """The library's size errors speak no front end's language (no "--resize"): neutral text plus
    the data; the command line renders its hint from the data, word for word as before."""
    from pulse_sr.cli.common import render_error

    img = torch.rand(3, 20, 20)
    with pytest.raises(SizeError) as info:
        fit_to_generator(img, 64, name="face.png")
    assert str(info.value) == (
        "face.png: input is 20x20; a 64x64 generator takes 4, 8, 16 or 32 pixel squares (nearest: 16)"
    )
    assert info.value.kind == "size" and "--" not in str(info.value)
    assert {k: info.value.data[k] for k in ("size", "valid_sizes", "nearest", "square")} == {
        "size": [20, 20], "valid_sizes": [4, 8, 16, 32], "nearest": 16, "square": True}
    assert render_error(info.value) == (
        "face.png: input is 20x20; a 64x64 generator takes 4, 8, 16 or 32 pixel squares "
        "(use --resize to resize to the nearest: 16)"
    )
    with pytest.raises(SizeError) as info:
        fit_to_generator(torch.rand(3, 16, 20), 64, name="wide.png")
    assert str(info.value) == "wide.png: input is 20x16, not square"
    assert info.value.data["square"] is False and info.value.data["size"] == [20, 16]
    assert render_error(info.value) == (
        "wide.png: input is 20x16, not square; use --center-crop to crop the central 16x16"
    )


def test_image_errors_carry_path_and_problem(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "empty.png")
    assert info.value.kind == "image"
    assert info.value.data == {"path": str(tmp_path / "empty.png"), "problem": "empty file"}
    assert str(info.value) == f"{tmp_path / 'empty.png'}: empty file"


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_float_tiff_with_non_finite_pixel_refused(tmp_path: Path, bad: float) -> None:
    """issue 14: one +inf pixel in a float TIFF silently rescaled the whole image (the max was
    inf, so every finite pixel became 0); a NaN became black. Refused, naming the file."""
    a = np.full((8, 8), 0.5, dtype=np.float32)
    a[3, 4] = bad
    Image.fromarray(a, mode="F").save(tmp_path / "f.tif")
    with Image.open(tmp_path / "f.tif") as im:
        assert im.mode == "F"  # the file really holds float32 pixels
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "f.tif")
    assert str(info.value).startswith(f"{tmp_path / 'f.tif'}: ") and "non-finite" in str(info.value)
    a[3, 4] = 0.25  # the same image with a finite pixel loads, values kept
    Image.fromarray(a, mode="F").save(tmp_path / "g.tif")
    x = load_image(tmp_path / "g.tif")
    assert float(x[0, 0, 0]) == 0.5 and float(x[1, 3, 4]) == 0.25


def test_fit_ok_resize_and_crop() -> None:
    img = torch.rand(3, 16, 16)
    out, notes = fit_to_generator(img, 64)
    assert torch.equal(out, img) and notes == []

    out, notes = fit_to_generator(torch.rand(3, 20, 20), 64, resize=True)
    assert out.shape == (3, 16, 16) and len(notes) == 1 and "16x16" in notes[0]
    assert float(out.min()) >= 0 and float(out.max()) <= 1

    img = torch.rand(3, 16, 24)  # 24 wide, 16 high
    out, notes = fit_to_generator(img, 64, center_crop=True)
    assert torch.equal(out, img[:, :, 4:20]) and "central 16x16" in notes[0]

    img = torch.rand(3, 22, 8)
    out, notes = fit_to_generator(img, 64, center_crop=True)
    assert torch.equal(out, img[:, 7:15, :])

    out, notes = fit_to_generator(torch.rand(3, 20, 30), 64, center_crop=True, resize=True)
    assert out.shape == (3, 16, 16) and len(notes) == 2


# -- saving --------------------------------------------------------------------------------
def test_save_png_quantises_and_is_atomic(tmp_path: Path) -> None:
    img = torch.tensor([[[0.0, 1.0], [0.5, 2.0]]] * 3)  # out of range clamps
    img = torch.cat([img, img], 1)[:, :4, :2]
    save_png(img, tmp_path / "x.png")
    assert sorted(os.listdir(tmp_path)) == ["x.png"]
    with Image.open(tmp_path / "x.png") as im:
        assert im.mode == "RGB"
        a = np.asarray(im)
    assert a[0, 0, 0] == 0 and a[0, 1, 0] == 255 and a[1, 0, 0] == 128 and a[1, 1, 0] == 255
    assert to_pil(img).size == (2, 4)
    save_png(torch.zeros(3, 4, 4), tmp_path / "x.png")  # replace
    assert sorted(os.listdir(tmp_path)) == ["x.png"]
    assert load_image(tmp_path / "x.png").max() == 0


def test_staged_dir(tmp_path: Path) -> None:
    final = tmp_path / "out" / "face"
    with staged_dir(final) as d:
        assert d.parent == final.parent and d.name.startswith(".face.partial-")
        atomic_write_json(d / "report.json", {"a": 1})
        assert not final.exists()
    assert (final / "report.json").exists()
    assert os.listdir(final.parent) == ["face"]

    with pytest.raises(RuntimeError):
        with staged_dir(final, overwrite=True) as d:
            (d / "half.png").write_bytes(b"x")
            raise RuntimeError("boom")
    assert os.listdir(final.parent) == ["face"] and os.listdir(final) == ["report.json"]

    with pytest.raises(FileExistsError):
        with staged_dir(final) as d:
            (d / "new").write_bytes(b"x")
    assert os.listdir(final.parent) == ["face"] and os.listdir(final) == ["report.json"]

    with staged_dir(final, overwrite=True) as d:
        (d / "new").write_bytes(b"x")
    assert os.listdir(final.parent) == ["face"] and os.listdir(final) == ["new"]


def test_staged_dir_cleans_stale_partials(tmp_path: Path) -> None:
    # A dead process id (pid 2**22 + 1 is above Linux's default pid_max) left this behind.
    stale = tmp_path / f".face.partial-{2**22 + 1}-abc"
    stale.mkdir()
    (stale / "hr_00.png").write_bytes(b"x")
    mine = tmp_path / f".face.partial-{os.getpid()}-live"
    mine.mkdir()
    with staged_dir(tmp_path / "face") as d:
        (d / "f").write_bytes(b"")
    assert not stale.exists() and mine.exists()

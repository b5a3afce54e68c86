"""Provenance of generated images (io/provenance.py), read back from the files with
Pillow and the XMP parsed here with xml.etree (independently of read_provenance)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image

from pulse_sr import __version__
from pulse_sr.errors import SettingsError
from pulse_sr.io import provenance
from pulse_sr.io.provenance import provenance_pnginfo, read_provenance

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
WANT = {"generated": IPTC + "trainedAlgorithmicMedia",
        "composite": IPTC + "compositeWithTrainedAlgorithmicMedia"}
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
DST = "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}DigitalSourceType"


def face(seed: int = 0, side: int = 16) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def source_type_of(xmp: str) -> str:
    """The IPTC digital source type in an XMP packet, parsed here."""
    root = ElementTree.fromstring(xmp.replace("\ufeff", ""))
    found = [d.attrib[DST] for d in root.iter(RDF + "Description") if DST in d.attrib]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("kind", ["generated", "composite"])
def test_png_carries_xmp_and_text(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "hr.png"
    face().save(path, pnginfo=provenance_pnginfo(kind, "dcgan-digiface"))
    with Image.open(path) as im:
        text, info = dict(im.text), dict(im.info)
    assert source_type_of(info["XML:com.adobe.xmp"]) == WANT[kind]
    comment = text["Comment"]
    for part in ("pulse-sr", __version__, "dcgan-digiface", "generated, not recovered"):
        assert part in comment
    assert text["Software"] == f"pulse-sr {__version__}"
    got = read_provenance(path)
    assert got["kind"] == kind and got["digital_source_type"] == WANT[kind]
    assert got["generator"] == "dcgan-digiface" and got["version"] == __version__
    assert got["not_recovered"] is True


def test_chunks_added_to_encoded_png_keep_pixels(tmp_path: Path) -> None:
    img = face(1, 24)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path = tmp_path / "restored.png"
    path.write_bytes(provenance.png_with_provenance(buf.getvalue(), "composite", "stylegan2-ffhq"))
    with Image.open(path) as im:
        im.verify()  # chunk CRCs and structure
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(img))
        assert source_type_of(im.info["XML:com.adobe.xmp"]) == WANT["composite"]
        assert "stylegan2-ffhq" in im.text["Comment"]
    # the same fields as Pillow's writer
    other = tmp_path / "other.png"
    img.save(other, pnginfo=provenance_pnginfo("composite", "stylegan2-ffhq"))
    a, b = read_provenance(path), read_provenance(other)
    assert {k: a[k] for k in a if k != "format"} == {k: b[k] for k in b if k != "format"}


def test_generator_name_cannot_break_the_xml(tmp_path: Path) -> None:
    name = 'evil" Iptc4xmpExt:DigitalSourceType="http://x/photo"><x>\x00\n&amp;é'
    path = tmp_path / "hr.png"
    face().save(path, pnginfo=provenance_pnginfo("generated", name))
    with Image.open(path) as im:
        xmp = im.info["XML:com.adobe.xmp"]
    assert source_type_of(xmp) == WANT["generated"]
    got = read_provenance(path)
    assert got["generator"] == name.replace("\x00", "?").replace("\n", "?")
    assert got["kind"] == "generated"


def test_animated_gif_carries_a_comment(tmp_path: Path) -> None:
    path = tmp_path / "search_00.gif"
    frames = [face(k) for k in range(3)]
    path.write_bytes(provenance.gif_bytes(frames, "generated", "tiny", duration=80, loop=0))
    with Image.open(path) as im:
        comment = im.info["comment"].decode("utf-8")
        assert im.n_frames == 3
    assert "generated, not recovered" in comment and "tiny" in comment and WANT["generated"] in comment
    got = read_provenance(path)
    assert got["format"] == "GIF" and got["kind"] == "generated"


def test_a_users_photo_says_nothing(tmp_path: Path) -> None:
    path = tmp_path / "input.png"
    face().save(path)
    got = read_provenance(path)
    assert "kind" not in got and got["not_recovered"] is False and "xmp" not in got


def _itxt(key: str, text: str) -> bytes:
    data = key.encode() + b"\0\0\0\0\0" + text.encode()
    return struct.pack(">I", len(data)) + b"iTXt" + data + struct.pack(">I", zlib.crc32(b"iTXt" + data))


def test_xmp_with_entities_is_not_expanded(tmp_path: Path) -> None:
    # a "billion laughs" packet: refused before parsing
    bomb = ('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">'
            + "".join(f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in zip("abcdefgh", "bcdefghi"))
            + f']><r a="&i;" xmlns:I="{DST[1:].split("}")[0]}">&i;</r>')
    buf = io.BytesIO()
    face().save(buf, format="PNG")
    png = buf.getvalue()
    path = tmp_path / "bomb.png"
    path.write_bytes(png[:33] + _itxt("XML:com.adobe.xmp", bomb) + png[33:])
    got = read_provenance(path)
    assert "xmp_error" in got and "kind" not in got


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(SettingsError):
        provenance_pnginfo("photo", "tiny")  # type: ignore[arg-type]

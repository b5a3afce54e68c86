"""Machine-readable provenance for every image pulse-sr generates.

A face pulse-sr returns is invented: one of many faces whose downscale matches the
input, not the person in it. Each PNG it writes says so in two ways readers look for:

- XMP (an iTXt chunk, keyword ``XML:com.adobe.xmp``) with the IPTC digital source
  type: :data:`TRAINED_ALGORITHMIC_MEDIA` for generated faces (``kind="generated"``),
  :data:`COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA` for a photo with generated faces
  pasted in (``kind="composite"``);
- text chunks: ``Software`` (``pulse-sr <version>``) and ``Comment`` (one sentence
  naming pulse-sr, its version, the generator and "generated, not recovered").

GIF has no XMP writer in Pillow: its comment extension carries the sentence and the
digital source type URL (:func:`gif_comment`). The user's own input is never marked.

Use :func:`provenance_pnginfo` with Pillow's ``save(..., pnginfo=...)``, or
:func:`png_with_provenance` to add the chunks to PNG bytes already encoded;
:func:`read_provenance` reads them back.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any, Literal
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

from PIL import Image, PngImagePlugin

from pulse_sr import __version__
from pulse_sr.errors import SettingsError

Kind = Literal["generated", "composite"]

_IPTC_CODES = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED_ALGORITHMIC_MEDIA = _IPTC_CODES + "trainedAlgorithmicMedia"
COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA = _IPTC_CODES + "compositeWithTrainedAlgorithmicMedia"
SOURCE_TYPES: dict[str, str] = {
    "generated": TRAINED_ALGORITHMIC_MEDIA,
    "composite": COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA,
}
XMP_KEY = "XML:com.adobe.xmp"
NOT_RECOVERED = "generated, not recovered"

NS_X = "adobe:ns:meta/"
NS_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
NS_IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
NS_XMP = "http://ns.adobe.com/xap/1.0/"
NS_DC = "http://purl.org/dc/elements/1.1/"
#: pulse-sr's own XMP properties (generator name, version); a name, not a web address
NS_PULSE = "urn:pulse-sr:xmp:1.0:"
#: longest XMP packet :func:`read_provenance` parses (ours are about 1.5 KB)
MAX_XMP_CHARS = 256 * 1024
#: longest generator name written (names come from file names and user settings)
MAX_GENERATOR_CHARS = 200


def _check(kind: str, generator: str) -> str:
    if kind not in SOURCE_TYPES:
        raise SettingsError(f"provenance kind {kind!r}: one of {', '.join(SOURCE_TYPES)}",
                            field="kind", value=kind)
    # One printable line: no control characters can reach a text chunk or the XML.
    name = "".join(ch if ch.isprintable() else "?" for ch in str(generator))[:MAX_GENERATOR_CHARS]
    return name or "unknown"


def provenance_text(kind: Kind, generator: str) -> str:
    """The one-sentence statement for a text chunk or GIF comment."""
    name = _check(kind, generator)
    made = f"by pulse-sr {__version__} with the generator {name}"
    if kind == "generated":
        return (f"Face made {made}: {NOT_RECOVERED}. Its downscale matches a low-resolution "
                f"input; it is not a photo of the person in it.")
    return (f"Photo with faces made {made} pasted in: {NOT_RECOVERED}. Their downscales match "
            f"the photo's faces; they are not photos of the people in it.")


def xmp_packet(kind: Kind, generator: str) -> str:
    """The XMP packet (UTF-8 text): IPTC digital source type, creator tool, description."""
    name = _check(kind, generator)
    text = provenance_text(kind, name)
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        f'<x:xmpmeta xmlns:x="{NS_X}">\n'
        f' <rdf:RDF xmlns:rdf="{NS_RDF}">\n'
        '  <rdf:Description rdf:about=""\n'
        f'    xmlns:Iptc4xmpExt="{NS_IPTC_EXT}"\n'
        f'    xmlns:xmp="{NS_XMP}"\n'
        f'    xmlns:dc="{NS_DC}"\n'
        f'    xmlns:pulsesr="{NS_PULSE}"\n'
        f'    Iptc4xmpExt:DigitalSourceType="{SOURCE_TYPES[kind]}"\n'
        f'    xmp:CreatorTool="pulse-sr {__version__}"\n'
        f'    pulsesr:Version="{__version__}"\n'
        f'    pulsesr:Generator={quoteattr(name)}>\n'
        '   <dc:description><rdf:Alt>'
        f'<rdf:li xml:lang="x-default">{escape(text)}</rdf:li>'
        '</rdf:Alt></dc:description>\n'
        '  </rdf:Description>\n'
        ' </rdf:RDF>\n'
        '</x:xmpmeta>\n'
        '<?xpacket end="w"?>'
    )


def _text_chunks(kind: Kind, generator: str) -> list[tuple[str, str]]:
    """``(keyword, text)`` pairs, XMP last (it goes in an iTXt chunk)."""
    return [("Software", f"pulse-sr {__version__}"), ("Comment", provenance_text(kind, generator)),
            (XMP_KEY, xmp_packet(kind, generator))]


def provenance_pnginfo(kind: Kind, generator: str) -> PngImagePlugin.PngInfo:
    """Pillow ``PngInfo`` with the provenance chunks, for ``image.save(path, pnginfo=...)``."""
    info = PngImagePlugin.PngInfo()
    for key, text in _text_chunks(kind, generator):
        if key == XMP_KEY:
            info.add_itxt(key, text, lang="", tkey="", zip=False)
        else:
            info.add_text(key, text)  # Latin-1 tEXt, or iTXt for other characters
    return info


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_with_provenance(png: bytes, kind: Kind, generator: str) -> bytes:
    """PNG bytes with the provenance chunks inserted after the header (pixels unchanged)."""
    sig = b"\x89PNG\r\n\x1a\n"
    if not png.startswith(sig) or png[12:16] != b"IHDR":
        raise ValueError("not PNG bytes")
    end_ihdr = 8 + 8 + struct.unpack(">I", png[8:12])[0] + 4
    chunks = []
    for key, text in _text_chunks(kind, generator):
        k = key.encode("latin-1")
        try:
            if key == XMP_KEY:
                raise UnicodeEncodeError("latin-1", "", 0, 1, "XMP goes in iTXt")
            chunks.append(_chunk(b"tEXt", k + b"\0" + text.encode("latin-1")))
        except UnicodeEncodeError:
            # iTXt: keyword, 0, compression flag 0, method 0, empty language, 0, empty key, 0
            chunks.append(_chunk(b"iTXt", k + b"\0\0\0\0\0" + text.encode("utf-8")))
    return png[:end_ihdr] + b"".join(chunks) + png[end_ihdr:]


def save_png(image: Image.Image, path: str | Path, kind: Kind, generator: str) -> None:
    """Save a Pillow image as PNG with the provenance chunks (not atomic; see
    :func:`png_with_provenance` for bytes to write atomically)."""
    image.save(path, format="PNG", pnginfo=provenance_pnginfo(kind, generator))


def gif_comment(kind: Kind, generator: str) -> bytes:
    """The GIF comment extension text: the statement and the IPTC digital source type."""
    return (f"{provenance_text(kind, generator)} DigitalSourceType: {SOURCE_TYPES[kind]}"
            ).encode("utf-8")


def gif_bytes(frames: list[Image.Image], kind: Kind, generator: str, **save_options: Any) -> bytes:
    """An (animated) GIF of ``frames`` carrying :func:`gif_comment`; ``save_options`` go
    to Pillow (``duration``, ``loop``, ...)."""
    if not frames:
        raise ValueError("a GIF needs at least one frame")
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=len(frames) > 1, append_images=frames[1:],
                   comment=gif_comment(kind, generator), **save_options)
    return buf.getvalue()


def _parse_xmp(xmp: str) -> dict[str, Any]:
    """The fields pulse-sr writes, from an XMP packet (any other XMP gives what it has)."""
    if len(xmp) > MAX_XMP_CHARS or "<!DOCTYPE" in xmp or "<!ENTITY" in xmp:
        return {"xmp_error": "refused: too long or declares entities"}
    try:
        root = ElementTree.fromstring(xmp.replace("\ufeff", ""))
    except ElementTree.ParseError as e:
        return {"xmp_error": f"not XML ({e})"}
    out: dict[str, Any] = {}
    names = {f"{{{NS_IPTC_EXT}}}DigitalSourceType": "digital_source_type",
             f"{{{NS_XMP}}}CreatorTool": "creator_tool",
             f"{{{NS_PULSE}}}Generator": "generator", f"{{{NS_PULSE}}}Version": "version"}
    for desc in root.iter(f"{{{NS_RDF}}}Description"):
        for attr, key in names.items():
            if attr in desc.attrib:
                out[key] = desc.attrib[attr]
        for child in desc:  # the same properties written as elements
            if child.tag in names and child.text:
                out[names[child.tag]] = child.text.strip()
    for li in root.iter(f"{{{NS_RDF}}}li"):
        if li.text and "description" not in out:
            out["description"] = li.text
    return out


def read_provenance(path: str | Path) -> dict[str, Any]:
    """What an image file says about its origin.

    Keys (present when found): ``format``; ``text`` (PNG text chunks, GIF comment);
    ``xmp`` (the raw packet); ``digital_source_type``, ``creator_tool``, ``generator``,
    ``version``, ``description`` (from the XMP; for a GIF the source type is read from
    the comment); ``kind`` (``"generated"``/``"composite"`` for the IPTC codes above);
    ``not_recovered`` (the statement is there). Reads the file's metadata, not its pixels.
    """
    with Image.open(path) as im:  # chunks before the pixel data; nothing is decoded
        fmt = im.format
        info = dict(im.info)
    out: dict[str, Any] = {"format": fmt, "text": {}}
    for key, value in info.items():
        if key == XMP_KEY or key == "xmp":
            out["xmp"] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        elif key == "comment" and isinstance(value, bytes):
            out["text"]["comment"] = value.decode("utf-8", "replace")
        elif isinstance(value, str) and fmt == "PNG":
            out["text"][key] = value
    if "xmp" in out:
        out.update(_parse_xmp(out["xmp"]))
    comment = out["text"].get("comment", "")
    if "digital_source_type" not in out and "DigitalSourceType: " in comment:
        out["digital_source_type"] = comment.rsplit("DigitalSourceType: ", 1)[1].strip()
    for kind, url in SOURCE_TYPES.items():
        if out.get("digital_source_type") == url:
            out["kind"] = kind
    out["not_recovered"] = any(NOT_RECOVERED in v for v in out["text"].values())
    return out

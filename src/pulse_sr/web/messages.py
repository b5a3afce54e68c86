"""The web app's words for the library's structured errors (:mod:`pulse_sr.errors`).

The library raises ``PulseError`` subclasses with a ``kind`` and plain ``data``; this
module picks the HTTP status from the kind alone and renders the page's own hint
("tick “resize”") from the data, never from the library's message text. Where an
error carries no data, the library's one line is shown with server paths removed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pulse_sr.web.records import WebError, user_text

#: HTTP status per error kind: what the user sent (image, size, settings) is a 400; a
#: generator that cannot be loaded is this server's problem for now (503)
STATUS_BY_KIND: dict[str, int] = {"image": 400, "size": 400, "settings": 400, "weights": 503,
                                  "error": 400}


def web_error(e: Any, *, upload: Path | None = None, generator: str | None = None,
              status: int | None = None) -> WebError:
    """A :class:`WebError` for a ``PulseError`` ``e``: status from ``e.kind`` (or ``status``),
    text from ``e.data`` where the kind has a web rendering, else ``e``'s line without paths."""
    kind = getattr(e, "kind", "error")
    data = getattr(e, "data", None) or {}
    code = status if status is not None else STATUS_BY_KIND.get(kind, 400)
    text = None
    if kind == "size":
        text = _size_text(data, generator)
    elif kind == "settings":
        text = _settings_text(data)
    if not text:
        text = _plain(str(e), upload, data)
    return WebError(code, text)


def _plain(message: str, upload: Path | None, data: dict[str, Any]) -> str:
    """The library's line with the server's own file names taken out."""
    for path in (data.get("path"), upload):
        if path:
            message = user_text(message, Path(str(path)))
    return " ".join(message.split()) or "request refused"


def _side(size: Any) -> tuple[int, int] | None:
    """``(w, h)`` from a size given as ``N``, ``[w, h]`` or ``(w, h)``; None if neither."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return int(size[0]), int(size[1])
    return None


def _or_list(items: list[Any]) -> str:
    words = [str(i) for i in items]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _size_text(data: dict[str, Any], generator: str | None) -> str | None:
    """The page's hint for an input size the generator cannot take; None without data."""
    wh = _side(data.get("size"))
    shown = f"{wh[0]}x{wh[1]}" if wh else "this size"
    if data.get("square") is False:
        side = f" {min(wh)}x{min(wh)}" if wh else ""
        return f"the image is {shown}, not square: tick “centre-crop” to use its central{side} square"
    sizes = data.get("valid_sizes")
    if not isinstance(sizes, (list, tuple)) or not sizes:
        return None
    who = generator or "this generator"
    text = f"the image is {shown}; {who} takes {_or_list(list(sizes))} pixel squares"
    nearest = data.get("nearest")
    tail = f" ({nearest}x{nearest})" if isinstance(nearest, int) else ""
    return f"{text}: tick “resize” to resize it to the nearest size{tail}"


def _settings_text(data: dict[str, Any]) -> str | None:
    field, problem = data.get("field"), data.get("problem")
    if isinstance(field, str) and isinstance(problem, str) and problem:
        return f"{field}: {' '.join(problem.split())}"
    return None

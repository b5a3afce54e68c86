"""User-facing errors, structured: a ``kind`` plus the data, and a default one-line message.

The library raises these; each front end renders them in its own words (the CLI adds
flag hints and an exit code, the web app an HTTP status and its own hint). Nothing
below this layer should speak a front end's language ("use --resize").

``kind`` values (stable, front ends switch on them):

- ``image``: an input image cannot be read or used (``path``, ``problem``);
- ``size``: the input size does not fit (``size``, ``valid_sizes``, ``nearest``,
  ``square``: False for a non-square input);
- ``weights``: a weights file/folder cannot be found, read, trusted or matched;
- ``settings``: impossible search settings (``field``, ``value``);
- ``error``: anything else a user should see as one line.
"""
from __future__ import annotations

from typing import Any


class PulseError(Exception):
    """Base class for errors shown to users as one line, without a traceback.

    ``PulseError(message, **data)``: ``str(e)`` is the message; ``e.kind`` and ``e.data``
    (a plain dict, JSON-safe values) are what a front end renders its own text from.
    """

    kind: str = "error"

    def __init__(self, message: str = "", **data: Any) -> None:
        super().__init__(message)
        self.data: dict[str, Any] = dict(data)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def with_message(self, message: str) -> "PulseError":
        """The same error (kind, data) with another message, e.g. without a file name prefix."""
        new = type(self)(message, **self.data)
        return new


class ImageError(PulseError):
    """An input image cannot be read or used (names the file and the problem)."""

    kind = "image"


class WeightsError(PulseError):
    """A weights file or folder cannot be found, read or matched to a network."""

    kind = "weights"


class SizeError(PulseError):
    """The input size does not fit the generator (data says which sizes work)."""

    kind = "size"


class SettingsError(PulseError, ValueError):
    """Impossible search settings (also a ValueError, as before)."""

    kind = "settings"

"""User-facing errors: each carries one clear line for the command line."""
from __future__ import annotations


class PulseError(Exception):
    """Base class for errors shown to users as one line, without a traceback."""


class ImageError(PulseError):
    """An input image cannot be read or used (names the file and the problem)."""


class WeightsError(PulseError):
    """A weights file or folder cannot be found, read or matched to a network."""


class SizeError(PulseError):
    """The input size does not fit the generator (says which sizes work)."""

"""``python -m pulse_sr.cli``."""
from pulse_sr.cli import _console

_console()

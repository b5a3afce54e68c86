"""``python -m pulse_sr``: the ``pulse-sr`` command line."""
from pulse_sr.cli import _console

if __name__ == "__main__":
    _console()

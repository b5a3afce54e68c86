"""Time limits of a download: an overall deadline and a minimum transfer rate.

A server that trickles a byte every half second never trips a socket timeout; these
limits stop it. Standard library only.
"""
from __future__ import annotations

import os
import time
from typing import Callable

from pulse_sr.errors import WeightsError

#: a download (every file of a zoo entry, all retries) stops after this many seconds
MAX_SECONDS_ENV = "PULSE_SR_DOWNLOAD_MAX_SECONDS"
DEFAULT_MAX_SECONDS = 2 * 3600.0
#: ... or when fewer bytes per second than this arrive, averaged over RATE_WINDOW seconds
MIN_RATE_ENV = "PULSE_SR_DOWNLOAD_MIN_RATE"
DEFAULT_MIN_RATE = 10_000.0
RATE_WINDOW_ENV = "PULSE_SR_DOWNLOAD_RATE_WINDOW"
DEFAULT_RATE_WINDOW = 60.0


def _limit(value: float | None, env: str, default: float) -> float:
    """``value`` if given, else ``$env`` if set, else ``default``; a non-negative number."""
    if value is None:
        text = os.environ.get(env, "").strip()
        if not text:
            return default
        try:
            value = float(text)
        except ValueError:
            raise WeightsError(f"{env}={text!r}: not a number") from None
    if not value >= 0 or value != value:
        raise WeightsError(f"download limit {env.removeprefix('PULSE_SR_DOWNLOAD_').lower()} must be a "
                           f"non-negative number, got {value!r}")
    return float(value)


class Clock:
    """The time limits of one download: an overall deadline and a minimum transfer rate.

    ``max_seconds`` (default 2 h, ``$PULSE_SR_DOWNLOAD_MAX_SECONDS``): from the first request to
    the last byte, retries and their waits included; ``min_rate`` bytes per second (default
    10 kB/s, ``$PULSE_SR_DOWNLOAD_MIN_RATE``; 0 turns it off) averaged over ``rate_window``
    seconds (default 60, ``$PULSE_SR_DOWNLOAD_RATE_WINDOW``). Arguments win over the variables.
    """

    def __init__(self, max_seconds: float | None = None, min_rate: float | None = None,
                 rate_window: float | None = None, now: Callable[[], float] = time.monotonic) -> None:
        self.max_seconds = _limit(max_seconds, MAX_SECONDS_ENV, DEFAULT_MAX_SECONDS)
        self.min_rate = _limit(min_rate, MIN_RATE_ENV, DEFAULT_MIN_RATE)
        self.rate_window = max(_limit(rate_window, RATE_WINDOW_ENV, DEFAULT_RATE_WINDOW), 1e-3)
        self.now = now
        self.deadline = now() + self.max_seconds

    def remaining(self) -> float:
        return self.deadline - self.now()

    def check(self, label: str, kept: str = "") -> None:
        """WeightsError once the deadline has passed."""
        if self.remaining() <= 0:
            raise WeightsError(f"downloading {label} stopped: it took longer than {duration(self.max_seconds)}, "
                               f"the time limit ({MAX_SECONDS_ENV}){kept}", max_seconds=self.max_seconds)

    def check_rate(self, window: list[float], got: int, what: str, kept: str = "") -> None:
        """WeightsError when the rate over the window just completed is below ``min_rate``.

        ``window``: ``[start time, bytes received at its start]``, moved on at each completed
        window; ``got``: bytes received so far; ``what``: "LABEL: HOST" for the message."""
        elapsed = self.now() - window[0]
        if elapsed < self.rate_window:
            return
        rate = (got - window[1]) / elapsed
        if rate < self.min_rate:
            label, _, host = what.partition(": ")
            raise WeightsError(f"downloading {label} stopped: {host} sent {rate:,.0f} bytes/s over the last "
                               f"{duration(elapsed)}, below the minimum {self.min_rate:,.0f} bytes/s "
                               f"({MIN_RATE_ENV}){kept}", rate=rate, min_rate=self.min_rate)
        window[:] = [self.now(), float(got)]


def duration(seconds: float) -> str:
    """``7200`` -> ``"2 h"``, ``90`` -> ``"1.5 min"``, ``0.5`` -> ``"0.5 s"``."""
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 60:.3g} min" if seconds >= 60 else f"{seconds:.3g} s"

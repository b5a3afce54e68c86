"""Where pulse-sr keeps its caches: one rule for every cache (standard library + platformdirs only).

Root: ``$PULSE_SR_CACHE`` if set, else the platform's user cache dir for ``pulse-sr``.

- Gaussian fits and search heads: under the root (:mod:`pulse_sr.search.gaussian_fit`,
  :mod:`pulse_sr.search.heads`).
- Zoo checkpoints: ``$PULSE_SR_WEIGHTS`` if set, else ``<root>/weights``.
- Compiled kernels: ``<root>/inductor``, used as ``TORCHINDUCTOR_CACHE_DIR`` unless that
  variable is already set (:mod:`pulse_sr.search.compiled` only sets a default).
"""
from __future__ import annotations

import os
from pathlib import Path

#: environment variable naming the cache root
CACHE_ENV = "PULSE_SR_CACHE"
#: environment variable naming the zoo weights folder (overrides ``<root>/weights``)
WEIGHTS_ENV = "PULSE_SR_WEIGHTS"
APP_NAME = "pulse-sr"


def default_cache_dir() -> Path:
    """``$PULSE_SR_CACHE`` if set, else the platform's user cache dir for ``pulse-sr``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP_NAME))


def weights_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Where zoo checkpoints are kept: ``root``, else ``$PULSE_SR_WEIGHTS``, else ``<cache>/weights``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env).expanduser()
    return default_cache_dir() / "weights"


def inductor_cache_dir() -> str:
    """pulse-sr's folder for compiled kernels: ``<cache root>/inductor`` (a string, as
    ``TORCHINDUCTOR_CACHE_DIR`` takes)."""
    return os.path.join(default_cache_dir(), "inductor")

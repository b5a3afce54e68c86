"""PULSE's Gaussian fit of the mapping network's output, chunked and cached.

PULSE maps ``w = mapping(z)`` through ``LeakyReLU(negative_slope=5)`` (which
undoes the last layer's LeakyReLU(0.2)) and fits a diagonal Gaussian to the
result over many prior samples ``z ~ N(0, I)``. The search then works in the
normalised space ``(leaky_relu(w, 5) - mean) / std``.

``fit_gaussian`` draws exactly the ``z`` PULSE draws (``torch.manual_seed(seed);
torch.randn((samples, z_dim))``) but chunk by chunk, and accumulates in float64,
so memory stays small for the full 1,000,000 samples. ``cached_gaussian_fit``
stores the result per weights file in the user cache directory.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
import torch
import torch.nn.functional as F
from torch import Tensor

from pulse_sr.cache import default_cache_dir

#: CPU ``randn`` fills float tensors in blocks of this many values
_RANDN_BLOCK = 16
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


#: PULSE's recipe: 1,000,000 samples after torch.manual_seed(0)
DEFAULT_SAMPLES = 1_000_000
DEFAULT_SEED = 0


def _chunk_rows(samples: int, z_dim: int, chunk: int) -> list[int]:
    """Row counts per chunk such that drawing ``randn(rows, z_dim)`` chunk after chunk
    from one generator yields exactly one big ``randn(samples, z_dim)``.

    CPU ``randn`` (float32) draws values in blocks of 16, and a tensor of under 16
    values or a ragged tail is drawn differently, so every chunk but the last holds a
    multiple of 16 values and the last holds at least 16 (unless the total is smaller).
    """
    step = _RANDN_BLOCK // math.gcd(_RANDN_BLOCK, z_dim)  # rows per whole number of blocks
    rows = max(step, chunk // step * step)
    sizes = [rows] * (samples // rows)
    if samples % rows:
        sizes.append(samples % rows)
    if len(sizes) > 1 and sizes[-1] * z_dim < _RANDN_BLOCK:
        tail = sizes.pop()
        sizes[-1] += tail
    return sizes


def fit_gaussian(generator: torch.nn.Module, *, samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED,
                 chunk: int = 50_000) -> tuple[Tensor, Tensor]:
    """PULSE's fit: ``mean, std`` (each ``[w_dim]``, float32, CPU) of
    ``leaky_relu(mapping(z), 5)`` over ``z = randn(samples, z_dim)`` after ``manual_seed(seed)``.

    ``std`` is unbiased (``samples - 1``). Never holds more than ``chunk`` samples;
    does not touch torch's global RNG.
    """
    if samples < 2:
        raise ValueError(f"fit_gaussian needs at least 2 samples, got {samples}")
    z_dim = int(generator.z_dim)  # type: ignore[arg-type]
    device = next((p.device for p in generator.parameters()), torch.device("cpu"))
    rng = torch.Generator().manual_seed(seed)
    count = 0
    mean: Tensor | None = None
    m2: Tensor | None = None  # sum of squared deviations from the running mean
    with torch.inference_mode():
        for rows in _chunk_rows(samples, z_dim, chunk):
            z = torch.randn((rows, z_dim), generator=rng)
            y = F.leaky_relu(generator.mapping(z.to(device)), negative_slope=5.0).double().cpu()
            c_mean = y.mean(dim=0)
            c_m2 = (y - c_mean).pow(2).sum(dim=0)
            if mean is None or m2 is None:
                count, mean, m2 = rows, c_mean, c_m2
                continue
            # Chan et al.'s pairwise combination of (count, mean, M2)
            total = count + rows
            delta = c_mean - mean
            mean = mean + delta * (rows / total)
            m2 = m2 + c_m2 + delta.pow(2) * (count * rows / total)
            count = total
    assert mean is not None and m2 is not None
    # outside inference mode: plain tensors the search can use under autograd
    std = (m2 / (count - 1)).sqrt()
    return mean.float().clone(), std.float().clone()


def gaussian_fit_cache_path(weights_hash: str, samples: int, seed: int, cache_dir: str | Path | None = None) -> Path:
    """Where the fit for these weights, sample count and seed is cached."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "gaussian_fit" / f"{weights_hash}-n{samples}-seed{seed}.pt"


def _read_cached(path: Path, w_dim: int) -> tuple[Tensor, Tensor] | None:
    """The cached ``(mean, std)`` or ``None`` if absent, unreadable or malformed."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        mean, std = data["mean"], data["std"]
    except Exception:
        return None
    ok = all(isinstance(t, Tensor) and t.shape == (w_dim,) and t.dtype == torch.float32
             and bool(torch.isfinite(t).all()) for t in (mean, std))
    return (mean, std) if ok else None


def _write_atomic(path: Path, payload: dict) -> None:
    from pulse_sr.io.files import atomic_write_with

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda tmp: torch.save(payload, tmp))


def cached_gaussian_fit(generator: torch.nn.Module, *, samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED,
                        cache_dir: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """``fit_gaussian`` computed once per weights file and cached (``[w_dim]`` mean, std; float32, CPU).

    Cache: ``cache_dir`` or ``$PULSE_SR_CACHE`` or the user cache dir, subfolder
    ``gaussian_fit/``, keyed by ``generator.weights_hash``, ``samples`` and ``seed``.
    Only a SHA-256 ``weights_hash`` is cached (tags such as ``"random-init"`` do not
    identify the weights). A corrupt cache file is recomputed and overwritten; a cache
    that cannot be written is skipped silently.
    """
    weights_hash = str(getattr(generator, "weights_hash", "") or "")
    if not _SHA256_HEX.match(weights_hash):
        return fit_gaussian(generator, samples=samples, seed=seed)
    path = gaussian_fit_cache_path(weights_hash, samples, seed, cache_dir)
    cached = _read_cached(path, int(generator.w_dim))  # type: ignore[arg-type]
    if cached is not None:
        return cached
    mean, std = fit_gaussian(generator, samples=samples, seed=seed)
    store_gaussian_fit(weights_hash, mean, std, samples=samples, seed=seed, cache_dir=cache_dir)
    return mean, std


def store_gaussian_fit(weights_hash: str, mean: Tensor, std: Tensor, *, samples: int, seed: int,
                       cache_dir: str | Path | None = None, overwrite: bool = True) -> None:
    """Put a fit where :func:`cached_gaussian_fit` finds it (nothing for a non-SHA-256 hash).

    ``overwrite=False`` keeps an existing cache file. A cache that cannot be written is
    skipped silently: it only costs a recomputation.
    """
    if not _SHA256_HEX.match(weights_hash):
        return
    path = gaussian_fit_cache_path(weights_hash, samples, seed, cache_dir)
    if path.exists() and not overwrite:
        return
    payload = {"mean": mean, "std": std, "samples": samples, "seed": seed, "weights_hash": weights_hash}
    try:
        _write_atomic(path, payload)
    except OSError:
        pass

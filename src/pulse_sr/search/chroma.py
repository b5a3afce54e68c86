"""The chroma prior: plausible skin colour for faces searched from a grey input.

Matching luma alone leaves chroma free, and an extended-range search can drift to
green or orange skin. The measure (issue 13): the mean chroma ``(Cb, Cr)`` (ITU-R
BT.601, offset 0.5 so both lie in [0, 1]) over the central half of the face (the
central 50% x 50% square of the image). Per generator, a 2-D Gaussian (mean,
covariance) is fitted to that measure over a few thousand of its own seeded samples,
and the plausible region is the Mahalanobis radius that holds 99% of those samples
(the empirical quantile, not the chi-square value: the samples need not be Gaussian).

The fit is cached per weights SHA-256 as a small JSON file (no pickle) under the cache
directory of :mod:`pulse_sr.search.gaussian_fit` (``chroma_prior/``).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

#: BT.601 chroma rows (Cb, Cr) of the RGB -> YCbCr matrix, for values in [0, 1]
_CBCR = ((-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
DEFAULT_SAMPLES = 2000
DEFAULT_SEED = 0
DEFAULT_QUANTILE = 0.99
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def mean_chroma(hr: Tensor) -> Tensor:
    """Mean ``(Cb, Cr)`` over the central half: hr [n, 3, R, R] in [0, 1] -> [n, 2] in [0, 1]."""
    side = hr.shape[-1]
    lo, hi = side // 4, side - side // 4
    rgb = hr[:, :3, lo:hi, lo:hi].mean(dim=(2, 3))  # the transform is linear: mean first
    m = torch.tensor(_CBCR, dtype=hr.dtype, device=hr.device)
    return rgb @ m.T + 0.5


@dataclass
class ChromaPrior:
    """Gaussian of the generator's mean chroma: ``mean`` (Cb, Cr), 2x2 ``cov``; ``radius``: the
    Mahalanobis distance within which ``quantile`` of the fit's samples lie."""

    mean: tuple[float, float]
    cov: tuple[tuple[float, float], tuple[float, float]]
    radius: float
    quantile: float = DEFAULT_QUANTILE
    samples: int = DEFAULT_SAMPLES
    seed: int = DEFAULT_SEED

    def distance(self, hr: Tensor) -> Tensor:
        """Mahalanobis distance of each image's mean chroma: hr [n, 3, R, R] in [0, 1] -> [n] (>= 0)."""
        c = mean_chroma(hr) - torch.tensor(self.mean, dtype=hr.dtype, device=hr.device)
        inv = torch.linalg.inv(torch.tensor(self.cov, dtype=torch.float64)).to(hr.dtype).to(hr.device)
        q = ((c @ inv) * c).sum(dim=1).clamp(min=0)
        # the tiny offset keeps the gradient of sqrt finite at the mean itself
        return (q + 1e-12).sqrt()

    def penalty(self, hr: Tensor) -> Tensor:
        """0 inside the plausible region, ``(d - radius)^2`` outside: hr [n, 3, R, R] -> [n].

        Continuous with a continuous gradient (0 at the border), growing smoothly outside."""
        return (self.distance(hr) - self.radius).clamp(min=0).pow(2)

    def plausible(self, hr: Tensor) -> Tensor:
        """[n] bool: mean chroma inside the region."""
        return self.distance(hr) <= self.radius

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def fit_chroma_prior(generator: torch.nn.Module, *, samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED,
                     quantile: float = DEFAULT_QUANTILE, batch: int = 100) -> ChromaPrior:
    """Fit the prior on ``samples`` images ``generator(z, noise)``, z and noise drawn from a CPU
    ``torch.Generator`` seeded with ``seed`` (torch's global RNG untouched)."""
    if samples < 10:
        raise ValueError(f"fit_chroma_prior needs at least 10 samples, got {samples}")
    rng = torch.Generator().manual_seed(seed)
    dev = next((p.device for p in generator.parameters()), torch.device("cpu"))
    chroma = []
    for start in range(0, samples, batch):
        rows = min(batch, samples - start)
        z = torch.randn(rows, generator.z_dim, generator=rng)
        noise = [torch.randn(rows, *s, generator=rng).to(dev) for s in generator.noise_shapes]
        hr = ((generator(z.to(dev), noise or None) + 1) / 2).clamp(0, 1)
        chroma.append(mean_chroma(hr.float()).double().cpu())
    c = torch.cat(chroma)
    mean = c.mean(dim=0)
    d = c - mean
    cov = d.T @ d / (c.shape[0] - 1)
    q = ((d @ torch.linalg.inv(cov)) * d).sum(dim=1).clamp(min=0).sqrt()
    radius = float(torch.quantile(q, quantile))
    return ChromaPrior(mean=(float(mean[0]), float(mean[1])),
                       cov=((float(cov[0, 0]), float(cov[0, 1])), (float(cov[1, 0]), float(cov[1, 1]))),
                       radius=radius, quantile=quantile, samples=samples, seed=seed)


def chroma_cache_path(weights_hash: str, samples: int, seed: int, cache_dir: str | Path | None = None) -> Path:
    from pulse_sr.search.gaussian_fit import default_cache_dir

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "chroma_prior" / f"{weights_hash}-n{samples}-seed{seed}.json"


def _read(path: Path, quantile: float) -> ChromaPrior | None:
    """The cached prior, or None if absent, unreadable, malformed or not finite (bounded read)."""
    try:
        if not path.is_file() or path.stat().st_size > 4096:
            return None
        data = json.loads(path.read_text())
        prior = ChromaPrior(mean=tuple(map(float, data["mean"])),  # type: ignore[arg-type]
                            cov=tuple(tuple(map(float, row)) for row in data["cov"]),  # type: ignore[arg-type]
                            radius=float(data["radius"]), quantile=float(data["quantile"]),
                            samples=int(data["samples"]), seed=int(data["seed"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    values = [*prior.mean, *prior.cov[0], *prior.cov[1], prior.radius]
    if len(prior.mean) != 2 or len(prior.cov) != 2 or any(len(r) != 2 for r in prior.cov):
        return None
    if not all(math.isfinite(v) for v in values) or prior.quantile != quantile or prior.radius <= 0:
        return None
    return prior


def cached_chroma_prior(generator: torch.nn.Module, *, samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED,
                        quantile: float = DEFAULT_QUANTILE, cache_dir: str | Path | None = None) -> ChromaPrior:
    """:func:`fit_chroma_prior` computed once per weights SHA-256 and cached as JSON; a generator
    without a SHA-256 ``weights_hash`` is fitted every time. A corrupt file is recomputed and
    overwritten; a cache that cannot be written is skipped."""
    weights_hash = str(getattr(generator, "weights_hash", "") or "")
    if not _SHA256_HEX.match(weights_hash):
        return fit_chroma_prior(generator, samples=samples, seed=seed, quantile=quantile)
    path = chroma_cache_path(weights_hash, samples, seed, cache_dir)
    cached = _read(path, quantile)
    if cached is not None:
        return cached
    prior = fit_chroma_prior(generator, samples=samples, seed=seed, quantile=quantile)
    try:
        from pulse_sr.io.files import atomic_write_with

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_with(path, lambda tmp: Path(tmp).write_text(json.dumps(prior.to_dict())))
    except OSError:
        pass
    return prior

"""Linear heads that read a low-resolution image off a StyleGAN's intermediate features.

The PULSE loss only sees the face after a bicubic downscale to ``h x h`` (16 or
32 pixels). StyleGAN1 (as used by PULSE) has a single toRGB at full resolution,
so a synthesis truncated at side ``s`` gives features, not an image. A head is a
1x1 linear map (``[3, C]`` weight, ``[3]`` bias) applied to the features after
they are bicubically downscaled from ``s`` to ``h``; it is fitted once per weights
file by ridge least squares to predict the true ``h x h`` downscale of the final
image (in [0, 1], unclamped), over latents drawn like the search's start.

Because the bicubic downscale is linear and applied per channel, "head then
downscale" equals "downscale then head": the fit and the prediction both work on
``h x h`` features, which is also the cheaper order.

Heads are cached per weights file, Gaussian fit, side, ``h``, sample count and seed
beside the Gaussian fit (``<cache>/coarse_head/``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from pulse_sr.degradations.bicubic import BicubicDownsample
from pulse_sr.search.gaussian_fit import _SHA256_HEX, default_cache_dir

#: ridge strength relative to the mean diagonal of the normal matrix
RIDGE = 1e-4
DEFAULT_HEAD_SAMPLES = 32
DEFAULT_HEAD_SEED = 12345


@dataclass
class CoarseHead:
    """``predict(features [N, C, side, side]) -> [N, 3, lr_side, lr_side]`` in about [0, 1].

    weight [3, C], bias [3] (float32); rmse: root mean squared error of the fit on its
    samples, in [0, 1] pixel units (how far the head alone is from the true downscale).
    """

    side: int
    lr_side: int
    weight: Tensor
    bias: Tensor
    rmse: float

    def to(self, device: torch.device | str) -> "CoarseHead":
        return CoarseHead(self.side, self.lr_side, self.weight.to(device), self.bias.to(device), self.rmse)

    def pool(self, features: Tensor) -> Tensor:
        """``[N, C, side, side] -> [N, C, lr_side, lr_side]`` (bicubic, as the loss downscales)."""
        factor = self.side // self.lr_side
        if factor == 1:
            return features
        return BicubicDownsample(factor).to(features.device)(features)

    def predict(self, features: Tensor) -> Tensor:
        pooled = self.pool(features)
        return torch.einsum("nchw,oc->nohw", pooled, self.weight) + self.bias.view(1, -1, 1, 1)


def _sample_ws(generator, gaussian_fit: tuple[Tensor, Tensor] | None, rng: torch.Generator, batch: int) -> Tensor:
    """Latents like the search's start: per-layer ``randn`` through the Gaussian fit (``[B, num_ws, w_dim]``)."""
    latent = torch.randn((batch, generator.num_ws, generator.w_dim), generator=rng)
    if gaussian_fit is None:
        return latent
    mean, std = gaussian_fit
    return F.leaky_relu(latent * std + mean, negative_slope=0.2)


def fit_head(generator, side: int, lr_side: int, *, gaussian_fit: tuple[Tensor, Tensor] | None = None,
             samples: int = DEFAULT_HEAD_SAMPLES, seed: int = DEFAULT_HEAD_SEED, batch: int = 2) -> CoarseHead:
    """Fit the head for features at ``side`` predicting the ``lr_side`` downscale of the final image.

    Runs ``samples`` full forward passes (no gradient) of ``generator`` (which must offer
    ``synthesis_with_features``); accumulates the normal equations in float64.
    """
    R = int(generator.resolution)
    if side % lr_side or R % lr_side:
        raise ValueError(f"head: side {side} and resolution {R} must be multiples of the input side {lr_side}")
    dev = next((p.device for p in generator.parameters()), torch.device("cpu"))
    down_img = BicubicDownsample(R // lr_side).to(dev)
    rng = torch.Generator().manual_seed(seed)
    channels = int(generator.feature_channels(side))
    xtx = torch.zeros((channels + 1, channels + 1), dtype=torch.float64)
    xty = torch.zeros((channels + 1, 3), dtype=torch.float64)
    rows: list[tuple[Tensor, Tensor]] = []
    head = CoarseHead(side, lr_side, torch.zeros(3, channels), torch.zeros(3), 0.0)
    done = 0
    with torch.inference_mode():
        while done < samples:
            b = min(batch, samples - done)
            ws = _sample_ws(generator, gaussian_fit, rng, b).to(dev)
            noise = [torch.randn((b, *shape), generator=rng).to(dev) for shape in generator.noise_shapes]
            img, feat = generator.synthesis_with_features(ws, noise, side)
            y = down_img((img + 1) / 2)  # [b, 3, h, h]
            x = head.pool(feat)  # [b, C, h, h]
            x2 = torch.cat([x, torch.ones_like(x[:, :1])], 1).permute(0, 2, 3, 1).reshape(-1, channels + 1).double().cpu()
            y2 = y.permute(0, 2, 3, 1).reshape(-1, 3).double().cpu()
            xtx += x2.T @ x2
            xty += x2.T @ y2
            rows.append((x2, y2))
            done += b
    ridge = RIDGE * float(xtx.diagonal().mean())
    sol = torch.linalg.solve(xtx + ridge * torch.eye(channels + 1, dtype=torch.float64), xty)  # [C+1, 3]
    sq = sum(float((x2 @ sol - y2).pow(2).sum()) for x2, y2 in rows)
    count = sum(y2.numel() for _, y2 in rows)
    weight = sol[:channels].T.float().contiguous()
    bias = sol[channels].float().contiguous()
    return CoarseHead(side, lr_side, weight, bias, (sq / count) ** 0.5)


def _fit_tag(gaussian_fit: tuple[Tensor, Tensor] | None) -> str:
    if gaussian_fit is None:
        return "nofit"
    h = hashlib.sha256()
    for t in gaussian_fit:
        h.update(t.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def head_cache_path(weights_hash: str, side: int, lr_side: int, samples: int, seed: int, fit_tag: str,
                    cache_dir: str | Path | None = None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "coarse_head" / f"{weights_hash}-s{side}-h{lr_side}-n{samples}-seed{seed}-fit{fit_tag}.pt"


def cached_head(generator, side: int, lr_side: int, *, gaussian_fit: tuple[Tensor, Tensor] | None = None,
                samples: int = DEFAULT_HEAD_SAMPLES, seed: int = DEFAULT_HEAD_SEED,
                cache_dir: str | Path | None = None) -> CoarseHead:
    """:func:`fit_head` computed once per weights file (SHA-256 ``weights_hash``) and cached.

    A missing, corrupt or mismatched cache file is recomputed; an unwritable cache is skipped.
    """
    weights_hash = str(getattr(generator, "weights_hash", "") or "")
    if not _SHA256_HEX.match(weights_hash):
        return fit_head(generator, side, lr_side, gaussian_fit=gaussian_fit, samples=samples, seed=seed)
    path = head_cache_path(weights_hash, side, lr_side, samples, seed, _fit_tag(gaussian_fit), cache_dir)
    channels = int(generator.feature_channels(side))
    if path.is_file():
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            weight, bias, rmse = data["weight"], data["bias"], float(data["rmse"])
            if weight.shape == (3, channels) and bias.shape == (3,) and bool(torch.isfinite(weight).all()):
                return CoarseHead(side, lr_side, weight.float(), bias.float(), rmse)
        except Exception:
            pass
    head = fit_head(generator, side, lr_side, gaussian_fit=gaussian_fit, samples=samples, seed=seed)
    try:
        from pulse_sr.io.files import atomic_write_with

        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"weight": head.weight, "bias": head.bias, "rmse": head.rmse, "side": side, "lr_side": lr_side}
        atomic_write_with(path, lambda tmp: torch.save(payload, tmp))
    except OSError:
        pass
    return head

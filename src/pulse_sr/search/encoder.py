"""A learned start: a small CNN that predicts a search latent from the low-resolution input.

Trained from the generator's own samples only (no data set): ``z -> G(z) -> A(G(z)) -> encoder
-> latent``, with a cosine loss against the search latent that made the image (the direction is
what matters: the search keeps each latent row on its sphere). The search latent is

- without a mapping network (DCGAN): ``z`` rescaled onto the sphere of radius ``sqrt(w_dim)``;
- with one: ``u = (leaky_relu(w, 5) - mean) / std``, the coordinates the search moves in
  (``w = mapping(z)``, ``(mean, std)`` the Gaussian fit), tiled over the ``num_ws`` layers.

``encoder_start`` puts ``n`` candidates around the prediction on the sphere, each perturbed by its
own seeded draw, so candidates stay distinct and a seed reproduces them.

Files (safetensors, no pickle): tensors ``"<operator>-x<factor>/<param>"`` stored as float16, and
in the metadata field ``pulse_sr_encoder`` a JSON object ``{"format_version": 1, "generator":
name, "weights_sha256": hash, "w_dim", "num_ws", "has_mapping", "resolution", "entries":
{"bicubic-x4": {"operator", "factor", "side", "width", "hidden", "seed", "steps", ...}}}``.
A file for other generator weights (another hash) is refused.
"""
from __future__ import annotations

import json
import math
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pulse_sr.errors import SettingsError, WeightsError
from pulse_sr.generators.base import FaceGenerator
from pulse_sr.search.seeds import stream_seed  # noqa: F401 - re-exported

OPERATORS = ("bicubic", "box")
FORMAT_VERSION = 1
METADATA_KEY = "pulse_sr_encoder"
#: bounds checked before anything is allocated from a file's numbers
MAX_FILE_BYTES = 64 << 20
MAX_HEADER_BYTES = 1 << 20
MAX_WIDTH, MAX_HIDDEN, MAX_W_DIM, MAX_SIDE = 256, 4096, 4096, 1024
PACKAGE_DIR = Path(__file__).resolve().parents[1] / "encoders"


def make_operator(name: str, factor: int) -> Callable[[Tensor], Tensor]:
    """The degradation ``[N, 3, R, R] -> [N, 3, R/f, R/f]``: PULSE's bicubic or a box average."""
    if name == "bicubic":
        from pulse_sr.degradations.bicubic import BicubicDownsample

        return BicubicDownsample(factor)
    if name == "box":
        return lambda x: F.avg_pool2d(x, factor)
    raise SettingsError(f"no encoder for operator {name!r}; known: {', '.join(OPERATORS)}",
                        field="operator", value=name)


class Encoder(nn.Module):
    """LR image ``[N, 3, side, side]`` in [0, 1] -> latent direction ``[N, w_dim]`` (unnormalised).

    Stride-2 3x3 convolutions down to 4x4 (or less), one 3x3 and one 1x1 convolution, pooled to
    4x4, then a two-layer head. About 0.1 M parameters at ``width`` 32.
    """

    def __init__(self, side: int, w_dim: int, *, width: int = 32, hidden: int = 256) -> None:
        super().__init__()
        self.side, self.w_dim, self.width, self.hidden = side, w_dim, width, hidden
        layers: list[nn.Module] = []
        channels, s = 3, side
        out = width
        while s > 4:
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            channels, out, s = out, min(2 * out, 2 * width), (s + 1) // 2
        layers += [nn.Conv2d(channels, 2 * width, 3, padding=1), nn.LeakyReLU(0.2),
                   nn.Conv2d(2 * width, width, 1), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(16 * width, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, w_dim))

    def forward(self, lr: Tensor) -> Tensor:
        h = self.features(lr * 2 - 1)
        h = F.adaptive_avg_pool2d(h, 4)
        return self.head(h.flatten(1))

    def config(self) -> dict[str, int]:
        return {"side": self.side, "width": self.width, "hidden": self.hidden}


# -- samples ---------------------------------------------------------------------------------
@torch.no_grad()
def sample_latents(generator: FaceGenerator, n: int, rng: torch.Generator,
                   gaussian_fit: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """``n`` generator samples: (search latent ``[n, w_dim]``, image ``[n, 3, R, R]`` in [0, 1]).

    Without a mapping the latent is ``z`` on the ``sqrt(w_dim)`` sphere; with one it is
    ``(leaky_relu(mapping(z), 5) - mean) / std`` (``gaussian_fit`` required). Noise maps: random.
    """
    dev = generator._device()
    z = torch.randn((n, generator.z_dim), generator=rng).to(dev)
    noise = [torch.randn((n, *s), generator=rng).to(dev) for s in generator.noise_shapes] or None
    if generator.has_mapping:
        if gaussian_fit is None:
            raise ValueError("a generator with a mapping network needs its Gaussian fit")
        w = generator.mapping(z)
        mean, std = (t.to(dev, torch.float32) for t in gaussian_fit)
        latent = (F.leaky_relu(w, 5.0) - mean) / std
    else:
        w = latent = z * (generator.w_dim**0.5 / z.norm(dim=-1, keepdim=True))
    ws = w[:, None, :].expand(-1, generator.num_ws, -1)
    hr = ((generator.synthesis(ws, noise) + 1) / 2).clamp(0, 1)
    return latent.float().cpu(), hr.float().cpu()


def degrade(hr: Tensor, operator_name: str, factor: int, *, quantize: bool = True) -> Tensor:
    """``A(hr)`` ``[N, 3, R/f, R/f]``, rounded to 8 bits as a saved input would be (when ``quantize``)."""
    with torch.no_grad():
        lr = make_operator(operator_name, factor)(hr).clamp(0, 1)
    return (lr * 255).round() / 255 if quantize else lr


def cosine_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean ``1 - cos(pred, target)`` over rows ``[N, D]``: 0 when the directions agree, 1 when orthogonal."""
    return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()


@dataclass
class TrainResult:
    """A trained encoder and its record: losses per logged step, held-out loss first and last."""

    encoder: Encoder
    log: list[str]
    first_loss: float
    last_loss: float
    steps: int
    seed: int


def train_encoder(
    generator: FaceGenerator, operator_name: str, factor: int, *, steps: int = 1000, batch: int = 64,
    seed: int = 0, lr: float = 2e-3, width: int = 32, hidden: int = 256,
    pool: tuple[Tensor, Tensor] | None = None, held_out: tuple[Tensor, Tensor] | None = None,
    gaussian_fit: tuple[Tensor, Tensor] | None = None, log_every: int = 100,
    log: Callable[[str], None] | None = None, device: str | torch.device = "cpu",
) -> TrainResult:
    """Train one encoder for ``operator_name`` at ``factor`` with Adam and a cosine learning rate.

    ``pool``: (latents ``[P, w_dim]``, images ``[P, 3, R, R]``) drawn once and shared by several
    encoders (batches are seeded draws from it); without it each step samples the generator.
    The encoder trains on ``device`` and is returned on the CPU.
    ``held_out`` (default: 256 fresh samples) gives ``first_loss``/``last_loss``, the cosine loss before
    and after training; the state with the lowest held-out loss at a log point is kept.
    """
    make_operator(operator_name, factor)
    side = generator.resolution // factor
    if side < 1 or side * factor != generator.resolution:
        raise SettingsError(f"factor {factor} does not divide the resolution {generator.resolution}",
                            field="factor", value=factor)
    rng = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dev = torch.device(device)
    model = Encoder(side, generator.w_dim, width=width, hidden=hidden).to(dev)
    if held_out is None:
        held_out = sample_latents(generator, 256, torch.Generator().manual_seed(stream_seed("held-out", seed)), gaussian_fit)
    val_x, val_y = degrade(held_out[1], operator_name, factor).to(dev), held_out[0].to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    lines: list[str] = []

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            value = float(cosine_loss(model(val_x), val_y))
        model.train()
        return value

    first = best = evaluate()
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        if pool is not None:
            idx = torch.randint(len(pool[0]), (batch,), generator=rng)
            y, hr = pool[0][idx], pool[1][idx].float()
        else:
            y, hr = sample_latents(generator, batch, rng, gaussian_fit)
        loss = cosine_loss(model(degrade(hr.to(dev), operator_name, factor)), y.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            val = evaluate()
            if val < best:
                best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
            lines.append(f"{operator_name}-x{factor} step {step + 1}/{steps} train {loss.item():.4f} "
                         f"held-out {val:.4f} ({time.perf_counter() - start:.0f} s)")
            if log is not None:
                log(lines[-1])
    model.load_state_dict(best_state)
    model.cpu().eval().requires_grad_(False)
    return TrainResult(model, lines, first, best, steps, seed)


# -- files -----------------------------------------------------------------------------------
def entry_key(operator_name: str, factor: int) -> str:
    return f"{operator_name}-x{factor}"


def save_encoders(path: str | Path, generator: FaceGenerator, trained: dict[tuple[str, int], TrainResult],
                  extra: dict[str, Any] | None = None) -> None:
    """Write encoders for ``generator`` (keyed by (operator, factor)) to one safetensors file."""
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    entries: dict[str, Any] = {}
    for (op, factor), res in sorted(trained.items()):
        key = entry_key(op, factor)
        for name, value in res.encoder.state_dict().items():
            tensors[f"{key}/{name}"] = value.detach().to("cpu", torch.float16).contiguous()
        entries[key] = {"operator": op, "factor": factor, **res.encoder.config(), "seed": res.seed,
                        "steps": res.steps, "held_out_cosine_loss": [round(res.first_loss, 5), round(res.last_loss, 5)]}
    meta = {"format_version": FORMAT_VERSION, "generator": generator.name, "weights_sha256": generator.weights_hash,
            "w_dim": generator.w_dim, "num_ws": generator.num_ws, "has_mapping": bool(generator.has_mapping),
            "resolution": generator.resolution, "entries": entries, **(extra or {})}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})


def read_encoder_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(metadata, tensors) of an encoder file; sizes bounded before reading, no pickle.

    Raises WeightsError for a missing, oversized, corrupt or foreign file.
    """
    from safetensors.torch import load as load_bytes

    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise WeightsError(f"{path}: encoder file of {size} bytes is over the {MAX_FILE_BYTES} limit", path=str(path))
        data = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"{path}: cannot read encoder file ({e.strerror or e})", path=str(path)) from None
    if len(data) < 8:
        raise WeightsError(f"{path}: not an encoder file (too short)", path=str(path))
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > min(MAX_HEADER_BYTES, len(data) - 8):
        raise WeightsError(f"{path}: not an encoder file (bad safetensors header length)", path=str(path))
    try:
        header = json.loads(data[8:8 + header_len])
        meta = json.loads(header["__metadata__"][METADATA_KEY])
        tensors = load_bytes(data)
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
        raise WeightsError(f"{path}: not a pulse-sr encoder file ({type(e).__name__})", path=str(path)) from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION or not isinstance(meta.get("entries"), dict):
        raise WeightsError(f"{path}: not a pulse-sr encoder file (format {meta.get('format_version')!r})"
                           if isinstance(meta, dict) else f"{path}: not a pulse-sr encoder file", path=str(path))
    return meta, tensors


def _int_in(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def encoder_from_file(path: str | Path, generator: FaceGenerator, operator_name: str, factor: int) -> Encoder | None:
    """The encoder for (operator, factor) in ``path``; None when the file has no such entry.

    Raises WeightsError when the file was made for other weights (``weights_sha256``) or a
    different latent layout, or its shapes do not match the network its metadata describes.
    """
    meta, tensors = read_encoder_file(path)
    if meta.get("weights_sha256") != generator.weights_hash:
        raise WeightsError(
            f"{path}: encoder trained for weights {str(meta.get('weights_sha256'))[:12]}..., not these "
            f"({generator.weights_hash[:12]}...); train one with pulse-sr train-encoder",
            path=str(path), expected=generator.weights_hash, found=meta.get("weights_sha256"))
    if meta.get("w_dim") != generator.w_dim or meta.get("resolution") != generator.resolution:
        raise WeightsError(f"{path}: encoder for w_dim {meta.get('w_dim')} at {meta.get('resolution')} px, "
                           f"the generator has {generator.w_dim} at {generator.resolution} px", path=str(path))
    key = entry_key(operator_name, factor)
    entry = meta["entries"].get(key)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise WeightsError(f"{path}: entry {key} is not an object", path=str(path))
    side, width, hidden = entry.get("side"), entry.get("width"), entry.get("hidden")
    if not (_int_in(side, 1, MAX_SIDE) and _int_in(width, 1, MAX_WIDTH) and _int_in(hidden, 1, MAX_HIDDEN)
            and _int_in(generator.w_dim, 1, MAX_W_DIM) and side * factor == generator.resolution):
        raise WeightsError(f"{path}: entry {key} has impossible sizes {entry}", path=str(path))
    model = Encoder(side, generator.w_dim, width=width, hidden=hidden)
    expected = model.state_dict()
    prefix = f"{key}/"
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    bad = sorted(set(expected) ^ set(state)) + [
        k for k in expected if k in state and (tuple(state[k].shape) != tuple(expected[k].shape)
                                              or not state[k].dtype.is_floating_point)]
    if bad:
        raise WeightsError(f"{path}: entry {key} does not match its network ({len(bad)} tensors: {', '.join(bad[:3])})",
                           path=str(path))
    bad_values = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if bad_values:
        raise WeightsError(f"{path}: entry {key} has non-finite values in {bad_values[0]}", path=str(path))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval().requires_grad_(False)


def shipped_encoder_path(generator: FaceGenerator, operator_name: str) -> Path | None:
    """The packaged file for ``generator.name`` and the operator, if one ships."""
    if not generator.name or "/" in generator.name or "\\" in generator.name:
        return None
    path = PACKAGE_DIR / f"{generator.name}-{operator_name}.safetensors"
    return path if path.is_file() else None


def load_encoder(generator: FaceGenerator, operator_name: str, factor: int, *,
                 path: str | Path | None = None) -> Encoder | None:
    """The encoder for this generator, operator and factor: from ``path`` or the package.

    None where none ships or the file has no entry for (operator, factor): the search then keeps
    PULSE's random starts. A file for other weights raises WeightsError.
    """
    if operator_name not in OPERATORS:
        return None
    if path is None:
        path = shipped_encoder_path(generator, operator_name)
        if path is None:
            return None
    return encoder_from_file(path, generator, operator_name, factor)


# -- the start -------------------------------------------------------------------------------
#: about 50 degrees from the prediction: on 8 planted 16 px faces (n=4, lr 1.5, 50 steps) 0.5 left the
#: candidates' pairwise distance at 0.051, 1.2 at 0.059 (PULSE's random starts after 100 steps: 0.058);
#: within eps 7/8 faces, 21/32 candidates either way (random, 100 steps: 8/8, 24/32) at half the steps
DEFAULT_SPREAD = 1.2


def encoder_start(
    generator: FaceGenerator, target: Tensor, *, operator_name: str = "bicubic", n: int = 1, seed: int = 0,
    spread: float = DEFAULT_SPREAD, encoder: Encoder | None = None, tile: bool = False,
) -> Tensor | None:
    """Start latents ``[n, L, w_dim]`` around the encoder's prediction for ``target`` ``[3, h, w]`` in [0, 1].

    Each latent row has norm ``sqrt(w_dim)`` (the search's sphere for a generator without mapping;
    a typical draw's norm with one). Candidate k is ``sphere(p + spread * e_k)`` with ``p`` the
    prediction on the sphere and ``e_k ~ N(0, I)`` seeded ``stream_seed("encoder-start", seed, k)`` (norm about
    ``sqrt(w_dim)`` too, so ``spread`` is about the tangent of the angle to ``p``: 1.2 is ~50 degrees).
    L is 1 with ``tile`` else ``generator.num_ws`` (the same row repeated). Returns None when no
    encoder ships for the operator and factor (use PULSE's random starts). On the target's device.
    """
    if target.ndim != 3 or target.shape[0] != 3 or target.shape[1] != target.shape[2]:
        raise SettingsError(f"target must be [3, h, h], got {list(target.shape)}", field="target", value=list(target.shape))
    if not (isinstance(n, int) and n >= 1 and isinstance(seed, int) and seed >= 0):
        raise SettingsError(f"need n >= 1 and seed >= 0, got n={n!r}, seed={seed!r}", field="n", value=n)
    if not (spread >= 0 and math.isfinite(spread)):
        raise SettingsError(f"spread must be a finite number >= 0, got {spread!r}", field="spread", value=spread)
    side = target.shape[-1]
    factor = generator.resolution // side
    if factor * side != generator.resolution:
        raise SettingsError(f"a {side} px input does not divide {generator.resolution} px", field="size", value=side)
    if encoder is None:
        encoder = load_encoder(generator, operator_name, factor)
        if encoder is None:
            return None
    if encoder.side != side:
        raise SettingsError(f"encoder for {encoder.side} px inputs, got {side} px", field="size", value=side)
    radius = generator.w_dim**0.5
    with torch.no_grad():
        pred = encoder(target.detach().float().cpu().clamp(0, 1)[None])[0]
        pred = pred * (radius / (pred.norm() + 1e-12))
        rows = []
        for k in range(n):
            e = torch.randn(generator.w_dim, generator=torch.Generator().manual_seed(stream_seed("encoder-start", seed, k)))
            v = pred + spread * e
            rows.append(v * (radius / (v.norm() + 1e-12)))
        latent = torch.stack(rows)[:, None, :]
    layers = 1 if tile else generator.num_ws
    return latent.expand(-1, layers, -1).contiguous().to(target.device)


def train_encoders(
    generator: FaceGenerator, operator_names: list[str], factors: list[int], *, pool_size: int = 8192,
    steps: int = 1000, batch: int = 64, seed: int = 0, gaussian_fit: tuple[Tensor, Tensor] | None = None,
    log: Callable[[str], None] | None = None, chunk: int = 64, device: str | torch.device = "cpu",
) -> dict[tuple[str, int], TrainResult]:
    """Train one encoder per (operator, factor) on one shared pool of ``pool_size`` generator samples.

    The pool (seeded ``seed``) is drawn once, ``chunk`` images at a time; its images are kept as
    float16 (``[P, 3, R, R]``: ``6 * P * R**2`` bytes). The held-out set is ``min(256, max(32, P // 8))``
    more samples (256 for the shipped files' pool of 8192).
    """
    if generator.has_mapping and gaussian_fit is None:
        from pulse_sr.search.gaussian_fit import cached_gaussian_fit

        gaussian_fit = cached_gaussian_fit(generator)
    rng = torch.Generator().manual_seed(stream_seed("pool", seed))
    latents, images = [], []
    start = time.perf_counter()
    for lo in range(0, pool_size, chunk):
        y, hr = sample_latents(generator, min(chunk, pool_size - lo), rng, gaussian_fit)
        latents.append(y)
        images.append(hr.half())
    pool = (torch.cat(latents), torch.cat(images))
    held = min(256, max(32, pool_size // 8))
    held_out = sample_latents(generator, held, torch.Generator().manual_seed(stream_seed("held-out", seed)), gaussian_fit)
    if log is not None:
        log(f"pool: {pool_size} samples of {generator.name or generator.backend} (seed {seed}) "
            f"in {time.perf_counter() - start:.0f} s")
    out = {}
    for op in operator_names:
        for factor in factors:
            out[(op, factor)] = train_encoder(generator, op, factor, steps=steps, batch=batch, seed=seed,
                                              pool=pool, held_out=held_out, gaussian_fit=gaussian_fit, log=log,
                                              device=device)
    return out

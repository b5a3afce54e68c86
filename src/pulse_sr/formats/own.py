"""pulse-sr's own weights format: one ``.safetensors`` file per generator.

The file holds the generator's full state dict (floating tensors as float32,
other tensors unchanged) and, in the safetensors metadata field ``pulse_sr``,
a JSON object::

    {"format_version": 1,
     "backend": "dcgan" | "stylegan1" | "stylegan2" | "stylegan3",
     "constructor": {...},          # exact keyword arguments that rebuild the module
     "name": "...",
     "source": {"path": "<basename of the original weights>", "sha256": "<their hash>"},
     "gaussian_fit": {"samples": int, "seed": int, "mean": [...], "std": [...]} or null,
     "pulse_sr_version": "..."}

Loading runs no pickle at all (safetensors + json). A loaded generator keeps
the *original* weights' hash (``weights_hash``), so Gaussian-fit caches carry
over; a stored fit seeds that cache when it has no entry yet.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

import pulse_sr
from pulse_sr.errors import WeightsError
from pulse_sr.generators.base import FaceGenerator, state_dict_mismatch

FORMAT_VERSION = 1
METADATA_KEY = "pulse_sr"
SUFFIX = ".safetensors"
BACKENDS = ("dcgan", "stylegan1", "stylegan2", "stylegan3")


# -- constructor arguments, derived from an instance ---------------------------------------
def _dcgan_constructor(gen: Any) -> dict[str, Any]:
    # main.0: ConvTranspose2d(z_dim, base*8, ...); main.12: ConvTranspose2d(base, 3, ...)
    return {"z_dim": int(gen.z_dim), "base_channels": int(gen.main[12].weight.shape[0])}


def _stylegan1_constructor(gen: Any) -> dict[str, Any]:
    syn = gen.synthesis_net
    log2 = int(math.log2(gen.resolution))
    # channels per stage s = 1 .. log2-1: nf(s) = min(int(fmap_base / 2**s), fmap_max)
    channels = [int(block.epi2.noise.weight.shape[0]) for block in syn.blocks.values()]
    fmap_max = max(channels)

    def nf_list(fmap_base: int) -> list[int]:
        return [min(int(fmap_base / 2.0**s), fmap_max) for s in range(1, log2)]

    candidates = [8192] + [c * 2**s for s, c in enumerate(channels, start=1)]
    fmap_base = next((b for b in candidates if nf_list(b) == channels), None)
    if fmap_base is None:  # cannot happen for a module built by StyleGAN1Generator
        raise ValueError(f"stylegan1: cannot derive fmap_base from channels {channels}")
    return {
        "resolution": int(gen.resolution),
        "w_dim": int(gen.w_dim),
        "z_dim": int(gen.z_dim),
        "mapping_layers": int(gen.mapping_net.num_layers),
        "fmap_base": int(fmap_base),
        "fmap_max": int(fmap_max),
    }


def _stylegan2_constructor(gen: Any) -> dict[str, Any]:
    from pulse_sr.generators.stylegan2 import RESAMPLE_FILTER
    from pulse_sr.generators.stylegan2_ops import setup_filter

    syn, mapping = gen.synthesis_net, gen.mapping_net
    blocks = list(syn.blocks())
    channels = {b.resolution: int(b.conv1.weight.shape[0]) for b in blocks}
    channel_max = max(channels.values())

    def channel_dict(base: int) -> dict[int, int]:
        return {r: min(base // r, channel_max) for r in channels}

    candidates = [32768] + [c * r for r, c in sorted(channels.items(), reverse=True)]
    channel_base = next((b for b in candidates if channel_dict(b) == channels), None)
    if channel_base is None:
        raise ValueError(f"stylegan2: cannot derive channel_base from channels {channels}")
    buf = blocks[0].resample_filter.detach().cpu().float()
    if tuple(buf.shape) == (len(RESAMPLE_FILTER),) * 2 and torch.equal(buf, setup_filter(RESAMPLE_FILTER)):
        resample_filter = [float(t) for t in RESAMPLE_FILTER]
    else:  # outer(f, f) / sum(f)^2: its row sums are f / sum(f), which rebuilds the same filter
        resample_filter = [float(t) for t in buf.sum(dim=1).tolist()]
    layer = blocks[0].conv1
    w_avg_beta = mapping.w_avg_beta
    return {
        "z_dim": int(gen.z_dim),
        "w_dim": int(gen.w_dim),
        "img_resolution": int(gen.img_resolution),
        "img_channels": int(gen.img_channels),
        "c_dim": 0,
        "channel_base": int(channel_base),
        "channel_max": int(channel_max),
        "num_fp16_res": int(gen.num_fp16_res),
        "conv_clamp": None if layer.conv_clamp is None else float(layer.conv_clamp),
        "architecture": "skip",
        "resample_filter": resample_filter,
        "use_noise": bool(syn.use_noise),
        "activation": "lrelu",
        "mapping_kwargs": {
            "num_layers": int(mapping.num_layers),
            "lr_multiplier": float(mapping.fc0.lr_multiplier),
            "w_avg_beta": None if w_avg_beta is None else float(w_avg_beta),
        },
        "fused_modconv": bool(gen.fused_modconv),
    }


def generator_constructor(gen: FaceGenerator) -> tuple[str, dict[str, Any]]:
    """``(backend, constructor kwargs)`` that rebuild a module with ``gen``'s architecture."""
    from pulse_sr.generators.dcgan import DCGANGenerator
    from pulse_sr.generators.stylegan1 import StyleGAN1Generator
    from pulse_sr.generators.stylegan2 import StyleGAN2Generator
    from pulse_sr.generators.stylegan3 import StyleGAN3Generator

    if isinstance(gen, DCGANGenerator):
        return "dcgan", _dcgan_constructor(gen)
    if isinstance(gen, StyleGAN1Generator):
        return "stylegan1", _stylegan1_constructor(gen)
    if isinstance(gen, StyleGAN2Generator):
        return "stylegan2", _stylegan2_constructor(gen)
    if isinstance(gen, StyleGAN3Generator):  # it records its own (JSON-safe) constructor arguments
        return "stylegan3", json.loads(json.dumps(gen.constructor_kwargs))
    raise WeightsError(f"cannot save a {type(gen).__name__} (backend {getattr(gen, 'backend', '?')!r}): "
                       f"supported backends are {', '.join(BACKENDS)}")


def _build(backend: str, constructor: Mapping[str, Any]) -> FaceGenerator:
    """A fresh module (its random init does not touch torch's global RNG)."""
    with torch.random.fork_rng(devices=[]):
        if backend == "dcgan":
            from pulse_sr.generators.dcgan import DCGANGenerator

            return DCGANGenerator(**constructor)
        if backend == "stylegan1":
            from pulse_sr.generators.stylegan1 import StyleGAN1Generator

            return StyleGAN1Generator(**constructor, init_generator=torch.Generator().manual_seed(0))
        if backend == "stylegan3":
            from pulse_sr.generators.stylegan3 import StyleGAN3Generator

            return StyleGAN3Generator(**constructor, init_generator=torch.Generator().manual_seed(0))
        from pulse_sr.generators.stylegan2 import StyleGAN2Generator

        return StyleGAN2Generator(**constructor, init_generator=torch.Generator().manual_seed(0))


# -- saving --------------------------------------------------------------------------------
def _fit_payload(gaussian_fit: Any, w_dim: int) -> dict[str, Any] | None:
    """``gaussian_fit``: ``None``, ``(mean, std)`` (1M samples, seed 0) or a dict with
    ``mean``, ``std`` and optionally ``samples``, ``seed``."""
    if gaussian_fit is None:
        return None
    from pulse_sr.search.gaussian_fit import DEFAULT_SAMPLES, DEFAULT_SEED

    if isinstance(gaussian_fit, Mapping):
        mean, std = gaussian_fit["mean"], gaussian_fit["std"]
        samples = int(gaussian_fit.get("samples", DEFAULT_SAMPLES))
        seed = int(gaussian_fit.get("seed", DEFAULT_SEED))
    else:
        mean, std = gaussian_fit
        samples, seed = DEFAULT_SAMPLES, DEFAULT_SEED
    out: dict[str, Any] = {"samples": samples, "seed": seed}
    for key, value in (("mean", mean), ("std", std)):
        t = torch.as_tensor(value).detach().to("cpu", torch.float32).reshape(-1)
        if t.numel() != w_dim or not bool(torch.isfinite(t).all()):
            raise ValueError(f"gaussian_fit {key} must be {w_dim} finite values")
        out[key] = [float(x) for x in t.tolist()]  # float32 -> float -> float32 is exact
    return out


def save_generator(gen: FaceGenerator, path: str | Path, *, gaussian_fit: Any = None) -> Path:
    """Write ``gen`` to ``path`` (``*.safetensors``) atomically: a temporary file in the same
    folder, then ``os.replace``. ``gaussian_fit``: ``None``, ``(mean, std)`` of the default
    1M-sample fit, or ``{"mean", "std", "samples", "seed"}``. Returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"{path}: the file name must end with {SUFFIX}")
    backend, constructor = generator_constructor(gen)
    tensors: dict[str, Tensor] = {}
    for key, value in gen.state_dict().items():
        t = value.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(torch.float32)
        tensors[key] = t.contiguous().clone()  # own storage: safetensors refuses shared tensors
    source = getattr(gen, "_pulse_sr_own_source", None)
    if not (isinstance(source, dict) and source.get("sha256") == gen.weights_hash):
        where = str(gen.weights_source or "")
        source = {"path": Path(where).name if where else "", "sha256": str(gen.weights_hash or "")}
    meta = {
        "format_version": FORMAT_VERSION,
        "backend": backend,
        "constructor": constructor,
        "name": str(gen.name or backend),
        "source": source,
        "gaussian_fit": _fit_payload(gaussian_fit, int(gen.w_dim)),
        "pulse_sr_version": pulse_sr.__version__,
    }
    from pulse_sr.io.files import atomic_write_with

    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta)}))
    return path


# -- loading -------------------------------------------------------------------------------
def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``pulse_sr`` metadata of a file, validated (format version, backend, fields)."""
    return _open(Path(path))[0]


def _open(path: Path) -> tuple[dict[str, Any], Any]:
    if not path.is_file():
        raise WeightsError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        from safetensors import safe_open

        handle = safe_open(str(path), framework="pt", device="cpu")
        raw = handle.metadata() or {}
    except Exception as exc:  # header too large, truncated, not JSON, ...
        detail = " ".join(str(exc).split())[:200]
        raise WeightsError(f"{path}: not a safetensors file ({type(exc).__name__}: {detail})") from None
    text = raw.get(METADATA_KEY)
    if text is None:
        raise WeightsError(f"{path}: a safetensors file without pulse-sr metadata (no {METADATA_KEY!r} "
                           "field); convert weights with `pulse-sr convert`")
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise WeightsError(f"{path}: invalid pulse-sr metadata (not JSON: {exc})") from None
    if not isinstance(meta, dict):
        raise WeightsError(f"{path}: invalid pulse-sr metadata (expected a JSON object)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise WeightsError(f"{path}: unsupported pulse-sr format version {version!r} (this pulse-sr reads "
                           f"{FORMAT_VERSION}; upgrade pulse-sr)")
    backend = meta.get("backend")
    if backend not in BACKENDS:
        raise WeightsError(f"{path}: unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    constructor, source = meta.get("constructor"), meta.get("source")
    if not isinstance(constructor, dict):
        raise WeightsError(f"{path}: invalid pulse-sr metadata (constructor must be an object)")
    if not (isinstance(source, dict) and isinstance(source.get("sha256", ""), str)
            and isinstance(source.get("path", ""), str)):
        raise WeightsError(f"{path}: invalid pulse-sr metadata (source must be an object with path and sha256)")
    if not isinstance(meta.get("name", ""), str):
        raise WeightsError(f"{path}: invalid pulse-sr metadata (name must be a string)")
    return meta, handle


def _checked_fit(path: Path, fit: Any, w_dim: int) -> tuple[int, int, Tensor, Tensor] | None:
    if fit is None:
        return None
    try:
        samples, seed = fit["samples"], fit["seed"]
        if not (isinstance(samples, int) and isinstance(seed, int)) or samples < 2:
            raise ValueError("samples and seed must be integers (samples >= 2)")
        mean = torch.tensor(fit["mean"], dtype=torch.float32)
        std = torch.tensor(fit["std"], dtype=torch.float32)
        if mean.shape != (w_dim,) or std.shape != (w_dim,):
            raise ValueError(f"mean and std must hold {w_dim} values each")
        if not bool(torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("mean and std must be finite")
    except (TypeError, KeyError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path}: invalid gaussian_fit in pulse-sr metadata ({exc})") from None
    return samples, seed, mean, std


def _seed_fit_cache(weights_hash: str, fit: tuple[int, int, Tensor, Tensor]) -> None:
    """Write the stored fit where ``cached_gaussian_fit`` looks for it, unless a file is there."""
    from pulse_sr.search.gaussian_fit import store_gaussian_fit

    samples, seed, mean, std = fit
    store_gaussian_fit(weights_hash, mean, std, samples=samples, seed=seed, overwrite=False)


def load_own(path: str | Path, *, device: str | torch.device = "cpu") -> FaceGenerator:
    """Load a generator from pulse-sr's ``.safetensors`` format (strict keys and shapes), in eval
    mode with frozen parameters. ``weights_hash`` is the original weights' SHA-256."""
    path = Path(path)
    meta, handle = _open(path)
    backend, constructor = meta["backend"], meta["constructor"]
    try:
        gen = _build(backend, constructor)
    except (TypeError, ValueError, WeightsError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise WeightsError(f"{path}: cannot build the {backend} generator from its metadata ({detail})") from None
    try:
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200]
        raise WeightsError(f"{path}: cannot read tensors ({type(exc).__name__}: {detail})") from None
    problems = state_dict_mismatch(state, gen)
    if problems:
        raise WeightsError(f"{path}: tensors do not match the {backend} generator in its metadata: {problems}")
    gen.load_state_dict(state, strict=True)
    fit = _checked_fit(path, meta.get("gaussian_fit"), int(gen.w_dim)) if gen.has_mapping else None
    source = meta["source"]
    gen.name = meta.get("name") or backend
    gen.weights_hash = source.get("sha256", "")
    gen.weights_source = str(path)
    gen._pulse_sr_own_source = {"path": source.get("path", ""), "sha256": gen.weights_hash}
    if fit is not None:
        _seed_fit_cache(gen.weights_hash, fit)
    return gen.eval().requires_grad_(False).to(device)

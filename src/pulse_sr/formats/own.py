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

Loading runs no pickle at all (safetensors + json) and trusts nothing in the file before
checking it (:mod:`pulse_sr.generators.limits`). A loaded generator's ``weights_hash`` is
the SHA-256 of the ``.safetensors`` file's own bytes (the original weights' hash is kept in
``source`` as provenance only); a stored fit seeds the Gaussian-fit cache under that hash
when it has no entry yet.
"""
from __future__ import annotations

import json
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


_CLASSES = {
    "dcgan": ("pulse_sr.generators.dcgan", "DCGANGenerator", None),
    "stylegan1": ("pulse_sr.generators.stylegan1", "StyleGAN1Generator", 0),
    "stylegan2": ("pulse_sr.generators.stylegan2", "StyleGAN2Generator", 0),
    "stylegan3": ("pulse_sr.generators.stylegan3", "StyleGAN3Generator", 0),
}
#: safetensors dtype names -> torch dtypes (the ones a state dict entry may have)
_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def _backend_class(backend: str) -> tuple[Any, int | None]:
    """``(generator class, init seed or None)`` of a backend name (imported on first use)."""
    import importlib

    module, name, seed = _CLASSES[backend]
    return getattr(importlib.import_module(module), name), seed


def generator_constructor(gen: FaceGenerator) -> tuple[str, dict[str, Any]]:
    """``(backend, constructor kwargs)`` that rebuild a module with ``gen``'s architecture: the
    generator's own record of its (JSON-safe) constructor arguments."""
    backend = getattr(gen, "backend", "?")
    if backend not in BACKENDS:
        raise WeightsError(f"cannot save a {type(gen).__name__} (backend {backend!r}): "
                           f"supported backends are {', '.join(BACKENDS)}")
    return backend, gen.constructor_args()


def _build(backend: str, constructor: Mapping[str, Any],
           shapes: Mapping[str, tuple[int, ...]] | None = None) -> FaceGenerator:
    """A fresh module (its random init does not touch torch's global RNG), built only once its
    arguments, size and (given) tensor shapes are validated (:mod:`pulse_sr.generators.limits`)."""
    from pulse_sr.generators.limits import build_checked

    cls, seed = _backend_class(backend)
    with torch.random.fork_rng(devices=[]):
        return build_checked(cls, constructor, shapes=shapes, seed=seed, what=f"{backend} generator in its metadata")


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
    loaded = getattr(gen, "_pulse_sr_own_source", None)
    if isinstance(loaded, dict) and loaded.get("file_sha256") == gen.weights_hash:  # re-saving a loaded file
        source = {"path": str(loaded.get("path", "")), "sha256": str(loaded.get("sha256", ""))}
    else:
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
    except RecursionError:
        raise WeightsError(f"{path}: invalid pulse-sr metadata (nested too deeply)") from None
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


def _header(path: Path, handle: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``key -> (shape, safetensors dtype name)`` from the file's header (no tensor is read)."""
    try:
        out = {}
        for key in handle.keys():
            view = handle.get_slice(key)
            out[key] = (tuple(int(n) for n in view.get_shape()), str(view.get_dtype()))
        return out
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200]
        raise WeightsError(f"{path}: cannot read tensors ({type(exc).__name__}: {detail})") from None


def load_own(path: str | Path, *, device: str | torch.device = "cpu") -> FaceGenerator:
    """Load a generator from pulse-sr's ``.safetensors`` format (strict keys and shapes), in eval
    mode with frozen parameters.

    Nothing the file says is trusted before it is checked: the constructor arguments, the
    network's size and the header's tensor shapes and dtypes are validated before the module is
    allocated; tensor values must be finite. ``weights_hash`` is the SHA-256 of this file's bytes
    (the original weights' hash stays in the metadata's ``source``, as provenance)."""
    from pulse_sr.generators.base import file_sha256
    from pulse_sr.generators.limits import check_dtype, check_tensors

    path = Path(path)
    meta, handle = _open(path)
    backend, constructor = meta["backend"], meta["constructor"]
    header = _header(path, handle)
    try:
        gen = _build(backend, constructor, {key: shape for key, (shape, _) in header.items()})
        expected = gen.state_dict()
        for key, (_, dtype) in header.items():
            if dtype not in _DTYPES:
                raise WeightsError(f"tensor {key}: dtype {dtype} cannot be used", tensor=key)
            check_dtype(key, _DTYPES[dtype], expected[key].dtype)
    except WeightsError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise WeightsError(f"{path}: cannot build the {backend} generator from its metadata ({detail})",
                           **exc.data) from None
    try:
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200]
        raise WeightsError(f"{path}: cannot read tensors ({type(exc).__name__}: {detail})") from None
    problems = state_dict_mismatch(state, gen)
    if problems:
        raise WeightsError(f"{path}: tensors do not match the {backend} generator in its metadata: {problems}")
    try:
        check_tensors(state, gen)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}", **exc.data) from None
    gen.load_state_dict(state, strict=True)
    fit = _checked_fit(path, meta.get("gaussian_fit"), int(gen.w_dim)) if gen.has_mapping else None
    source = meta["source"]
    gen.name = meta.get("name") or backend
    gen.weights_hash = file_sha256(path)  # from the bytes, never from the metadata
    gen.weights_source = str(path)
    gen._pulse_sr_own_source = {"path": source.get("path", ""), "sha256": source.get("sha256", ""),
                                "file_sha256": gen.weights_hash}
    if fit is not None:
        _seed_fit_cache(gen.weights_hash, fit)
    return gen.eval().requires_grad_(False).to(device)

"""Validate a weights file's network description before anything is allocated.

A weights file says which network it holds (NVIDIA's ``init_kwargs``, pulse-sr's
``constructor`` metadata, shapes a loader infers). None of that is trusted:

1. :func:`check_arguments`: every known constructor argument has a plain type and a
   bounded value (sizes up to 4096, resolutions powers of two, layer counts bounded,
   floats finite), so building the module cannot recurse, loop or allocate without bound;
2. :func:`build_checked`: the module is built on torch's ``meta`` device first (shapes
   only, no memory), its total size is bounded (:data:`MAX_BYTES` as float32) and compared
   with the shapes the file holds; only then is it built for real;
3. :func:`check_tensors`: every tensor has a dtype the module can use (floating tensors:
   float16, bfloat16, float32 or float64, made float32 on load) and finite values.

Each refusal is one :class:`~pulse_sr.errors.WeightsError` line naming the argument or tensor.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from pulse_sr.errors import WeightsError

MAX_DIM = 4096  #: z_dim, w_dim, channels
MAX_RESOLUTION = 4096
MAX_CHANNEL_BASE = 1 << 22  #: StyleGAN's channel_base / fmap_base (32768 / 8192 in practice)
MAX_LAYERS = 64  #: mapping layers, StyleGAN3 synthesis layers
MAX_BYTES = 1 << 31  #: parameters and buffers, counted as float32
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_INT_RANGES: dict[str, tuple[int, int]] = {
    "z_dim": (1, MAX_DIM), "w_dim": (1, MAX_DIM), "img_channels": (1, 4), "c_dim": (0, 1 << 20),
    "channel_max": (1, MAX_DIM), "fmap_max": (1, MAX_DIM), "channel_base": (1, MAX_CHANNEL_BASE),
    "fmap_base": (1, MAX_CHANNEL_BASE), "base_channels": (1, MAX_DIM // 8), "mapping_layers": (1, MAX_LAYERS),
    "num_layers": (1, MAX_LAYERS), "num_critical": (0, MAX_LAYERS), "margin_size": (0, 1024),
    "conv_kernel": (1, 15), "filter_size": (1, 64), "lrelu_upsampling": (1, 16), "num_fp16_res": (0, 64),
    "embed_features": (0, MAX_DIM), "layer_features": (1, MAX_DIM),
}
_POW2 = ("resolution", "img_resolution")
_FLOATS = {"first_cutoff", "first_stopband", "last_stopband_rel", "output_scale", "lr_multiplier",
           "magnitude_ema_beta", "w_avg_beta", "conv_clamp"}
_POSITIVE = {"first_cutoff", "first_stopband", "last_stopband_rel", "lr_multiplier"}
_BOOLS = {"use_noise", "use_radial_filters", "fused_modconv"}  # NVIDIA's fused_modconv_default may be a string
_STRINGS = {"architecture", "activation"}
_NESTED = ("mapping_kwargs", "synthesis_kwargs")


def _refuse(name: str, value: Any, want: str) -> WeightsError:
    shown = repr(value) if isinstance(value, (bool, int, float, str, type(None))) else type(value).__name__
    return WeightsError(f"invalid generator argument {name} = {shown[:60]}: {want}", argument=name)


def _is_int(value: Any) -> bool:
    """An integer (Python or numpy), not a flag."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    """A real number (Python or numpy), not a flag."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_one(name: str, value: Any) -> None:
    key = name.rsplit(".", 1)[-1]
    if key in _INT_RANGES or key in _POW2:
        lo, hi = _INT_RANGES.get(key, (4, MAX_RESOLUTION))
        if value is None and key in ("embed_features", "layer_features"):
            return
        if not _is_int(value) or not lo <= value <= hi:
            raise _refuse(name, value, f"expected an integer from {lo} to {hi}")
        if key in _POW2 and value & (value - 1):
            raise _refuse(name, value, f"expected a power of two from 4 to {MAX_RESOLUTION}")
    elif key in _FLOATS:
        if value is None and key in ("w_avg_beta", "conv_clamp"):
            return
        if not _is_real(value) or not math.isfinite(value) or abs(value) > 1e6:
            raise _refuse(name, value, "expected a finite number")
        if key in _POSITIVE and not value > 0:
            raise _refuse(name, value, "expected a positive number")
    elif key in _BOOLS:
        if not isinstance(value, bool) and type(value).__name__ != "bool_":
            raise _refuse(name, value, "expected true or false")
    elif key in _STRINGS:
        if type(value) is not str or len(value) > 32:
            raise _refuse(name, value, "expected a short name")
    elif key == "resample_filter":
        if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= 16 or not all(
                _is_real(v) and math.isfinite(v) for v in value):
            raise _refuse(name, value, "expected 1 to 16 finite numbers")
    elif not (value is None or isinstance(value, (bool, str, numbers.Real))):
        raise _refuse(name, value, "expected a plain number, string or flag")


def check_arguments(kwargs: Mapping[str, Any]) -> None:
    """Refuse constructor arguments of the wrong type or outside their bounds (WeightsError).

    Known arguments are checked by name (sizes, resolutions, layer counts, floats, flags);
    ``mapping_kwargs``/``synthesis_kwargs`` are checked one level down; anything else must be
    a plain scalar. Unknown names are left to the constructor (it refuses them)."""
    if not isinstance(kwargs, Mapping):
        raise WeightsError(f"generator arguments must be a mapping, not {type(kwargs).__name__}")
    for name, value in kwargs.items():
        if name in _NESTED:
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise _refuse(name, value, "expected a mapping of arguments")
            for sub, sub_value in value.items():
                _check_one(f"{name}.{sub}", sub_value)
        else:
            _check_one(str(name), value)


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def shape_mismatch(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> str:
    """How ``found`` shapes differ from ``expected`` in keys and shapes ("" if they match), one line."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k} {list(found[k])} != {list(expected[k])}" for k in expected
             if k in found and tuple(found[k]) != tuple(expected[k])]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape for", wrong)):
        if items:
            shown = ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")
            problems.append(f"{label} {len(items)} key{'s' if len(items) != 1 else ''} ({shown})")
    return ", ".join(problems)


def build_checked(cls: Callable[..., nn.Module], kwargs: Mapping[str, Any], *,
                  shapes: Mapping[str, tuple[int, ...]] | None = None, seed: int | None = None,
                  what: str = "generator") -> Any:
    """``cls(**kwargs)`` once the arguments are checked, the module's size is bounded and its
    state-dict shapes equal ``shapes`` (when given), all known from a ``meta``-device build.

    ``seed``: build the real module with ``init_generator`` seeded so (torch's global RNG is
    untouched); ``None``: as ``cls(**kwargs)``. Raises WeightsError (one line) on any refusal."""
    check_arguments(kwargs)
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            template = cls(**kwargs)
    except (TypeError, ValueError, RuntimeError, OverflowError, ZeroDivisionError, IndexError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise WeightsError(f"cannot build the {what} from these arguments ({type(exc).__name__}: {detail})") from None
    expected = _shapes(template)
    nbytes = 4 * sum(math.prod(s) for s in expected.values())
    if nbytes > MAX_BYTES:
        raise WeightsError(f"refused: the {what} these arguments describe needs {nbytes / 2**30:.1f} GiB "
                           f"(at most {MAX_BYTES / 2**30:.0f} GiB)", bytes=nbytes, max_bytes=MAX_BYTES)
    if shapes is not None:
        problems = shape_mismatch(shapes, expected)
        if problems:
            raise WeightsError(f"tensors do not match the {what}: {problems}")
    if seed is None:
        return cls(**kwargs)
    with torch.random.fork_rng(devices=[]):
        return cls(**kwargs, init_generator=torch.Generator().manual_seed(seed))


def check_dtype(key: str, dtype: torch.dtype, expected: torch.dtype) -> None:
    """Refuse a tensor dtype the module cannot use: a floating entry must be float16, bfloat16,
    float32 or float64 (loaded as float32); any other entry must have the module's dtype."""
    ok = dtype in FLOAT_DTYPES if expected.is_floating_point else dtype == expected
    if not ok:
        want = "float16, bfloat16, float32 or float64" if expected.is_floating_point else str(expected)
        raise WeightsError(f"tensor {key}: dtype {str(dtype).replace('torch.', '')} cannot be used "
                           f"(expected {want.replace('torch.', '')})", tensor=key)


def check_tensors(state: Mapping[str, Any], module: nn.Module) -> None:
    """Every entry of ``state`` that ``module`` expects: a tensor of a usable dtype
    (:func:`check_dtype`) holding only finite values; WeightsError naming the first bad one."""
    expected = module.state_dict()
    for key, want in expected.items():
        t = state.get(key)
        if not isinstance(t, Tensor):
            continue  # missing or not a tensor: the key/shape check says so
        check_dtype(key, t.dtype, want.dtype)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise WeightsError(f"tensor {key}: holds NaN or infinite values", tensor=key)


def load_checked_state_dict(cls: Callable[..., nn.Module], ctor: Mapping[str, Any], state: Mapping[str, Any], *,
                            name: str, label: str, seed: int | None = None,
                            device: str | torch.device = "cpu") -> Any:
    """``cls(**ctor)`` with ``state`` loaded (strict keys and shapes), in eval mode with frozen
    parameters: values must be tensors, the arguments, size and shapes are checked on the meta
    device before any allocation (:func:`build_checked`), dtypes and values by :func:`check_tensors`;
    tensors become float32. ``name``: the generator's name and the errors' prefix; ``label``: how
    the state dict is named in errors (e.g. ``StyleGAN2``)."""
    bad = sorted(k for k, v in state.items() if not isinstance(v, Tensor))
    if bad:
        raise WeightsError(f"{label} state dict: non-tensor values for {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    try:
        gen = build_checked(cls, ctor, shapes=shapes, seed=seed, what=f"{label} generator")
    except WeightsError as exc:
        raise WeightsError(f"{name}: {exc}", **exc.data) from None
    check_tensors(state, gen)
    gen.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    gen.name = name
    return gen.eval().requires_grad_(False).to(device)

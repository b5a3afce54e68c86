"""Read rosinality/stylegan2-pytorch ``.pt`` checkpoints into pulse-sr's StyleGAN2 port.

github.com/rosinality/stylegan2-pytorch saves ``torch.save`` dicts:
``train.py`` writes ``{"g", "d", "g_ema", "g_optim", "d_optim", "args", "ada_aug_p"}``
(``args`` an ``argparse.Namespace`` with ``size``, ``latent``, ``n_mlp``,
``channel_multiplier`` ...), its ``convert_weight.py`` (NVIDIA TF -> PyTorch)
writes ``{"g_ema", "latent_avg"}``. Only ``g_ema`` (the generator's
``state_dict``) and ``latent_avg`` are used; a file holding a bare generator
state dict is accepted too.

Loading never runs code from the file: ``torch.load(weights_only=True)``
(torch's restricted unpickler: tensors, plain containers and numbers), with
``argparse.Namespace`` as the one extra allowed class. Anything else
(``os.system``, ``eval``, ...) is refused with a one-line :class:`WeightsError`
before it is called.

Key and tensor conventions (rosinality ``Generator`` -> NVIDIA ``G_ema`` layout
of :mod:`pulse_sr.generators.stylegan2`); all values are copied unchanged, only
reshaped:

=====================================  ==================================================
rosinality                             NVIDIA / pulse-sr
=====================================  ==================================================
``style.{i+1}.weight/bias``            ``mapping.fc{i}.weight/bias`` (both store weight
                                       ``/ lr_mul`` and scale by ``lr_mul/sqrt(in)`` and
                                       ``lr_mul`` at run time; ``lr_mul`` = 0.01)
``latent_avg`` (if any)                ``mapping.w_avg`` (else zeros)
``input.input [1,C,4,4]``              ``synthesis.b4.const [C,4,4]``
``conv1.*``, ``to_rgb1.*``             ``synthesis.b4.conv1.*``, ``synthesis.b4.torgb.*``
``convs.{2k}``, ``convs.{2k+1}``       ``synthesis.b{R}.conv0`` (2x up), ``.conv1``,
``to_rgbs.{k}``                        ``synthesis.b{R}.torgb``, with ``R = 2**(k+3)``
``*.conv.weight [1,O,I,k,k]``          ``*.weight [O,I,k,k]`` (no flip: both run the up
                                       conv as a stride-2 transposed conv of the same
                                       kernel, then the [1,3,3,1] blur)
``*.conv.modulation.weight/bias``      ``*.affine.weight/bias`` (both keep the +1 in the
                                       stored bias, gain ``1/sqrt(w_dim)``)
``*.noise.weight [1]``                 ``*.noise_strength []``
``*.activate.bias [O]``                ``*.bias [O]`` (LeakyReLU 0.2 times sqrt 2)
``to_rgb*.bias [1,3,1,1]``             ``*.torgb.bias [3]``
``noises.noise_{j} [1,1,R,R]``         ``noise_const [R,R]`` of the j-th conv layer
``*.blur.kernel``, ``*.upsample.kernel``  checked to be [1,3,3,1] (x4); NVIDIA's
                                       ``resample_filter`` buffers are that filter
=====================================  ==================================================

Rosinality's modulated conv scales the weight by ``1/sqrt(I*k*k)`` before
demodulating; NVIDIA's does not. Demodulation cancels that factor except inside
its ``+1e-8``: the two agree to float32 rounding.

Geometry comes from the tensors: ``size = 2**(len(to_rgbs) + 2)``,
``z_dim = w_dim = style_dim``, ``num_layers = n_mlp``, channels per
resolution -> NVIDIA's ``channel_base`` / ``channel_max`` (rosinality's table is
``min(512, 16384 * channel_multiplier / R)``: ``channel_base = 16384 * cm``).
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from pulse_sr.errors import WeightsError

__all__ = ["load_rosinality", "looks_like_rosinality", "read_rosinality_checkpoint", "rosinality_to_nvidia"]

#: rosinality's ``Generator(lr_mlp=0.01)`` default; ``train.py`` never changes it
DEFAULT_LR_MLP = 0.01
_BLUR_TAPS = (1, 3, 3, 1)
_ZIP_MAGIC = b"PK\x03\x04"


# -- reading the file --------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def read_rosinality_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` the file with ``weights_only=True`` (plus ``argparse.Namespace``), on the CPU.

    Returns the top-level dict. Raises :class:`WeightsError` (one line naming the
    file) if it is missing, not a ``torch.save`` file, or asks for any other class
    or function.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            head = fh.read(4)
    except FileNotFoundError:
        raise WeightsError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise WeightsError(f"{name}: is a folder, not a rosinality stylegan2-pytorch .pt file") from None
    except OSError as exc:
        raise WeightsError(f"{name}: cannot open ({exc.strerror or type(exc).__name__})") from None
    if not head:
        raise WeightsError(f"{name}: file is empty, not a rosinality stylegan2-pytorch .pt file")
    if head != _ZIP_MAGIC and head[0] != 0x80:
        raise WeightsError(f"{name}: not a torch .pt file (neither a torch.save zip archive nor a pickle)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            # mmap: large training checkpoints (g, d, optimisers) are not read into memory whole
            data = torch.load(name, map_location="cpu", weights_only=True, mmap=head == _ZIP_MAGIC)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            what = found.group(1) if "." in found.group(1) else f"builtins.{found.group(1)}"  # torch drops "builtins."
            raise WeightsError(f"{name}: refused to load: the file asks for {what}, "
                               "which is not a tensor, plain data or argparse.Namespace") from None
        raise WeightsError(f"{name}: refused to load: {_weights_only_reason(exc)}") from None
    except MemoryError:
        raise WeightsError(f"{name}: not enough memory to read the file") from None
    except Exception as exc:  # noqa: BLE001  RuntimeError/EOFError/zip errors from a malformed file
        raise WeightsError(
            f"{name}: not a readable torch .pt file ({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{name}: not a rosinality stylegan2-pytorch checkpoint "
                           f"(expected a dict with 'g_ema', found {type(data).__name__})")
    return data


def _weights_only_reason(exc: BaseException) -> str:
    """The specific line of torch's weights-only refusal (its message starts with generic advice)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if not ln.startswith(("Weights only load failed", "Check the documentation", "Please file an issue")):
            return ln[:200]
    return lines[0][:200] if lines else type(exc).__name__


def looks_like_rosinality(path: str | os.PathLike) -> bool:
    """Cheap sniff without unpickling: a ``torch.save`` file whose pickle mentions ``g_ema``
    (or a bare rosinality generator state dict). Never raises."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
            if head == _ZIP_MAGIC:
                with zipfile.ZipFile(fh) as zf:
                    pkl = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                    if not pkl or zf.getinfo(pkl[0]).file_size > 64 << 20:
                        return False
                    text = zf.read(pkl[0])
            else:
                fh.seek(0)
                text = fh.read(8 << 20)  # legacy format: the object pickle comes before the storages
    except Exception:  # noqa: BLE001
        return False
    return b"g_ema" in text or (b"to_rgb1.conv.weight" in text and b"input.input" in text)


# -- converting the state dict -----------------------------------------------------------
def _shape(state: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    return tuple(state[key].shape)


def _count(state: Mapping[str, Any], pattern: str) -> int:
    rx = re.compile(pattern)
    return sum(1 for k in state if rx.fullmatch(k))


def nvidia_channel_kwargs(channels: Mapping[int, int], channel_multiplier: int | None = None) -> tuple[int, int]:
    """Per-resolution channels ``{4: C4, 8: C8, ...}`` -> NVIDIA's ``(channel_base, channel_max)`` with
    ``channels[R] == min(channel_base // R, channel_max)`` for every R. Raises WeightsError if none fits."""
    res = sorted(channels)
    cmax = max(channels.values())
    candidates = []
    if isinstance(channel_multiplier, int) and channel_multiplier > 0:
        candidates.append(16384 * channel_multiplier)  # rosinality's table
    below = [r for r in res if channels[r] < cmax]
    if below:
        candidates.append(channels[below[0]] * below[0])
    candidates.append(cmax * res[-1])
    for base in candidates:
        if all(min(base // r, cmax) == channels[r] for r in res):
            return base, cmax
    shown = ", ".join(f"{r}: {channels[r]}" for r in res)
    raise WeightsError(f"channel counts per resolution ({shown}) do not follow NVIDIA's "
                       "min(channel_base / R, channel_max) rule")


def _geometry(g: Mapping[str, Tensor]) -> dict[str, Any]:
    """Infer size, style_dim, n_mlp and channels per resolution from a rosinality generator state dict."""
    for key in ("style.1.weight", "input.input", "conv1.conv.weight", "to_rgb1.conv.weight"):
        if key not in g:
            raise WeightsError(f"not a rosinality StyleGAN2 generator: no {key}")
    n_mlp = _count(g, r"style\.\d+\.weight")
    if len(_shape(g, "style.1.weight")) != 2:
        shape = list(_shape(g, "style.1.weight"))
        raise WeightsError(f"not a rosinality StyleGAN2 generator: style.1.weight has shape {shape}")
    style_dim = _shape(g, "style.1.weight")[1]
    n_rgbs = _count(g, r"to_rgbs\.\d+\.conv\.weight")
    size = 2 ** (n_rgbs + 2)
    const = _shape(g, "input.input")
    if len(const) != 4 or const[0] != 1 or const[2:] != (4, 4):
        raise WeightsError(f"not a rosinality StyleGAN2 generator: input.input has shape {list(const)}")
    channels = {4: const[1]}
    for k in range(n_rgbs):
        key = f"convs.{2 * k}.conv.weight"
        if key not in g or len(_shape(g, key)) != 5:
            raise WeightsError(f"not a rosinality StyleGAN2 generator: {key} missing or not [1, O, I, k, k]")
        channels[2 ** (k + 3)] = _shape(g, key)[1]
    return {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "channels": channels}


def _key_pairs(num_layers: int, resolutions: list[int]) -> list[tuple[str, str]]:
    """``(nvidia_key, rosinality_key)`` for every tensor that is copied."""
    pairs = []
    for i in range(num_layers):
        for p in ("weight", "bias"):
            pairs.append((f"mapping.fc{i}.{p}", f"style.{i + 1}.{p}"))
    pairs.append(("synthesis.b4.const", "input.input"))
    noise = 0
    for k, r in enumerate(resolutions):
        convs = [("conv1", "conv1")] if r == 4 else [("conv0", f"convs.{2 * k - 2}"), ("conv1", f"convs.{2 * k - 1}")]
        for nv, ros in convs:
            pre = f"synthesis.b{r}.{nv}"
            pairs += [(f"{pre}.weight", f"{ros}.conv.weight"), (f"{pre}.noise_strength", f"{ros}.noise.weight"),
                      (f"{pre}.bias", f"{ros}.activate.bias"), (f"{pre}.noise_const", f"noises.noise_{noise}"),
                      (f"{pre}.affine.weight", f"{ros}.conv.modulation.weight"),
                      (f"{pre}.affine.bias", f"{ros}.conv.modulation.bias")]
            noise += 1
        rgb = "to_rgb1" if r == 4 else f"to_rgbs.{k - 1}"
        pre = f"synthesis.b{r}.torgb"
        pairs += [(f"{pre}.weight", f"{rgb}.conv.weight"), (f"{pre}.bias", f"{rgb}.bias"),
                  (f"{pre}.affine.weight", f"{rgb}.conv.modulation.weight"),
                  (f"{pre}.affine.bias", f"{rgb}.conv.modulation.bias")]
    return pairs


def _blur_keys(resolutions: list[int]) -> list[str]:
    """Rosinality's fixed filter buffers: the up convs' blur and the to_rgbs' upsample kernels."""
    return [key for k in range(len(resolutions) - 1)
            for key in (f"convs.{2 * k}.conv.blur.kernel", f"to_rgbs.{k}.upsample.kernel")]


def _problems(label: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
    return f"{label} {len(keys)} key{'s' if len(keys) != 1 else ''} ({shown})"


def rosinality_to_nvidia(g_ema: Mapping[str, Tensor], *, latent_avg: Tensor | None = None,
                         args: Mapping[str, Any] | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Rosinality ``g_ema`` state dict -> (NVIDIA-layout state dict, NVIDIA ``Generator`` kwargs).

    Strict: every rosinality key must be used and every NVIDIA key filled, with
    the shapes the inferred geometry implies; raises a one-line WeightsError
    otherwise. ``args`` (the checkpoint's ``args`` as a dict) may give
    ``channel_multiplier`` and ``lr_mlp``; the tensors decide everything else.
    """
    from pulse_sr.generators.stylegan2 import RESAMPLE_FILTER, StyleGAN2Generator
    from pulse_sr.generators.stylegan2_ops import setup_filter

    bad = sorted(str(k) for k, v in g_ema.items() if not isinstance(k, str) or not isinstance(v, Tensor))
    if bad:
        raise WeightsError(f"g_ema: non-tensor entries ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
    args = dict(args or {})
    geo = _geometry(g_ema)
    base, cmax = nvidia_channel_kwargs(geo["channels"], args.get("channel_multiplier"))
    lr_mlp = args.get("lr_mlp", DEFAULT_LR_MLP)
    if not isinstance(lr_mlp, (int, float)) or isinstance(lr_mlp, bool) or not lr_mlp > 0:
        raise WeightsError(f"args.lr_mlp must be a positive number, got {lr_mlp!r}")
    kwargs: dict[str, Any] = {
        "z_dim": geo["style_dim"], "w_dim": geo["style_dim"], "img_resolution": geo["size"], "img_channels": 3,
        "channel_base": base, "channel_max": cmax,
        "mapping_kwargs": {"num_layers": geo["n_mlp"], "lr_multiplier": float(lr_mlp)},
    }
    from pulse_sr.generators.limits import check_arguments

    check_arguments(kwargs)  # sizes inferred from the tensors' shapes are bounded before any build
    try:
        with torch.device("meta"):  # shapes only, no memory, no init cost
            template = StyleGAN2Generator(**kwargs).state_dict()
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"cannot build a StyleGAN2 generator for this checkpoint: {exc}") from None
    resolutions = [2**i for i in range(2, geo["size"].bit_length())]
    pairs = _key_pairs(geo["n_mlp"], resolutions)
    blur = _blur_keys(resolutions)

    expected = {ros for _, ros in pairs} | set(blur)
    missing = sorted(expected - set(g_ema))
    unexpected = sorted(set(g_ema) - expected)
    if missing or unexpected:
        text = ", ".join(p for p in (missing and _problems("missing", missing),
                                     unexpected and _problems("unexpected", unexpected)) if p)
        raise WeightsError(f"not a rosinality StyleGAN2 generator of the inferred geometry "
                           f"({geo['size']}x{geo['size']}, style_dim {geo['style_dim']}, n_mlp {geo['n_mlp']}): {text}")

    kernel = setup_filter(RESAMPLE_FILTER) * 4
    for key in blur:
        k = g_ema[key]
        if tuple(k.shape) != tuple(kernel.shape) or not torch.allclose(k.float(), kernel, rtol=1e-5, atol=1e-7):
            raise WeightsError(f"{key}: blur kernel is not rosinality's default [1, 3, 3, 1] "
                               "(other kernels are not supported)")

    state: dict[str, Tensor] = {}
    wrong = []
    for nv, ros in pairs:
        target = tuple(template[nv].shape)
        tensor = g_ema[ros]
        want = _rosinality_shape(nv, target)
        if tuple(tensor.shape) != want:
            wrong.append(f"{ros} {list(tensor.shape)} != {list(want)}")
            continue
        state[nv] = tensor.detach().reshape(target)
    if wrong:
        raise WeightsError(f"g_ema: {_problems('wrong shape for', wrong)}")
    w_dim = geo["style_dim"]
    if latent_avg is None:
        state["mapping.w_avg"] = torch.zeros(w_dim)
    elif not isinstance(latent_avg, Tensor) or latent_avg.numel() != w_dim or latent_avg.ndim > 2:
        shape = list(latent_avg.shape) if isinstance(latent_avg, Tensor) else type(latent_avg).__name__
        raise WeightsError(f"latent_avg must be [{w_dim}] or [1, {w_dim}], got {shape}")
    else:
        state["mapping.w_avg"] = latent_avg.detach().reshape(w_dim)
    for key in template:
        if key.endswith("resample_filter"):
            state[key] = setup_filter(RESAMPLE_FILTER)
    leftover = sorted(set(template) - set(state))
    if leftover:  # a bug in the table above, not in the file
        raise WeightsError(f"rosinality conversion left NVIDIA keys unfilled: {', '.join(leftover[:3])}")
    return {k: state[k] for k in template}, kwargs


def _rosinality_shape(nvidia_key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The rosinality shape of the tensor stored under ``nvidia_key`` with NVIDIA shape ``shape``."""
    leaf = nvidia_key.rsplit(".", 1)[1]
    if nvidia_key == "synthesis.b4.const" or (leaf == "weight" and len(shape) == 4):
        return (1, *shape)  # [1, C, 4, 4] const; [1, O, I, k, k] conv weights
    if leaf == "noise_strength":
        return (1,)
    if leaf == "noise_const":
        return (1, 1, *shape)
    if nvidia_key.endswith("torgb.bias"):
        return (1, shape[0], 1, 1)
    return shape


# -- the loader --------------------------------------------------------------------------
def load_rosinality(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """A rosinality stylegan2-pytorch ``.pt`` -> :class:`~pulse_sr.generators.stylegan2.StyleGAN2Generator`
    (its ``g_ema``, eval mode, frozen parameters). Raises a one-line WeightsError naming the file."""
    from pulse_sr.generators.base import file_sha256
    from pulse_sr.generators.stylegan2 import load_stylegan2_state_dict

    name = os.fspath(path)
    data = read_rosinality_checkpoint(name)
    if "g_ema" in data:
        g_ema = data["g_ema"]
    elif "input.input" in data and "style.1.weight" in data:
        g_ema = data  # a bare generator state dict
    else:
        keys = ", ".join(map(str, list(data)[:8]))
        raise WeightsError(f"{name}: no g_ema generator in this checkpoint (keys: {keys})")
    if not isinstance(g_ema, Mapping):
        raise WeightsError(f"{name}: g_ema is a {type(g_ema).__name__}, not a state dict")
    raw_args = data.get("args")
    if isinstance(raw_args, argparse.Namespace):
        args = vars(raw_args)
    elif isinstance(raw_args, Mapping) or raw_args is None:
        args = dict(raw_args or {})
    else:
        raise WeightsError(f"{name}: args is a {type(raw_args).__name__}, not an argparse.Namespace")
    latent_avg = data.get("latent_avg") if g_ema is not data else None
    try:
        state, kwargs = rosinality_to_nvidia(g_ema, latent_avg=latent_avg, args=args)
        gen = load_stylegan2_state_dict(state, kwargs, device=device)
    except WeightsError as exc:
        raise WeightsError(f"{name}: {exc}") from None
    gen.name = "stylegan2-rosinality"
    gen.weights_hash = file_sha256(name)
    gen.weights_source = name
    return gen

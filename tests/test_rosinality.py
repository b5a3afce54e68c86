"""rosinality stylegan2-pytorch ``.pt`` checkpoints -> pulse-sr's StyleGAN2 port.

Two independent checks of the conversion:

1. ``_ros_forward`` below re-implements rosinality's ``Generator`` forward pass
   (model.py: EqualLinear with lr_mul, PixelNorm, ModulatedConv2d with its
   ``1/sqrt(fan_in)`` scale, transposed-conv upsampling + Blur, NoiseInjection,
   FusedLeakyReLU, ToRGB with Upsample skip) directly on a rosinality-layout
   state dict, written for this test from reading that code. A random
   rosinality checkpoint must give the same images through ``load_rosinality``.
2. A random pulse-sr (NVIDIA-layout) generator is turned into a rosinality
   checkpoint by ``_nvidia_to_ros`` (the key correspondence of rosinality's
   convert_weight.py, written here with regexes, independently of the loader's
   table) and must come back tensor for tensor, with no key missing or left over.
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pulse_sr.errors import WeightsError
from pulse_sr.formats.rosinality import (
    load_rosinality,
    looks_like_rosinality,
    nvidia_channel_kwargs,
    read_rosinality_checkpoint,
)
from pulse_sr.generators.stylegan2 import StyleGAN2Generator

SQRT2 = math.sqrt(2.0)
LR_MLP = 0.01
# tiny geometry: 32x32, style_dim 16, 3 mapping layers, channels 16/16/8/4
SIZE, STYLE_DIM, N_MLP = 32, 16, 3
CHANNELS = {4: 16, 8: 16, 16: 8, 32: 4}


def _blur_kernel(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """rosinality's make_kernel([1, 3, 3, 1]) * 2**2 (Blur/Upsample with factor 2)."""
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=dtype)
    return torch.outer(k, k) / 64.0 * 4.0


# -- an independent rosinality forward pass -----------------------------------------------
def _upfirdn(x: torch.Tensor, k: torch.Tensor, up: int, pad0: int, pad1: int) -> torch.Tensor:
    n, c, h, w = x.shape
    if up > 1:
        y = x.new_zeros(n, c, h * up, w * up)
        y[:, :, ::up, ::up] = x
        x = y
    x = F.pad(x, [pad0, pad1, pad0, pad1])
    kk = torch.flip(k, [0, 1]).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, kk, groups=c)


def _equal_linear(x, weight, bias, lr_mul: float, act: bool):
    out = F.linear(x, weight * (lr_mul / math.sqrt(weight.shape[1])))
    if act:
        return F.leaky_relu(out + bias * lr_mul, 0.2) * SQRT2
    return out + bias * lr_mul


def _modconv(sd, pre: str, x, style, *, demodulate: bool = True, upsample: bool = False):
    weight = sd[f"{pre}.weight"]  # [1, O, I, k, k]
    _, out_ch, in_ch, k, _ = weight.shape
    n = x.shape[0]
    s = _equal_linear(style, sd[f"{pre}.modulation.weight"], sd[f"{pre}.modulation.bias"], 1.0, False)
    w = weight / math.sqrt(in_ch * k * k) * s.view(n, 1, in_ch, 1, 1)
    if demodulate:
        w = w * torch.rsqrt(w.pow(2).sum([2, 3, 4]) + 1e-8).view(n, out_ch, 1, 1, 1)
    if upsample:
        wt = w.transpose(1, 2).reshape(n * in_ch, out_ch, k, k)
        out = F.conv_transpose2d(x.reshape(1, n * in_ch, *x.shape[2:]), wt, stride=2, groups=n)
        out = out.view(n, out_ch, *out.shape[2:])
        p = (4 - 2) - (k - 1)  # len(blur_kernel) - factor - (kernel_size - 1)
        return _upfirdn(out, sd[f"{pre}.blur.kernel"], 1, (p + 1) // 2 + 1, p // 2 + 1)
    out = F.conv2d(x.reshape(1, n * in_ch, *x.shape[2:]), w.reshape(n * out_ch, in_ch, k, k),
                   padding=k // 2, groups=n)
    return out.view(n, out_ch, *out.shape[2:])


def _styled_conv(sd, pre, x, style, noise, upsample=False):
    out = _modconv(sd, f"{pre}.conv", x, style, upsample=upsample)
    out = out + sd[f"{pre}.noise.weight"] * noise
    return F.leaky_relu(out + sd[f"{pre}.activate.bias"].view(1, -1, 1, 1), 0.2) * SQRT2


def _to_rgb(sd, pre, x, style, skip=None):
    out = _modconv(sd, f"{pre}.conv", x, style, demodulate=False) + sd[f"{pre}.bias"]
    if skip is not None:
        out = out + _upfirdn(skip, sd[f"{pre}.upsample.kernel"], 2, 2, 1)
    return out


def _ros_mapping(sd, z, n_mlp: int):
    x = z * torch.rsqrt(torch.mean(z**2, dim=1, keepdim=True) + 1e-8)
    for i in range(1, n_mlp + 1):
        x = _equal_linear(x, sd[f"style.{i}.weight"], sd[f"style.{i}.bias"], LR_MLP, True)
    return x


def _ros_forward(sd, latent, noise):
    """rosinality Generator.forward(input_is_latent=True) for latent [N, n_latent, style_dim]."""
    n_up = sum(1 for k in sd if re.fullmatch(r"to_rgbs\.\d+\.bias", k))
    out = sd["input.input"].repeat(latent.shape[0], 1, 1, 1)
    out = _styled_conv(sd, "conv1", out, latent[:, 0], noise[0])
    skip = _to_rgb(sd, "to_rgb1", out, latent[:, 1])
    for j in range(n_up):
        i = 1 + 2 * j
        out = _styled_conv(sd, f"convs.{2 * j}", out, latent[:, i], noise[i], upsample=True)
        out = _styled_conv(sd, f"convs.{2 * j + 1}", out, latent[:, i + 1], noise[i + 1])
        skip = _to_rgb(sd, f"to_rgbs.{j}", out, latent[:, i + 2], skip)
    return skip


def _random_ros_state(seed: int, size=SIZE, style_dim=STYLE_DIM, n_mlp=N_MLP, channels=CHANNELS):
    """A random rosinality g_ema state dict (rosinality's shapes, values that make every convention matter)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g) * scale + shift

    sd = {}
    for i in range(1, n_mlp + 1):
        sd[f"style.{i}.weight"] = r(style_dim, style_dim, scale=1 / LR_MLP)
        sd[f"style.{i}.bias"] = r(style_dim, scale=0.3 / LR_MLP)
    c4 = channels[4]
    sd["input.input"] = r(1, c4, 4, 4)

    def styled(pre, cin, cout, up):
        sd[f"{pre}.conv.weight"] = r(1, cout, cin, 3, 3)
        if up:
            sd[f"{pre}.conv.blur.kernel"] = _blur_kernel()
        sd[f"{pre}.conv.modulation.weight"] = r(cin, style_dim)
        sd[f"{pre}.conv.modulation.bias"] = r(cin, scale=0.2, shift=1.0)
        sd[f"{pre}.noise.weight"] = r(1, scale=0.5)
        sd[f"{pre}.activate.bias"] = r(cout, scale=0.3)

    def rgb(pre, cin, up):
        if up:
            sd[f"{pre}.upsample.kernel"] = _blur_kernel()
        sd[f"{pre}.conv.weight"] = r(1, 3, cin, 1, 1)
        sd[f"{pre}.conv.modulation.weight"] = r(cin, style_dim)
        sd[f"{pre}.conv.modulation.bias"] = r(cin, scale=0.2, shift=1.0)
        sd[f"{pre}.bias"] = r(1, 3, 1, 1, scale=0.3)

    styled("conv1", c4, c4, False)
    rgb("to_rgb1", c4, False)
    cin = c4
    log_size = int(math.log2(size))
    for j, res in enumerate(2**i for i in range(3, log_size + 1)):
        styled(f"convs.{2 * j}", cin, channels[res], True)
        styled(f"convs.{2 * j + 1}", channels[res], channels[res], False)
        rgb(f"to_rgbs.{j}", channels[res], True)
        cin = channels[res]
    for layer in range((log_size - 2) * 2 + 1):
        res = 2 ** ((layer + 5) // 2)
        sd[f"noises.noise_{layer}"] = r(1, 1, res, res)
    return sd


def _save(path: Path, obj, legacy: bool = False) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def _train_checkpoint(g_ema: dict, **args) -> dict:
    """What rosinality's train.py saves (g and d shrunk to stand-ins)."""
    ns = argparse.Namespace(path="lmdb", iter=800000, batch=16, size=SIZE, r1=10.0, wandb=False,
                            latent=STYLE_DIM, n_mlp=N_MLP, channel_multiplier=2, **args)
    return {"g": dict(g_ema), "d": {"convs.0.0.weight": torch.zeros(4, 3, 1, 1)}, "g_ema": g_ema,
            "g_optim": {"state": {}, "param_groups": [{"lr": 0.002, "betas": (0.0, 0.99), "params": [0, 1]}]},
            "d_optim": {"state": {}, "param_groups": []}, "args": ns, "ada_aug_p": 0.0}


# -- 1. forward equivalence ------------------------------------------------------------------
@pytest.fixture(scope="module")
def ros_state() -> dict[str, torch.Tensor]:
    return _random_ros_state(0)


@pytest.mark.parametrize("legacy", [False, True])
def test_forward_matches_rosinality(tmp_path: Path, ros_state, legacy: bool) -> None:
    path = _save(tmp_path / "ckpt.pt", _train_checkpoint(ros_state), legacy=legacy)
    gen = load_rosinality(path)
    assert isinstance(gen, StyleGAN2Generator)
    assert (gen.resolution, gen.z_dim, gen.w_dim, gen.num_ws) == (SIZE, STYLE_DIM, STYLE_DIM, 8)
    assert gen.mapping_net.num_layers == N_MLP and gen.mapping_net.fc0.lr_multiplier == LR_MLP
    assert gen.noise_shapes == [(1, 4, 4), (1, 8, 8), (1, 8, 8), (1, 16, 16), (1, 16, 16), (1, 32, 32), (1, 32, 32)]
    assert not gen.training and not any(p.requires_grad for p in gen.parameters())

    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, STYLE_DIM, generator=g)
    sd64 = {k: v.double() for k, v in ros_state.items()}
    gen64 = gen.double()
    w_ref = _ros_mapping(sd64, z.double(), N_MLP)
    w = gen64.mapping(z.double())
    assert w.abs().max() > 0.1
    # float64 (eps 2.2e-16), 3 dense layers of 16 inputs: rounding ~1e-15; 1e-10 leaves room for
    # the two codes' different operation order and fails any other formula
    torch.testing.assert_close(w, w_ref, rtol=1e-10, atol=1e-10)

    ws = torch.randn(3, gen.num_ws, STYLE_DIM, generator=g, dtype=torch.float64)  # a different w per layer
    noise = [torch.randn(3, *shape, generator=g, dtype=torch.float64) for shape in gen.noise_shapes]
    ref = _ros_forward(sd64, ws, noise)
    out = gen64.synthesis(ws, noise)
    assert out.shape == (3, 3, SIZE, SIZE) and ref.std() > 0.1
    # rosinality demodulates weight/sqrt(fan_in) and NVIDIA the raw weight: equal but for the 1e-8
    # added under the square root, a relative change of ~1e-8 / (sum of squared weights, ~1):
    # 1e-7 bounds it, while float64 rounding (~1e-14) is far below
    torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-7 * ref.abs().max().item())

    # randomize_noise=False: rosinality uses its noises.noise_i buffers, pulse-sr its noise_const
    const_ref = _ros_forward(sd64, ws, [sd64[f"noises.noise_{i}"] for i in range(len(noise))])
    torch.testing.assert_close(gen64.synthesis(ws, gen64.const_noise()), const_ref, rtol=1e-7,
                               atol=1e-7 * const_ref.abs().max().item())


def test_forward_float32(tmp_path: Path, ros_state) -> None:
    gen = load_rosinality(_save(tmp_path / "ckpt.pt", _train_checkpoint(ros_state)))
    g = torch.Generator().manual_seed(6)
    ws = torch.randn(2, gen.num_ws, STYLE_DIM, generator=g)
    noise = [torch.randn(2, *shape, generator=g) for shape in gen.noise_shapes]
    ref = _ros_forward(ros_state, ws, noise)
    # two float32 evaluations of a 32 px net (7 modulated 3x3 convs over <= 16 channels, torgbs):
    # conftest.float32_rel_error(9 * 16, 8) = 2.9e-6 of its scale; 1e-4 of max |ref| adds margin
    # for the 1e-8 demodulation difference above, and a wrong layer moves outputs by O(1)
    torch.testing.assert_close(gen.synthesis(ws, noise), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_metadata(tmp_path: Path, ros_state) -> None:
    path = _save(tmp_path / "ckpt.pt", _train_checkpoint(ros_state))
    gen = load_rosinality(path)
    import hashlib

    assert gen.weights_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert gen.weights_source == str(path)
    assert gen.backend == "stylegan2" and gen.name == "stylegan2-rosinality"
    assert torch.equal(gen.w_avg, torch.zeros(STYLE_DIM))  # train.py checkpoints have no latent_avg


def test_load_generator_and_run_take_a_rosinality_file(tmp_path: Path, ros_state) -> None:
    """``.pt`` is self-describing: load_generator by path, by --weights with or without a name."""
    from pulse_sr.errors import WeightsError
    from pulse_sr.generators.registry import load_generator

    path = _save(tmp_path / "ckpt.pt", _train_checkpoint(ros_state))
    direct = load_rosinality(path)
    ws = torch.randn(1, direct.num_ws, STYLE_DIM, generator=torch.Generator().manual_seed(5))
    expected = direct.synthesis(ws)
    for gen in (load_generator(path), load_generator(str(path)), load_generator("stylegan2", weights=path),
                load_generator(weights=path)):
        assert gen.weights_hash == direct.weights_hash
        assert torch.equal(gen.synthesis(ws), expected)
    with pytest.raises(WeightsError, match="holds a stylegan2 generator, not stylegan1"):
        load_generator("stylegan1", weights=path)


def test_convert_weight_layout_with_latent_avg(tmp_path: Path, ros_state) -> None:
    """convert_weight.py writes {"g_ema", "latent_avg"} (no args), here in the legacy torch.save format."""
    latent_avg = torch.randn(STYLE_DIM, generator=torch.Generator().manual_seed(3))
    path = _save(tmp_path / "converted.pt", {"g_ema": ros_state, "latent_avg": latent_avg}, legacy=True)
    gen = load_rosinality(path)
    assert torch.equal(gen.w_avg, latent_avg)
    z = torch.randn(2, STYLE_DIM, generator=torch.Generator().manual_seed(4))
    w = gen.mapping(z)
    torch.testing.assert_close(gen.mapping_net(z, truncation_psi=0.5), latent_avg + 0.5 * (w - latent_avg))


def test_bare_state_dict(tmp_path: Path, ros_state) -> None:
    gen = load_rosinality(_save(tmp_path / "g_ema.pt", ros_state))
    assert torch.equal(gen.synthesis_net.b4.const, ros_state["input.input"][0])


# -- 2. strict round trip from the NVIDIA layout ---------------------------------------------
def _nvidia_to_ros(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """NVIDIA G_ema keys -> rosinality g_ema keys (convert_weight.py's correspondence), plus latent_avg."""
    out: dict[str, torch.Tensor] = {}
    latent_avg = None
    for key, t in state.items():
        if m := re.fullmatch(r"mapping\.fc(\d+)\.(weight|bias)", key):
            out[f"style.{int(m[1]) + 1}.{m[2]}"] = t.clone()
            continue
        if key == "mapping.w_avg":
            latent_avg = t.clone()
            continue
        if key == "synthesis.b4.const":
            out["input.input"] = t[None].clone()
            continue
        m = re.fullmatch(r"synthesis\.b(\d+)\.(conv0|conv1|torgb)\.(.+)", key) or \
            re.fullmatch(r"synthesis\.b(\d+)\.()(resample_filter)", key)
        assert m, key
        res, layer, field = int(m[1]), m[2], m[3]
        if field == "resample_filter":
            continue  # rosinality keeps its own blur kernels, added below
        lvl = int(math.log2(res))
        if layer == "torgb":
            pre = "to_rgb1" if res == 4 else f"to_rgbs.{lvl - 3}"
        elif res == 4:
            pre = "conv1"
        else:
            pre = f"convs.{2 * (lvl - 3) + (layer == 'conv1')}"
        if field == "weight":
            out[f"{pre}.conv.weight"] = t[None].clone()
        elif field == "affine.weight":
            out[f"{pre}.conv.modulation.weight"] = t.clone()
        elif field == "affine.bias":
            out[f"{pre}.conv.modulation.bias"] = t.clone()
        elif field == "bias" and layer == "torgb":
            out[f"{pre}.bias"] = t.reshape(1, -1, 1, 1).clone()
        elif field == "bias":
            out[f"{pre}.activate.bias"] = t.clone()
        elif field == "noise_strength":
            out[f"{pre}.noise.weight"] = t.reshape(1).clone()
        elif field == "noise_const":
            index = 0 if res == 4 else 2 * lvl - 5 + (layer == "conv1")
            out[f"noises.noise_{index}"] = t[None, None].clone()
        else:
            raise AssertionError(key)
    for j in range(int(math.log2(max(int(k.split(".")[1][1:]) for k in state if k.startswith("synthesis.b")))) - 2):
        out[f"convs.{2 * j}.conv.blur.kernel"] = _blur_kernel()
        out[f"to_rgbs.{j}.upsample.kernel"] = _blur_kernel()
    assert latent_avg is not None
    return out, latent_avg


@pytest.fixture(scope="module")
def nvidia_gen() -> StyleGAN2Generator:
    g = torch.Generator().manual_seed(11)
    gen = StyleGAN2Generator(z_dim=STYLE_DIM, w_dim=STYLE_DIM, img_resolution=SIZE, channel_base=128, channel_max=16,
                             mapping_kwargs={"num_layers": N_MLP, "lr_multiplier": LR_MLP}, init_generator=g)
    with torch.no_grad():  # NVIDIA's init leaves biases, noise strengths and w_avg at 0/1: make every tensor distinct
        for name, t in gen.state_dict().items():
            if not name.endswith("resample_filter"):
                t.add_(torch.randn(t.shape, generator=g) * 0.3)
    return gen.eval().requires_grad_(False)


def test_round_trip_is_strict_and_exact(tmp_path: Path, nvidia_gen: StyleGAN2Generator) -> None:
    original = nvidia_gen.state_dict()
    ros, latent_avg = _nvidia_to_ros(original)
    assert set(ros) == set(_random_ros_state(0))  # the inverse map produces rosinality's full key set
    ckpt = _train_checkpoint(ros)
    ckpt["latent_avg"] = latent_avg
    gen = load_rosinality(_save(tmp_path / "rt.pt", ckpt))
    loaded = gen.state_dict()
    assert list(loaded) == list(original)
    for key in original:
        assert torch.equal(loaded[key], original[key]), key
    g = torch.Generator().manual_seed(12)
    ws = torch.randn(2, gen.num_ws, STYLE_DIM, generator=g)
    noise = [torch.randn(2, *s, generator=g) for s in gen.noise_shapes]
    assert torch.equal(gen.synthesis(ws, noise), nvidia_gen.synthesis(ws, noise))
    # and both agree with the independent rosinality forward on the converted dict
    ref = _ros_forward(ros, ws, noise)
    # float32, as in test_forward_float32
    torch.testing.assert_close(gen.synthesis(ws, noise), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


# -- geometry -----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [256, 1024])
@pytest.mark.parametrize("cm", [1, 2])
def test_channel_kwargs_of_rosinality_tables(size: int, cm: int) -> None:
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm,
             1024: 16 * cm}  # rosinality model.py Generator.channels
    channels = {r: c for r, c in table.items() if r <= size}
    assert nvidia_channel_kwargs(channels, cm) == (16384 * cm, 512)
    base, cmax = nvidia_channel_kwargs(channels)  # without args: any base that reproduces the table
    assert {r: min(base // r, cmax) for r in channels} == channels


def test_channel_kwargs_refuses_non_monotone() -> None:
    with pytest.raises(WeightsError, match="channel_base"):
        nvidia_channel_kwargs({4: 512, 8: 512, 16: 512, 32: 512, 64: 1024})  # channel_multiplier 4


# -- refusing unsafe and malformed files ----------------------------------------------------------
class _Payload:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker: Path):
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": _Payload(os.system, f"touch {marker}"),
        "posix.system": _Payload(getattr(__import__("posix"), "system"), f"touch {marker}"),
        "subprocess.call": _Payload(subprocess.call, ["touch", str(marker)]),
        "builtins.eval": _Payload(eval, code),
        "builtins.exec": _Payload(exec, code),
    }


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("what", ["os.system", "posix.system", "subprocess.call", "builtins.eval", "builtins.exec"])
def test_refuses_code_globals(tmp_path: Path, ros_state, what: str, legacy: bool) -> None:
    marker = tmp_path / "ran"
    payload = _payloads(marker)[what]
    # torch.save pickles with protocol 2, whose fix_imports writes Python 2 names: commands, __builtin__
    expected = {"os.system": r"posix\.system", "posix.system": r"posix\.system",
                "subprocess.call": r"(subprocess|commands)\.call", "builtins.eval": r"(builtins|__builtin__)\.eval",
                "builtins.exec": r"(builtins|__builtin__)\.exec"}[what]
    for i, ckpt in enumerate([_train_checkpoint(ros_state, evil=payload),
                              {"g_ema": {**ros_state, "style.1.bias": payload}}]):
        path = _save(tmp_path / f"evil{i}.pt", ckpt, legacy=legacy)
        with pytest.raises(WeightsError) as info:
            load_rosinality(path)
        msg = str(info.value)
        assert re.match(re.escape(f"{path}: refused to load: the file asks for ") + expected + ", ", msg), msg
        assert "\n" not in msg
        assert not marker.exists()


def _raw_pickle_file(path: Path, obj) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


@pytest.mark.parametrize("case,pattern", [
    ("missing", "file not found"),
    ("folder", "is a folder"),
    ("empty", "file is empty"),
    ("text", r"not a torch .pt file \(neither a torch.save zip archive nor a pickle\)"),
    ("truncated", "not a readable torch .pt file"),
    ("plain_pickle", "refused to load: the file asks for"),
    ("list", "expected a dict with 'g_ema', found list"),
    ("no_g_ema", r"no g_ema generator in this checkpoint \(keys: g, d\)"),
    ("missing_key", r"missing 1 key \(noises.noise_3\)"),
    ("unexpected_key", r"unexpected 1 key \(convs.0.extra\)"),
    ("wrong_shape", r"wrong shape for 1 key \(conv1.activate.bias \[15\] != \[16\]\)"),
    ("blur", "blur kernel is not rosinality's default"),
    ("latent_avg", r"latent_avg must be \[16\] or \[1, 16\], got \[3\]"),
    ("non_tensor", r"g_ema: non-tensor entries \(style.1.bias\)"),
    ("bad_style", r"not a rosinality StyleGAN2 generator: style.1.weight has shape \[16\]"),
    ("bad_const", r"input.input has shape \[16, 4, 4\]"),
])
def test_bad_files(tmp_path: Path, ros_state, case: str, pattern: str) -> None:
    path = tmp_path / f"{case}.pt"
    sd = dict(ros_state)
    if case == "folder":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("not a checkpoint\n")
    elif case == "truncated":
        _save(tmp_path / "full.pt", {"g_ema": sd})
        path.write_bytes((tmp_path / "full.pt").read_bytes()[:5000])
    elif case == "plain_pickle":  # e.g. an NVIDIA-style network pickle with a class record
        _raw_pickle_file(path, {"G_ema": argparse.ArgumentParser})
    elif case == "list":
        _save(path, [sd])
    elif case == "no_g_ema":
        _save(path, {"g": sd, "d": {}})
    elif case != "missing":
        if case == "missing_key":
            del sd["noises.noise_3"]
        elif case == "unexpected_key":
            sd["convs.0.extra"] = torch.zeros(1)
        elif case == "wrong_shape":
            sd["conv1.activate.bias"] = torch.zeros(15)
        elif case == "blur":
            sd["convs.2.conv.blur.kernel"] = torch.ones(4, 4) / 4
        elif case == "non_tensor":
            sd["style.1.bias"] = [1.0, 2.0]
        elif case == "bad_style":
            sd["style.1.weight"] = torch.zeros(16)
        elif case == "bad_const":
            sd["input.input"] = torch.zeros(16, 4, 4)
        extra = {"latent_avg": torch.zeros(3)} if case == "latent_avg" else {}
        _save(path, {"g_ema": sd, **extra})
    with pytest.raises(WeightsError) as info:
        load_rosinality(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    assert re.search(pattern, msg), msg


def test_read_checkpoint_keeps_args_as_namespace(tmp_path: Path, ros_state) -> None:
    data = read_rosinality_checkpoint(_save(tmp_path / "c.pt", _train_checkpoint(ros_state)))
    assert isinstance(data["args"], argparse.Namespace) and data["args"].size == SIZE
    assert set(data) == {"g", "d", "g_ema", "g_optim", "d_optim", "args", "ada_aug_p"}


def test_looks_like_rosinality(tmp_path: Path, ros_state) -> None:
    assert looks_like_rosinality(_save(tmp_path / "a.pt", _train_checkpoint(ros_state)))
    assert looks_like_rosinality(_save(tmp_path / "b.pt", {"g_ema": ros_state}, legacy=True))
    assert looks_like_rosinality(_save(tmp_path / "c.pt", ros_state))
    assert not looks_like_rosinality(_save(tmp_path / "d.pt", {"synthesis": {"x": torch.zeros(1)}}))
    assert not looks_like_rosinality(_raw_pickle_file(tmp_path / "e.pkl", {"G_ema": 1}))
    assert not looks_like_rosinality(tmp_path / "missing.pt")
    (tmp_path / "f.pt").write_bytes(b"PK\x03\x04garbage")
    assert not looks_like_rosinality(tmp_path / "f.pt")

"""StyleGAN2 port: parity with NVIDIA's networks_stylegan2 outputs, strict loading, small configs.

The goldens and stand-in weights come from ../shared/reference (README, second
half). Each 1024 synthesis (batch 2, a few seconds) runs once per module.
"""
from __future__ import annotations

import json
import time
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import float32_rel_error, load_sg23_reference, reference_dir

from pulse_sr.errors import WeightsError
from pulse_sr.generators.stylegan2 import StyleGAN2Generator, load_stylegan2_state_dict, stylegan2_kwargs
from pulse_sr.generators.stylegan2_ops import conv2d_resample, setup_filter, upsample2d

# Tolerances from float32 rounding (conftest.float32_rel_error: ours against NVIDIA's, run
# on another CPU, each a float32 evaluation), relative to the scale of what is compared:
#: the mapping: 8 dense layers of 512 inputs -> 1.5e-5 of max |w| (the golden's max |w| is 5.2,
#: its RMS 1.3). An Intel AVX-512 machine measured 6.6e-6 absolute, i.e. 1.3e-6 relative.
WS_REL_TOL = float32_rel_error(512, 8)
#: the synthesis: 17 modulated 3x3 convolutions over at most 512 channels (toRGB's 1x1 and the
#: FIR filters add far fewer terms) -> 6.7e-5 of the std of the compared tensor (an image or a
#: block's features; its std is the scale its rounding errors follow). Also the mean's error
#: (an average of those errors) relative to that std, and the std's own relative error.
SYNTH_REL_TOL = float32_rel_error(9 * 512, 17)


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sg23() -> ModuleType:
    """The reference's deterministic_weights_sg23.py."""
    return load_sg23_reference()


@pytest.fixture(scope="module")
def keys_spec() -> dict:
    return json.loads((reference_dir() / "stylegan2_keys.json").read_text())


@pytest.fixture(scope="module")
def golden2() -> dict[str, np.ndarray]:
    with np.load(reference_dir() / "stylegan2_golden.npz") as data:
        return {k: data[k] for k in data.files if not k.startswith("buffer/")}


@pytest.fixture(scope="module")
def state(sg23: ModuleType) -> dict[str, torch.Tensor]:
    return sg23.state_dict("stylegan2")


@pytest.fixture(scope="module")
def gen(state: dict, keys_spec: dict) -> StyleGAN2Generator:
    return load_stylegan2_state_dict(state, keys_spec["kwargs"])


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a))


@pytest.fixture(scope="module")
def const_run(gen: StyleGAN2Generator, golden2: dict) -> dict:
    """Golden ws with noise_mode='const', recording each block's output via forward hooks."""
    blocks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str):
        def record(module, args, output) -> None:
            x, img = output
            blocks[name] = (x[:, :4, :8, :8].clone(), torch.stack([x.double().mean(), x.double().std()]),
                            x.abs().max(), torch.stack([img.double().mean(), img.double().std()]))
        return record

    handles = [b.register_forward_hook(hook(f"b{b.resolution}")) for b in gen.synthesis_net.blocks()]
    try:
        start = time.perf_counter()
        with torch.inference_mode():
            img = gen.synthesis(_t(golden2["ws"]), gen.const_noise())
        seconds = time.perf_counter() - start
    finally:
        for h in handles:
            h.remove()
    return {"img": img, "blocks": blocks, "seconds": seconds}


@pytest.fixture(scope="module")
def wsmix_img(gen: StyleGAN2Generator, golden2: dict) -> torch.Tensor:
    with torch.inference_mode():
        return gen.synthesis(_t(golden2["var_wsmix/ws"]), gen.const_noise())


@pytest.fixture(scope="module")
def noise_none_img(gen: StyleGAN2Generator, golden2: dict) -> torch.Tensor:
    with torch.inference_mode():
        return gen.synthesis(_t(golden2["ws"]), None)


def _max_abs(actual: torch.Tensor, expected: np.ndarray) -> float:
    exp = _t(expected).to(actual.dtype)
    assert actual.shape == exp.shape
    return (actual - exp).abs().max().item()


def _check_image(img: torch.Tensor, golden2: dict, prefix: str, crops: tuple[str, ...]) -> dict[str, float]:
    """Compare ``img [2, 3, 1024, 1024]`` with the golden arrays ``prefix + name``; returns the max abs diffs."""
    views = {
        "image_avgpool32": lambda: F.avg_pool2d(img, 32),
        "image_crop_center": lambda: img[:, :, 480:544, 480:544],
        "image_crop_corner": lambda: img[:, :, 0:64, 960:1024],
    }
    mean, std = (float(v) for v in golden2[prefix + "image_mean_std"])
    diffs = {name: _max_abs(views[name](), golden2[prefix + name]) for name in crops}
    for name, d in diffs.items():
        assert d <= SYNTH_REL_TOL * std, f"{prefix}{name}: max abs diff {d:.3g}"
    assert img.double().mean().item() == pytest.approx(mean, rel=0, abs=SYNTH_REL_TOL * std)
    assert img.double().std().item() == pytest.approx(std, rel=SYNTH_REL_TOL)
    diffs["mean"] = abs(img.double().mean().item() - mean)
    diffs["std"] = abs(img.double().std().item() - std)
    print(f"{prefix or 'const/'} max abs diffs: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    return diffs


# -- structure ----------------------------------------------------------------------------------
def test_state_dict_keys_match_nvidia(keys_spec: dict) -> None:
    g = StyleGAN2Generator(**stylegan2_kwargs(keys_spec["kwargs"]))
    sd = g.state_dict()
    entries = keys_spec["state_dict"]
    assert list(sd) == [e["key"] for e in entries]  # same keys, same order
    assert [list(v.shape) for v in sd.values()] == [e["shape"] for e in entries]
    assert {n for n, _ in g.named_buffers()} == {e["key"] for e in entries if e["kind"] == "buffer"}
    n_map = sum(p.numel() for p in g.mapping_net.parameters())
    n_syn = sum(p.numel() for p in g.synthesis_net.parameters())
    assert (n_map + n_syn, n_map, n_syn) == tuple(keys_spec["num_params"][k] for k in ("total", "mapping", "synthesis"))


def test_loaded_generator_attributes(gen: StyleGAN2Generator, keys_spec: dict) -> None:
    assert gen.backend == "stylegan2" and gen.name == "stylegan2"
    assert (gen.resolution, gen.z_dim, gen.w_dim, gen.num_ws) == (1024, 512, 512, keys_spec["num_ws"])
    res = [4] + [r for r in (8, 16, 32, 64, 128, 256, 512, 1024) for _ in range(2)]
    assert gen.noise_shapes == [(1, r, r) for r in res]
    assert gen.has_mapping and not gen.training
    assert not any(p.requires_grad for p in gen.parameters())
    assert torch.equal(gen.w_avg, torch.zeros(512))
    # as in NVIDIA's Generator, the interface's synthesis / mapping are the sub-networks
    children = dict(gen.named_children())
    assert list(children) == ["synthesis", "mapping"]
    assert gen.synthesis is gen.synthesis_net is children["synthesis"]
    assert gen.mapping is gen.mapping_net is children["mapping"]
    assert gen.get_submodule("synthesis.b1024.torgb") is gen.synthesis.b1024.torgb
    assert gen.get_buffer("mapping.w_avg") is gen.w_avg


def test_const_noise_is_the_buffers(gen: StyleGAN2Generator, state: dict) -> None:
    noise = gen.const_noise()
    assert [tuple(n.shape[1:]) for n in noise] == gen.noise_shapes
    keys = [k for k in state if k.endswith(".noise_const")]
    assert len(keys) == len(noise) == 17
    for n, k in zip(noise, keys):
        assert torch.equal(n[0, 0], state[k])


# -- parity with NVIDIA's outputs -----------------------------------------------------------------
def test_mapping_matches_golden(gen: StyleGAN2Generator, golden2: dict) -> None:
    ws = _t(golden2["ws"])
    assert torch.equal(ws, ws[:, :1].expand_as(ws))  # all rows of a sample are equal
    with torch.inference_mode():
        w = gen.mapping(_t(golden2["z"]))
        zm = torch.randn(36, 512, generator=torch.Generator().manual_seed(2))
        wm = gen.mapping(zm).reshape(2, 18, 512)
    for actual, expected in ((w, ws[:, 0]), (wm, _t(golden2["var_wsmix/ws"]))):
        err = (actual - expected).abs().max().item()
        print(f"mapping max abs diff {err:.2e} (max |w| {expected.abs().max().item():.2f})")
        assert err <= WS_REL_TOL * expected.abs().max().item()


@pytest.mark.slow
def test_synthesis_const_noise_matches_golden(const_run: dict, golden2: dict) -> None:
    img = const_run["img"]
    assert img.shape == (2, 3, 1024, 1024)
    _check_image(img, golden2, "", ("image_avgpool32", "image_crop_center", "image_crop_corner"))
    print(f"1024 synthesis forward, batch 2: {const_run['seconds']:.2f} s")


@pytest.mark.slow
def test_per_block_checks(const_run: dict, golden2: dict) -> None:
    blocks = const_run["blocks"]
    assert list(blocks) == [f"b{2**i}" for i in range(2, 11)]
    worst = 0.0
    for name, (x_slice, x_ms, x_absmax, img_ms) in blocks.items():
        g = f"layer/{name}/"
        x_tol = SYNTH_REL_TOL * float(golden2[g + "x_mean_std"][1])  # the block's features' scale: their std
        worst = max(worst, _max_abs(x_slice, golden2[g + "x_slice"]))
        assert _max_abs(x_slice, golden2[g + "x_slice"]) <= x_tol, name
        assert x_absmax.item() == pytest.approx(golden2[g + "x_absmax"][0], abs=x_tol), name
        for actual, key in ((x_ms, "x_mean_std"), (img_ms, "img_mean_std")):
            exp = golden2[g + key]
            # mean can be near 0: tolerance relative to the std
            assert abs(actual[0].item() - exp[0]) <= SYNTH_REL_TOL * abs(exp[1]), f"{name} {key} mean"
            assert actual[1].item() == pytest.approx(exp[1], rel=SYNTH_REL_TOL), f"{name} {key} std"
    print(f"per-block x_slice max abs diff {worst:.2e}")


@pytest.mark.slow
def test_wsmix_matches_golden(wsmix_img: torch.Tensor, golden2: dict) -> None:
    _check_image(wsmix_img, golden2, "var_wsmix/", ("image_avgpool32", "image_crop_center"))


@pytest.mark.slow
def test_noise_none_matches_golden(noise_none_img: torch.Tensor, golden2: dict) -> None:
    _check_image(noise_none_img, golden2, "var_noise_none/", ("image_avgpool32", "image_crop_center"))


# -- strict loading -----------------------------------------------------------------------------
TINY_KWARGS = {"z_dim": 8, "c_dim": 0, "w_dim": 8, "img_resolution": 16, "img_channels": 3, "channel_base": 64,
               "channel_max": 8, "num_fp16_res": 0, "conv_clamp": None, "architecture": "skip",
               "resample_filter": [1, 3, 3, 1], "use_noise": True, "activation": "lrelu",
               "mapping_kwargs": {"num_layers": 2, "embed_features": None, "layer_features": None,
                                  "activation": "lrelu", "lr_multiplier": 0.01, "w_avg_beta": 0.995}}


def _tiny_state(sg23: ModuleType, kwargs: dict = TINY_KWARGS) -> dict[str, torch.Tensor]:
    """Stand-in weights for a tiny config: the reference's per-key rule, our constructor's buffers."""
    g = StyleGAN2Generator(**stylegan2_kwargs(kwargs), init_generator=torch.Generator().manual_seed(0))
    params = {n for n, _ in g.named_parameters()}
    return {k: sg23.param_for(k, v.shape) if k in params else v for k, v in g.state_dict().items()}


def _expect(state: dict, kwargs: dict, *fragments: str) -> None:
    with pytest.raises(WeightsError) as info:
        load_stylegan2_state_dict(state, kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, msg


def test_missing_key_full_size(state: dict, keys_spec: dict) -> None:
    broken = {k: v for k, v in state.items() if k != "synthesis.b64.conv0.noise_strength"}
    _expect(broken, keys_spec["kwargs"], "missing 1 key", "synthesis.b64.conv0.noise_strength")


def test_unexpected_and_wrong_shape(sg23: ModuleType) -> None:
    st = _tiny_state(sg23)
    load_stylegan2_state_dict(st, TINY_KWARGS)  # the unmodified dict loads
    _expect({**st, "mapping.fc2.weight": torch.zeros(8, 8)}, TINY_KWARGS, "unexpected 1 key", "mapping.fc2.weight")
    _expect({**st, "synthesis.b8.torgb.weight": torch.zeros(3, 8, 3, 3)}, TINY_KWARGS,
            "wrong shape", "synthesis.b8.torgb.weight [3, 8, 3, 3] != [3, 8, 1, 1]")
    _expect({**st, "synthesis.b4.const": 1.0}, TINY_KWARGS, "non-tensor", "synthesis.b4.const")
    # a 16x16 state dict does not fit 32x32 arguments
    _expect(st, {**TINY_KWARGS, "img_resolution": 32}, "missing", "synthesis.b32.")


def test_unsupported_arguments(sg23: ModuleType) -> None:
    st = _tiny_state(sg23)
    _expect(st, {**TINY_KWARGS, "architecture": "resnet"}, "architecture='skip'")
    _expect(st, {**TINY_KWARGS, "c_dim": 10}, "c_dim=10")
    _expect(st, {**TINY_KWARGS, "frobnicate": 1}, "unsupported generator arguments: frobnicate")
    _expect(st, {**TINY_KWARGS, "img_resolution": 24}, "power of two")


def test_nested_synthesis_kwargs_and_half_weights(sg23: ModuleType) -> None:
    """stylegan2-ada-pytorch nests synthesis arguments; fp16-trained pickles may hold half tensors."""
    st = _tiny_state(sg23)
    synth = {k: TINY_KWARGS[k] for k in ("channel_base", "channel_max", "num_fp16_res", "conv_clamp",
                                         "architecture", "resample_filter", "use_noise", "activation")}
    nested = {k: v for k, v in TINY_KWARGS.items() if k not in synth} | {"synthesis_kwargs": synth}
    a = load_stylegan2_state_dict(st, TINY_KWARGS)
    b = load_stylegan2_state_dict({k: v.half() for k, v in st.items()}, nested)
    assert all(v.dtype == torch.float32 for v in b.state_dict().values())
    ws = torch.randn(2, a.num_ws, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # half weights keep 11 significant bits (relative rounding 2**-11 = 4.9e-4 per weight),
        # through 5 layers whose outputs are O(1-10): well under 0.05; wrong loading moves O(1)
        assert (a.synthesis(ws) - b.synthesis(ws)).abs().max() < 0.05


# -- small configs: ops, noise, gradients ---------------------------------------------------------
def _tiny_gen(sg23: ModuleType, dtype: torch.dtype = torch.float32, **kw) -> StyleGAN2Generator:
    kwargs = {**TINY_KWARGS, **kw}
    g = StyleGAN2Generator(**stylegan2_kwargs(kwargs), init_generator=torch.Generator().manual_seed(0))
    g.load_state_dict(_tiny_state(sg23, kwargs))
    return g.to(dtype)


def test_upsample_and_up_conv_ops() -> None:
    f = setup_filter([1, 3, 3, 1])
    assert torch.allclose(f * 64, torch.tensor([1.0, 3, 3, 1])[:, None] * torch.tensor([1.0, 3, 3, 1]))
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    # upsample2d == transposed conv with the filter (gain 4), stride 2, padding 1
    ref = F.conv_transpose2d(x, (4 * f.double())[None, None].expand(3, 1, 4, 4), stride=2, padding=1, groups=3)
    assert torch.allclose(upsample2d(x, f), ref)
    # a constant image stays constant away from the border
    ones = upsample2d(torch.ones(1, 1, 6, 6), f)
    assert ones.shape == (1, 1, 12, 12) and torch.allclose(ones[..., 2:-2, 2:-2], torch.ones(1, 1, 8, 8))
    # up-conv == zero insertion, then 3x3 transposed-conv kernel, then the FIR filter
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    y = conv2d_resample(x, w, f, up=2, padding=1)
    assert y.shape == (2, 4, 10, 14)
    z = torch.zeros(2, 3, 10, 14, dtype=torch.float64)
    z[:, :, ::2, ::2] = x
    direct = F.conv2d(F.pad(z, [2, 2, 2, 2]), w.flip([2, 3]))  # [2, 4, 12, 16]: full transposed-conv support
    direct = F.conv2d(direct.reshape(8, 1, 12, 16), (4 * f.double()).flip([0, 1])[None, None], padding=1)
    assert torch.allclose(y, direct.reshape(2, 4, 11, 15)[:, :, :10, :14])


def test_small_forward_noise_and_fused_equivalence(sg23: ModuleType) -> None:
    g = _tiny_gen(sg23, torch.float64)
    assert (g.num_ws, g.noise_shapes) == (6, [(1, 4, 4), (1, 8, 8), (1, 8, 8), (1, 16, 16), (1, 16, 16)])
    gen_ = torch.Generator().manual_seed(3)
    ws = torch.randn(2, 6, 8, generator=gen_, dtype=torch.float64)
    noise = [torch.randn(2, *s, generator=gen_, dtype=torch.float64) for s in g.noise_shapes]
    with torch.no_grad():
        fused = g.synthesis(ws, noise)
        g.set_fused_modconv(False)
        unfused = g.synthesis(ws, noise)
        g.set_fused_modconv(True)
        assert fused.shape == (2, 3, 16, 16)
        # float64, values O(1), a few hundred terms per output: rounding ~1e-14, far below 1e-12
        assert torch.allclose(fused, unfused, atol=1e-12)
        # noise matters, None == zeros, a batch-1 noise broadcasts, samples are independent
        assert not torch.allclose(fused, g.synthesis(ws, None))
        assert torch.equal(g.synthesis(ws, None), g.synthesis(ws, [torch.zeros_like(n) for n in noise]))
        const = g.synthesis(ws, g.const_noise())
        assert torch.allclose(const[1:], g.synthesis(ws[1:], g.const_noise()), atol=1e-12)
        # forward(z) == synthesis(mapping(z) repeated)
        z = torch.randn(2, 8, generator=gen_, dtype=torch.float64)
        assert torch.allclose(g(z, noise), g.synthesis(g.mapping(z)[:, None].expand(-1, 6, -1), noise))
        # truncation: psi 0 gives w_avg
        assert torch.allclose(g.mapping(z, truncation_psi=0.0), g.w_avg.expand(2, -1))
    with pytest.raises(ValueError, match="expected 5 noise tensors"):
        g.synthesis(ws, noise[:4])
    with pytest.raises(ValueError, match="ws must be"):
        g.synthesis(ws[:, :5])
    with pytest.raises(ValueError, match=r"noise\[1\] must be \[N, 1, 8, 8\]"):
        g.synthesis(ws, [noise[0], noise[0], *noise[2:]])
    with pytest.raises(ValueError, match="z must be"):
        g.mapping(torch.zeros(2, 7, dtype=torch.float64))
    # torch.func sees NVIDIA's names too
    params = {k: v.clone() for k, v in g.state_dict().items()}
    params["synthesis.b4.const"] = params["synthesis.b4.const"] * 0
    with torch.no_grad():
        out = torch.func.functional_call(g, params, (z, noise))
        g.synthesis.b4.const.zero_()
        assert torch.equal(out, g(z, noise))


def test_ws_rows_feed_nvidias_layers(sg23: ModuleType) -> None:
    """Changing row k only changes the layers documented for it (k=0: b4.conv1 ... last row: final torgb)."""
    g = _tiny_gen(sg23, torch.float64)
    ws = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, o))
               for n, m in g.synthesis_net.named_modules() if n.count(".") == 1]
    with torch.no_grad():
        g.synthesis(ws)
        base = dict(seen)
        expected_first = ["b4.conv1", "b4.torgb", "b8.conv1", "b8.torgb", "b16.conv1", "b16.torgb"]
        for k in range(6):
            bumped = ws.clone()
            bumped[:, k] += 1.0
            g.synthesis(bumped)
            changed = [n for n in base if not torch.equal(base[n], seen[n])]
            assert changed[0] == expected_first[k], (k, changed)
    for h in handles:
        h.remove()


def test_no_noise_config(sg23: ModuleType) -> None:
    g = _tiny_gen(sg23, use_noise=False)
    assert g.noise_shapes == [] and g.const_noise() == []
    assert not any("noise" in k for k in g.state_dict())
    ws = torch.randn(1, 6, 8)
    assert torch.equal(g.synthesis(ws, []), g.synthesis(ws))


def test_conv_clamp(sg23: ModuleType) -> None:
    """NVIDIA's conv_clamp (used by ada-trained pickles): every layer output is clamped to [-c, c]."""
    g, free = _tiny_gen(sg23, conv_clamp=0.5), _tiny_gen(sg23)
    ws = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        img = g.synthesis(ws)
        assert not torch.allclose(img, free.synthesis(ws))
        # three clamped torgb outputs, summed after convex upsampling
        # + 1e-6: float32 rounding of adding three upsampled values of at most 0.5 (~1.5 * 1.2e-7 each)
        assert img.abs().max() <= 3 * 0.5 + 1e-6


def test_gradcheck_synthesis_and_mapping(sg23: ModuleType) -> None:
    g = _tiny_gen(sg23, torch.float64, img_resolution=8, channel_max=4, channel_base=32, w_dim=4, z_dim=4,
                  mapping_kwargs={"num_layers": 2})
    gen_ = torch.Generator().manual_seed(7)
    ws = torch.randn(1, g.num_ws, 4, generator=gen_, dtype=torch.float64, requires_grad=True)
    noise = [torch.randn(1, *s, generator=gen_, dtype=torch.float64, requires_grad=True) for s in g.noise_shapes]
    z = torch.randn(2, 4, generator=gen_, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, *n: g.synthesis(w, list(n)), (ws, *noise))
    assert torch.autograd.gradcheck(g.mapping, (z,))
    g.set_fused_modconv(False)
    assert torch.autograd.gradcheck(lambda w, *n: g.synthesis(w, list(n)), (ws, *noise))
    # and the float32 path backpropagates to ws and to the weights
    g32 = _tiny_gen(sg23)
    ws32 = torch.randn(2, g32.num_ws, 8, requires_grad=True)
    g32.synthesis(ws32, g32.const_noise()).square().mean().backward()
    assert ws32.grad is not None and torch.isfinite(ws32.grad).all() and ws32.grad.abs().sum() > 0
    assert g32.synthesis_net.b4.const.grad is not None

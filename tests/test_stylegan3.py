"""StyleGAN3 port: parity with NVIDIA's networks_stylegan3 (keys, geometry, filters, outputs).

The goldens and stand-in weights come from ../shared/reference (README, second
half). Full-size synthesis runs (256 T and R, batch 2; 1024 T, batch 1) are
marked slow; each runs once per module. Small configs: test_stylegan3_small.py.
"""
from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import EPS32, float32_rel_error, load_sg23_reference, reference_dir

from pulse_sr.generators.stylegan3 import (
    MappingNetwork,
    StyleGAN3Generator,
    load_stylegan3_state_dict,
    stylegan3_kwargs,
    synthesis_geometry,
)
from pulse_sr.generators.stylegan3_ops import design_lowpass_filter

# Tolerances from float32 rounding (conftest.float32_rel_error: ours against NVIDIA's, run
# on another CPU, each a float32 evaluation), relative to the scale of what is compared:
#: the mapping: 2 dense layers of 512 inputs (T and R alike) -> 5.4e-6 of max |w|.
WS_REL_TOL = float32_rel_error(512, 2)
#: the synthesis: the Fourier input and 14 layers plus ToRGB, each a modulated conv over at most
#: 3x3 x 512 inputs (T; R: 1x1 x 1024) and FIR filters of a few dozen taps a side -> 6.5e-5 of
#: the std of the compared tensor (the golden's image std is 0.15 to 0.32, layers' 0.4 to 0.8);
#: also the mean's error relative to that std, and the std's own relative error.
SYNTH_REL_TOL = float32_rel_error(9 * 512, 16)
NETS_256 = ("stylegan3_t", "stylegan3_r")
ALL_NETS = (*NETS_256, "stylegan3_t1024")


# -- reference data -------------------------------------------------------------------------------
sg23 = load_sg23_reference  # the reference's deterministic_weights_sg23.py (imported once)


@lru_cache(maxsize=None)
def keys_spec(net: str) -> dict:
    return json.loads((reference_dir() / f"{net}_keys.json").read_text())


@lru_cache(maxsize=None)
def golden(net: str) -> dict[str, np.ndarray]:
    with np.load(reference_dir() / f"{net}_golden.npz") as data:
        return {k: data[k] for k in data.files}


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a))


def load_net(net: str) -> StyleGAN3Generator:
    return load_stylegan3_state_dict(sg23().state_dict(net), keys_spec(net)["kwargs"])


@pytest.fixture(scope="module")
def gen_t() -> StyleGAN3Generator:
    return load_net("stylegan3_t")


@pytest.fixture(scope="module")
def gen_r() -> StyleGAN3Generator:
    return load_net("stylegan3_r")


def _gen(request: pytest.FixtureRequest, net: str) -> StyleGAN3Generator:
    return request.getfixturevalue({"stylegan3_t": "gen_t", "stylegan3_r": "gen_r"}[net])


def _max_abs(actual: torch.Tensor, expected: np.ndarray) -> float:
    exp = _t(expected).to(actual.dtype)
    assert actual.shape == exp.shape
    return (actual - exp).abs().max().item()


def _check_image(img: torch.Tensor, gold: dict, prefix: str, views: tuple[str, ...], *, stats: bool = True) -> None:
    """``img [N, 3, R, R]`` against the golden arrays ``prefix + view`` (first N samples)."""
    r = img.shape[-1]
    make = {
        "image_avgpool32": lambda: F.avg_pool2d(img, r // 32),
        "image_crop_center": lambda: img[:, :, r // 2 - 32:r // 2 + 32, r // 2 - 32:r // 2 + 32],
        "image_crop_corner": lambda: img[:, :, 0:64, r - 64:r],
    }
    n = img.shape[0]
    diffs = {v: _max_abs(make[v](), gold[prefix + v][:n]) for v in views}
    print(f"{prefix or 'const/'} max abs diffs: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    mean, std = (float(v) for v in gold[prefix + "image_mean_std"])  # of both samples: the scale
    for v, d in diffs.items():
        assert d <= SYNTH_REL_TOL * std, f"{prefix}{v}: max abs diff {d:.3g}"
    if stats:
        assert img.double().mean().item() == pytest.approx(mean, rel=0, abs=SYNTH_REL_TOL * std)
        assert img.double().std().item() == pytest.approx(std, rel=SYNTH_REL_TOL)


# -- structure ------------------------------------------------------------------------------------
@pytest.mark.parametrize("net", ALL_NETS)
def test_state_dict_keys_match_nvidia(net: str) -> None:
    spec = keys_spec(net)
    g = StyleGAN3Generator(**stylegan3_kwargs(spec["kwargs"]), init_generator=torch.Generator().manual_seed(0))
    sd = g.state_dict()
    entries = spec["state_dict"]
    assert list(sd) == [e["key"] for e in entries]  # same keys, same order
    assert [list(v.shape) for v in sd.values()] == [e["shape"] for e in entries]
    assert {n for n, _ in g.named_buffers()} == {e["key"] for e in entries if e["kind"] == "buffer"}
    n_map = sum(p.numel() for p in g.mapping_net.parameters())
    n_syn = sum(p.numel() for p in g.synthesis_net.parameters())
    assert (n_map + n_syn, n_map, n_syn) == tuple(spec["num_params"][k] for k in ("total", "mapping", "synthesis"))
    assert g.num_ws == spec["num_ws"] == 16 and g.resolution == spec["img_resolution"]


@pytest.mark.parametrize("net", ALL_NETS)
def test_layer_geometry_matches_nvidia(net: str) -> None:
    spec = keys_spec(net)
    kw = stylegan3_kwargs(spec["kwargs"])
    input_spec, layers = synthesis_geometry(
        kw["img_resolution"], kw["img_channels"], channel_base=kw["channel_base"], channel_max=kw["channel_max"],
        conv_kernel=kw["conv_kernel"], use_radial_filters=kw["use_radial_filters"])
    ref_input, *ref_layers = spec["layers"]
    assert input_spec["channels"] == ref_input["channels"] and [input_spec["size"]] * 2 == ref_input["size"]
    assert input_spec["sampling_rate"] == ref_input["sampling_rate"]
    # float64 formulas of a few operations each (rounding ~1e-16 a step): 1e-12 still fails any other formula
    assert input_spec["bandwidth"] == pytest.approx(ref_input["bandwidth"], rel=1e-12)
    assert len(layers) == len(ref_layers) == 15
    for mine, ref in zip(layers, ref_layers):
        d = mine.to_dict()
        for key, value in ref.items():
            if key == "conv_clamp":
                continue
            got = d[key]
            if key in ("in_size", "out_size"):
                got = [got, got]
            elif key == "padding":
                got = list(got)
            if isinstance(value, float):
                assert got == pytest.approx(value, rel=1e-12), (ref["name"], key)
            else:
                assert got == value, (ref["name"], key)


@pytest.mark.parametrize("net", ALL_NETS)
def test_designed_filters_match_nvidia_buffers(net: str) -> None:
    """Our Kaiser designs (sinc for T, jinc for R's radial down filters) reproduce NVIDIA's buffers."""
    g = StyleGAN3Generator(**stylegan3_kwargs(keys_spec(net)["kwargs"]))
    buffers = {k[len("buffer/"):]: v for k, v in golden(net).items() if k.startswith("buffer/")}
    filters = {k: v for k, v in g.state_dict().items() if k.endswith("_filter")}
    assert set(filters) == {k for k in buffers if k.endswith("_filter")}
    radial = [k for k, v in filters.items() if v.ndim == 2]
    assert bool(radial) == (net == "stylegan3_r")
    # both designed in float64 and rounded to float32 once: at most one float32 ulp apart, and
    # taps are below 1, where an ulp is <= 2**-24 = 6e-8
    for k, v in filters.items():
        assert (v - _t(buffers[k])).abs().max().item() <= 1e-7, k
    # every other buffer the constructor makes by rule (not by RNG) is NVIDIA's too
    assert torch.equal(g.synthesis.input.transform, _t(buffers["synthesis.input.transform"]))
    assert torch.equal(g.w_avg, _t(buffers["mapping.w_avg"]))


def test_lowpass_filter_properties() -> None:
    f = design_lowpass_filter(12, cutoff=2.0, width=12.0, fs=32.0)
    assert f is not None and f.shape == (12,) and torch.allclose(f, f.flip(0))
    # 12 float32 taps, each rounded once (<= 6e-8 x its size; taps sum to about 1), summed in float64
    assert f.double().sum().item() == pytest.approx(1.0, abs=12 * EPS32)
    r = design_lowpass_filter(12, cutoff=2.0, width=12.0, fs=32.0, radial=True)
    assert r is not None and r.shape == (12, 12) and torch.allclose(r, r.t()) and torch.allclose(r, r.flip(0))
    assert design_lowpass_filter(1, cutoff=2.0, width=1.0, fs=4.0) is None


# -- parity with NVIDIA's outputs (cheap parts) -----------------------------------------------------
@pytest.mark.parametrize("net", ALL_NETS)
def test_mapping_matches_golden(net: str) -> None:
    mapping = MappingNetwork(512, 512, **stylegan3_kwargs(keys_spec(net)["kwargs"])["mapping_kwargs"])
    state = sg23().state_dict(net)
    mapping.load_state_dict({k[len("mapping."):]: v for k, v in state.items() if k.startswith("mapping.")})
    gold = golden(net)
    ws = _t(gold["ws"])
    assert torch.equal(ws, ws[:, :1].expand_as(ws))
    with torch.no_grad():
        w = mapping(_t(gold["z"]))
        zm = torch.randn(32, 512, generator=torch.Generator().manual_seed(2))
        wm = mapping(zm).reshape(2, 16, 512)
    for actual, expected in ((w, ws[:, 0]), (wm, _t(gold["var_wsmix/ws"]))):
        err = (actual - expected).abs().max().item()
        assert err <= WS_REL_TOL * expected.abs().max().item(), err


@pytest.mark.parametrize("net", NETS_256)
def test_input_layer_matches_golden(net: str, request: pytest.FixtureRequest) -> None:
    g, gold = _gen(request, net), golden(net)
    with torch.no_grad():
        x = g.synthesis.input(_t(gold["ws"])[:, 0])
    assert x.shape == (2, g.synthesis.input.channels, 36, 36)
    _check_layer(x, gold, "input")


def _check_layer(x: torch.Tensor, gold: dict, name: str) -> None:
    g = f"layer/{name}/"
    h, w = x.shape[2:]
    sl = x[:, :4, h // 2 - 4:h // 2 + 4, w // 2 - 4:w // 2 + 4]
    mean, std = (float(v) for v in gold[g + "mean_std"])
    tol = SYNTH_REL_TOL * std  # the layer's own scale
    assert _max_abs(sl, gold[g + "slice"]) <= tol, name
    assert x.abs().max().item() == pytest.approx(gold[g + "absmax"][0], abs=tol), name
    assert abs(x.double().mean().item() - mean) <= tol, f"{name} mean"
    assert x.double().std().item() == pytest.approx(std, rel=SYNTH_REL_TOL), f"{name} std"


# -- parity with NVIDIA's outputs (full 256 synthesis) ----------------------------------------------
@pytest.fixture(scope="module")
def const_runs(request: pytest.FixtureRequest) -> dict:
    """Per network: the golden ws through synthesis, recording every layer's output via hooks."""
    return {}


def _const_run(net: str, request: pytest.FixtureRequest) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    runs = request.getfixturevalue("const_runs")
    if net not in runs:
        g, gold = _gen(request, net), golden(net)
        outputs: dict[str, torch.Tensor] = {}
        names = ["input", *g.synthesis.layer_names]
        handles = [getattr(g.synthesis, n).register_forward_hook(
            lambda m, a, o, n=n: outputs.__setitem__(n, o.detach().clone())) for n in names]
        try:
            with torch.inference_mode():
                img = g.synthesis(_t(gold["ws"]))
        finally:
            for h in handles:
                h.remove()
        runs[net] = (img, outputs)
    return runs[net]


@pytest.mark.slow
@pytest.mark.parametrize("net", NETS_256)
def test_synthesis_matches_golden(net: str, request: pytest.FixtureRequest) -> None:
    img, _ = _const_run(net, request)
    assert img.shape == (2, 3, 256, 256)
    _check_image(img, golden(net), "", ("image_avgpool32", "image_crop_center", "image_crop_corner"))


@pytest.mark.slow
@pytest.mark.parametrize("net", NETS_256)
def test_every_layer_matches_golden(net: str, request: pytest.FixtureRequest) -> None:
    _, outputs = _const_run(net, request)
    gold = golden(net)
    names = [k[len("layer/"):-len("/slice")] for k in gold if k.startswith("layer/") and k.endswith("/slice")]
    assert list(outputs) == names and len(names) == 16
    for name in names:
        _check_layer(outputs[name], gold, name)  # ToRGB: before output_scale, as recorded


@pytest.mark.slow
@pytest.mark.parametrize("net", NETS_256)
@pytest.mark.parametrize("variant", ["var_wsmix", "var_transform", "var_magema"])
def test_variants_match_golden(net: str, variant: str, request: pytest.FixtureRequest) -> None:
    g, gold = _gen(request, net), golden(net)
    ws = _t(gold["var_wsmix/ws"] if variant == "var_wsmix" else gold["ws"])
    changed = {k[len(variant) + len("/buffer/"):]: _t(v) for k, v in gold.items()
               if k.startswith(f"{variant}/buffer/")}
    assert bool(changed) == (variant != "var_wsmix")
    saved = {k: g.get_buffer(k).clone() for k in changed}
    try:
        for k, v in changed.items():
            g.get_buffer(k).copy_(v)
        with torch.inference_mode():
            img = g.synthesis(ws)
    finally:
        for k, v in saved.items():
            g.get_buffer(k).copy_(v)
    _check_image(img, gold, f"{variant}/", ("image_avgpool32", "image_crop_center"))


@pytest.mark.slow
def test_t1024_matches_golden() -> None:
    """One forward of the 1024 T network (first golden sample; the stats cover both, so not checked)."""
    g, gold = load_net("stylegan3_t1024"), golden("stylegan3_t1024")
    with torch.inference_mode():
        w = g.mapping(_t(gold["z"])[:1])
        expected = _t(gold["ws"])[:1, 0]
        assert (w - expected).abs().max().item() <= WS_REL_TOL * expected.abs().max().item()
        img = g.synthesis(_t(gold["ws"])[:1])
    assert img.shape == (1, 3, 1024, 1024)
    _check_image(img, gold, "", ("image_avgpool32", "image_crop_center", "image_crop_corner"), stats=False)

"""StyleGAN3 port on small configs: the ops against their definitions, the interface, equivariance,
gradients, the PULSE search, strict loading, NVIDIA pickles through load_generator and the CLI, and the
own format. Reference parity of the full-size networks is in test_stylegan3.py."""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_stylegan3 import sg23

from pulse_sr.errors import WeightsError
from pulse_sr.generators.stylegan3 import StyleGAN3Generator, load_stylegan3_state_dict, stylegan3_kwargs
from pulse_sr.generators.stylegan3_ops import filtered_lrelu, modulated_conv2d

# -- the ops, against definitions written out the long way -------------------------------------------
def _upfirdn_naive(x: torch.Tensor, f: torch.Tensor, up: int, down: int, pad: tuple[int, int, int, int],
                   gain: float) -> torch.Tensor:
    """Zero insertion, pad/crop, full 2-D convolution (flipped filter), keep every down-th sample."""
    n, c, h, w = x.shape
    z = torch.zeros(n, c, h * up, w * up, dtype=x.dtype)
    z[:, :, ::up, ::up] = x
    px0, px1, py0, py1 = pad
    z = F.pad(z, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    z = z[:, :, max(-py0, 0):z.shape[2] - max(-py1, 0), max(-px0, 0):z.shape[3] - max(-px1, 0)]
    f2 = (f[:, None] * f[None, :] if f.ndim == 1 else f).to(x.dtype) * gain
    y = F.conv2d(z.reshape(n * c, 1, *z.shape[2:]), f2.flip([0, 1])[None, None])
    return y.reshape(n, c, *y.shape[2:])[:, :, ::down, ::down]


@pytest.mark.parametrize("up,down,pad,radial", [
    (2, 2, (9, 8, 9, 8), False), (4, 2, (-6, -9, -6, -9), False), (2, 2, (-11, -12, -11, -12), False),
    (2, 2, (11, 10, 11, 10), True), (4, 2, (-2, -5, -2, -5), True), (1, 1, (0, 0, 0, 0), False),
    (2, 2, (3, -4, 5, 1), False),
])
def test_filtered_lrelu_matches_definition(up: int, down: int, pad: tuple, radial: bool, one_thread) -> None:
    g = torch.Generator().manual_seed(up * 10 + down)
    x = torch.randn(2, 5, 30, 27, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    fu = torch.randn(6 * up, generator=g, dtype=torch.float64) if up > 1 else None
    fd = None
    if down > 1:
        fd = torch.randn(12, 12, generator=g, dtype=torch.float64) if radial else torch.randn(12, generator=g,
                                                                                             dtype=torch.float64)
    for gain, slope, clamp in ((math.sqrt(2), 0.2, None), (math.sqrt(2), 0.2, 0.7), (1.0, 1.0, 2.0)):
        y = filtered_lrelu(x, fu, fd, b, up=up, down=down, padding=pad, gain=gain, slope=slope, clamp=clamp)
        one = torch.ones(1, dtype=torch.float64)
        ref = _upfirdn_naive(x + b[None, :, None, None], fu if fu is not None else one, up, 1, pad, up * up)
        ref = F.leaky_relu(ref, slope) * gain
        if clamp is not None:
            assert ref.abs().max() > clamp  # the clamp acts in this case
            ref = ref.clamp(-clamp, clamp)
        ref = _upfirdn_naive(ref, fd if fd is not None else one, 1, down, (0, 0, 0, 0), 1.0)
        assert y.shape == ref.shape, (y.shape, ref.shape)
        # float64 (eps 2.2e-16): sums of a few hundred filter taps of O(1-10) values, ~1e-14
        assert torch.allclose(y, ref, atol=1e-12, rtol=1e-12), (gain, slope, clamp)


def test_modulated_conv_matches_per_sample_kernels(one_thread) -> None:
    """Scale-the-activations form == NVIDIA's per-sample kernels (batch-wide style normalisation)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 6, 9, 9, generator=g, dtype=torch.float64)
    w = torch.randn(4, 6, 3, 3, generator=g, dtype=torch.float64)
    s = torch.randn(3, 6, generator=g, dtype=torch.float64) + 1
    gain = torch.tensor(0.7, dtype=torch.float64)
    for demod in (True, False):
        y = modulated_conv2d(x, w, s, demodulate=demod, padding=2, input_gain=gain)
        wn, sn = (w * w.square().mean([1, 2, 3], keepdim=True).rsqrt(), s * s.square().mean().rsqrt()) if demod \
            else (w, s)
        for n in range(3):
            k = wn * sn[n][None, :, None, None]
            if demod:
                k = k * (k.square().sum([1, 2, 3], keepdim=True) + 1e-8).rsqrt()
            ref = F.conv2d(x[n:n + 1], k * gain, padding=2)
            # float64, 6 x 3 x 3 = 54 terms of O(1): rounding ~1e-14; the two forms differ by the
            # 1e-8 under the demodulation's square root, ~1e-8 / (sum of squares, >= ~50) < 1e-10
            assert torch.allclose(y[n:n + 1], ref, atol=1e-10), (demod, n)


# -- tiny configs -----------------------------------------------------------------------------------
TINY_KWARGS = {"z_dim": 8, "c_dim": 0, "w_dim": 8, "img_resolution": 32, "img_channels": 3, "channel_base": 256,
               "channel_max": 16, "num_layers": 6, "num_critical": 2, "num_fp16_res": 0, "conv_clamp": 256,
               "conv_kernel": 3, "use_radial_filters": False, "magnitude_ema_beta": 0.999,
               "mapping_kwargs": {"num_layers": 2, "lr_multiplier": 0.01, "w_avg_beta": 0.998}}


def tiny_state(kwargs: dict = TINY_KWARGS) -> dict[str, torch.Tensor]:
    """Stand-in weights for a small config: the reference's per-key rule, our constructor's buffers."""
    g = StyleGAN3Generator(**stylegan3_kwargs(kwargs), init_generator=torch.Generator().manual_seed(0))
    params = {n for n, _ in g.named_parameters()}
    return {k: sg23().param_for(k, v.shape) if k in params else v for k, v in g.state_dict().items()}


def tiny_gen(dtype: torch.dtype = torch.float32, **kw) -> StyleGAN3Generator:
    kwargs = {**TINY_KWARGS, **kw}
    return load_stylegan3_state_dict(tiny_state(kwargs), kwargs).to(dtype)


def test_tiny_forward_interface_and_determinism(one_thread) -> None:
    g = tiny_gen()
    assert (g.backend, g.num_ws, g.resolution, g.noise_shapes, g.has_mapping) == ("stylegan3", 8, 32, [], True)
    assert not g.training and not any(p.requires_grad for p in g.parameters())
    info = g.describe()
    assert info["backend"] == "stylegan3" and info["num_ws"] == 8 and info["num_noise"] == 0 and info["config"] == "T"
    assert list(dict(g.named_children())) == ["synthesis", "mapping"]
    assert g.get_buffer("mapping.w_avg") is g.w_avg
    gen_ = torch.Generator().manual_seed(3)
    z = torch.randn(3, 8, generator=gen_)
    ws = torch.randn(3, 8, 8, generator=gen_)
    with torch.no_grad():
        img = g.synthesis(ws)
        assert img.shape == (3, 3, 32, 32) and torch.isfinite(img).all() and img.abs().max() < 1.5
        assert torch.equal(img, g.synthesis(ws, None)) and torch.equal(img, g.synthesis(ws, []))
        assert torch.equal(img, tiny_gen().synthesis(ws))  # rebuilt from the same weights: same output
        # samples are independent: batch 3 vs 1 only changes kernel rounding, float32_rel_error(
        # 9 * 8, 8) = 1.9e-6 of values |img| < 1.5, while a batch-wide op would change O(0.1)
        assert torch.allclose(img[1:2], g.synthesis(ws[1:2]), atol=1e-6)
        assert torch.equal(g(z), g.synthesis(g.mapping(z)[:, None].expand(-1, 8, -1)))
        assert torch.allclose(g.mapping(z, truncation_psi=0.0), g.w_avg.expand(3, -1))
    with pytest.raises(ValueError, match="expected 0 noise tensors"):
        g.synthesis(ws, [torch.zeros(3, 1, 4, 4)])
    with pytest.raises(ValueError, match=r"ws must be \[N, 8, 8\]"):
        g.synthesis(ws[:, :7])
    with pytest.raises(ValueError, match="stylegan3: z must be"):
        g.mapping(torch.zeros(2, 7))


def test_ws_rows_feed_nvidias_layers(one_thread) -> None:
    """Row 0 feeds the input layer, row i + 1 feeds L<i>: bumping row k first changes that layer."""
    g = tiny_gen()
    names = ["input", *g.synthesis.layer_names]
    ws = torch.randn(1, g.num_ws, 8, generator=torch.Generator().manual_seed(4))
    seen: dict[str, torch.Tensor] = {}
    handles = [getattr(g.synthesis, n).register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, o))
               for n in names]
    try:
        with torch.no_grad():
            g.synthesis(ws)
            base = dict(seen)
            for k in range(g.num_ws):
                bumped = ws.clone()
                bumped[:, k] += 1.0
                g.synthesis(bumped)
                changed = [n for n in names if not torch.equal(base[n], seen[n])]
                assert changed[0] == names[k], (k, changed)
    finally:
        for h in handles:
            h.remove()


def test_translation_equivariance_of_t(one_thread) -> None:
    """Shifting the input transform by k input pixels (1/16 unit at sampling rate 16) shifts the image by
    k * 32/16 output pixels: exact in the interior, with border effects from the finite layers that decay
    with the distance to the edge (8 pixels in: below float32 rounding)."""
    g = tiny_gen()
    assert g.synthesis.input.sampling_rate == 16 and g.synthesis.layers()[-1].spec.out_sampling_rate == 32
    ws = torch.randn(2, g.num_ws, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = g.synthesis(ws)
        transform = g.synthesis.input.transform
        for k in (1, 3):
            transform[0, 2], transform[1, 2] = k / 16, -k / 16
            b = g.synthesis(ws)
            transform.copy_(torch.eye(3))
            s = 2 * k  # b[y, x] == a[y - s, x + s]
            diff = (b[:, :, s:, :32 - s] - a[:, :, :32 - s, s:]).abs()
            interior = diff[:, :, 8:-8, 8:-8].max().item()
            # float32: a whole-pixel shift of the Fourier input is the same arithmetic on shifted
            # phases (sin/cos of float32 arguments: ~1e-7 relative), through the tiny net:
            # float32_rel_error(9 * 8, 8) = 1.9e-6 of the scale; 1e-6 of max |a| (~3x the std)
            assert interior <= 1e-6 * a.abs().max().item(), (k, interior)
            assert diff.max().item() > 100 * interior  # the edges do differ: the test sees the shift
            # and a shift by a non-integer number of pixels is not a plain pixel shift
            transform[0, 2] = 0.5 / 16
            c = g.synthesis(ws)
            transform.copy_(torch.eye(3))
            assert (c[:, :, 8:-8, 9:-8] - a[:, :, 8:-8, 8:-9]).abs().max().item() > 1e3 * interior


def test_transform_and_magnitude_ema_act(one_thread) -> None:
    """The per-layer input gain rsqrt(magnitude_ema) and the rotation in ``transform`` change the image."""
    g = tiny_gen(torch.float64)
    ws = torch.randn(1, g.num_ws, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        a = g.synthesis(ws)
        layer = g.synthesis.layers()[-1]  # ToRGB: no demodulation, so the gain scales its output linearly
        layer.magnitude_ema.fill_(4.0)
        b = g.synthesis(ws)
        layer.magnitude_ema.fill_(1.0)
        bias = layer.bias.reshape(1, -1, 1, 1) * g.synthesis.output_scale
        # float64 and a gain of exactly 1/2: a few roundings of O(1) values, ~1e-16
        assert torch.allclose(b - bias, (a - bias) / 2, atol=1e-12)
        angle = math.radians(30)
        g.synthesis.input.transform[:2, :2] = torch.tensor([[math.cos(angle), -math.sin(angle)],
                                                            [math.sin(angle), math.cos(angle)]])
        c = g.synthesis(ws)
        g.synthesis.input.transform.copy_(torch.eye(3))
        assert (c - a).abs().max() > 1e-2  # a rotation changes the image by O(0.1), not rounding


def test_gradcheck_synthesis_and_mapping(one_thread) -> None:
    """The search differentiates through synthesis: float64 gradients agree with finite differences."""
    kwargs = {**TINY_KWARGS, "img_resolution": 16, "channel_max": 4, "channel_base": 64, "num_layers": 4,
              "w_dim": 4, "z_dim": 4, "margin_size": 4}
    g = load_stylegan3_state_dict(tiny_state(kwargs), kwargs).double()
    gen_ = torch.Generator().manual_seed(7)
    ws = torch.randn(2, g.num_ws, 4, generator=gen_, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 4, generator=gen_, dtype=torch.float64, requires_grad=True)
    # fast mode: compares random projections of the Jacobian (one backward instead of one per pixel)
    assert torch.autograd.gradcheck(lambda w: g.synthesis(w), (ws,), fast_mode=True)
    # and the full Jacobian of a few pooled outputs (every ws entry, both samples)
    assert torch.autograd.gradcheck(lambda w: F.avg_pool2d(g.synthesis(w), 8), (ws,))
    assert torch.autograd.gradcheck(g.mapping, (z,))
    # the float32 path backpropagates to ws and to the weights
    g32 = tiny_gen().requires_grad_(True)
    ws32 = torch.randn(2, g32.num_ws, 8, requires_grad=True)
    g32.synthesis(ws32).square().mean().backward()
    assert ws32.grad is not None and torch.isfinite(ws32.grad).all() and (ws32.grad[:, 0].abs().sum() > 0)
    assert g32.synthesis.input.weight.grad is not None and g32.synthesis.L0_36_16.weight.grad is not None


def test_planted_solution_search(one_thread) -> None:
    """PULSE's search runs on StyleGAN3 unchanged and finds a planted face within eps.

    x = G(z) for a known z (output_scale 1 instead of 0.25, so the random network's images have
    a trained generator's contrast), downscaled 4x; at least one of 4 candidates must reach the
    default eps (2e-3) within the default 100 steps, from a start over 10x worse."""
    from pulse_sr.degradations.bicubic import bicubic_downsample
    from pulse_sr.search.gaussian_fit import fit_gaussian
    from pulse_sr.search.pulse import pulse_search

    kwargs = {**TINY_KWARGS, "z_dim": 16, "w_dim": 16, "output_scale": 1.0}
    g = load_stylegan3_state_dict(tiny_state(kwargs), kwargs)
    g.weights_hash = "test-tiny-stylegan3"
    fit = fit_gaussian(g, samples=20_000)
    z = torch.randn(1, 16, generator=torch.Generator().manual_seed(1000))
    with torch.no_grad():
        x = ((g(z) + 1) / 2).clamp(0, 1)
    assert x.std() > 0.15  # a real image to match, not a flat field
    target = bicubic_downsample(x, 4)[0]
    result = pulse_search(g, target, n=4, seed=0, gaussian_fit=fit)
    assert result.converged.any(), result.l2.tolist()
    best = int(result.l2.argmin())
    lr = bicubic_downsample(result.hr[best:best + 1], 4)[0]
    assert F.mse_loss(lr, target).item() <= 2e-3  # PULSE's eps, not a rounding tolerance
    first = min(c.l2_history[0] for c in result.candidates())
    assert first > 10 * result.l2.min().item()


# -- strict loading --------------------------------------------------------------------------------
def _expect(state: dict, kwargs: dict, *fragments: str) -> None:
    with pytest.raises(WeightsError) as info:
        load_stylegan3_state_dict(state, kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, msg


def test_strict_loading_errors() -> None:
    st = tiny_state()
    load_stylegan3_state_dict(st, TINY_KWARGS)  # the unmodified dict loads
    _expect({k: v for k, v in st.items() if k != "synthesis.L2_52_16.down_filter"}, TINY_KWARGS,
            "missing 1 key", "synthesis.L2_52_16.down_filter")
    _expect({**st, "synthesis.L6_32_3.up_filter": torch.ones(1)}, TINY_KWARGS, "unexpected 1 key")
    _expect({**st, "synthesis.L0_36_16.weight": torch.zeros(16, 16, 1, 1)}, TINY_KWARGS,
            "wrong shape", "synthesis.L0_36_16.weight [16, 16, 1, 1] != [16, 16, 3, 3]")
    _expect({**st, "synthesis.input.freqs": 1.0}, TINY_KWARGS, "non-tensor", "synthesis.input.freqs")
    # T weights do not fit R arguments (1x1 convs, radial 2-D down filters)
    _expect(st, {**TINY_KWARGS, "conv_kernel": 1, "use_radial_filters": True}, "wrong shape")
    _expect(st, {**TINY_KWARGS, "c_dim": 10}, "c_dim=10")
    _expect(st, {**TINY_KWARGS, "frobnicate": 1}, "unsupported generator arguments: frobnicate")
    _expect(st, {**TINY_KWARGS, "mapping_kwargs": {"num_layers": 2, "embed": 1}}, "mapping_kwargs.embed")


def test_numpy_kwargs_and_half_weights(one_thread) -> None:
    """NVIDIA's pickles keep numpy scalars in kwargs; fp16-era files may hold half tensors."""
    st = tiny_state()
    kwargs = {**TINY_KWARGS, "img_resolution": np.int64(32), "conv_clamp": np.float64(256),
              "mapping_kwargs": {"num_layers": np.int64(2), "freeze_layers": 0}}
    a = load_stylegan3_state_dict(st, TINY_KWARGS)
    b = load_stylegan3_state_dict({k: v.half() for k, v in st.items()}, kwargs)
    assert all(v.dtype == torch.float32 for v in b.state_dict().values())
    assert json.dumps(b.constructor_kwargs)  # plain Python values
    ws = torch.randn(2, a.num_ws, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (a.synthesis(ws) - b.synthesis(ws)).abs().max() < 0.05


# -- NVIDIA pickles, load_generator, the CLI, the own format -----------------------------------------
NVIDIA_CLASS = {"StyleGAN3Generator": "Generator", "SynthesisNetwork": "SynthesisNetwork",
                "SynthesisInput": "SynthesisInput", "SynthesisLayer": "SynthesisLayer",
                "MappingNetwork": "MappingNetwork", "FullyConnectedLayer": "FullyConnectedLayer"}
MODULE_SRC = "# training/networks_stylegan3.py (stand-in)\nraise SystemExit('never run')\n"


class _Record:
    """Pickles like a ``training.networks_stylegan3`` module under NVIDIA's persistence:
    ``(_reconstruct_persistent_obj, (meta,))`` with the class name, the source text and the state."""

    def __init__(self, reconstruct, module: torch.nn.Module, init_kwargs: dict) -> None:
        self.reconstruct = reconstruct
        self.class_name = NVIDIA_CLASS[type(module).__name__]
        self.state = {
            "training": False,
            "_parameters": dict(module._parameters),
            "_buffers": dict(module._buffers),  # None for the ToRGB filters, as in NVIDIA's
            "_non_persistent_buffers_set": set(),
            "_modules": {k: _Record(reconstruct, m, {}) for k, m in module._modules.items()},
            "_init_args": (),
            "_init_kwargs": init_kwargs,
        }
        spec = getattr(module, "spec", None)
        if spec is not None:  # StyleGAN3 layers keep numpy attributes
            self.state["in_size"] = np.broadcast_to(np.asarray(spec.in_size), [2])
            self.state["in_cutoff"] = np.float64(spec.in_cutoff)

    def __reduce__(self):
        meta = {"type": "class", "version": 6, "module_src": MODULE_SRC, "class_name": self.class_name,
                "state": self.state}
        return (self.reconstruct, (meta,))


SNAPSHOT_KWARGS = {"z_dim": 8, "c_dim": 0, "w_dim": 8, "img_resolution": 32, "img_channels": 3,
                   "channel_base": 256, "channel_max": 16, "magnitude_ema_beta": 0.9988915792636801,
                   "num_fp16_res": 4, "conv_clamp": 256, "num_layers": 6, "num_critical": 2}


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory):
    """A fake ``network-snapshot-*.pkl`` holding a small StyleGAN3-T (trained-looking magnitude_ema)."""
    import pickle

    from test_nvidia_pickle import fake_nvidia_modules

    gen = tiny_gen()
    with torch.no_grad():
        for i, layer in enumerate(gen.synthesis.layers()):
            layer.magnitude_ema.fill_(0.5 + 0.1 * i)
    folder = tmp_path_factory.mktemp("nvidia3")
    path = folder / "network-snapshot-000000.pkl"
    with fake_nvidia_modules(folder / "marker") as (persistence, easydict):
        kwargs = easydict(SNAPSHOT_KWARGS, mapping_kwargs=easydict(num_layers=2))
        record = _Record(persistence._reconstruct_persistent_obj, gen, kwargs)
        with open(path, "wb") as f:
            pickle.dump({"G": record, "D": None, "G_ema": record, "augment_pipe": None,
                         "training_set_kwargs": easydict(resolution=32)}, f, protocol=4)
    assert not (folder / "marker").exists()
    return path, gen


def _same_function(a: StyleGAN3Generator, b: StyleGAN3Generator) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(a(z), b(z))


def test_load_generator_reads_stylegan3_pickle(snapshot, one_thread) -> None:
    import pulse_sr
    from pulse_sr.generators.base import file_sha256

    path, original = snapshot
    for loaded in (pulse_sr.load_generator(str(path)), pulse_sr.load_generator("stylegan3", weights=path),
                   pulse_sr.load_generator(weights=path)):
        assert isinstance(loaded, StyleGAN3Generator)
        assert (loaded.backend, loaded.resolution, loaded.num_ws, loaded.noise_shapes) == ("stylegan3", 32, 8, [])
        assert loaded.weights_hash == file_sha256(path) and not loaded.training
        _same_function(loaded, original)
    with pytest.raises(WeightsError, match="holds a stylegan3 generator, not stylegan2"):
        pulse_sr.load_generator("stylegan2", weights=path)
    with pytest.raises(WeightsError, match="stylegan3 needs its weights: --weights FILE.pkl"):
        pulse_sr.load_generator("stylegan3")


def test_cli_search_with_stylegan3_pickle(tmp_path, snapshot, one_thread, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from pulse_sr import cli

    monkeypatch.setenv("PULSE_SR_CACHE", str(tmp_path / "cache"))
    Image.fromarray(np.full((8, 8, 3), 120, dtype=np.uint8)).save(tmp_path / "face.png")
    code = cli.main(["run", str(tmp_path / "face.png"), "-o", str(tmp_path / "out"), "--weights", str(snapshot[0]),
                     "--n", "2", "--steps", "3", "--quiet"])
    _, err = capsys.readouterr()
    assert code in (0, 3), err
    report = json.loads((tmp_path / "out" / "face" / "report.json").read_text())
    assert report["generator"]["backend"] == "stylegan3" and report["generator"]["num_noise"] == 0
    assert len(report["candidates"]) == 2


def test_own_format_round_trip(tmp_path, snapshot, one_thread, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    import pulse_sr
    from pulse_sr import cli
    from pulse_sr.formats.own import load_own, read_metadata, save_generator

    monkeypatch.setenv("PULSE_SR_CACHE", str(tmp_path / "cache"))
    path, original = snapshot
    # convert the pickle with the CLI: every tensor kept, same function, same source hash
    dst = tmp_path / "sg3.safetensors"
    code = cli.main(["convert", str(path), "-o", str(dst)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"backend stylegan3, {len(original.state_dict())} tensors" in out
    converted = pulse_sr.load_generator(dst)
    _same_function(converted, original)
    assert converted.weights_hash == hashlib.sha256(dst.read_bytes()).hexdigest()  # always from the bytes
    meta = read_metadata(dst)
    assert meta["source"]["sha256"] == pulse_sr.load_generator(str(path)).weights_hash
    assert meta["backend"] == "stylegan3" and meta["constructor"]["magnitude_ema_beta"] == pytest.approx(0.99889157)
    # save_generator / load_own on an R network with non-default geometry
    kwargs = {**TINY_KWARGS, "conv_kernel": 1, "use_radial_filters": True, "margin_size": 6, "output_scale": 0.5}
    r = load_stylegan3_state_dict(tiny_state(kwargs), kwargs)
    assert any(v.ndim == 2 for k, v in r.state_dict().items() if k.endswith("down_filter"))
    r.weights_hash = "cd" * 32
    again = load_own(save_generator(r, tmp_path / "r.safetensors"))
    _same_function(again, r)
    assert again.constructor_kwargs == r.constructor_kwargs and again.describe()["config"] == "R"

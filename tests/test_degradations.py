"""Every registered degradation operator against an independent reference, plus
gradcheck, linearity, sizes, JSON-safe descriptions, nearest's phase, the spec
parser and the masked L2."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pulse_sr.degradations import OPERATORS, Grey, make_operator, masked_l2, parse_spec
from pulse_sr.degradations.bicubic import bicubic_downsample
from pulse_sr.errors import SettingsError

EPS32 = 2.0**-24  # float32 unit roundoff

# Luma weights written out here, not imported: the reference must not share the code under test.
BT601 = np.array([0.299, 0.587, 0.114])


def _ref_box(x: np.ndarray, f: int) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // f, f, w // f, f).mean(axis=(3, 5))


def _ref_nearest(x: np.ndarray, f: int) -> np.ndarray:
    return x[:, :, f // 2 :: f, f // 2 :: f]


def _ref_gaussian(x: np.ndarray, f: int, sigma: float | None = None) -> np.ndarray:
    """Direct 2-D float64 convolution with a reflect-padded image, sampled at block centres."""
    sigma = 0.5 * f if sigma is None else sigma
    r = math.ceil(4 * sigma)
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)), mode="reflect")
    off = np.arange(-r, f + r) - (f - 1) / 2
    k1 = np.exp(-0.5 * (off / sigma) ** 2)
    k2 = np.outer(k1, k1)
    k2 /= k2.sum()
    out = np.empty((n, c, h // f, w // f))
    for i in range(h // f):
        for j in range(w // f):
            patch = xp[:, :, i * f : i * f + k2.shape[0], j * f : j * f + k2.shape[1]]
            out[:, :, i, j] = (patch * k2).sum(axis=(2, 3))
    return out


def _ref_bicubic(x: np.ndarray, f: int) -> np.ndarray:
    # The bicubic operator's reference is PULSE's function (itself checked against
    # PULSE's golden outputs in test_bicubic.py): the registry must not change it.
    return bicubic_downsample(torch.from_numpy(x), f).numpy()


REFERENCES = {"box": _ref_box, "nearest": _ref_nearest, "gaussian": _ref_gaussian, "bicubic": _ref_bicubic}


def _tolerance(name: str, f: int) -> float:
    """Max abs error of a float32 operator on [0, 1] images vs a float64 reference."""
    if name == "bicubic":
        # the same function run in float64 (bit-for-bit equality is tested below): two passes of
        # 4f taps whose absolute values sum to < 1.2 (Keys' lobes), each pass rounding the
        # products and 4f additions of partial sums <= 1.2
        return 2 * 2 * 4 * f * 1.2 * EPS32
    if name == "nearest":
        return 0.0  # a copy of values
    if name == "box":
        # a sum of f*f values <= 1: each addition rounds by <= f*f*EPS32 (partial sums <= f*f),
        # so the sum is off by <= (f*f)**2 * EPS32 and the mean by <= f*f * EPS32, +1 ulp for the divide
        return (f * f + 1) * EPS32
    # gaussian: two passes of L taps summing to 1 on values <= 1: each pass rounds the taps
    # (<= L * EPS32) and its L additions (<= L * EPS32); x2 passes
    length = f + 2 * math.ceil(4 * 0.5 * f)
    return 4 * length * EPS32


CASES = [(name, grey) for name in sorted(OPERATORS) for grey in (False, True)]


def test_every_operator_has_a_reference() -> None:
    assert set(REFERENCES) == set(OPERATORS)


@pytest.mark.parametrize("name,grey", CASES)
@pytest.mark.parametrize("factor", [2, 3, 4])
def test_matches_independent_reference(name: str, grey: bool, factor: int) -> None:
    g = torch.Generator().manual_seed(10 * factor + len(name))
    side = 8 * factor
    x = torch.rand(2, 3, side, side, generator=g)
    op = make_operator(name, factor=factor, grey=grey)
    out = op(x)
    assert out.dtype == torch.float32
    ref = REFERENCES[name](x.double().numpy(), factor)
    tol = _tolerance(name, factor)
    if grey:
        ref = np.tensordot(BT601, ref, axes=([0], [1]))[:, None]
        # three weighted float32 terms (each <= 1) add <= 3 * EPS32 on top of the inner error
        tol = tol + 3 * EPS32
        assert op.channels == 1
    assert out.shape == ref.shape == (2, op.channels, 8, 8)
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=0, atol=tol)


def test_box_is_avg_pool() -> None:
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    assert torch.equal(make_operator("box", factor=6)(x), torch.nn.functional.avg_pool2d(x, 6))


@pytest.mark.parametrize("name,grey", CASES)
def test_gradcheck_float64(name: str, grey: bool) -> None:
    op = make_operator(name, factor=2, grey=grey)
    # 10x10: gaussian at factor 2 has sigma 1 and reflects 4 px, which needs a side > 4
    x = torch.rand(1, 3, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("name,grey", CASES)
def test_linear(name: str, grey: bool) -> None:
    g = torch.Generator().manual_seed(3)
    x, y = (torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=g) for _ in range(2))
    a, b = 0.7, -1.3
    op = make_operator(name, factor=4, grey=grey)
    lhs, rhs = op(a * x + b * y), a * op(x) + b * op(y)
    assert lhs.abs().max() > 0.1  # not trivially zero
    # float64 sums of <= 40 taps on values <= |a| + |b| = 2: error <= 2 passes * 40 * 2 * 2**-53 ~ 2e-14
    torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,grey", CASES)
@pytest.mark.parametrize("resolution,factor", [(32, 2), (64, 4), (64, 8)])
def test_output_size_and_describe(name: str, grey: bool, resolution: int, factor: int) -> None:
    op = make_operator(name, factor=factor, grey=grey)
    out = op(torch.rand(1, 3, resolution, resolution))
    assert out.shape[-2:] == (op.output_size(resolution),) * 2 == (resolution // factor,) * 2
    d = op.describe()
    assert json.loads(json.dumps(d)) == d
    inner = d["operator"] if grey else d
    assert d["name"] == ("grey" if grey else name)
    assert inner["name"] == name and inner["factor"] == factor


@pytest.mark.parametrize("factor", [2, 3, 5])
def test_nearest_phase_picks_pixel_i_k_plus_phase(factor: int) -> None:
    side = 4 * factor
    idx = torch.arange(side * side, dtype=torch.float64).view(1, 1, side, side).expand(1, 3, side, side)
    for py in range(factor):
        for px in range(factor):
            op = make_operator("nearest", factor=factor)
            op = type(op)(factor, phase=(py, px))
            out = op(idx)[0, 0]
            i = torch.arange(4).view(4, 1)
            j = torch.arange(4).view(1, 4)
            expected = (i * factor + py) * side + (j * factor + px)
            assert torch.equal(out, expected.double())
            assert op.describe()["phase"] == [py, px]
    assert make_operator(f"nearest:{factor - 1}", factor=factor).phase == (factor - 1, factor - 1)
    with pytest.raises(SettingsError):
        make_operator(f"nearest:{factor}", factor=factor)


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_nearest_default_phase_is_pillow_nearest(factor: int) -> None:
    rng = np.random.default_rng(factor)
    img = rng.integers(0, 256, (8 * factor, 8 * factor, 3), dtype=np.uint8)
    small = np.asarray(Image.fromarray(img).resize((8, 8), Image.NEAREST))
    x = torch.from_numpy(img).permute(2, 0, 1)[None].double()
    out = make_operator("nearest", factor=factor)(x)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(out, small)


def test_grey_matches_pillow_convert_L() -> None:
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    img[0, :4] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255]]
    pil = np.asarray(Image.fromarray(img).convert("L"), dtype=np.float64) / 255
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    out = Grey(make_operator("nearest", factor=1)).forward(x)[0, 0].double().numpy()
    # Pillow rounds to 8 bits (<= 0.5/255) with 16-bit fixed-point weights that differ from
    # 0.299/0.587/0.114 by < 1e-5 each (< 3e-5 * 255 levels = 0.01/255); float32 adds ~1e-7.
    np.testing.assert_allclose(out, pil, rtol=0, atol=0.51 / 255 + 1e-6)
    assert np.abs(out - pil).max() > 0.1 / 255  # Pillow does round: the bound is not vacuous


def test_gaussian_sigma_spec_and_default() -> None:
    assert make_operator("gaussian", factor=4).sigma == 2.0
    op = make_operator("gaussian:1.5", factor=4)
    assert op.sigma == 1.5
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    np.testing.assert_allclose(op(x).numpy(), _ref_gaussian(x.numpy(), 4, 1.5), rtol=0, atol=1e-12)
    # constant images stay constant (the kernel is normalised)
    c = torch.full((1, 3, 32, 32), 0.25)
    torch.testing.assert_close(op(c), torch.full((1, 3, 8, 8), 0.25), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "spec",
    ["lanczos", "gaussian:", "gaussian:-1", "gaussian:nan", "gaussian:x", "box:2", "nearest:a", "nearest:-1", ""],
)
def test_bad_specs_are_settings_errors(spec: str) -> None:
    with pytest.raises(SettingsError) as err:
        make_operator(spec, factor=4)
    assert err.value.kind == "settings" and err.value.data["field"] == "degradation"


def test_parse_spec() -> None:
    assert parse_spec("Gaussian:2") == ("gaussian", 2.0)
    assert parse_spec("box") == ("box", None)
    assert parse_spec("nearest:1") == ("nearest", 1)


def test_bicubic_registry_operator_is_pulse_bit_for_bit() -> None:
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    op = make_operator("bicubic", factor=4)
    assert torch.equal(op(x), bicubic_downsample(x, 4))
    assert op.describe() == {"name": "bicubic", "factor": 4}


def test_masked_l2_counts_known_pixels_only() -> None:
    g = torch.Generator().manual_seed(8)
    pred, target = torch.rand(2, 3, 4, 4, generator=g), torch.rand(2, 3, 4, 4, generator=g)
    mask = torch.ones(4, 4)
    mask[:, :2] = 0
    got = masked_l2(pred, target, mask)
    expected = ((pred - target) ** 2)[..., 2:].flatten(1).mean(1)
    torch.testing.assert_close(got, expected)
    # unknown pixels can be anything
    wild = target.clone()
    wild[..., :2] = 100.0
    torch.testing.assert_close(masked_l2(pred, wild, mask), expected)
    # no mask = PULSE's plain mean square
    torch.testing.assert_close(masked_l2(pred, target), ((pred - target) ** 2).flatten(1).mean(1))
    with pytest.raises(ValueError):
        masked_l2(pred, target, torch.zeros(4, 4))

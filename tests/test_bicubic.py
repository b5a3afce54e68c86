"""PULSE's bicubic operator: parity with the original, numerics, gradients, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import EPS32, float32_rel_error
from pulse_sr.degradations.bicubic import (
    BicubicDownsample,
    bicubic_downsample,
    bicubic_kernel_1d,
    valid_input_sizes,
)


@pytest.fixture(scope="module")
def x1024() -> torch.Tensor:
    return torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("factor", [8, 16, 32, 64])
def test_matches_original_1024(x1024: torch.Tensor, golden: dict, factor: int) -> None:
    out = bicubic_downsample(x1024, factor)
    # inputs in [0, 1], two passes of 4 * factor taps (sum |w| ~ 1.1 each): ours and PULSE's
    # float32 sums, conftest.float32_rel_error(4 * factor, 2) = 1.9e-6 (f 8) ... 5.4e-6 (f 64).
    # A wrong kernel (Keys a = -0.75, other padding or centre) moves outputs by > 1e-3.
    atol = float32_rel_error(4 * factor, 2)
    np.testing.assert_allclose(out.numpy(), golden[f"bicubic_1024_f{factor}"], rtol=0, atol=atol)


@pytest.mark.parametrize("factor", [2, 4])
def test_matches_original_256(x1024: torch.Tensor, golden: dict, factor: int) -> None:
    out = bicubic_downsample(x1024[:, :, :256, :256], factor)
    # as above: float32_rel_error(4 * factor, 2) = 9.5e-7 (f 2), 1.3e-6 (f 4)
    atol = float32_rel_error(4 * factor, 2)
    np.testing.assert_allclose(out.numpy(), golden[f"bicubic_256_f{factor}"], rtol=0, atol=atol)


def test_module_equals_function_and_moves_kernel(x1024: torch.Tensor) -> None:
    op = BicubicDownsample(4)
    assert "kernel" in dict(op.named_buffers())
    x = x1024[:, :, :64, :64]
    assert torch.equal(op(x), bicubic_downsample(x, 4))
    assert op.double().kernel.dtype == torch.float64


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_kernel_normalised_and_constant_preserved(factor: int) -> None:
    k = bicubic_kernel_1d(factor)
    assert k.numel() == 4 * factor
    # float32 taps divided by their float32 sum, summed again: 4f roundings of taps with
    # sum |w| ~ 1.2, a random walk of sqrt(32) x 6e-8 x 1.2 = 4e-7 at f = 8: 1e-6 has 2.4x margin
    assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(k, k.flip(0))  # symmetric
    x = torch.full((2, 3, 8 * factor, 8 * factor), 0.37)
    # 0.37 x (sum w)^2 (off by 2 x 4e-7 x 0.37) plus the two passes' float32 sums (sqrt(2 x 32) x
    # 6e-8 x 0.37 x 1.2 = 2e-7): 5e-7 <= 1e-6
    assert torch.allclose(bicubic_downsample(x, factor), torch.full((2, 3, 8, 8), 0.37), atol=1e-6)


def test_factor_one_is_identity_and_channels_any() -> None:
    x = torch.rand(1, 5, 16, 16)
    assert bicubic_downsample(x, 1) is x
    assert bicubic_downsample(x, 2).shape == (1, 5, 8, 8)


def test_linear_and_batch_independent() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)
    out = bicubic_downsample(torch.cat([a, b]), 4)
    assert torch.allclose(out[1:], bicubic_downsample(b, 4))  # allclose's defaults: rtol 1e-5 >> rounding
    # three float32 downscales (two passes of 16 taps, sum |w| 1.2 each), of inputs up to 2 in size
    # for 2a - b: errors add as 1 x 2 (2a - b) + 2 x 1 (a) + 1 x 1 (b) = 5 x sqrt(32) x EPS32 x 1.2
    atol = 5 * math.sqrt(32) * EPS32 * 1.2
    assert torch.allclose(bicubic_downsample(2 * a - b, 4), 2 * out[:1] - out[1:], atol=atol)


def test_gradcheck() -> None:
    x = torch.rand(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: bicubic_downsample(t, 2), (x,))


@pytest.mark.parametrize("factor", [0, -2, 2.0, True])
def test_bad_factor(factor: object) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        bicubic_downsample(torch.rand(1, 3, 8, 8), factor)  # type: ignore[arg-type]


def test_bad_sizes() -> None:
    with pytest.raises(ValueError, match="multiples"):
        bicubic_downsample(torch.rand(1, 3, 10, 10), 4)
    with pytest.raises(ValueError, match="NCHW"):
        bicubic_downsample(torch.rand(3, 8, 8), 2)


def test_valid_input_sizes() -> None:
    assert valid_input_sizes(1024) == [4, 8, 16, 32, 64, 128, 256, 512]
    assert valid_input_sizes(64) == [4, 8, 16, 32]

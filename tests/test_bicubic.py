"""PULSE's bicubic operator: parity with the original, numerics, gradients, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

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
    np.testing.assert_allclose(out.numpy(), golden[f"bicubic_1024_f{factor}"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("factor", [2, 4])
def test_matches_original_256(x1024: torch.Tensor, golden: dict, factor: int) -> None:
    out = bicubic_downsample(x1024[:, :, :256, :256], factor)
    np.testing.assert_allclose(out.numpy(), golden[f"bicubic_256_f{factor}"], rtol=0, atol=1e-6)


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
    assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(k, k.flip(0))  # symmetric
    x = torch.full((2, 3, 8 * factor, 8 * factor), 0.37)
    assert torch.allclose(bicubic_downsample(x, factor), torch.full((2, 3, 8, 8), 0.37), atol=1e-6)


def test_factor_one_is_identity_and_channels_any() -> None:
    x = torch.rand(1, 5, 16, 16)
    assert bicubic_downsample(x, 1) is x
    assert bicubic_downsample(x, 2).shape == (1, 5, 8, 8)


def test_linear_and_batch_independent() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)
    out = bicubic_downsample(torch.cat([a, b]), 4)
    assert torch.allclose(out[1:], bicubic_downsample(b, 4))
    assert torch.allclose(bicubic_downsample(2 * a - b, 4), 2 * out[:1] - out[1:], atol=1e-6)


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

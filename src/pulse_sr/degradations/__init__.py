"""Degradation operators A(x): deterministic, differentiable maps from HR to LR."""
from pulse_sr.degradations.bicubic import BicubicDownsample, bicubic_downsample, bicubic_kernel_1d

__all__ = ["BicubicDownsample", "bicubic_downsample", "bicubic_kernel_1d"]

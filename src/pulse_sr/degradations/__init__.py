"""Degradation operators A(x): deterministic, differentiable maps from HR to LR.

``make_operator("box", factor=4)`` builds one from a spec; ``OPERATORS`` lists them.
"""
from pulse_sr.degradations.base import Degradation
from pulse_sr.degradations.bicubic import BicubicDownsample, bicubic_downsample, bicubic_kernel_1d
from pulse_sr.degradations.box import BoxDownsample
from pulse_sr.degradations.gaussian import GaussianDownsample
from pulse_sr.degradations.grey import Grey, luma
from pulse_sr.degradations.mask import masked_l2
from pulse_sr.degradations.nearest import NearestDownsample
from pulse_sr.degradations.registry import DEFAULT_OPERATOR, OPERATORS, make_operator, parse_spec

__all__ = [
    "DEFAULT_OPERATOR",
    "OPERATORS",
    "BicubicDownsample",
    "BoxDownsample",
    "Degradation",
    "GaussianDownsample",
    "Grey",
    "NearestDownsample",
    "bicubic_downsample",
    "bicubic_kernel_1d",
    "luma",
    "make_operator",
    "masked_l2",
    "parse_spec",
]

"""The full synthesis through ``torch.compile``: a faster, leaner full step on the CPU.

Measured on the 1024x1024 StyleGAN1 stand-in on this project's 2-core machine
(``benchmarks/results/run-stylegan1.json``, modes ``faithful-lean`` and ``compiled``): one
full step goes from 1.78 s (eager, lean malloc) to 1.41 s, and the run's peak memory from
2.7 GiB to 1.6 GiB, because the compiled backward keeps fewer intermediates. The first use compiles for about 100 s;
the result is cached on disk (``TORCHINDUCTOR_CACHE_DIR``, by default under
pulse-sr's cache folder), after which a new process is ready in about 7 s.

It is the same function: gradients agree with eager float32 to rounding (relative
1e-4 for ``ws`` at 1024; checked in tests/test_fast_search.py on a small network).
Not used here, on purpose: channels-last memory format (wrong input gradients through
``instance_norm`` at batch 1 on this torch build) and bf16 autocast (a convolution
fallback hundreds of times slower).

If compiling fails (no C++ compiler, an unsupported op), a warning says so once
and the eager synthesis is used: slower, never wrong.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Sequence

from torch import Tensor

from pulse_sr.cache import inductor_cache_dir as default_cache_dir
from pulse_sr.generators.base import FaceGenerator

SynthesisFn = Callable[[Tensor, "Sequence[Tensor] | None"], Tensor]


class CompiledSynthesis:
    """``G.synthesis`` through ``torch.compile``, falling back to eager if compiling fails.

    Call it like ``G.synthesis(ws, noise)``: ``ws [N, num_ws, w_dim]``, noise list of
    ``[N, 1, H, W]`` -> ``[N, 3, R, R]`` in [-1, 1]. ``fell_back`` tells whether it is eager now.
    """

    def __init__(self, generator: FaceGenerator) -> None:
        import torch

        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
        self.eager: SynthesisFn = generator.synthesis
        self.compiled: SynthesisFn = torch.compile(generator.synthesis)
        self.fell_back = False

    def __call__(self, ws: Tensor, noise: Sequence[Tensor] | None = None) -> Tensor:
        if not self.fell_back:
            try:
                return self.compiled(ws, noise)
            except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eager
                self.fell_back = True
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                warnings.warn(f"torch.compile failed ({type(exc).__name__}: {first}); "
                              "using the eager network (slower, same results)", RuntimeWarning, stacklevel=2)
        return self.eager(ws, noise)


def synthesis_for(generator: FaceGenerator, compile_: bool) -> SynthesisFn:
    """The synthesis a search runs its full steps through: compiled or ``generator.synthesis``."""
    return CompiledSynthesis(generator) if compile_ else generator.synthesis

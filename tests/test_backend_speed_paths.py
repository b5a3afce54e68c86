"""The StyleGAN2/3 backends' faster search steps (issue 16) compute the same gradients.

- StyleGAN2: a step with a gradient through the styles runs the modulated convs in the
  scale-the-activations form (no weight-gradient convolutions): the same gradients as the
  fused form, fewer FLOPs.
- StyleGAN3: under ``torch.compile`` the filtered LeakyReLU clamps without a data-dependent
  branch, so the synthesis compiles as one graph.
- Both: the compiled full step (``search/compiled.py``) gives eager float32's gradients.
Small configs only; the full-size figures are in benchmarks/backends.py.
"""
from __future__ import annotations

import pytest
import torch
from test_stylegan2 import TINY_KWARGS as SG2_TINY, _tiny_state
from test_stylegan3_small import tiny_gen as sg3_tiny_gen
from torch.utils.flop_counter import FlopCounterMode

from conftest import load_sg23_reference
from pulse_sr.generators import stylegan2 as sg2_module
from pulse_sr.generators.stylegan2 import StyleGAN2Generator, stylegan2_kwargs
from pulse_sr.search.compiled import synthesis_for


def sg2_tiny(dtype: torch.dtype) -> StyleGAN2Generator:
    g = StyleGAN2Generator(**stylegan2_kwargs(SG2_TINY), init_generator=torch.Generator().manual_seed(0))
    g.load_state_dict(_tiny_state(load_sg23_reference(), SG2_TINY))
    return g.to(dtype).eval().requires_grad_(False)


def step_gradients(synthesis, ws: torch.Tensor, noise: list[torch.Tensor] | None) -> list[torch.Tensor]:
    """Gradients of a PULSE-like loss (mean square of the [0, 1] image minus 0.3) w.r.t. ws and
    every noise map that requires one."""
    leaves = [ws] + [n for n in (noise or []) if n.requires_grad]
    for t in leaves:
        t.grad = None
    ((synthesis(ws, noise) + 1) / 2 - 0.3).square().mean().backward()
    return [t.grad.detach().clone() for t in leaves]


def sg2_inputs(g: StyleGAN2Generator, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    dtype = g.w_avg.dtype
    ws = torch.randn(1, g.num_ws, g.w_dim, generator=gen, dtype=dtype).requires_grad_(True)
    noise = [torch.randn(1, *s, generator=gen, dtype=dtype).requires_grad_(i < 3) for i, s in enumerate(g.noise_shapes)]
    # noise_strength is 0 in a fresh config; make the noise matter
    for layer in g.synthesis_net.conv_layers():
        layer.noise_strength.fill_(0.3)
    return ws, noise


def test_sg2_step_has_no_weight_gradient_convolutions(one_thread, monkeypatch) -> None:
    """Regression (issue 16): the search's batch-1 step ran the fused modulated conv, whose
    per-sample kernels need a weight-gradient convolution per layer in the backward."""
    g = sg2_tiny(torch.float64)
    ws, noise = sg2_inputs(g, 1)
    counter = FlopCounterMode(display=False)
    with counter:
        new = step_gradients(g.synthesis, ws, noise)
    new_flops = counter.get_flop_counts()["Global"]
    with monkeypatch.context() as m:
        m.setattr(sg2_module, "use_fused", lambda fused, styles: fused)  # the old rule: always fused
        counter = FlopCounterMode(display=False)
        with counter:
            old = step_gradients(g.synthesis, ws, noise)
        old_flops = counter.get_flop_counts()["Global"]
    # the same function in float64: the forms differ by rounding only (~1e-16 per op, a few hundred
    # ops deep), so a 1e-10 relative bound has orders of magnitude of margin and catches any real slip
    assert len(new) == 4 and all(float(t.abs().max()) > 0 for t in new)
    for a, b in zip(old, new):
        assert float((a - b).norm() / a.norm()) < 1e-10
    # forward convolution FLOPs unchanged; the backward does input gradients only (= forward FLOPs)
    conv, back = torch.ops.aten.convolution, torch.ops.aten.convolution_backward
    assert new_flops[conv] == old_flops[conv]
    assert new_flops[back] == new_flops[conv] < old_flops[back]


def test_sg2_forward_without_gradient_still_fused(monkeypatch) -> None:
    """Forward-only calls (the golden parity tests, previews) keep the configured fused form."""
    g = sg2_tiny(torch.float32)
    seen: list[bool] = []
    real = sg2_module.modulated_conv2d
    monkeypatch.setattr(sg2_module, "modulated_conv2d", lambda *a, **kw: seen.append(kw["fused"]) or real(*a, **kw))
    ws, noise = sg2_inputs(g, 2)
    with torch.no_grad():
        g.synthesis(ws, noise)
    assert seen and all(seen)
    seen.clear()
    g.synthesis(ws, noise)
    assert seen and not any(seen)


def relative_errors(ref: list[torch.Tensor], got: list[torch.Tensor]) -> list[float]:
    return [float((a - b).norm() / a.norm()) for a, b in zip(ref, got)]


# Compiled vs eager float32: the compiler reorders sums and fuses pointwise ops, so each op's result
# may differ by a few float32 roundings (u = 6e-8) times its fan-in (at most 8 channels x 9 taps = 72
# here), compounded over ~20 ops forward and backward: ~20 * 72 * 6e-8 = 1e-4 relative in the worst
# case. 1e-3 leaves a 10x margin and still catches a wrong gradient (a sign or a missing term is O(1)).
COMPILED_RTOL = 1e-3


@pytest.mark.slow
def test_compiled_sg2_step_gives_eager_gradients(one_thread) -> None:
    g = sg2_tiny(torch.float32)
    ws, noise = sg2_inputs(g, 3)
    eager = step_gradients(g.synthesis, ws, noise)
    compiled = synthesis_for(g, True)
    got = step_gradients(compiled, ws, noise)
    assert not compiled.fell_back
    assert all(e < COMPILED_RTOL for e in relative_errors(eager, got)), relative_errors(eager, got)


def sg3_clamped():
    """Tiny StyleGAN3-T with a clamp low enough to act in most layers."""
    g = sg3_tiny_gen(torch.float32, conv_clamp=0.5).eval().requires_grad_(False)
    ws = torch.randn(1, g.num_ws, g.w_dim, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    return g, ws


def test_sg3_synthesis_compiles_as_one_graph(one_thread) -> None:
    """Regression (issue 16): the clamp's data-dependent skip (``.item()``) broke the compiled
    synthesis into one graph per layer."""
    g, ws = sg3_clamped()
    explained = torch._dynamo.explain(g.synthesis)(ws)
    assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.slow
def test_compiled_sg3_step_gives_eager_gradients(one_thread) -> None:
    g, ws = sg3_clamped()
    with torch.no_grad():  # the clamp acts: without it the image differs
        unclamped = sg3_tiny_gen(torch.float32, conv_clamp=None).synthesis(ws)
        assert not torch.allclose(g.synthesis(ws), unclamped, atol=1e-3)
    eager = step_gradients(g.synthesis, ws, None)
    compiled = synthesis_for(g, True)
    got = step_gradients(compiled, ws, None)
    assert not compiled.fell_back
    assert all(e < COMPILED_RTOL for e in relative_errors(eager, got)), relative_errors(eager, got)

"""Continuous batching (search/batched.py): several inputs' candidates in one batch give what each
input gives alone (first-step gradients within float32 rounding, eps met as often), with inputs of
different sizes, operators and thresholds in one run, and the batch refilled as inputs finish."""
from __future__ import annotations

import torch

from conftest import planted
from pulse_sr.degradations.registry import make_operator
from pulse_sr.search.batched import Flight, InputSpec, batched_forward_backward, search_many
from pulse_sr.search.pulse import full_step, make_state, pulse_search
from pulse_sr.search.settings import SearchSettings

CPU = torch.device("cpu")


def _box_target(tiny, seed: int, factor: int) -> torch.Tensor:
    """A planted input through the box operator: ``[3, 32/f, 32/f]`` in [0, 1]."""
    z = torch.randn(1, tiny.z_dim, generator=torch.Generator().manual_seed(2000 + seed))
    with torch.no_grad():
        x = ((tiny(z) + 1) / 2).clamp(0, 1)
    return make_operator("box", factor=factor)(x)[0]


def _specs(tiny) -> list[InputSpec]:
    """Inputs of two sizes (8 and 16 px for the 32 px generator), two operators, a mask, a threshold."""
    mask = torch.ones(8, 8)
    mask[:2] = 0
    return [
        InputSpec("a8", planted(tiny, 0, 4)),
        InputSpec("b16box", _box_target(tiny, 1, 2), operator=make_operator("box", factor=2)),
        InputSpec("c8mask", planted(tiny, 2, 4), mask=mask, threshold=3e-3),
        InputSpec("d16", planted(tiny, 3, 2)),
    ]


def _state(tiny, fit, spec: InputSpec, settings: SearchSettings, seed: int = 4):
    return make_state(tiny, spec.target, n=2, seed=seed, settings=settings, device=CPU, gaussian_fit=fit,
                      operator=spec.operator, mask=spec.mask, threshold=spec.threshold)


def test_first_step_gradients_equal_inputs_alone(tiny, tiny_fit) -> None:
    """Four inputs (8 and 16 px, bicubic and box, one masked with its own threshold), 2 candidates
    each, through one batch of 8: each input's first-step gradient is its gradient alone (batch 2).

    Bound: the losses are independent and summed, so the seed of each input's backward is exactly 1
    and the only difference is the order of float32 sums inside ops whose blocking depends on the
    batch size (convolutions, matrix products). A K-term dot product reordered changes by about
    eps32 * sqrt(K) * sum|terms| (random-walk rounding, eps32 = 6e-8). Here K <= 3*3*32 = 288
    (3x3 convs over 32 channels; the mapping's products have K = 32), so sqrt(K) < 17, and the
    gradient passes through ~12 layers forward and ~12 backward (4 mapping, 8 synthesis): about 24
    such reductions compound additively, 24 * 17 * 6e-8 = 2.4e-5 relative to sum|terms|. With
    sum|terms| up to ~10x the result (cancellation in a random-init net) that is 2.4e-4 of the
    gradient's norm; we check 5e-4 (a 2x margin). A wrong row, target or operator is off by O(1)."""
    settings = SearchSettings(steps=10)
    specs = _specs(tiny)
    alone = []
    for spec in specs:
        state = _state(tiny, tiny_fit, spec, settings)
        captured: list[torch.Tensor] = []
        state.apply = lambda grads, c=captured: c.extend(g.clone() for g in grads)
        full_step(state, 0)
        alone.append(captured)
    flights = [Flight(s.key, _state(tiny, tiny_fit, s, settings)) for s in specs]
    segments = [(f, f.state.begin_step(0)) for f in flights]
    hrs, totals = batched_forward_backward(segments)
    assert [h.shape[0] for h in hrs] == [2, 2, 2, 2] and all(bool(t.isfinite().all()) for t in totals)
    for f, want in zip(flights, alone):
        assert len(f.grads) == len(want) and float(want[0].norm()) > 0
        for got, ref in zip(f.grads, want):
            assert float((got - ref).norm()) <= 5e-4 * float(ref.norm()) + 1e-30
    # the bound is meaningful: another input's gradient is far off
    assert float((alone[0][0] - alone[3][0]).norm() / alone[0][0].norm()) > 0.1


def test_eps_met_as_often_as_alone(tiny, tiny_fit) -> None:
    """Planted problems, 2 candidates each, 80 steps: every candidate reaches eps alone and
    batched. Counts are compared exactly: each candidate's trajectory differs from its run alone
    only by float32 rounding (test above), which may move the step at which it crosses eps by a
    step or two but cannot take a candidate that converges with tens of steps to spare out of
    reach; the candidates here (seed 3) converge alone by step ~56 of 80."""
    specs = [s for s in _specs(tiny) if s.key != "c8mask"]  # pulse_search has no threshold argument
    settings = SearchSettings(steps=80)
    alone = {s.key: pulse_search(tiny, s.target, n=2, seed=3, settings=settings, gaussian_fit=tiny_fit,
                                 operator=s.operator, mask=s.mask) for s in specs}
    got: dict = {}
    count = search_many(tiny, specs, n=2, seed=3, settings=settings, batch_size=6, device=CPU,
                        gaussian_fit=tiny_fit, on_result=lambda k, r: got.__setitem__(k, r))
    assert count == len(specs) and set(got) == set(alone)
    assert sum(int(r.converged.sum()) for r in got.values()) == sum(int(r.converged.sum()) for r in alone.values())
    for key, r in alone.items():
        g = got[key]
        assert g.seeds == r.seeds == [3, 4]
        # the same start (the same seeded draws), seen through a batch of another size: the first L2s
        # differ only by the forward's reordered float32 sums (~12 layers, K <= 288: 12 * sqrt(288)
        # * 6e-8 ~ 1.2e-5 relative to sum|terms|, ~10x cancellation: 1.2e-4; checked at 3e-4)
        assert torch.allclose(g.l2_history[0], r.l2_history[0], rtol=3e-4, atol=0)
        assert bool(r.converged.all())
        assert bool((g.l2 <= g.eps).eq(g.converged).all())


def test_continuous_batching_mixed_sizes_and_operators(tiny, tiny_fit) -> None:
    """Five inputs (8 and 16 px, bicubic and box, one with a loose threshold) through a batch of 4
    rows, 2 candidates each: no synthesis call exceeds 4 rows, later inputs join while earlier ones
    still run, each input's result is its own (target, operator, L2 recomputed from its image)."""
    bad = InputSpec("bad", torch.rand(3, 5, 5))  # 5 px: no factor of 32; reported, the others go on
    specs = _specs(tiny) + [InputSpec("loose", planted(tiny, 5, 4), threshold=1.0)]
    errors: dict = {}
    calls: list[int] = []
    real = tiny.synthesis

    def spy(ws, noise):
        calls.append(int(ws.shape[0]))
        return real(ws, noise)

    seen: list[tuple[str, int]] = []
    got: dict = {}
    tiny.synthesis = spy  # an instance attribute, removed below: the session's generator is unchanged
    try:
        search_many(tiny, iter(specs[:2] + [bad] + specs[2:]), n=2, seed=7, settings=SearchSettings(steps=60), batch_size=4,
                    device=CPU, gaussian_fit=tiny_fit, on_result=lambda k, r: got.__setitem__(k, r),
                    callback=lambda k, info: seen.append((k, info.step)),
                    on_error=lambda k, e: errors.__setitem__(k, e))
    finally:
        del tiny.synthesis
    assert list(got) != [] and sorted(got) == sorted(s.key for s in specs)
    assert max(calls) == 4
    assert list(errors) == ["bad"] and errors["bad"].kind == "size"
    ops = {s.key: s.operator or make_operator("bicubic", factor=32 // s.target.shape[-1]) for s in specs}
    for s in specs:
        r = got[s.key]
        assert torch.equal(r.target, s.target) and r.lr.shape == (2, *s.target.shape)
        lr = ops[s.key](r.hr)
        assert torch.allclose(r.lr, lr, atol=1e-6)
        known = torch.ones(s.target.shape[-2:]) if s.mask is None else s.mask  # 1 = known pixel
        want = ((lr - s.target) ** 2 * known).sum(dim=(1, 2, 3)) / (3 * known.sum())
        assert torch.allclose(r.l2, want, rtol=1e-5, atol=1e-9)
        assert r.eps == (s.threshold or 2e-3)
        assert r.converged.tolist() == (r.l2 <= r.eps).tolist()
    assert got["loose"].steps.tolist() == [1, 1] and bool(got["loose"].converged.all())
    last = {k: max(st for kk, st in seen if kk == k) for k in got}
    # each input its own step counter (and so its own lr schedule position): 1, 2, ... from joining
    for key in got:
        assert [st for k, st in seen if k == key] == list(range(1, last[key] + 1))
        assert last[key] == int(got[key].steps.max())
    # continuous: the third input started before the first two had both finished
    first_c = next(i for i, (k, _) in enumerate(seen) if k == "c8mask")
    ends = [max(i for i, (k, _) in enumerate(seen) if k == key) for key in ("a8", "b16box")]
    assert first_c < max(ends)
    # and fewer synthesis calls than running the inputs one after another would make
    assert len(calls) < sum(last.values())


def test_adam_is_torch_adam_bit_for_bit() -> None:
    """search/adam.py's Adam against torch.optim.Adam: same params after 30 steps with a changing lr,
    gradients over 5 orders of magnitude and a sphere projection between steps; bit for bit (the same
    float32 ops in the same order, the same float64 bias corrections)."""
    from pulse_sr.search.adam import Adam

    g = torch.Generator().manual_seed(0)
    ours = [torch.randn(4, 1, 32, generator=g), torch.randn(4, 1, 8, 8, generator=g)]
    theirs = [t.clone() for t in ours]
    opt_ours, opt_theirs = Adam(ours, lr=0.4), torch.optim.Adam(theirs, lr=0.4)
    for step in range(30):
        for opt in (opt_ours, opt_theirs):
            opt.param_groups[0]["lr"] = 0.4 * (step + 1) / 30
        for a, b in zip(ours, theirs):
            grad = torch.randn(a.shape, generator=g) * 10.0 ** (step % 5 - 2)
            a.grad, b.grad = grad.clone(), grad.clone()
        opt_ours.step()
        opt_theirs.step()
        for a, b in zip(ours, theirs):
            a.div_(a.norm())
            b.div_(b.norm())
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert not torch.equal(ours[0], torch.randn(4, 1, 32, generator=torch.Generator().manual_seed(0)))


def test_search_does_not_import_dynamo() -> None:
    """Regression (issue 16, start-up): a search step imported torch._dynamo (through torch.optim),
    as slow as importing torch. A fresh process runs one step of a tiny search and must not have it."""
    import subprocess
    import sys

    code = ("import sys; from pulse_sr.generators.tiny import make_tiny_generator;"
            "from pulse_sr.search.pulse import pulse_search; import torch;"
            "r = pulse_search(make_tiny_generator(), torch.rand(3, 8, 8), steps=2, gaussian_fit="
            "(torch.zeros(32), torch.ones(32)));"
            "print(int(r.steps.max()), 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "False"]

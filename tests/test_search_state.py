"""The search's per-candidate state: operators, masks, thresholds, inputs sharing a batch; presets
and the settings the caller gave; the search package free of import cycles."""
from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import planted
from pulse_sr.degradations.base import Degradation
from pulse_sr.degradations.bicubic import BicubicDownsample, bicubic_downsample
from pulse_sr.search.losses import l2_per_image, loss_l1
from pulse_sr.search.observations import make_observation
from pulse_sr.search.pulse import full_step, make_state, pulse_search, resolve_settings, validate_settings
from pulse_sr.search.settings import SearchSettings
from pulse_sr.search.state import SearchState

SRC = Path(__file__).resolve().parents[1] / "src" / "pulse_sr"


class AreaDown(Degradation):
    """A test operator unlike PULSE's: the mean of each ``k x k`` block (``avg_pool2d``)."""

    name = "area-test"

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.factor)

    def params(self) -> dict:
        return {"factor": self.factor}

    def output_size(self, resolution: int) -> int:
        return resolution // self.factor


def _same_result(a, b) -> bool:
    nan = 7.0  # histories hold nan once a candidate stopped; equal nans are equal here
    return (torch.equal(a.hr, b.hr) and torch.equal(a.lr, b.lr) and torch.equal(a.l2, b.l2)
            and torch.equal(a.l2_history.nan_to_num(nan), b.l2_history.nan_to_num(nan))
            and torch.equal(a.loss_history.nan_to_num(nan), b.loss_history.nan_to_num(nan))
            and torch.equal(a.steps, b.steps) and torch.equal(a.latents, b.latents))


# -- operators ----------------------------------------------------------------------------------
def test_bicubic_is_a_degradation_and_unchanged() -> None:
    op = BicubicDownsample(4)
    assert isinstance(op, Degradation) and op.describe() == {"name": "bicubic", "factor": 4}
    assert op.output_size(32) == 8 and op.channels == 3
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(op(x), bicubic_downsample(x, 4))  # the same code path, bit for bit


@pytest.mark.parametrize("mode", ["faithful", "fast"])
def test_explicit_operator_gives_the_default_search(tiny, tiny_fit, mode) -> None:
    """PULSE's bicubic handed in explicitly is the default search, bit for bit (the same arithmetic
    in the same order: the default is that operator), in both phases."""
    target = planted(tiny, 2, 4)
    kw = dict(n=2, seed=3, steps=12, gaussian_fit=tiny_fit, mode=mode, refresh_every=3)
    default = pulse_search(tiny, target, **kw)
    explicit = pulse_search(tiny, target, operator=BicubicDownsample(4), **kw)
    assert _same_result(default, explicit)
    assert default.full_steps.tolist() == explicit.full_steps.tolist()


def test_planted_through_another_operator(tiny, tiny_fit) -> None:
    """x = A(G(w)) with A an area average: the search finds faces whose *area* average matches
    (checked independently with avg_pool2d), and the default bicubic would not have the same
    targets: the operator handed in is the one used."""
    op = AreaDown(4)
    z = torch.randn(1, tiny.z_dim, generator=torch.Generator().manual_seed(1003))
    with torch.no_grad():
        target = op(((tiny(z) + 1) / 2).clamp(0, 1))[0]
    res = pulse_search(tiny, target, n=4, seed=3, gaussian_fit=tiny_fit, operator=op)
    own = F.avg_pool2d(res.hr, 4)
    assert torch.equal(res.lr, own)
    l2 = (own - target[None]).pow(2).mean(dim=(1, 2, 3))
    # the same formula on the same float32 tensors: equal up to the order of one mean (rel 1e-6)
    assert torch.allclose(l2, res.l2, rtol=1e-6, atol=0)
    assert bool(res.converged.any()), f"no candidate within eps: {res.l2.tolist()}"
    assert res.converged.tolist() == (res.l2 <= 2e-3).tolist()


def test_operator_output_must_fit_the_target(tiny, tiny_fit) -> None:
    from pulse_sr.errors import SizeError

    with pytest.raises(SizeError, match="area-test operator makes"):
        pulse_search(tiny, torch.rand(3, 16, 16), gaussian_fit=tiny_fit, operator=AreaDown(4), steps=1)


# -- masks --------------------------------------------------------------------------------------
def test_masked_l2_is_the_mean_over_known_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    lr, target = torch.rand(3, 3, 8, 8, generator=g), torch.rand(1, 3, 8, 8, generator=g)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 1  # the left half known
    # float64 reference over the known pixels only; float32 sums of 96 terms in [0, 1] are
    # within 96 * 6e-8 relative of it (a loose bound for any summation order)
    ref = (lr.double() - target.double())[..., :4].pow(2).mean(dim=(1, 2, 3))
    got = l2_per_image(lr, target, mask)
    assert torch.allclose(got.double(), ref, rtol=96 * 6e-8, atol=0)
    ref_l1 = 10 * (lr.double() - target.double())[..., :4].abs().mean(dim=(1, 2, 3))
    assert torch.allclose(loss_l1(lr, target, 0.0, mask).double(), ref_l1, rtol=96 * 6e-8, atol=0)
    # a wrong implementation (mean over all pixels) is far outside that bound
    assert not torch.allclose(l2_per_image(lr, target).double(), ref, rtol=1e-3)


def test_mask_makes_unknown_pixels_count_for_nothing(tiny, tiny_fit) -> None:
    """Half the input's pixels unknown, and garbage in them: the search (loss, eps check, result)
    is bit for bit the same whatever the garbage (its terms are multiplied by exactly 0), and the
    reported L2 is the mean over the known pixels."""
    target = planted(tiny, 5, 4)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:, :4] = True
    runs = []
    for fill in (0.0, 1.0):
        garbage = target.clone()
        garbage[:, :, 4:] = fill
        runs.append(pulse_search(tiny, garbage, n=2, seed=5, gaussian_fit=tiny_fit, mask=mask))
    assert _same_result(*runs)
    res = runs[1]
    known = (res.lr - target[None])[..., :4].pow(2).mean(dim=(1, 2, 3))
    assert torch.allclose(res.l2, known, rtol=1e-6, atol=0)
    everywhere = (res.lr - runs[1].target[None]).pow(2).mean(dim=(1, 2, 3))
    assert bool((everywhere > 10 * res.l2).all())  # the garbage half would have dominated
    assert bool(res.converged.any()) and res.converged.tolist() == (res.l2 <= 2e-3).tolist()


def test_bad_masks(tiny, tiny_fit) -> None:
    from pulse_sr.errors import SizeError

    target = planted(tiny, 0, 4)
    with pytest.raises(SizeError, match="does not fit"):
        pulse_search(tiny, target, gaussian_fit=tiny_fit, mask=torch.ones(4, 4), steps=1)
    with pytest.raises(ValueError, match="no pixel"):
        pulse_search(tiny, target, gaussian_fit=tiny_fit, mask=torch.zeros(8, 8), steps=1)


# -- candidates of different inputs in one batch -------------------------------------------------
def _state(tiny, tiny_fit, observations, seed):
    settings = SearchSettings(steps=10)
    return SearchState(tiny, observations, seed=seed, settings=settings, device=torch.device("cpu"),
                       gaussian_fit=tiny_fit)


def _first_gradients(state) -> list[torch.Tensor]:
    captured: list[torch.Tensor] = []
    state.apply = lambda grads: captured.extend(g.clone() for g in grads)
    full_step(state, 0)
    return captured


def test_candidates_of_two_inputs_share_a_batch(tiny, tiny_fit) -> None:
    """Candidates 0, 1 match input A, candidates 2, 3 input B (another target, threshold and mask) in
    one state: each one's first-step gradient is what a search of its input alone gives.

    Tolerance: the rows of a batch are computed independently, but the batch of 4 may take other
    BLAS/conv blocking than a batch of 2, which reorders float32 sums; each gradient entry is a sum
    over at most ~10^4 products through 8 layers, so the relative difference of the whole gradient
    stays below ~1e-4 (sqrt(10^4) * 6e-8 per layer, compounded over 8 layers, with margin)."""
    dev = torch.device("cpu")
    ta, tb = planted(tiny, 0, 4), planted(tiny, 1, 4)
    mask_b = torch.ones(8, 8)
    mask_b[:2] = 0
    a = make_observation(ta, 32, threshold=2e-3, device=dev)
    b = make_observation(tb, 32, threshold=5e-3, device=dev, mask=mask_b)
    mixed = _first_gradients(_state(tiny, tiny_fit, [a, a, b, b], seed=4))
    alone_a = _first_gradients(_state(tiny, tiny_fit, [a, a], seed=4))
    alone_b = _first_gradients(_state(tiny, tiny_fit, [b, b], seed=6))  # candidates 2, 3 start at seeds 6, 7
    assert len(mixed) == len(alone_a) == 6 and float(alone_a[0].norm()) > 0 and float(alone_b[0].norm()) > 0
    for m, ga, gb in zip(mixed, alone_a, alone_b):  # latent, then noise maps (0 for this generator)
        for got, want in ((m[:2], ga), (m[2:], gb)):
            assert float((got - want).norm()) <= 1e-4 * float(want.norm())
    # and a mixed-up target would be far off: B's gradient is not A's
    assert float((alone_a[0] - alone_b[0]).norm() / alone_a[0].norm()) > 0.1


def test_per_candidate_thresholds_and_results(tiny, tiny_fit) -> None:
    dev = torch.device("cpu")
    target = planted(tiny, 3, 4)
    strict = make_observation(target, 32, threshold=2e-3, device=dev)
    loose = make_observation(target, 32, threshold=1.0, device=dev)  # any image is within 1.0
    state = _state(tiny, tiny_fit, [strict, strict, loose], seed=2)
    full_step(state, 0)
    assert state.done.tolist() == [bool(state.best_l2[0] <= 2e-3), bool(state.best_l2[1] <= 2e-3), True]
    res = state.result(torch.tensor([2]))
    assert res.eps == 1.0 and res.converged.tolist() == [True] and res.seeds == [4]
    assert res.n == 1 and torch.equal(res.hr[0], state.best_hr[2].clamp(0, 1))
    with pytest.raises(ValueError, match="different inputs"):
        state.result()
    assert state.result(torch.tensor([0, 1])).n == 2


# -- presets and the settings the caller gave ----------------------------------------------------
def test_given_fields_are_never_changed_by_a_preset(dcgan) -> None:
    """An explicit lr 0.4 (PULSE's default value) is kept; without ``given`` the library's old rule
    (presets fill fields still at PULSE's defaults) holds."""
    s = resolve_settings(SearchSettings(mode="fast", lr=0.4, given=("lr",)), dcgan)
    assert (s.lr, s.start_pool) == (0.4, 8)
    s = resolve_settings(SearchSettings(mode="fast", lr=0.4, start_pool=1, given=("lr", "start_pool")), dcgan)
    assert (s.lr, s.start_pool) == (0.4, 1)
    s = resolve_settings(SearchSettings(mode="auto"), dcgan)
    assert (s.mode, s.lr, s.start_pool) == ("fast", 1.5, 8)
    s = resolve_settings(SearchSettings(mode="fast", lr=0.9), dcgan)
    assert (s.lr, s.start_pool) == (0.9, 8)


def test_given_is_validated_and_reported() -> None:
    with pytest.raises(ValueError, match="given must be"):
        validate_settings(SearchSettings(given=("lrr",)))
    with pytest.raises(ValueError, match="given must be"):
        validate_settings(SearchSettings(given=["lr"]))  # type: ignore[arg-type]
    d = SearchSettings(lr=0.4, given=("lr",)).to_dict()
    # report.json keeps its layout: the old keys in the old order, then the new one
    assert list(d) == ["steps", "eps", "loss", "lr", "optimizer", "schedule", "noise", "num_trainable_noise",
                       "bad_noise_layers", "tile_latent", "run_all_steps", "mode", "start", "coarse_side",
                       "coarse_steps", "refresh_every", "lean_memory", "max_batch", "compile", "start_pool",
                       "range", "range_layer", "range_radius", "range_steps",  # issue 13: the range settings
                       "given"]
    assert d["given"] == ["lr"] and json.loads(json.dumps(d)) == d
    assert {f.name for f in dataclasses.fields(SearchSettings)} == set(d)


# -- structure ----------------------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    """Every pulse_sr.search module ``path`` imports, anywhere in the file (lazy and TYPE_CHECKING too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m.rsplit(".", 1)[-1] for m in found if m.startswith("pulse_sr.search.")
            and (SRC / "search" / f"{m.rsplit('.', 1)[-1]}.py").is_file()}


def test_search_modules_form_no_import_cycle() -> None:
    graph = {p.stem: _imports(p) - {p.stem} for p in (SRC / "search").glob("*.py")}
    seen: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        if seen.get(m) == 1:
            raise AssertionError(f"import cycle: {' -> '.join(path + [m])}")
        if seen.get(m) == 2:
            return
        seen[m] = 1
        for dep in sorted(graph.get(m, ())):
            visit(dep, path + [m])
        seen[m] = 2

    for m in sorted(graph):
        visit(m, [])
    # the phases sit on the state, never the other way round
    assert "pulse" not in graph["coarse"] and "coarse" not in graph["state"] and "pulse" not in graph["state"]


def test_impossible_settings_are_structured_errors() -> None:
    from pulse_sr.errors import SettingsError

    with pytest.raises(SettingsError, match="lr must be positive") as e:
        validate_settings(SearchSettings(lr=-1.0))
    assert e.value.kind == "settings" and e.value.data["field"] == "lr" and e.value.data["value"] == -1.0
    with pytest.raises(ValueError, match="unknown loss term") as e:  # still a ValueError, as before
        validate_settings(SearchSettings(loss="100*L3"))
    assert e.value.data["field"] == "loss" and json.dumps(e.value.data)


def test_coarse_phase_with_two_inputs_in_one_batch(tiny, tiny_fit) -> None:
    """The coarse phase runs on a state whose candidates match two inputs; what it returns per input
    is the full network's image and that image's own downscale against that input."""
    from pulse_sr.search.coarse import coarse_applies, run_coarse_phase

    dev = torch.device("cpu")
    ta, tb = planted(tiny, 7, 4), planted(tiny, 8, 4)
    a = make_observation(ta, 32, threshold=2e-3, device=dev)
    b = make_observation(tb, 32, threshold=2e-3, device=dev)
    settings = SearchSettings(steps=20, mode="fast", refresh_every=3)
    state = SearchState(tiny, [a, a, b, b], seed=1, settings=settings, device=dev, gaussian_fit=tiny_fit)
    assert coarse_applies(state)
    start = run_coarse_phase(state)
    assert 0 < start < 20 and int(state.full_steps.max()) >= 1
    for step in range(start, 20):
        full_step(state, step)
    for rows, target in ((torch.tensor([0, 1]), ta), (torch.tensor([2, 3]), tb)):
        res = state.result(rows)
        assert torch.equal(res.target, target)
        own = (bicubic_downsample(res.hr, 4) - target[None]).pow(2).mean(dim=(1, 2, 3))
        assert torch.allclose(own, res.l2, rtol=1e-6, atol=0)

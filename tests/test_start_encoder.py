"""``start="encoder"`` (issue 16, a learned start): candidates start around the shipped encoder's
prediction, seeded and reproducible and distinct; PULSE's start, with a note, where none applies."""
from __future__ import annotations

import pytest
import torch

from conftest import planted  # shared test helper

from pulse_sr.errors import SettingsError
from pulse_sr.front_end import build_settings
from pulse_sr.search.encoder import encoder_start
from pulse_sr.search.pulse import _encoder_start, make_state, pulse_search, resolve_settings
from pulse_sr.search.settings import SearchSettings

ENCODER = SearchSettings(start="encoder", steps=2)


def test_encoder_start_is_seeded_reproducible_and_distinct(dcgan):
    target = planted(dcgan, 0, 4)  # 16 px for the 64 px generator: a shipped bicubic x4 encoder
    settings = resolve_settings(ENCODER, dcgan)
    state = make_state(dcgan, target, n=3, seed=5, settings=settings, device="cpu")
    assert _encoder_start(state, target, None, None, 5) == "encoder"
    expected = encoder_start(dcgan, target, operator_name="bicubic", n=3, seed=5)
    assert torch.equal(state.latent.detach(), expected)  # the state starts exactly there
    # distinct: each candidate is ~50 degrees (spread 1.2) from the prediction, so two candidates'
    # unit rows are far apart; 0.1 is far below that and far above float32 rounding (~1e-6)
    rows = torch.nn.functional.normalize(expected[:, 0], dim=-1)
    dist = torch.cdist(rows, rows)
    assert bool((dist + torch.eye(3) * 10 > 0.1).all()), dist
    a = pulse_search(dcgan, target, n=3, seed=5, settings=ENCODER)
    b = pulse_search(dcgan, target, n=3, seed=5, settings=ENCODER)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.hr, b.hr)  # same process, same seed
    assert [e["start"] for e in a.extras] == ["encoder"] * 3
    other = pulse_search(dcgan, target, n=3, seed=6, settings=ENCODER)
    assert not torch.equal(other.latents, a.latents)  # another seed, other starts


def test_encoder_start_falls_back_to_pulses_start(tiny, tiny_fit):
    """No encoder ships for ``tiny``: the search is PULSE's, bit for bit, and the report says why."""
    target = planted(tiny, 1, 4)
    got = pulse_search(tiny, target, n=2, seed=3, settings=ENCODER, gaussian_fit=tiny_fit)
    plain = pulse_search(tiny, target, n=2, seed=3, settings=SearchSettings(steps=2), gaussian_fit=tiny_fit)
    assert torch.equal(got.latents, plain.latents) and torch.equal(got.l2, plain.l2)
    notes = [e["start"] for e in got.extras]
    assert notes == ["gaussian (PULSE's start: no encoder for tiny, bicubic, x4)"] * 2
    assert all("start" not in e for e in plain.extras)  # the default start adds nothing to the report


def test_encoder_start_falls_back_for_a_grey_target(dcgan):
    from pulse_sr.input_plan import plan_input

    grey = planted(dcgan, 2, 4).mean(0, keepdim=True).expand(3, -1, -1).contiguous()
    plan = plan_input(grey, dcgan.resolution, eps=ENCODER.eps, name="grey.png")
    assert plan.target.shape[0] == 1
    got = pulse_search(dcgan, plan.target, n=1, seed=0, settings=ENCODER, operator=plan.operator)
    assert got.extras[0]["start"].startswith("gaussian (PULSE's start: a [1, 16, 16] target")


def test_faithful_refuses_the_encoder_start():
    with pytest.raises(SettingsError, match="faithful contradicts start encoder"):
        build_settings({"start": "encoder"}, faithful=True)
    assert build_settings({"start": "encoder"}).start == "encoder"

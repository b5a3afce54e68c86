"""Loss terms (parity with the original), loss strings, schedules, sphere projection."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import SG1_SYNTHESIS_REL, float32_rel_error
from pulse_sr.degradations.bicubic import bicubic_downsample
from pulse_sr.search.losses import (
    evaluate_loss,
    l2_per_image,
    loss_geocross,
    loss_l1,
    loss_l2,
    parse_loss,
)
from pulse_sr.search.schedules import lr_multiplier
from pulse_sr.search.sphere import latent_dims, noise_dims, project_to_sphere_, sphere_norm


@pytest.fixture(scope="module")
def loss_inputs(synth_out: tuple, golden: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dl, out, _ = synth_out
    gen_im = (out + 1) / 2
    ref = torch.from_numpy(golden["bicubic_1024_f32"])
    return dl, bicubic_downsample(gen_im, 32), ref


@pytest.mark.slow
def test_loss_terms_match_original(loss_inputs: tuple, golden: dict) -> None:
    dl, lr, ref = loss_inputs
    eps = 2e-3
    # lr comes from our 1024 synthesis, off by at most SG1_SYNTHESIS_REL x the output's std (1.91)
    # per pixel, halved by (out + 1) / 2: 0.96 x SG1_SYNTHESIS_REL absolute. d = lr - ref has an
    # RMS of 0.88 (L2 = 0.77) and a mean |d| of 0.64 (L1 = 6.4 / 10), so L2, a square, is off by
    # at most 2 x 0.96 / 0.88 = 2.2x and L1 by 0.96 / 0.64 = 1.5x SG1_SYNTHESIS_REL: we allow 4x
    # and 2x; the bicubic sums (2 x 128 taps) and means add ~sqrt(256) x EPS32 = 2e-6 more.
    l2_tol, l1_tol = 4 * SG1_SYNTHESIS_REL, 2 * SG1_SYNTHESIS_REL
    # GEOCROSS: from the exact inputs dl; 18x18 pairs of 512-term dot products, norms and atan2.
    geo_tol = float32_rel_error(512, 2)
    assert loss_l2(lr, ref, eps).item() == pytest.approx(golden["loss_L2"][0], rel=l2_tol)
    assert loss_l1(lr, ref, eps).item() == pytest.approx(golden["loss_L1"][0], rel=l1_tol)
    assert loss_geocross(dl).item() == pytest.approx(golden["loss_GEOCROSS"][0], rel=geo_tol)
    total, parts = evaluate_loss(parse_loss("100*L2+0.05*GEOCROSS+1*L1"), lr, ref, dl, eps)
    # the terms' absolute errors add: 100 * 0.77 * l2_tol + 0.05 * 148 * geo_tol + 6.4 * l1_tol
    total_abs = float(100 * golden["loss_L2"][0] * l2_tol + 0.05 * golden["loss_GEOCROSS"][0] * geo_tol
                      + golden["loss_L1"][0] * l1_tol)
    assert total.item() == pytest.approx(golden["loss_total_100L2_0.05GEOCROSS_1L1"][0], rel=0, abs=total_abs)
    assert set(parts) == {"L2", "L1", "GEOCROSS"}


def test_l2_clamped_at_eps_per_image() -> None:
    ref = torch.zeros(1, 3, 4, 4)
    lr = torch.stack([torch.full((3, 4, 4), 0.01), torch.full((3, 4, 4), 0.5)])
    # allclose's defaults (rtol 1e-5): means of 48 equal float32 values are exact to an ulp or two
    assert torch.allclose(l2_per_image(lr, ref), torch.tensor([1e-4, 0.25]))
    assert torch.allclose(loss_l2(lr, ref, 2e-3), torch.tensor([2e-3, 0.25]))
    assert torch.allclose(loss_l1(lr, ref, 2e-3), torch.tensor([0.1, 5.0]))


def test_geocross_per_candidate_and_single_layer_zero() -> None:
    ws = torch.randn(3, 6, 16)
    per = loss_geocross(ws)
    assert per.shape == (3,)
    assert torch.allclose(per[1], loss_geocross(ws[1:2])[0])
    assert torch.equal(loss_geocross(torch.randn(2, 1, 16)), torch.zeros(2))
    same = torch.randn(1, 1, 16).expand(1, 5, 16).contiguous()
    # identical layers: atan2 of sqrt(1e-9) against |2x| ~ 8, i.e. ~4e-6 rad, squared x 512 / 8:
    # ~1e-9, under 1e-6; different layers give O(1)
    assert loss_geocross(same).item() < 1e-6 < loss_geocross(ws[:1]).item()


def test_parse_loss() -> None:
    spec = parse_loss("100*L2+0.05*GEOCROSS")
    assert spec.terms == ((100.0, "L2"), (0.05, "GEOCROSS"))
    assert parse_loss("L1 + 1e-2*geocross").terms == ((1.0, "L1"), (0.01, "GEOCROSS"))
    assert str(spec) == "100*L2+0.05*GEOCROSS"
    for bad, msg in [("", "empty"), ("100*L3", "unknown loss term"), ("GEOCROSS", "no data term"),
                     ("L2+L2", "twice"), ("a*L2", "cannot read")]:
        with pytest.raises(ValueError, match=msg):
            parse_loss(bad)


def test_schedules_match_pulse_formulas() -> None:
    drop = lr_multiplier("linear1cycledrop")
    assert drop(0, 100) == pytest.approx(0.1)
    assert drop(45, 100) == pytest.approx(1.0)
    assert drop(89, 100) == pytest.approx((9 * (1 - abs(89 / 90 - 0.5) * 2) + 1) / 10)
    assert drop(90, 100) == pytest.approx(0.1)
    assert drop(99, 100) == pytest.approx(0.1 + 0.9 * (0.001 - 0.1))
    cyc = lr_multiplier("linear1cycle")
    assert cyc(0, 100) == pytest.approx(0.1) and cyc(50, 100) == pytest.approx(1.0)
    assert lr_multiplier("fixed")(37, 100) == 1.0
    restart = lr_multiplier("cosine_restart")
    assert restart(0, 100) == pytest.approx(1.0) and restart(20, 100) == pytest.approx(0.505)
    assert restart(39, 100) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 39 / 40)))
    assert restart(40, 100) == pytest.approx(0.5) and restart(70, 100) == pytest.approx(0.2505)
    assert restart(7, 10) == pytest.approx(0.2505)  # the cycles scale with the step budget
    with pytest.raises(ValueError, match="known: fixed"):
        lr_multiplier("cosine")


def test_sphere_projection_keeps_radius_per_row() -> None:
    latent = torch.randn(2, 3, 8)
    noise = torch.randn(2, 1, 4, 4)
    r_lat, r_noise = sphere_norm(latent, latent_dims(latent)), sphere_norm(noise, noise_dims(noise))
    assert r_lat.shape == (2, 3, 1) and r_noise.shape == (2, 1, 1, 1)
    moved = latent * torch.rand(2, 3, 1) * 5 + 0.01
    project_to_sphere_(moved, r_lat, latent_dims(moved))
    # a norm of <= 1024 float32 squares, rescaled: sqrt(1024) x EPS32 = 3.8e-6 of radii ~ 1-5
    assert torch.allclose(sphere_norm(moved, (2,)), r_lat, atol=1e-5)
    project_to_sphere_(noise.mul_(3), r_noise, noise_dims(noise))
    assert torch.allclose(sphere_norm(noise, (2, 3)), r_noise, atol=1e-5)

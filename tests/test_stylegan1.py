"""StyleGAN1 (PULSE) port: parity with the original code's outputs, strict loading, small configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pulse_sr.errors import WeightsError
from pulse_sr.generators import stylegan1 as sg1
from pulse_sr.generators.base import file_sha256
from pulse_sr.generators.stylegan1 import StyleGAN1Generator, load_stylegan1
from pulse_sr.search.gaussian_fit import fit_gaussian

from conftest import EPS32, SG1_MAPPING_REL, SG1_SYNTHESIS_REL, assert_close


# -- parity with the original code ------------------------------------------------------------
def test_loaded_generator_attributes(gen: StyleGAN1Generator, weights_dir: Path) -> None:
    assert gen.backend == "stylegan1" and gen.name == "stylegan1"
    assert (gen.resolution, gen.z_dim, gen.w_dim, gen.num_ws) == (1024, 512, 512, 18)
    assert gen.noise_shapes == [(1, 2 ** (i // 2 + 2), 2 ** (i // 2 + 2)) for i in range(18)]
    assert gen.has_mapping
    assert gen.weights_hash == file_sha256(weights_dir / "synthesis.pt", weights_dir / "mapping.pt")
    assert gen.weights_source == str(weights_dir)
    assert not gen.training
    assert not any(p.requires_grad for p in gen.parameters())


def test_state_dict_keys_match_pulse(key_spec: dict) -> None:
    g = StyleGAN1Generator()
    for net, module in (("synthesis", g.synthesis_net), ("mapping", g.mapping_net)):
        spec = key_spec[net]
        sd = module.state_dict()
        assert list(sd) == [e["key"] for e in spec]  # same keys, same order
        assert [list(v.shape) for v in sd.values()] == [e["shape"] for e in spec]
        buffers = {n for n, _ in module.named_buffers()}
        assert {e["key"] for e in spec if e["kind"] == "buffer"} == buffers


def test_mapping_matches_golden(gen: StyleGAN1Generator, golden: dict) -> None:
    with torch.inference_mode():
        w = gen.mapping(torch.from_numpy(golden["mapping_z"]))
    # max |w| 5.7 against an RMS of 1.06: relative to the max the bound is 5x looser than needed
    assert_close(w, golden["mapping_w"], SG1_MAPPING_REL)


@pytest.mark.slow
def test_synthesis_matches_golden(synth_out, golden: dict) -> None:
    dl, out, seconds = synth_out
    assert torch.equal(dl, torch.from_numpy(golden["synthesis_dlatents"]))
    assert out.shape == (1, 3, 1024, 1024)
    # Each crop's max |value| (4.9 to 6.8) is 2.6x to 3.6x the output's std (1.91), the scale the
    # rounding errors follow, so relative to the max the bound has that much extra margin.
    assert_close(F.avg_pool2d(out, 32), golden["synthesis_out_avgpool32"], SG1_SYNTHESIS_REL)
    assert_close(out[:, :, 480:544, 480:544], golden["synthesis_out_crop_center"], SG1_SYNTHESIS_REL)
    assert_close(out[:, :, 0:64, 960:1024], golden["synthesis_out_crop_corner"], SG1_SYNTHESIS_REL)
    mean, std = (float(v) for v in golden["synthesis_out_mean_std"])
    # An average of per-pixel errors, each at most SG1_SYNTHESIS_REL * std; std's relative error is that too.
    assert out.double().mean().item() == pytest.approx(mean, rel=0, abs=SG1_SYNTHESIS_REL * std)
    assert out.double().std().item() == pytest.approx(std, rel=SG1_SYNTHESIS_REL)
    print(f"1024 synthesis forward: {seconds:.2f} s")


@pytest.mark.slow
def test_gaussian_fit_matches_golden(gen: StyleGAN1Generator, golden: dict) -> None:
    mean, std = fit_gaussian(gen, samples=100_000, seed=0)
    assert mean.dtype == std.dtype == torch.float32 and mean.shape == std.shape == (512,)
    # Mapping outputs (SG1_MAPPING_REL) through LeakyReLU(5), which scales errors of negative
    # outputs by 5 as it scales the values (relative error unchanged); then means over 100,000
    # samples, whose float32 summation (pairwise: ~log2(1e5) = 17 roundings) adds 17 * EPS32 = 2e-6.
    tol = SG1_MAPPING_REL + 17 * EPS32
    assert_close(mean, golden["gaussian_fit_100k_mean"], tol)
    assert_close(std, golden["gaussian_fit_100k_std"], tol)


# -- strict loading ---------------------------------------------------------------------------
def _variant(src: Path, dst: Path, name: str, payload: object | bytes) -> Path:
    """Folder ``dst`` with ``name`` replaced by ``payload`` and the other file linked from ``src``."""
    dst.mkdir()
    for fname in ("synthesis.pt", "mapping.pt"):
        if fname != name:
            os.symlink(src / fname, dst / fname)
    if isinstance(payload, bytes):
        (dst / name).write_bytes(payload)
    else:
        torch.save(payload, dst / name)
    return dst


def _mapping_state(weights_dir: Path) -> dict:
    return torch.load(weights_dir / "mapping.pt", map_location="cpu", weights_only=True)


def _expect_error(folder: Path, fname: str, *fragments: str) -> str:
    with pytest.raises(WeightsError) as info:
        load_stylegan1(folder)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(folder / fname) in msg
    for frag in fragments:
        assert frag in msg
    return msg


def test_missing_key(weights_dir: Path, tmp_path: Path) -> None:
    state = _mapping_state(weights_dir)
    del state["dense3.bias"]
    folder = _variant(weights_dir, tmp_path / "w", "mapping.pt", state)
    _expect_error(folder, "mapping.pt", "missing 1 key", "dense3.bias")


def test_missing_synthesis_key(weights_dir: Path, tmp_path: Path) -> None:
    state = torch.load(weights_dir / "synthesis.pt", map_location="cpu", weights_only=True)
    del state["blocks.4x4.const"]
    folder = _variant(weights_dir, tmp_path / "w", "synthesis.pt", state)
    _expect_error(folder, "synthesis.pt", "synthesis state dict", "blocks.4x4.const")


def test_unexpected_key(weights_dir: Path, tmp_path: Path) -> None:
    state = _mapping_state(weights_dir)
    state["dense8.weight"] = torch.zeros(512, 512)
    folder = _variant(weights_dir, tmp_path / "w", "mapping.pt", state)
    _expect_error(folder, "mapping.pt", "unexpected 1 key", "dense8.weight")


def test_wrong_shape(weights_dir: Path, tmp_path: Path) -> None:
    state = _mapping_state(weights_dir)
    state["dense0.weight"] = torch.zeros(512, 256)
    folder = _variant(weights_dir, tmp_path / "w", "mapping.pt", state)
    _expect_error(folder, "mapping.pt", "wrong shape", "dense0.weight")


def test_not_a_state_dict(weights_dir: Path, tmp_path: Path) -> None:
    folder = _variant(weights_dir, tmp_path / "w", "mapping.pt", [torch.zeros(3)])
    _expect_error(folder, "mapping.pt", "not a state dict")


def test_dict_with_non_tensors(weights_dir: Path, tmp_path: Path) -> None:
    folder = _variant(weights_dir, tmp_path / "w", "mapping.pt", {"dense0.weight": 1.0})
    _expect_error(folder, "mapping.pt", "not a state dict")


def test_truncated_file(weights_dir: Path, tmp_path: Path) -> None:
    data = (weights_dir / "mapping.pt").read_bytes()
    folder = _variant(weights_dir, tmp_path / "w", "mapping.pt", data[: len(data) // 2])
    _expect_error(folder, "mapping.pt", "cannot read")


def test_garbage_file(weights_dir: Path, tmp_path: Path) -> None:
    folder = _variant(weights_dir, tmp_path / "w", "synthesis.pt", b"this is not a torch file")
    _expect_error(folder, "synthesis.pt", "cannot read")


def test_missing_file(weights_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    os.symlink(weights_dir / "synthesis.pt", folder / "synthesis.pt")
    _expect_error(folder, "mapping.pt", "not found")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not a folder"):
        load_stylegan1(tmp_path / "nowhere")


def test_smaller_checkpoint_loads(tmp_path: Path) -> None:
    src = StyleGAN1Generator(resolution=16, init_generator=torch.Generator().manual_seed(5))
    torch.save(src.synthesis_net.state_dict(), tmp_path / "synthesis.pt")
    torch.save(src.mapping_net.state_dict(), tmp_path / "mapping.pt")
    loaded = load_stylegan1(tmp_path)
    assert (loaded.resolution, loaded.num_ws) == (16, 6)
    ws = torch.randn(2, 6, 512, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(loaded.synthesis(ws), src.synthesis(ws))


# -- small configs: shapes, noise, gradients ----------------------------------------------------
def _small(resolution: int = 32, **kw) -> StyleGAN1Generator:
    return StyleGAN1Generator(resolution=resolution, w_dim=32, fmap_max=32, init_generator=torch.Generator().manual_seed(0), **kw)


def test_small_config_attributes_and_init() -> None:
    g = _small()
    assert (g.num_ws, g.z_dim, g.w_dim) == (8, 32, 32)
    assert g.noise_shapes == [(1, 4, 4), (1, 4, 4), (1, 8, 8), (1, 8, 8), (1, 16, 16), (1, 16, 16), (1, 32, 32), (1, 32, 32)]
    assert torch.equal(g.synthesis_net.blocks["4x4"].const, torch.ones(1, 32, 4, 4))
    # weights drawn N(0, 100^2) (1 / lrmul): the sample std of 32 x 32 draws has a relative
    # standard error of 1 / sqrt(2 x 1024) = 2.2%: rel 0.1 is 4.5 standard errors
    assert g.mapping_net.dense0.weight.std().item() == pytest.approx(100, rel=0.1)
    assert all(p.abs().sum() == 0 for n, p in g.named_parameters() if n.endswith("noise.weight"))
    again = _small()
    assert all(torch.equal(a, b) for a, b in zip(g.state_dict().values(), again.state_dict().values()))
    kernel = g.synthesis_net.blocks["8x8"].conv0_up.intermediate.kernel
    assert torch.allclose(kernel, torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]])[None, None] / 16)


def test_small_forward_backward() -> None:
    g = _small()
    ws = torch.randn(2, g.num_ws, g.w_dim, requires_grad=True)
    noise = [torch.randn(1, *s) for s in g.noise_shapes]
    out = g.synthesis(ws, noise)
    out.square().mean().backward()
    assert out.shape == (2, 3, 32, 32)
    assert ws.grad is not None and torch.isfinite(ws.grad).all() and ws.grad.abs().sum() > 0


def test_gradcheck_synthesis_wrt_ws_and_noise() -> None:
    g = StyleGAN1Generator(resolution=8, w_dim=4, mapping_layers=2, fmap_base=64, fmap_max=4,
                           init_generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.normal_()
    ws = torch.randn(1, g.num_ws, g.w_dim, dtype=torch.float64, requires_grad=True)
    noise0 = torch.randn(1, *g.noise_shapes[0], dtype=torch.float64, requires_grad=True)
    rest = [torch.randn(1, *s, dtype=torch.float64) for s in g.noise_shapes[1:]]
    # gradcheck's own defaults (float64): central differences with step 1e-6 err by ~1e-12
    # (step^2 x third derivative) + 1e-16 / 1e-6 = 1e-10 (rounding), far below atol 1e-5; a
    # wrong gradient is off by O(1)
    assert torch.autograd.gradcheck(lambda w, n0: g.synthesis(w, [n0, *rest]), (ws, noise0), eps=1e-6, atol=1e-5)


def test_noise_broadcast_and_none() -> None:
    g = _small()
    with torch.no_grad():
        for p_name, p in g.named_parameters():
            if p_name.endswith("noise.weight"):
                p.normal_()
        ws = torch.randn(3, g.num_ws, g.w_dim)
        noise1 = [torch.randn(1, *s) for s in g.noise_shapes]
        noise3 = [n.expand(3, -1, -1, -1).clone() for n in noise1]
        assert torch.allclose(g.synthesis(ws, noise1), g.synthesis(ws, noise3))
        assert torch.equal(g.synthesis(ws, None), g.synthesis(ws, g.zero_noise(3)))
        assert not torch.allclose(g.synthesis(ws, None), g.synthesis(ws, noise1))
        with pytest.raises(ValueError):
            g.synthesis(ws[:, :-1])
        with pytest.raises(ValueError):
            g.synthesis(ws, noise1[:-1])
        z = torch.randn(3, g.z_dim)
        assert g(z).shape == (3, 3, 32, 32)


def test_fused_upscale_is_flipped_nearest_conv() -> None:
    """The >=128 path equals nearest upsample + conv with the spatially flipped kernel."""
    conv = sg1.EqualizedConv2d(4, 6, 3, upscale=True).double()
    conv.reset_parameters(torch.Generator().manual_seed(1))
    with torch.no_grad():
        conv.bias.normal_()
        x = torch.randn(2, 4, 64, 64, dtype=torch.float64)
        fused = conv(x)
        assert fused.shape == (2, 6, 128, 128)
        up = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), conv.weight.flip(-1, -2) * conv.w_mul, padding=1)
        expected = conv.intermediate(up) + conv.bias.view(1, -1, 1, 1)
    # float64, 4 x 9 terms of O(1) a sum: rounding ~1e-15, far below 1e-10
    assert torch.allclose(fused, expected, atol=1e-10)


def test_fused_path_runs_and_backprops() -> None:
    g = StyleGAN1Generator(resolution=128, w_dim=16, fmap_max=8, init_generator=torch.Generator().manual_seed(0))
    ws = torch.randn(1, g.num_ws, g.w_dim, requires_grad=True)
    out = g.synthesis(ws)
    out.sum().backward()
    assert out.shape == (1, 3, 128, 128)
    assert ws.grad is not None and torch.isfinite(ws.grad).all() and ws.grad[:, -1].abs().sum() > 0

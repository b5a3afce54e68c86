"""Shared fixtures: the PULSE reference data in ../shared/reference and stand-in weights."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from functools import lru_cache
from pathlib import Path
from types import ModuleType

# Passive OpenMP waiting, set before anything imports torch (the runtime reads it once, at start),
# as the CLI and the web app do for themselves: a compute thread that spins at every barrier
# fights this suite's own server threads, subprocesses and Ray workers, and anything else on a
# 2-core machine (measured here while the machine was shared: a batched tiny search 4.8 s passive
# against 50 s spinning). A value the user set is kept.
from pulse_sr.threads import prefer_passive_wait  # imports nothing heavy

prefer_passive_wait()

import numpy as np  # noqa: E402 - after the OpenMP environment above
import pytest  # noqa: E402
import torch  # noqa: E402

from pulse_sr.generators.stylegan1 import StyleGAN1Generator, load_stylegan1  # noqa: E402

#: float32 machine epsilon, 2**-23 = 1.19e-7 (twice the unit roundoff u = 2**-24).
EPS32 = float(torch.finfo(torch.float32).eps)


def float32_rel_error(terms: int, depth: int = 1, evaluations: int = 2) -> float:
    """Bound on the float32 rounding error of a network, relative to the scale of its output.

    One layer sums ``terms`` float32 products (the fan-in: 9 * 512 for a 3x3 conv over 512
    channels). Its rounding errors behave like a random walk, ~u * sqrt(terms) relative to the
    result's scale (Higham and Mary's probabilistic bound; blocked or pairwise BLAS summation
    only does better), whatever the CPU's order of summation. The networks here renormalise
    each layer (pixel norm, instance norm, demodulation, equalised learning rate), so the
    signal keeps its scale and the errors of ``depth`` layers add in quadrature:
    sqrt(depth * terms) * u. We use EPS32 = 2u for a factor-2 margin on the random-walk
    constant, and ``evaluations`` independent computations (ours here against a golden made on
    another CPU: 2) add their errors. Wrong layers move outputs by 1e-3 relative or far more.
    """
    return evaluations * math.sqrt(depth * terms) * EPS32


#: PULSE's StyleGAN1 mapping: 8 dense layers of 512 inputs -> 1.5e-5.
SG1_MAPPING_REL = float32_rel_error(512, 8)
#: PULSE's StyleGAN1 synthesis: 18 styled convolutions, at most 3x3 x 512 inputs each -> 6.9e-5.
SG1_SYNTHESIS_REL = float32_rel_error(9 * 512, 18)


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


def _reference_weights_rule(reference: Path) -> ModuleType:
    """The reference's deterministic_weights.py (``tensor_for``, ``state_dict``), imported from its file."""
    spec = importlib.util.spec_from_file_location("deterministic_weights", reference / "deterministic_weights.py")
    assert spec is not None and spec.loader is not None
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)
    return rule


@pytest.fixture(scope="session")
def weights_dir(reference: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PULSE-format stand-in weights written by the reference script."""
    # The script's own ``state_dict`` and the ``torch.save`` its ``__main__`` does, run in this
    # process: the same files, without a second interpreter importing torch (~2.5 s).
    rule = _reference_weights_rule(reference)
    out = tmp_path_factory.mktemp("stylegan1_weights")
    for net in ("synthesis", "mapping"):
        torch.save(rule.state_dict(net), out / f"{net}.pt")
    return out


@pytest.fixture(scope="session")
def weights_dir_32(reference: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32x32 StyleGAN1 in PULSE's file format (``synthesis.pt`` + ``mapping.pt``, plain state
    dicts, PULSE's key names), filled by the reference script's per-key rule: for plumbing tests
    that need a PULSE weights folder but not the 1024 network's cost."""
    rule = _reference_weights_rule(reference)
    out = tmp_path_factory.mktemp("stylegan1_32_weights")
    g = StyleGAN1Generator(resolution=32)
    for net, module in (("synthesis", g.synthesis_net), ("mapping", g.mapping_net)):
        buffers = {n for n, _ in module.named_buffers()}
        state = {k: rule.tensor_for(net, k, v.shape, "buffer" if k in buffers else "param")
                 for k, v in module.state_dict().items()}
        torch.save(state, out / f"{net}.pt")
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


def assert_close(actual: torch.Tensor, expected: np.ndarray, rel: float) -> None:
    """max |actual - expected| <= rel * max |expected| (``rel`` from :func:`float32_rel_error`)."""
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
    # basetemp/cache: the folder test_cli, test_hostile and test_first_hour point their own
    # fixtures at, so the session computes each generator's Gaussian fit once, not once per folder
    cache = tmp_path_factory.getbasetemp() / "cache"
    cache.mkdir(exist_ok=True)
    mp.setenv("PULSE_SR_CACHE", str(cache))
    yield
    mp.undo()


@pytest.fixture
def one_thread():
    """Tiny networks gain nothing from threads, and on a busy machine OpenMP barriers make each
    small op wait for descheduled threads (10x slower); restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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

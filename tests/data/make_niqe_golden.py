"""Regenerate the NIQE golden values in tests/test_metrics.py from BasicSR's own code.

BasicSR (github.com/XPixelGroup/BasicSR, Apache-2.0) cannot be installed in the
project's environment (it pulls torchvision, opencv, ...). This script fetches
its source distribution from PyPI with pip, loads only the four files NIQE
needs (``metrics/niqe.py``, ``metrics/metric_util.py``, ``utils/color_util.py``,
``utils/matlab_functions.py``) with stand-ins for BasicSR's package imports
(``METRIC_REGISTRY`` and ``cv2``, which NIQE's Y-channel path does not use),
and prints ``calculate_niqe`` for the test images below.

Needs numpy, scipy and torch (scikit-image, a test dependency, brings scipy)::

    .venv/bin/python tests/data/make_niqe_golden.py            # downloads basicsr==1.4.2
    .venv/bin/python tests/data/make_niqe_golden.py --sdist basicsr-1.4.2.tar.gz

It also prints the SHA-256 of the sdist's ``niqe_pris_params.npz``, which must
equal the copy vendored in ``src/pulse_sr/metrics/``.

The test images are built by :func:`niqe_test_images` (the test imports this
file to get exactly the same ones).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import numpy as np

BASICSR_VERSION = "1.4.2"
#: SHA-256 of basicsr-1.4.2.tar.gz as served by PyPI when the golden values were made
SDIST_SHA256 = "b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87"


def niqe_test_images() -> dict[str, tuple[np.ndarray, int]]:
    """name -> (RGB image ``[H, W, 3]`` float64 in [0, 1], crop_border). Deterministic."""
    from skimage import data

    astro = data.astronaut().astype(np.float64)  # 512x512x3 uint8, public domain (NASA)
    half = astro.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3)) / 255.0  # 2x2 box downscale
    rect = astro[20:330, 60:470] / 255.0  # 310x410, not a multiple of 96
    yy, xx = np.mgrid[0:224, 0:200].astype(np.float64)
    smooth = np.stack([0.5 + 0.35 * np.sin(xx / 9.0 + c) * np.cos(yy / 13.0 - c) + 0.1 * (xx / 200.0 - 0.5)
                       for c in (0.0, 0.7, 1.9)], axis=-1)
    rng = np.random.default_rng(1)
    noisy = np.clip(half + rng.normal(0.0, 0.08, size=half.shape), 0.0, 1.0)
    return {
        "astronaut_256": (half, 0),
        "astronaut_rect_crop7": (rect, 7),
        "smooth_224x200": (smooth, 0),
        "noisy_astronaut_256": (noisy, 0),
    }


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_basicsr_niqe(root: Path) -> types.ModuleType:
    """``basicsr.metrics.niqe`` from an extracted sdist, without BasicSR's package ``__init__``s."""
    pkg = root / "basicsr"
    for name in ("basicsr", "basicsr.metrics", "basicsr.utils"):
        sys.modules[name] = types.ModuleType(name)
    registry = types.ModuleType("basicsr.utils.registry")
    registry.METRIC_REGISTRY = types.SimpleNamespace(register=lambda: (lambda f: f))
    sys.modules["basicsr.utils.registry"] = registry
    if importlib.util.find_spec("cv2") is None:
        sys.modules["cv2"] = types.ModuleType("cv2")  # only used for convert_to='gray'
    color = _load("basicsr.utils.color_util", pkg / "utils" / "color_util.py")
    sys.modules["basicsr.utils"].bgr2ycbcr = color.bgr2ycbcr
    _load("basicsr.utils.matlab_functions", pkg / "utils" / "matlab_functions.py")
    _load("basicsr.metrics.metric_util", pkg / "metrics" / "metric_util.py")
    return _load("basicsr.metrics.niqe", pkg / "metrics" / "niqe.py")


def basicsr_niqe(module: types.ModuleType, rgb: np.ndarray, crop_border: int) -> float:
    """BasicSR's ``calculate_niqe`` on an RGB ``[H, W, 3]`` image in [0, 1] (it wants BGR in [0, 255])."""
    bgr255 = np.ascontiguousarray((rgb * 255.0).astype(np.float32)[..., ::-1])
    return float(module.calculate_niqe(bgr255, crop_border, input_order="HWC", convert_to="y"))


def fetch_sdist(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", f"basicsr=={BASICSR_VERSION}", "--no-deps",
           "--no-binary", "basicsr", "-d", str(dest)]
    subprocess.run(cmd, check=True)
    return dest / f"basicsr-{BASICSR_VERSION}.tar.gz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help=f"basicsr-{BASICSR_VERSION}.tar.gz (default: pip download it)")
    args = parser.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)  # scipy.ndimage.filters
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or fetch_sdist(Path(tmp))
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        note = "" if digest == SDIST_SHA256 else "  (DIFFERS from the recorded one)"
        print(f"# {sdist.name} sha256 {digest}{note}")
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        root = Path(tmp) / f"basicsr-{BASICSR_VERSION}"
        npz = root / "basicsr" / "metrics" / "niqe_pris_params.npz"
        print(f"# niqe_pris_params.npz sha256 {hashlib.sha256(npz.read_bytes()).hexdigest()}")
        module = load_basicsr_niqe(root)
        print(f"# calculate_niqe of BasicSR {BASICSR_VERSION}")
        print("NIQE_GOLDEN = {")
        for name, (rgb, crop) in niqe_test_images().items():
            print(f"    {name!r}: {basicsr_niqe(module, rgb, crop)!r},")
        print("}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

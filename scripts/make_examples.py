"""Regenerate examples/: low-resolution faces made by the project itself.

Each is a sample (seeds far from the search seeds 0, 1, 2 ...) of the embedded dcgan-digiface generator (a synthetic face,
not a real person), downscaled with PULSE's bicubic operator.
    .venv/bin/python scripts/make_examples.py
"""
from __future__ import annotations

from pathlib import Path

import torch

from pulse_sr import bicubic_downsample, load_generator
from pulse_sr.io.images import save_png

EXAMPLES = {"face16.png": (2035, 4), "face16_b.png": (2027, 4), "face32.png": (2027, 2)}  # name: (seed, factor)


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "examples"
    out.mkdir(exist_ok=True)
    gen = load_generator("dcgan-digiface")
    for name, (seed, factor) in EXAMPLES.items():
        z = torch.randn(1, gen.z_dim, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            hr = ((gen(z) + 1) / 2).clamp(0, 1)
        save_png(bicubic_downsample(hr, factor)[0].clamp(0, 1), out / name)
        print(out / name)


if __name__ == "__main__":
    main()

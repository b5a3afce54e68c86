"""Make docs/example.png, the README's picture: one input, the faces pulse-sr found for it,
and each face's own downscale (the proof), beside the face the input was made from.

    .venv/bin/python scripts/make_readme_figure.py

Runs ``pulse-sr run examples/face16.png`` (default generator and settings, 4 candidates)
into a temporary folder and lays its files out; nothing else is drawn or retouched.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
CELL, GAP, LABEL, SPACER = 128, 8, 34, 28
#: examples/face16.png is dcgan-digiface's face for this seed, downscaled 4x (scripts/make_examples.py)
SOURCE_SEED = 2035


def _cell(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST)


def _source_face() -> Image.Image:
    from pulse_sr import load_generator
    from pulse_sr.io.images import to_pil

    gen = load_generator("dcgan-digiface")
    z = torch.randn(1, gen.z_dim, generator=torch.Generator().manual_seed(SOURCE_SEED))
    with torch.no_grad():
        hr = ((gen(z) + 1) / 2).clamp(0, 1)[0]
    return to_pil(hr).resize((CELL, CELL), Image.Resampling.NEAREST)


def main() -> int:
    from pulse_sr import cli

    with tempfile.TemporaryDirectory() as tmp:
        code = cli.main(["run", str(ROOT / "examples" / "face16.png"), "-o", tmp, "--n", "4", "--quiet"])
        if code not in (0, 3):
            return code
        d = Path(tmp) / "face16"
        rep = json.loads((d / "report.json").read_text())
        cands = rep["candidates"]
        cols = 1 + len(cands)
        w, h = cols * CELL + (cols + 1) * GAP + SPACER, 2 * (CELL + LABEL) + GAP
        fig = Image.new("RGB", (w, h), "white")
        draw = ImageDraw.Draw(fig)

        def put(img: Image.Image, col: int, row: int, text: str) -> None:
            x, y = GAP + col * (CELL + GAP) + (SPACER if col else 0), row * (CELL + LABEL + GAP)
            fig.paste(img, (x, y + LABEL))
            for k, line in enumerate(text.split("\n")):
                draw.text((x, y + 2 + 14 * k), line, fill="black")

        put(_cell(d / "input.png"), 0, 0, "your input\n16x16")
        put(_source_face(), 0, 1, "the face it came from\n(the search never sees it)")
        for k, c in enumerate(cands):
            ok = "within eps" if c["converged"] else "NOT within eps"
            put(_cell(d / c["files"]["hr"]), 1 + k, 0, f"candidate {k}: invented\n64x64")
            put(_cell(d / c["files"]["lr"]), 1 + k, 1, f"its downscale, L2 {c['final_l2']:.4f}\n{ok}")
    out = ROOT / "docs" / "example.png"
    out.parent.mkdir(exist_ok=True)
    fig.save(out, optimize=True)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

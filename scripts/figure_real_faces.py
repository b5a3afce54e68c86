"""Make docs/real_faces.png: real grey faces (lfw_subset, 16x16) | latent-only | extended range.

Columns are faces; rows: the input (nearest-upscaled to the generator's 64x64), the best
latent-only candidate (lowest luma L2), the best extended-range candidate (within eps and
plausible colour first, then lowest luma L2). All at the same scale, each label giving the
luma L2 (x1e-3) and, for the extended row, the relative l1 radius the face used.

    PYTHONPATH=src python scripts/figure_real_faces.py --faces 8 -o docs/real_faces.png
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    """benchmarks/real_inputs.py (the lfw faces, luma operator and latent search), imported by path."""
    spec = importlib.util.spec_from_file_location("real_inputs", ROOT / "benchmarks" / "real_inputs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tile(img: torch.Tensor, side: int) -> np.ndarray:
    """[C, h, w] in [0, 1] (C = 1 or 3) -> uint8 [side, side, 3], nearest-upscaled."""
    from PIL import Image

    arr = (img.clamp(0, 1).expand(3, -1, -1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return np.asarray(Image.fromarray(arr).resize((side, side), Image.NEAREST))


def make_figure(faces: int, radius: float, steps: int, lr: float, scale: int, layer: int = 0,
                latent_cache: Path | None = None) -> "object":
    from PIL import Image, ImageDraw

    from pulse_sr.generators.dcgan import load_dcgan_digiface
    from pulse_sr.generators.split import default_layer
    from pulse_sr.search.chroma import cached_chroma_prior
    from pulse_sr.search.extended import extended_search

    bench = _bench()
    gen = load_dcgan_digiface()
    prior = cached_chroma_prior(gen)
    greys = bench.lfw_faces(faces)
    op = bench.Luma(gen.resolution // greys.shape[-1])
    side, label_h = gen.resolution * scale, 14
    rows = ["input 16x16", "latent-only", "extended"]
    left = 84
    canvas = Image.new("RGB", (left + faces * (side + 4) + 4, len(rows) * (side + label_h + 4) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    for i, grey in enumerate(greys):
        res = bench._cached_latent(latent_cache, i, lambda: bench.latent_only(gen, grey, 4, seed=i * 4))
        with torch.no_grad():
            l2_lat = (op(res.hr) - grey[None]).pow(2).mean(dim=(1, 2, 3))
        ext = extended_search(gen, grey, operator=op, start_ws=res.ws, start_noise=res.noise,
                              layer=layer or default_layer(gen), radius=radius, steps=steps, lr=lr,
                              threshold=bench.EPS, seed=i, chroma=prior)
        good = (ext.l2 <= bench.EPS) & (ext.chroma_distance <= prior.radius)
        k_ext = int(torch.where(good, ext.l2, ext.l2 + 1).argmin())
        k_lat = int(l2_lat.argmin())
        tiles = [(grey, ""), (res.hr[k_lat], f"L2 {1e3 * float(l2_lat[k_lat]):.1f}"),
                 (ext.hr[k_ext], f"L2 {1e3 * float(ext.l2[k_ext]):.1f} r {float(ext.radius_used[k_ext]):.2f}")]
        for r, (img, text) in enumerate(tiles):
            x, y = left + i * (side + 4), 4 + r * (side + label_h + 4)
            canvas.paste(Image.fromarray(_tile(img, side)), (x, y + label_h))
            draw.text((x, y), text, fill="black")
            if i == 0:
                draw.text((4, y + label_h + side // 2 - 12), rows[r], fill="black")
                if r == 2:
                    draw.text((4, y + label_h + side // 2), f"l1 r<={radius:g}", fill="black")
                    draw.text((4, y + label_h + side // 2 + 12), f"layer {layer or default_layer(gen)}", fill="black")
        print(f"face {i}: latent L2 {float(l2_lat[k_lat]):.4f}, extended L2 {float(ext.l2[k_ext]):.4f}", flush=True)
    return canvas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=8)
    ap.add_argument("--radius", type=float, default=None, help="default: the extended search's default")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--layer", type=int, default=0, help="0: the backend's default split layer")
    ap.add_argument("--latent-cache", type=Path, help="reuse benchmarks/real_inputs.py's latent results")
    ap.add_argument("--scale", type=int, default=2, help="nearest upscale of every tile")
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "real_faces.png")
    args = ap.parse_args()
    from pulse_sr.search import extended

    torch.set_num_threads(1)
    fig = make_figure(args.faces, args.radius if args.radius is not None else extended.DEFAULT_RADIUS,
                      args.steps if args.steps is not None else extended.DEFAULT_STEPS,
                      args.lr if args.lr is not None else extended.DEFAULT_LR, args.scale, args.layer,
                      args.latent_cache)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.save(args.output)  # type: ignore[attr-defined]
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

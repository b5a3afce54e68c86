"""Benchmark: real greyscale faces (scikit-image ``lfw_subset``) at 16x16, latent-only vs extended range.

Not a test. For each face: the CLI's default latent search (``pulse_search``, ``mode="auto"``,
n candidates) against the grey target replicated to RGB (the plain search matches RGB; a grey
target asks for a grey face, whose luma is the target), then the extended search (ILO,
``search/extended.py``) from every candidate's result, on **luma** (BT.601) with the chroma
prior. A face counts when some candidate is within eps on luma with plausible colour.

    PYTHONPATH=src python benchmarks/real_inputs.py --faces 100 --radii 0.05,0.1,0.2
    PYTHONPATH=src python benchmarks/real_inputs.py --faces 100 --save benchmarks/results/real-inputs.json

The latent-only results are cached in memory per run only; each radius reuses them.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pulse_sr.search.extended import DEFAULT_LR, DEFAULT_RADIUS

EPS = 2e-3
LUMA = (0.299, 0.587, 0.114)


class Luma:
    """BT.601 luma of PULSE's bicubic downscale: [n, 3, R, R] in [0, 1] -> [n, 1, h, w] (until the
    degradations' grey wrapper lands)."""

    name = "bicubic+grey"
    channels = 1

    def __init__(self, factor: int) -> None:
        from pulse_sr.degradations.bicubic import BicubicDownsample

        self.down = BicubicDownsample(factor)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lr = self.down(x)
        w = torch.tensor(LUMA, dtype=lr.dtype, device=lr.device).view(1, 3, 1, 1)
        return (lr * w).sum(dim=1, keepdim=True)


def lfw_faces(count: int, side: int = 16) -> torch.Tensor:
    """The first ``count`` faces of ``lfw_subset`` (25x25 grey crops), resized to ``side`` with Pillow
    bicubic: [count, 1, side, side] in [0, 1] (8-bit values, as a PNG input would hold)."""
    from PIL import Image
    from skimage import data

    faces = data.lfw_subset()[:100][:count]
    out = []
    for f in faces:
        img = Image.fromarray(np.round(f * 255).astype(np.uint8), mode="L").resize((side, side), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0))
    return torch.stack(out)[:, None]


def latent_only(gen: Any, grey: torch.Tensor, n: int, seed: int) -> Any:
    """The CLI's default latent search against the grey face replicated to RGB."""
    from pulse_sr.search.pulse import pulse_search
    from pulse_sr.search.settings import SearchSettings

    return pulse_search(gen, grey.expand(3, -1, -1).contiguous(), n=n, seed=seed, settings=SearchSettings(mode="auto"))


def _cached_latent(folder: Path | None, face: int, compute: Any) -> Any:
    """The latent search's result for ``face`` (hr, ws, noise), kept in ``folder`` across tuning runs."""
    from types import SimpleNamespace

    path = folder / f"face{face:03d}.pt" if folder is not None else None
    if path is not None and path.is_file():
        return SimpleNamespace(**torch.load(path, weights_only=True))
    res = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"hr": res.hr, "ws": res.ws, "noise": res.noise}, path)
    return res


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pulse_sr.generators.dcgan import load_dcgan_digiface
    from pulse_sr.generators.split import default_layer
    from pulse_sr.search.chroma import cached_chroma_prior
    from pulse_sr.search.extended import extended_search

    torch.set_num_threads(args.threads)
    gen = load_dcgan_digiface()
    prior = cached_chroma_prior(gen)
    faces = lfw_faces(args.faces)
    op = Luma(gen.resolution // faces.shape[-1])
    layer = args.layer or default_layer(gen)
    radii = [float(r) for r in args.radii.split(",")]
    rows: list[dict[str, Any]] = []
    per_radius = {r: {"within": 0, "plausible": 0, "both": 0, "seconds": 0.0} for r in radii}
    latent_within = latent_both = 0
    latent_seconds = 0.0
    for i, grey in enumerate(faces):
        t0 = time.perf_counter()
        res = _cached_latent(args.latent_cache, i, lambda: latent_only(gen, grey, args.n, seed=i * args.n))
        latent_seconds += time.perf_counter() - t0
        with torch.no_grad():
            l2_luma = (op(res.hr) - grey[None]).pow(2).mean(dim=(1, 2, 3))
            plaus = prior.plausible(res.hr)
        latent_within += bool((l2_luma <= EPS).any())
        latent_both += bool(((l2_luma <= EPS) & plaus).any())
        row: dict[str, Any] = {"face": i, "latent_best_l2_luma": float(l2_luma.min())}
        for r in radii:
            t1 = time.perf_counter()
            ext = extended_search(gen, grey, operator=op, start_ws=res.ws, start_noise=res.noise, layer=layer,
                                  radius=r, steps=args.steps, lr=args.lr, threshold=EPS, seed=i, chroma=prior)
            stats = per_radius[r]
            stats["seconds"] += time.perf_counter() - t1
            ok = ext.l2 <= EPS
            good = ext.chroma_distance <= prior.radius
            stats["within"] += bool(ok.any())
            stats["plausible"] += bool(good.all())
            stats["both"] += bool((ok & good).any())
            row[f"r{r}"] = {"best_l2": float(ext.l2.min()), "within": int(ok.sum()), "plausible": int(good.sum()),
                            "radius_used": [round(float(u), 4) for u in ext.radius_used]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        summary = {"latent_within": latent_within, "latent_both": latent_both, "latent_seconds": latent_seconds}
        result = _summary(args, layer, prior, rows, per_radius, summary)
        if args.save:  # after every face: a long run that is stopped still leaves its figures
            args.save.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _summary(args: argparse.Namespace, layer: int, prior: Any, rows: list, per_radius: dict,
             latent: dict) -> dict[str, Any]:
    nf = len(rows)
    return {
        "benchmark": "real-inputs: lfw_subset faces (the first 100 are faces), 25x25 -> 16x16 Pillow bicubic, grey",
        "generator": "dcgan-digiface", "eps_luma": EPS, "candidates": args.n, "faces": nf,
        "latent_search": "pulse_search SearchSettings(mode='auto') against grey replicated to RGB",
        "extended": {"layer": layer, "norm": "l1", "steps": args.steps, "lr": args.lr,
                     "chroma_prior": prior.to_dict()},
        "latent_only": {"within_eps_luma": latent["latent_within"] / nf,
                        "within_eps_plausible": latent["latent_both"] / nf,
                        "seconds_per_face": latent["latent_seconds"] / nf},
        "by_radius": {str(r): {"within_eps_luma": s["within"] / nf, "all_plausible": s["plausible"] / nf,
                               "within_eps_plausible": s["both"] / nf, "seconds_per_face": s["seconds"] / nf}
                      for r, s in per_radius.items()},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__, "note": "2 cores shared with other jobs: times are loose"},
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=100)
    ap.add_argument("--n", type=int, default=4, help="candidates per face (the CLI's default)")
    ap.add_argument("--radii", default=str(DEFAULT_RADIUS))
    ap.add_argument("--layer", type=int, default=0, help="0: the backend's default split layer")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=DEFAULT_LR)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", type=Path)
    ap.add_argument("--latent-cache", type=Path, help="keep the latent searches' results here (tuning)")
    args = ap.parse_args()
    result = run(args)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()

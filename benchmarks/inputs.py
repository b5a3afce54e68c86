"""Benchmark: issue 13's four targets, through the front ends' path with CLI defaults and no flags.

Not a test. Builds its input sets as files (as a user would hand them to ``pulse-sr run``), reads
each as the CLI does (``load_input`` -> ``plan_input`` with ``INPUT_DEFAULTS`` -> ``pulse_search``
with ``build_settings({})``, n = 4, seed 0) and checks the result against the truth it was made from:

- ``lfw``: ``lfw_subset`` faces, grey, 16x16 (mode-L PNG): some candidate within eps on luma with
  plausible colour (chroma distance within the generator's 99 % region);
- ``mosaic``: generator faces' 16x16 block means shown at 4, 8 or 16 px per block, a random phase,
  PNG or JPEG q80: detected as a mosaic of the right block size, and some candidate within eps
  of the **true** block means under the box operator;
- ``noisy``: generator faces, bicubic to 16x16, Gaussian noise sigma 16/255: converged under the
  estimated threshold, and the best candidate's own downscale within 3e-3 of the clean input;
- ``planted``: generator faces, bicubic to 16x16 (PULSE's own case): within eps and time, now vs
  today (today: RGB, bicubic, threshold eps, latent range; same settings otherwise).

    PYTHONPATH=src python benchmarks/inputs.py --count 20 --save benchmarks/results/real-inputs-cli.json

Writes the JSON after every input, so a partial run leaves a usable record.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

EPS = 2e-3
SETS = ("lfw", "mosaic", "noisy", "planted")


def gen_face(gen: Any, seed: int) -> torch.Tensor:
    z = torch.randn(1, gen.z_dim, generator=torch.Generator().manual_seed(50_000 + seed))
    with torch.no_grad():
        return ((gen(z) + 1) / 2).clamp(0, 1)


def to8(x: torch.Tensor) -> np.ndarray:
    """``[C, H, W]`` in [0, 1] -> HxW[xC] uint8."""
    return (x.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8).squeeze()


def make_input(kind: str, i: int, gen: Any, folder: Path) -> tuple[Path, dict[str, Any]]:
    """Input file ``i`` of set ``kind`` and the truth it was made from."""
    from pulse_sr.degradations.bicubic import bicubic_downsample

    rng = np.random.default_rng(i)
    if kind == "lfw":
        from skimage import data

        f = data.lfw_subset()[:100][i]
        img = Image.fromarray(np.round(f * 255).astype(np.uint8), mode="L").resize((16, 16), Image.BICUBIC)
        path = folder / f"lfw_{i:03d}.png"
        img.save(path)
        return path, {}
    x = gen_face(gen, i)
    if kind == "mosaic":
        grid = F.avg_pool2d(x, 4)[0]
        k = (4, 8, 16)[i % 3]
        fmt = "jpg" if i % 2 else "png"
        big = np.repeat(np.repeat(to8(grid), k, 0), k, 1)
        dx, dy = (int(v) for v in rng.integers(0, k, size=2))
        side = 16 * k if dx == dy == 0 else 15 * k + 1
        path = folder / f"mosaic_{i:03d}.{fmt}"
        Image.fromarray(big[dy:dy + side, dx:dx + side]).save(path, **({"quality": 80} if fmt == "jpg" else {}))
        return path, {"grid": grid, "k": k, "phase": [dx, dy], "format": fmt}
    clean = bicubic_downsample(x, 4)[0].clamp(0, 1)
    if kind == "noisy":
        noisy = np.clip(clean.permute(1, 2, 0).numpy() + rng.normal(0, 16 / 255, (16, 16, 3)), 0, 1)
        path = folder / f"noisy_{i:03d}.png"
        Image.fromarray((noisy * 255).round().astype(np.uint8)).save(path)
        return path, {"clean": clean}
    path = folder / f"planted_{i:03d}.png"
    Image.fromarray(to8(clean)).save(path)
    return path, {"clean": clean}


def search(gen: Any, plan: Any, settings: Any) -> tuple[Any, float]:
    from pulse_sr.search.pulse import pulse_search

    t = time.perf_counter()
    res = pulse_search(gen, plan.target, n=4, seed=0, settings=settings, operator=plan.operator, mask=plan.mask,
                       threshold=plan.threshold)
    return res, time.perf_counter() - t


def score(kind: str, gen: Any, path: Path, truth: dict[str, Any]) -> dict[str, Any]:
    """One input through the CLI's path, checked against its truth."""
    from pulse_sr.degradations.bicubic import bicubic_downsample
    from pulse_sr.front_end import INPUT_DEFAULTS, build_settings
    from pulse_sr.input_plan import plan_input
    from pulse_sr.io.images import load_input

    img, known, mode = load_input(path)
    plan = plan_input(img, gen.resolution, eps=EPS, name=path.name, mode=mode, known=known, **INPUT_DEFAULTS)
    settings = build_settings({})
    res, seconds = search(gen, plan, settings)
    row: dict[str, Any] = {"input": path.name, "detected": plan.summary(), "kind": plan.kind,
                           "threshold": plan.threshold, "seconds": round(seconds, 2),
                           "l2": [float(v) for v in res.l2], "converged": [bool(c) for c in res.converged],
                           "extras": res.extras}
    if kind == "lfw":
        ok = [float(res.l2[k]) <= EPS and bool(res.extras[k].get("chroma_plausible", False)) for k in range(res.n)]
        row["ok"] = any(ok) and plan.grey
        row["ok_threshold"] = plan.grey and any(bool(res.converged[k]) and res.extras[k].get("chroma_plausible", False)
                                                for k in range(res.n))
        # the same input with --noise-sigma 0 (the noise estimate on these 16 px faces is not 0)
        plan0 = plan_input(img, gen.resolution, eps=EPS, name=path.name, mode=mode, known=known,
                           **{**INPUT_DEFAULTS, "noise_sigma": "0"})
        res0, s0 = search(gen, plan0, settings)
        row["ok_sigma0"] = any(float(res0.l2[k]) <= EPS and res0.extras[k].get("chroma_plausible", False)
                               for k in range(res0.n))
        row.update(sigma0_l2=[float(v) for v in res0.l2], sigma0_seconds=round(s0, 2),
                   noise_sigma_255=plan.noise_sigma * 255)
    elif kind == "mosaic":
        true_l2 = [float((res.lr[k] - truth["grid"]).pow(2).mean()) for k in range(res.n)]
        row.update(k=truth["k"], phase=truth["phase"], format=truth["format"], true_l2=true_l2,
                   detected_k=None if plan.analysis is None or plan.analysis.mosaic is None else plan.analysis.mosaic.k)
        row["ok"] = plan.kind == "mosaic" and row["detected_k"] == truth["k"] and min(true_l2) <= EPS
    elif kind == "noisy":
        best = int(res.l2.argmin())
        own = bicubic_downsample(res.hr[best:best + 1], 4)[0]
        row["clean_l2"] = float((own - truth["clean"]).pow(2).mean())
        row["noise_sigma_255"] = plan.noise_sigma * 255
        row["ok"] = bool(res.converged[best]) and row["clean_l2"] <= 3e-3
    else:
        from pulse_sr.degradations.bicubic import BicubicDownsample

        row["ok"] = bool(res.converged.any())
        today = dataclasses.replace(plan, operator=BicubicDownsample(4), target=img, mask=None, threshold=EPS)
        old, old_seconds = search(gen, today, dataclasses.replace(settings, range="latent"))
        row.update(today_ok=bool(old.converged.any()), today_seconds=round(old_seconds, 2))
    return row


def summary(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, rs in rows.items():
        if not rs:
            continue
        s: dict[str, Any] = {"inputs": len(rs), "ok": sum(r["ok"] for r in rs), "rate": sum(r["ok"] for r in rs) / len(rs),
                             "median_seconds": float(np.median([r["seconds"] for r in rs]))}
        if kind == "lfw":
            s.update(ok_threshold=sum(r["ok_threshold"] for r in rs), ok_sigma0=sum(r["ok_sigma0"] for r in rs))
        if kind == "planted":
            s.update(today_ok=sum(r["today_ok"] for r in rs),
                     today_median_seconds=float(np.median([r["today_seconds"] for r in rs])))
        out[kind] = s
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=20, help="inputs per set")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--save", type=Path, default=None)
    args = ap.parse_args()
    from pulse_sr.generators.dcgan import load_dcgan_digiface

    gen = load_dcgan_digiface()
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in args.sets.split(",")}
    meta = {"generator": "dcgan-digiface", "n": 4, "seed": 0, "eps": EPS, "count": args.count,
            "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(),
            "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.count):
            for kind in rows:
                path, truth = make_input(kind, i, gen, Path(tmp))
                rows[kind].append(score(kind, gen, path, truth))
                r = rows[kind][-1]
                print(f"{kind} {i}: ok={r['ok']} {r['seconds']} s  {r['detected']}", flush=True)
                if args.save:
                    args.save.write_text(json.dumps({"meta": meta, "summary": summary(rows), "rows": rows},
                                                    indent=1, default=float))
    print(json.dumps(summary(rows), indent=1))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The plain PULSE loop, standalone: the baseline of benchmarks/throughput.py.

    python benchmarks/plain_loop.py INPUT_DIR OUT_DIR [--n 4] [--steps 100] [--seed 0]

Per input PNG: n latents on the sqrt(100) sphere (candidate k seeded seed + k), Adam lr 0.4 with
PULSE's linear1cycledrop schedule, 100 steps, no early stop, loss 100*max(L2, eps) + 0.05*GEOCROSS
(GEOCROSS is 0 for the DCGAN's single latent row; written out anyway), the latents put back on
their sphere after each step. Writes OUT/<stem>/hr_KK.png (each candidate's lowest-L2 image) and
result.json (per candidate its best L2, whether <= eps, and the step it was reached).
"""
import argparse, json, pathlib, sys, time
import numpy as np, torch
from PIL import Image
from pulse_sr.degradations.bicubic import BicubicDownsample
from pulse_sr.generators.dcgan import load_dcgan_digiface

def geocross(ws):  # ws [n, L, d] -> [n]: mean_ij 512 * (2 atan2(|a-b|, |a+b|))^2 / 8, 0 for L = 1
    a, b = ws[:, None] - ws[:, :, None], ws[:, None] + ws[:, :, None]
    return (2 * torch.atan2(a.norm(dim=-1), b.norm(dim=-1))).pow(2).mul(512).mean(dim=(1, 2)) / 8

def schedule(t, steps):  # PULSE's linear1cycledrop
    return (9 * (1 - abs(t / (0.9 * steps) - 0.5) * 2) + 1) / 10 if t < 0.9 * steps else 0.1 + (t - 0.9 * steps) / (0.1 * steps) * (0.001 - 0.1)

def main():
    p = argparse.ArgumentParser(); p.add_argument("inputs"); p.add_argument("out")
    p.add_argument("--n", type=int, default=4); p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0); p.add_argument("--eps", type=float, default=2e-3)
    a = p.parse_args(); G = load_dcgan_digiface()
    for path in sorted(pathlib.Path(a.inputs).glob("*.png")):
        y = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), np.float32) / 255).permute(2, 0, 1)[None]
        A, t0 = BicubicDownsample(G.resolution // y.shape[-1]), time.perf_counter()
        z = torch.cat([torch.randn(1, 1, 100, generator=torch.Generator().manual_seed(a.seed + k)) for k in range(a.n)])
        z = (z * 10 / z.norm(dim=-1, keepdim=True)).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=0.4)
        best_l2, best_step, best_hr = torch.full((a.n,), float("inf")), [0] * a.n, torch.zeros(a.n, 3, 64, 64)
        for step in range(a.steps):
            opt.param_groups[0]["lr"] = 0.4 * schedule(step, a.steps)
            hr = (G.synthesis(z) + 1) / 2
            l2 = (A(hr) - y).pow(2).mean(dim=(1, 2, 3))
            loss = (100 * l2.clamp(min=a.eps) + 0.05 * geocross(z)).sum()
            opt.zero_grad(); loss.backward(); opt.step()
            with torch.no_grad():
                z.mul_(10 / z.norm(dim=-1, keepdim=True))
                for k in (l2.detach() < best_l2).nonzero().flatten().tolist():
                    best_l2[k], best_step[k], best_hr[k] = l2[k], step + 1, hr[k].clamp(0, 1)
        folder = pathlib.Path(a.out) / path.stem; folder.mkdir(parents=True, exist_ok=True)
        for k in range(a.n):
            Image.fromarray((best_hr[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"hr_{k:02d}.png")
        cands = [{"l2": float(best_l2[k]), "converged": bool(best_l2[k] <= a.eps), "steps": a.steps, "best_step": best_step[k]} for k in range(a.n)]
        (folder / "result.json").write_text(json.dumps({"input": path.name, "candidates": cands, "seconds": time.perf_counter() - t0}))
    return 0

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Folder throughput: the plain PULSE loop vs ``pulse-sr run`` vs a learned-start prototype (issue 16).

    python benchmarks/throughput.py                       # 24 faces, median of 3, ~10 min idle
    python benchmarks/throughput.py --faces 4 --repeats 1 # smoke

Builds ``--faces`` planted 16x16 inputs from the default generator (face i from
``z ~ N(0, I)`` seeded ``FACE_SEED_BASE + i``, image (G(z)+1)/2 clamped, PULSE's bicubic /4, saved as
8-bit PNG), then times each variant as a whole process (start-up included), median of ``--repeats``:

- ``plain``: benchmarks/plain_loop.py (Adam lr 0.4, PULSE's schedule, 100 steps, no early stop, n=4);
- ``pulse-sr``: ``pulse-sr run FOLDER -o OUT --n 4 --quiet`` with every other option at its default;
- ``encoder``: the prototype, this script with ``--worker encoder``: per input ``pulse_search`` with
  ``SearchSettings(mode="faithful", start_pool=1, steps=S, lr=L)`` (what "auto" runs for dcgan minus its
  preset's lr and start pool, which would override the start) whose start latents are replaced by
  ``encoder_start`` (``pulse_sr.search.pulse.initial_state`` monkeypatched: pulse_search has no start
  hook yet); everything else (early stop at eps, best-state tracking, schedule) is the normal search;
- ``random``: the same prototype with PULSE's random starts (the steps-to-eps comparison).

Per variant: seconds (median, all runs), faces with a candidate within eps (2e-3, as each tool
reports it on its unquantised images), candidates within eps, mean steps to eps over the candidates
within eps (the step of the image kept), and the mean pairwise distance: per face, the mean over
candidate pairs of the RMS difference of their HR images in [0, 1] (read back from the 8-bit
PNGs written), averaged over faces. The load average before each run is recorded: figures taken
on a busy machine are not the issue's idle figures. JSON: benchmarks/results/throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FACE_SEED_BASE = 20_000
EPS = 2e-3


def make_faces(folder: Path, count: int, side: int = 16) -> None:
    """``count`` planted ``side`` px inputs of the default generator as PNGs in ``folder``."""
    import torch

    from pulse_sr.degradations.bicubic import bicubic_downsample
    from pulse_sr.generators.dcgan import load_dcgan_digiface
    from pulse_sr.io.images import save_png

    G = load_dcgan_digiface()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        z = torch.randn((1, 1, G.z_dim), generator=torch.Generator().manual_seed(FACE_SEED_BASE + i))
        with torch.no_grad():
            hr = ((G.synthesis(z) + 1) / 2).clamp(0, 1)
        save_png(bicubic_downsample(hr, G.resolution // side)[0], folder / f"face_{i:02d}.png")


def worker(args: argparse.Namespace) -> int:
    """The prototype: the normal search per input, started from ``encoder_start`` (or PULSE's draw)."""
    import torch

    import pulse_sr.search.pulse as pulse
    from pulse_sr.generators.dcgan import load_dcgan_digiface
    from pulse_sr.io.images import load_image, save_png
    from pulse_sr.search.encoder import encoder_start
    from pulse_sr.search.settings import SearchSettings

    G = load_dcgan_digiface()
    original = pulse.initial_state
    current: dict[str, torch.Tensor] = {}

    def patched(generator, settings, *, n, seed, device, gaussian_fit=None):
        state = original(generator, settings, n=n, seed=seed, device=device, gaussian_fit=gaussian_fit)
        latent = encoder_start(generator, current["target"], operator_name="bicubic", n=n, seed=seed,
                               spread=args.spread, tile=settings.tile_latent)
        if latent is not None:
            state.latent = latent.to(device)
        return state

    if args.worker == "encoder":
        pulse.initial_state = patched
    # mode "faithful": "auto" would put dcgan's preset (lr 1.5, start_pool 8) over fields left at PULSE's
    # defaults, and a start pool would trade the encoder's start for random draws
    settings = SearchSettings(mode="faithful", start_pool=1, steps=args.steps, lr=args.lr, eps=EPS)
    for path in sorted(Path(args.inputs).glob("*.png")):
        target = load_image(path)
        current["target"] = target
        t0 = time.perf_counter()
        result = pulse.pulse_search(G, target, n=args.n, seed=0, settings=settings)
        folder = Path(args.out) / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        cands = []
        for c in result.candidates():
            save_png(c.hr, folder / f"hr_{c.index:02d}.png")
            cands.append({"l2": c.l2, "converged": c.converged, "steps": c.steps, "best_step": c.best_step})
        (folder / "result.json").write_text(json.dumps({"input": path.name, "candidates": cands,
                                                        "seconds": time.perf_counter() - t0}))
    return 0


def pairwise_distance(folder: Path) -> float:
    """Mean over candidate pairs of the RMS difference of their HR PNGs (values in [0, 1])."""
    import numpy as np
    from PIL import Image

    hrs = [np.asarray(Image.open(p).convert("RGB"), np.float64) / 255 for p in sorted(folder.glob("hr_*.png"))]
    d = [float(np.sqrt(((hrs[i] - hrs[j]) ** 2).mean())) for i in range(len(hrs)) for j in range(i + 1, len(hrs))]
    return statistics.fmean(d) if d else float("nan")


def summarise(out: Path) -> dict:
    """Quality figures of one run's output folder (report.json from pulse-sr, result.json otherwise)."""
    faces = sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    within, cands_within, steps, dists = 0, 0, [], []
    for face in faces:
        report = face / "report.json" if (face / "report.json").is_file() else face / "result.json"
        cands = json.loads(report.read_text())["candidates"]
        ok = [c for c in cands if c.get("l2", c.get("final_l2", float("inf"))) <= EPS]
        within += bool(ok)
        cands_within += len(ok)
        steps += [c["best_step"] for c in ok]
        dists.append(pairwise_distance(face))
    return {"faces": len(faces), "faces_within_eps": within, "candidates_within_eps": cands_within,
            "mean_steps_to_eps": round(statistics.fmean(steps), 2) if steps else None,
            "mean_pairwise_distance": round(statistics.fmean(dists), 5) if dists else None}


def commands(variant: str, inputs: Path, out: Path, args: argparse.Namespace) -> list[str]:
    py = sys.executable
    if variant == "plain":
        return [py, str(HERE / "plain_loop.py"), str(inputs), str(out), "--n", "4"]
    if variant == "pulse-sr":
        return [py, "-m", "pulse_sr.cli", "run", str(inputs), "-o", str(out), "--n", "4", "--quiet"]
    return [py, str(Path(__file__).resolve()), "--worker", variant, "--inputs", str(inputs), "--out", str(out),
            "--steps", str(args.steps), "--lr", str(args.lr), "--spread", str(args.spread)]


def write_results(results: dict, runs: dict[str, list[dict]], path: Path) -> dict:
    """Medians and ratios to the plain loop from the runs so far; written to ``path`` (after every repeat)."""
    var = results["variants"] = {}
    for v, rs in runs.items():
        if rs:
            var[v] = {"median_seconds": statistics.median(x["seconds"] for x in rs),
                      **{k: rs[0][k] for k in rs[0] if k not in ("seconds", "load_before")}, "runs": rs}
    if "plain" in var:
        base = var["plain"]
        for x in var.values():
            x["time_vs_plain"] = round(x["median_seconds"] / base["median_seconds"], 3)
            x["distance_vs_plain"] = round(x["mean_pairwise_distance"] / base["mean_pairwise_distance"], 3)
        if "encoder" in var:
            e = var["encoder"]
            results["encoder_start_qualifies"] = bool(
                e["faces_within_eps"] >= base["faces_within_eps"] and e["distance_vs_plain"] >= 0.8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return var


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faces", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", default="plain,pulse-sr,encoder,random")
    p.add_argument("--steps", type=int, default=50, help="prototype: search steps")
    p.add_argument("--lr", type=float, default=1.5, help="prototype: Adam learning rate (dcgan's fast preset)")
    p.add_argument("--spread", type=float, default=1.2, help="prototype: encoder_start spread")
    p.add_argument("--json", type=Path, default=HERE / "results" / "throughput.json")
    p.add_argument("--worker", choices=("encoder", "random"), help=argparse.SUPPRESS)
    p.add_argument("--inputs", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    results: dict = {"command": " ".join(["python benchmarks/throughput.py", *sys.argv[1:]]),
                     "faces": args.faces, "side": 16, "n": 4, "eps": EPS, "repeats": args.repeats,
                     "prototype": {"steps": args.steps, "lr": args.lr, "spread": args.spread, "start_pool": 1,
                                   "mode": "faithful", "start": "initial_state monkeypatched with encoder_start"},
                     "cpus": os.cpu_count(), "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs"
        make_faces(inputs, args.faces)
        variants = [v for v in args.variants.split(",") if v]
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for r in range(args.repeats):
            for v in variants:  # interleaved, so a change of load hits every variant alike
                out = Path(tmp) / f"{v}-{r}"
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                proc = subprocess.run(commands(v, inputs, out, args), env=env, capture_output=True, text=True)
                seconds = time.perf_counter() - t0
                if proc.returncode not in (0, 3):  # pulse-sr: 3 = some input had no candidate within eps
                    print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(f"{v} failed with exit code {proc.returncode}")
                runs[v].append({"seconds": round(seconds, 2), "load_before": round(load, 2), **summarise(out)})
                print(f"run {r + 1}/{args.repeats} {v}: {runs[v][-1]}", flush=True)
            write_results(results, runs, args.json)
        var = write_results(results, runs, args.json)
    for v, x in var.items():
        print(f"{v:9s} {x['median_seconds']:7.1f} s  x{x.get('time_vs_plain', float('nan')):.2f}  within eps "
              f"{x['faces_within_eps']}/{x['faces']} faces, {x['candidates_within_eps']} candidates, steps to eps "
              f"{x['mean_steps_to_eps']}, pairwise {x['mean_pairwise_distance']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

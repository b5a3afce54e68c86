#!/usr/bin/env python
"""The Ray engine against the local engine, on the same planted faces, in one run.

24 planted 16x16 faces (seeded samples of the default generator, PULSE's bicubic downscale
by 4, written as PNGs), ``n=4``, the front ends' default settings (mode auto, compile auto,
lean memory). Reports:

- Ray's own start-up and shutdown (a local Ray with 2 CPUs, no dashboard);
- faces per second of the local engine (this process, 2 torch threads; before and after the
  Ray runs, to bracket load drift on a shared machine; ratios use the faster) and of a local Ray
  with 2 CPUs: two workers with 1 thread each, and one worker with 2 threads. A Ray run's
  wall time includes its actors' start (each imports torch and loads the generator);
  ``steady_faces_per_s`` counts from the first result on.

    python benchmarks/ray_engine.py                 # full figures, a few minutes
    python benchmarks/ray_engine.py --faces 4       # smoke

Writes JSON (default benchmarks/results/ray-engine.json). Figures from a shared machine are
noisy: compare numbers from one run only.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "ray-engine.json"


def make_faces(folder: Path, count: int, factor: int = 4) -> list[Path]:
    """``count`` planted inputs: sample k of the default generator (z seeded 1000 + k),
    bicubic-downscaled by ``factor`` (64 -> 16), saved as PNG."""
    import torch

    from pulse_sr.degradations.bicubic import bicubic_downsample
    from pulse_sr.generators.dcgan import load_dcgan_digiface
    from pulse_sr.io.images import save_png

    G = load_dcgan_digiface()
    paths = []
    for k in range(count):
        z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(1000 + k))
        with torch.no_grad():
            x = ((G(z) + 1) / 2).clamp(0, 1)
        p = folder / f"face{k:02d}.png"
        save_png(bicubic_downsample(x, factor)[0], p)
        paths.append(p)
    return paths


def timed_run(engine: str, tasks: list, spec: object, **options: object) -> dict[str, object]:
    """Run ``tasks``; wall seconds, faces/s, faces/s from the first result on, eps rate."""
    from pulse_sr.engines import run_engine

    stamps: list[float] = []
    conv: list[bool] = []

    def on_result(r: object) -> None:
        stamps.append(time.perf_counter())
        conv.append(bool(r.ok and r.result.converged.any()))  # type: ignore[attr-defined]

    t0 = time.perf_counter()
    run_engine(engine, tasks, spec, on_result, **options)
    wall = time.perf_counter() - t0
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else None
    return {"faces": len(stamps), "seconds": round(wall, 2), "faces_per_s": round(len(stamps) / wall, 3),
            "steady_faces_per_s": None if steady is None else round(steady, 3),
            "any_within_eps": sum(conv)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faces", type=int, default=24)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args(argv)

    import torch

    from pulse_sr.engines import WorkerSpec, ray_adapter
    from pulse_sr.engines.local import read_tasks
    from pulse_sr.search.settings import FRONT_END_DEFAULTS, SearchSettings

    settings = SearchSettings(mode=FRONT_END_DEFAULTS["mode"], compile=FRONT_END_DEFAULTS["compile"],
                              lean_memory=True)
    out: dict[str, object] = {"faces": args.faces, "n": args.n, "input": 16, "generator": "dcgan-digiface",
                              "settings": settings.to_dict(), "cpus": os.cpu_count(),
                              "machine": platform.processor() or platform.machine(),
                              "torch": torch.__version__, "note": "shared machine: figures are noisy"}
    with tempfile.TemporaryDirectory() as tmp:
        tasks = read_tasks(make_faces(Path(tmp), args.faces))
        spec = WorkerSpec(generator="dcgan-digiface", n=args.n, seed=0, settings=settings)

        threads = torch.get_num_threads()
        out["local_2_threads"] = timed_run("local", tasks, dataclasses.replace(spec, threads=2))
        torch.set_num_threads(threads)
        print("local:", out["local_2_threads"], file=sys.stderr)

        t0 = time.perf_counter()
        started = ray_adapter.start(address=None, num_cpus=2, num_gpus=None, object_store_bytes=256 * 1024 * 1024)
        out["ray_start_s"] = round(time.perf_counter() - t0, 2)
        try:
            out["ray_2_workers_1_thread"] = timed_run("ray", tasks, spec, workers=2, threads_per_worker=1)
            print("ray 2x1:", out["ray_2_workers_1_thread"], file=sys.stderr)
            out["ray_1_worker_2_threads"] = timed_run("ray", tasks, spec, workers=1, threads_per_worker=2)
            print("ray 1x2:", out["ray_1_worker_2_threads"], file=sys.stderr)
        finally:
            t0 = time.perf_counter()
            ray_adapter.stop(started)
            out["ray_shutdown_s"] = round(time.perf_counter() - t0, 2)
        # the local engine again, after Ray: the two local figures bracket the machine's load drift
        out["local_2_threads_after"] = timed_run("local", tasks, dataclasses.replace(spec, threads=2))
        torch.set_num_threads(threads)
        print("local after:", out["local_2_threads_after"], file=sys.stderr)
    out["ray_start_plus_shutdown_s"] = round(out["ray_start_s"] + out["ray_shutdown_s"], 2)  # type: ignore[operator]
    for key in ("faces_per_s", "steady_faces_per_s"):  # the target: steady Ray >= 0.8x local
        local = max(out[k][key] for k in ("local_2_threads", "local_2_threads_after"))  # type: ignore[index]
        rays = [out[k][key] for k in ("ray_2_workers_1_thread", "ray_1_worker_2_threads")]  # type: ignore[index]
        if local and all(rays):
            out[f"best_ray_over_local_{key}"] = round(max(rays) / local, 3)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Start-up cost of the process: ``import torch``, ``import pulse_sr``, the CLI's help, the search's
modules, and a one-step ``pulse-sr run`` of one planted 16 px face, each as a whole fresh process
(median of ``--repeat``). With ``-X importtime``: which top-level packages each one imports and
their cumulative import time (so a heavy import that is not needed yet shows up by name).

    PYTHONPATH=src .venv/bin/python benchmarks/startup.py --json benchmarks/results/startup.json
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

PY = sys.executable
#: packages whose import is "heavy" (over ~50 ms) and worth naming when a command imports them
HEAVY = ("torch", "numpy", "PIL", "scipy", "fastapi", "starlette", "uvicorn", "pydantic", "cv2",
         "matplotlib", "ray", "sympy", "triton", "gan_face_generate", "onnxruntime", "imageio")


def _time(args: list[str], env: dict[str, str], repeat: int) -> float:
    """Median wall seconds of ``args`` as a fresh process."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _imports(args: list[str], env: dict[str, str]) -> dict[str, float]:
    """Top-level packages (of ``HEAVY``, plus pulse_sr) a command imports: cumulative ms each."""
    proc = subprocess.run([args[0], "-X", "importtime", *args[1:]], env=env, capture_output=True, text=True)
    out: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        name = name.rstrip()
        top = name.strip()
        if top != name.lstrip() or "." in top:  # only the top-level entry of each package
            continue
        if top in HEAVY or top == "pulse_sr":
            try:
                out[top] = max(out.get(top, 0.0), int(cumulative) / 1000)
            except ValueError:
                pass
    return out


def _planted_face(folder: Path) -> Path:
    """One 16 px face: a downscaled sample of the default generator (written once)."""
    code = (
        "import sys, torch; from pulse_sr.generators.dcgan import load_dcgan_digiface;"
        "from pulse_sr.degradations.bicubic import bicubic_downsample; from pulse_sr.io.images import save_png;"
        "G = load_dcgan_digiface(); z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0));"
        "x = ((G(z) + 1) / 2).clamp(0, 1).detach(); save_png(bicubic_downsample(x, 4)[0], sys.argv[1])"
    )
    path = folder / "face.png"
    subprocess.run([PY, "-c", code, str(path)], check=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    env = dict(os.environ)
    commands = {
        "python -c pass": [PY, "-c", "pass"],
        "import torch": [PY, "-c", "import torch"],
        "import pulse_sr": [PY, "-c", "import pulse_sr"],
        "pulse-sr --help": [PY, "-m", "pulse_sr.cli", "--help"],
        "pulse-sr run --help": [PY, "-m", "pulse_sr.cli", "run", "--help"],
        "import pulse_sr.search.batched": [PY, "-c", "import pulse_sr.search.batched"],
        "import pulse_sr.cli.run": [PY, "-c", "import pulse_sr.cli.run"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        face = _planted_face(Path(tmp))
        commands["pulse-sr run (1 face, 1 step)"] = [
            PY, "-m", "pulse_sr.cli", "run", str(face), "-o", str(Path(tmp) / "out"), "--steps", "1",
            "--overwrite", "--quiet"]
        rows = {}
        for name, cmd in commands.items():
            rows[name] = {"seconds": round(_time(cmd, env, args.repeat), 3), "imports_ms": _imports(cmd, env)}
            print(f"{name:36s} {rows[name]['seconds']:7.3f} s   {rows[name]['imports_ms']}", flush=True)
    record = {"repeat": args.repeat, "cpus": os.cpu_count(), "load": os.getloadavg(), "commands": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()

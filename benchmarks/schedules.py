#!/usr/bin/env python
"""Step-size schedules that might reach eps in fewer steps, against PULSE's, at 1024.

Exploratory: ``cosine_restart`` is pulse-sr's opt-in schedule (the recorded run of
``results/schedules-stylegan1-tame.json`` calls it ``restart40``, its name before it moved into
pulse-sr: the same multipliers at 100 steps); the others are not in pulse-sr (each missed eps on
a problem PULSE's ``linear1cycledrop`` solves) and are registered for this process only. All are
run through the compiled faithful loop (``lean_memory``, ``compile="on"``) on the
``stylegan1-tame`` planted problems of ``run.py``, one candidate, seed 0.

    python benchmarks/schedules.py --json benchmarks/results/schedules-stylegan1-tame.json   # ~25 min
    python benchmarks/schedules.py --schedules cos40 --problems 1 --steps 5                  # smoke

Prints, per schedule and problem, the steps and seconds to eps (or the L2 reached).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_engine import planted
from run import DEFAULT_REFERENCE, machine_info, quiet_noise, tame_rgb

def cos40(t: int, steps: int) -> float:
    """Cosine from 1 to 0.01 over 40 steps, then 0.01."""
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 40) / 40))


def flat15exp(t: int, steps: int) -> float:
    """1 for 15 steps, then x0.9 a step."""
    return 1.0 if t < 15 else 0.9 ** (t - 15)


def warm5exp(t: int, steps: int) -> float:
    """Up from 0.2 to 1 over 5 steps, then x0.93 a step."""
    return 0.2 + 0.8 * t / 5 if t < 5 else 0.93 ** (t - 5)


SCHEDULES = {f.__name__: f for f in (cos40, flat15exp, warm5exp)}
#: (label, settings overrides): PULSE's schedule first, as the baseline
TRIALS = {"linear1cycledrop": {}, **{name: {"schedule": name} for name in (*SCHEDULES, "cosine_restart")}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schedules", default=",".join(TRIALS), help="comma list of: " + ", ".join(TRIALS))
    p.add_argument("--problems", type=int, default=3)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    names = [s for s in args.schedules.split(",") if s]
    for name in names:
        if name not in TRIALS:
            raise SystemExit(f"unknown schedule {name!r}; known: {', '.join(TRIALS)}")

    import pulse_sr
    from pulse_sr.search import schedules
    from pulse_sr.search.gaussian_fit import cached_gaussian_fit
    from pulse_sr.search.pulse import pulse_search

    schedules._SCHEDULES.update(SCHEDULES)  # this process only
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-schedules-") as tmp:
        weights = Path(tmp) / "stylegan1-tame"
        subprocess.run([sys.executable, str(args.reference / "deterministic_weights.py"), str(weights)], check=True)
        quiet_noise(weights / "synthesis.pt")
        tame_rgb(weights / "synthesis.pt")
        G = pulse_sr.load_generator("stylegan1", weights=weights)
        fit = cached_gaussian_fit(G)
        base = {"lean_memory": True, "compile": "on", "max_batch": 1}
        pulse_search(G, planted(G, 0, 32)[1], gaussian_fit=fit, steps=2, **base)  # compiles (timed apart)
        for name in names:
            for i in range(args.problems):
                t0 = time.perf_counter()
                res = pulse_search(G, planted(G, i, 32)[1], gaussian_fit=fit, steps=args.steps,
                                   **base, **TRIALS[name])
                row = {"schedule": name, "problem": i, "seconds": time.perf_counter() - t0,
                       "steps": int(res.steps[0]), "converged": bool(res.converged[0]), "l2": float(res.l2[0])}
                rows.append(row)
                print(f"{name:17s} problem {i}: {'within eps' if row['converged'] else 'missed eps'} after "
                      f"{row['steps']} steps, {row['seconds']:.0f} s, L2 {row['l2']:.5f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
                                         "command": [sys.argv[0], *(argv if argv is not None else sys.argv[1:])],
                                         "steps": args.steps, "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

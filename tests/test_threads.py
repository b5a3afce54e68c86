"""threads.py: how many compute threads on a shared machine, and passive waiting set in time."""
from __future__ import annotations

import subprocess
import sys

from pulse_sr.threads import PASSIVE_WAIT_ENV, suggested_threads


def test_suggested_threads_leaves_busy_cores_alone() -> None:
    assert suggested_threads(2, 0.0) == 2
    assert suggested_threads(2, 1.0) == 1  # one busy neighbour on 2 cores: one thread, not two fighting
    assert suggested_threads(2, 12.0) == 1  # never fewer than one
    assert suggested_threads(16, 3.4) == 13  # 12.6 free cores, rounded
    assert suggested_threads(16, 3.6) == 12


def test_configure_threads_before_torch() -> None:
    """In a fresh process: passive waiting is in the environment before torch starts its OpenMP
    runtime, and the counts are what was asked."""
    code = ("import os, sys; from pulse_sr.threads import configure_threads;"
            "assert 'torch' not in sys.modules; d = configure_threads(1);"
            "print(d['wait'], d['threads'], d['interop_threads'], os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in __import__("os").environ.items() if k not in PASSIVE_WAIT_ENV}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["passive", "1", "1", "PASSIVE"]

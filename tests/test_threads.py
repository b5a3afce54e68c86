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


def test_cli_sets_passive_wait_before_torch_starts() -> None:
    """Spinning OpenMP threads made a DCGAN step 4-30x slower on a shared machine; the CLI must
    set passive waiting before anything imports torch (the runtime reads it once, at start)."""
    import subprocess
    import sys

    code = ("import os, sys\n"
            "from pulse_sr import cli, threads\n"
            "seen = {}\n"
            "real = threads.prefer_passive_wait\n"
            "def spy():\n"
            "    seen['torch_before'] = 'torch' in sys.modules\n"
            "    return real()\n"
            "cli.prefer_passive_wait = spy\n"
            "cli.main(['weights', 'list'])\n"
            "print(seen.get('torch_before'), os.environ.get('OMP_WAIT_POLICY'))\n")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False PASSIVE"

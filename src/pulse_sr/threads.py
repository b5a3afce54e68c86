"""Compute threads for a machine that may be shared: how many, and no spin-waiting.

PyTorch's CPU kernels run on an OpenMP pool (libgomp in the Linux wheels) of one thread per core,
whose idle threads spin for a while before sleeping (libgomp's default spin count, Intel OpenMP's
200 ms ``KMP_BLOCKTIME``). On a machine another process keeps busy, two compute threads then fight
over the one free core, and the spinning thread burns the time slices its partner needs at every
barrier: ``benchmarks/threads.py`` measures it (``benchmarks/results/threads.json``).

:func:`configure_threads` applies the proposal: passive waiting (sleep at once at a barrier), one
compute thread per usable core, one inter-op thread (the search has no independent ops to run side
by side). Measured (``benchmarks/results/threads.json``, DCGAN step, 2 cores, load average ~12,
plus one busy neighbour): 2 threads spinning 1409 / 249 ms per candidate at batch 4 / 24, 2 threads
passive 42 / 49 ms, 1 thread passive 82 / 104 ms. Passive waiting removes the fight, and then the
second thread still pays, so the thread count is not cut for load unless waiting spins
(:func:`suggested_threads`). Spin settings are read when the OpenMP runtime starts,
that is when torch is first imported, so call it before anything imports torch; the thread counts
can be set later too. Importing this module imports nothing heavy.
"""
from __future__ import annotations

import os
import sys
from typing import Any

#: environment for passive waiting, each runtime's own knob (libgomp reads the first two,
#: Intel/LLVM OpenMP the last); set only where the user has not set them
PASSIVE_WAIT_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0", "KMP_BLOCKTIME": "0"}


def prefer_passive_wait() -> bool:
    """Set :data:`PASSIVE_WAIT_ENV` where the user has not, without importing torch.

    Returns whether it was in time (torch not yet imported). The front ends call it first thing.
    """
    for key, value in PASSIVE_WAIT_ENV.items():
        os.environ.setdefault(key, value)
    return "torch" not in sys.modules


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def suggested_threads(cpus: int | None = None, busy: float | None = None) -> int:
    """Compute threads: the usable CPUs less those other processes keep busy, at least 1.

    ``busy``: CPUs in use by others (default: the 1-minute load average, which counts this
    process's own runnable threads too, so it errs towards fewer threads, the safe side: one
    thread too few costs a core's share, one too many costs ~3x on a shared machine).
    """
    cpus = usable_cpus() if cpus is None else cpus
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            busy = 0.0
    return max(1, min(cpus, int(cpus - busy + 0.5)))


def configure_threads(threads: int | None = None, *, passive_wait: bool = True,
                      interop_threads: int | None = 1) -> dict[str, Any]:
    """Set the process's compute threads; returns what was set (JSON-safe).

    ``threads``: None = one per usable core with passive waiting, :func:`suggested_threads` (the
    idle cores) without; 0 = leave torch's default. ``passive_wait``:
    set :data:`PASSIVE_WAIT_ENV` (effective only before torch is imported: ``"wait"`` in the
    answer says whether it was in time). ``interop_threads``: torch's inter-op pool (None: leave
    it; it can only be set before torch runs parallel work, else it is left as is).
    """
    done: dict[str, Any] = {}
    if passive_wait:
        done["wait"] = "passive" if prefer_passive_wait() else "passive (too late: torch already imported)"
    import torch  # here on purpose: after the environment above

    if threads is None:
        threads = usable_cpus() if passive_wait else suggested_threads()
    if threads:
        torch.set_num_threads(int(threads))
    done["threads"] = torch.get_num_threads()
    if interop_threads:
        try:
            torch.set_num_interop_threads(int(interop_threads))
        except RuntimeError:  # already set, or parallel work already ran
            pass
    done["interop_threads"] = torch.get_num_interop_threads()
    return done

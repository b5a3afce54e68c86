"""A leaner search step on the CPU: keep freed memory instead of handing it back to the OS.

A 1024x1024 StyleGAN step allocates and frees tensors of up to a few hundred MB.
glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh
``mmap`` calls and unmaps them on ``free``, so every step touches new pages (page
faults). On the 1024 px StyleGAN1 stand-in, one full step took 4.19 s plain and 1.78 s
lean on this project's 2-core machine (``benchmarks/results/run-stylegan1.json``, modes
``faithful`` and ``faithful-lean``). Telling
glibc never to use ``mmap`` for allocations and never to trim the heap makes a
freed block reusable by the next step without page faults.

This changes *where* tensors live, never what is computed: results are bit for
bit the same (tests/test_fast_search.py checks gradients against the plain run).
The setting is process-wide and only ever applied once; on a platform without
glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_MMAP_THRESHOLD = -3

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Configure glibc malloc once: no mmap for big blocks, no trimming. True if active.

    Opt out with ``PULSE_SR_NO_MALLOPT=1`` (for measuring the difference).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("PULSE_SR_NO_MALLOPT") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_MAX, 0) == 1
    ok = mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    _applied = ok
    return ok


def malloc_is_lean() -> bool:
    """Whether :func:`keep_freed_memory` has been applied successfully in this process."""
    return bool(_applied)

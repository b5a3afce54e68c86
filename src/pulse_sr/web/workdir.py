"""The web server's work folder, marked as ours, and removal of the ones dead servers left.

Each server makes one folder ``pulse-sr-web-XXXX`` (in ``--work-dir`` or the system temp
folder) and writes a marker file into it naming its host and process id. A server killed
with ``kill -9`` cannot remove its folder; the next server starting in the same parent
removes every folder that is named like ours, holds a well-formed marker, and whose
marker names this host and a process that no longer runs. Nothing else is ever touched:
not a folder without a marker, not a symlink, not another host's, not a live server's.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

PREFIX = "pulse-sr-web-"
MARKER = ".pulse-sr-web.json"
#: a marker is a few dozen bytes; anything larger is not ours
MARKER_MAX_BYTES = 4096


def make_work_root(parent: Path | None) -> Path:
    """A fresh marked work folder in ``parent`` (default: the system temp folder), after
    removing the stale ones there. Raises ``OSError`` if it cannot be made."""
    base = parent if parent is not None else Path(tempfile.gettempdir())
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    remove_stale(base)
    root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
    marker = {"pid": os.getpid(), "host": socket.gethostname(), "created": time.time()}
    (root / MARKER).write_text(json.dumps(marker), encoding="utf-8")
    return root


def remove_stale(base: Path) -> list[Path]:
    """Remove the folders in ``base`` that dead servers of this host made; returns them."""
    gone: list[Path] = []
    try:
        candidates = [p for p in base.iterdir() if p.name.startswith(PREFIX)]
    except OSError:
        return gone
    for folder in candidates:
        if is_stale(folder):
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(folder)
    return gone


def is_stale(folder: Path) -> bool:
    """Whether ``folder`` is a work folder of a server of this host that no longer runs."""
    marker = read_marker(folder)
    if marker is None or marker.get("host") != socket.gethostname():
        return False
    pid = marker.get("pid")
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 and not pid_alive(pid)


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of a real (not symlinked) folder, or None when absent or malformed."""
    path = folder / MARKER
    try:
        if folder.is_symlink() or not folder.is_dir() or path.is_symlink() or not path.is_file():
            return None
        if path.stat().st_size > MARKER_MAX_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (one we may not signal counts as alive)."""
    if pid == os.getpid() or os.name == "nt":  # Windows: os.kill(pid, 0) would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True
    return True

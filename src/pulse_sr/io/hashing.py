"""SHA-256 of files, remembered per process while a file is unchanged.

Loading a zoo checkpoint checks its hash against the weights card, then the loader
records the same hash as the generator's ``weights_hash``: with the memo the file is
read once (about 1 s for a 300 MB ``.pkl``). A file counts as unchanged while its
device, inode, size and modification time (ns) are the same.
"""
from __future__ import annotations

import hashlib
import os
import threading

CHUNK = 1 << 20
_memo: dict[tuple[str, int, int, int, int], str] = {}
_lock = threading.Lock()


def _identity(path: "str | os.PathLike[str]") -> tuple[str, int, int, int, int]:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def sha256_of_files(*paths: "str | os.PathLike[str]") -> str:
    """SHA-256 (hex) over the bytes of the files in the given order, read in 1 MiB blocks, not remembered."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                h.update(block)
    return h.hexdigest()


def sha256_file(path: "str | os.PathLike[str]") -> str:
    """SHA-256 (hex) of a file's bytes (read once per unchanged file and process)."""
    key = _identity(path)
    with _lock:
        known = _memo.get(key)
    if known is not None:
        return known
    digest = sha256_of_files(path)
    if _identity(path) == key:  # not changed while we read it
        with _lock:
            _memo[key] = digest
    return digest

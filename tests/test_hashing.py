"""File hashes are read once per unchanged file and process (a zoo .pkl used to be read twice)."""
from __future__ import annotations

import builtins
import hashlib
import os

from pulse_sr.generators.base import file_sha256
from pulse_sr.io.hashing import sha256_file
from pulse_sr.weights.download import sha256_file as download_sha256


def _count_opens(monkeypatch, path) -> list[str]:
    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        if os.fspath(file) == os.fspath(path):
            opened.append(os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    return opened


def test_hash_matches_hashlib_and_file_is_read_once(tmp_path, monkeypatch):
    path = tmp_path / "net.pkl"
    data = os.urandom(3 << 20)
    path.write_bytes(data)
    opened = _count_opens(monkeypatch, path)
    expected = hashlib.sha256(data).hexdigest()
    assert download_sha256(path) == expected  # the zoo check
    assert file_sha256(path) == expected  # the loader's weights_hash
    assert sha256_file(str(path)) == expected
    assert len(opened) == 1


def test_changed_file_is_hashed_again(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 1000)
    first = sha256_file(path)
    path.write_bytes(b"b" * 1000)  # same size, new bytes
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert sha256_file(path) == hashlib.sha256(b"b" * 1000).hexdigest() != first


def test_several_files_hash_their_concatenation(tmp_path):
    a, b = tmp_path / "synthesis.pt", tmp_path / "mapping.pt"
    a.write_bytes(b"syn")
    b.write_bytes(b"map")
    assert file_sha256(a, b) == hashlib.sha256(b"synmap").hexdigest()
    assert file_sha256(a) == hashlib.sha256(b"syn").hexdigest()

"""Atomic output: files written under a temporary name then renamed, and
folders built next to their final place then renamed when complete.

A killed process may leave a hidden ``.<name>.partial-<pid>-<random>`` folder
(or a temporary ``.<name>.<random>.tmp`` file) behind, never a final folder
or file that looks complete. :func:`staged_dir` removes stale partial folders
of dead processes (on this host) the next time the same output is staged.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Any, Iterator

PARTIAL_TAG = ".partial-"
OLD_TAG = ".old-"
# Names Windows reserves for devices (with any extension): never used as an output name.
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}


def result_name(stem: str) -> str:
    """A safe folder/file name for an input's results, made from the input's stem.

    Always a fresh child name of the output folder: never empty, ``.``, ``..``, hidden
    (a leading dot could pose as a staging folder), with a separator or NUL, or a name
    Windows reserves. Names that are already safe are returned unchanged, so
    ``face.png`` still gives ``face``; ``..png`` (stem ``.``) gives ``_.``.
    """
    name = "".join("_" if c in "/\\\0" else c for c in stem)
    if not name or name.startswith("."):
        name = "_" + name
    if name.split(".", 1)[0].rstrip(" ").upper() in _RESERVED:
        name = "_" + name
    if name[-1] in ". ":  # Windows drops trailing dots and spaces: keep the name distinct there too
        name += "_"
    return name


def child_path(parent: str | os.PathLike[str], name: str) -> Path:
    """``parent / name`` after checking that it is a direct child of ``parent`` (ValueError if not)."""
    if name in ("", ".", "..") or name != os.path.basename(name) or "\0" in name or "/" in name:
        raise ValueError(f"{name!r} is not a plain file name inside {parent}")
    return Path(parent) / name


def _fsync_dir(path: Path) -> None:
    """Best effort: make a rename inside ``path`` durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (thread-safe on Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    A crash or error leaves the old ``path`` (or nothing) and no temporary file behind.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get normal modes
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder + ``os.replace``."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write_with(path, write)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON, atomically.

    Lone surrogates (file names that are not UTF-8, as ``os.fsdecode`` gives them) cannot be
    UTF-8 encoded: they are written as JSON ``\\udcXX`` escapes, which read back as the same
    string (``os.fsencode`` of it gives the original bytes).
    """
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"
    atomic_write_bytes(path, text.encode("utf-8", "backslashreplace"))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but not ours, or cannot tell: leave it alone
    return True


def clean_stale(final_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove ``.<name>.partial-*`` / ``.<name>.old-*`` folders left by dead processes.

    Folders whose process id is still alive (or unreadable) are kept. Returns
    the removed paths.
    """
    final_dir = Path(final_dir)
    parent, name = final_dir.parent, final_dir.name
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for tag in (PARTIAL_TAG, OLD_TAG):
        prefix = f".{name}{tag}"
        for p in parent.glob(f"{glob_escape(prefix)}*"):
            if not p.is_dir() or p.is_symlink():
                continue
            pid_text = p.name[len(prefix):].split("-", 1)[0]
            if pid_text.isdigit() and _pid_alive(int(pid_text)):
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


LOCK_SUFFIX = ".lock"


def lock_path(final_dir: str | os.PathLike[str]) -> Path:
    """The lock file of a result folder: ``.<name>.lock`` beside it."""
    final_dir = Path(final_dir)
    return final_dir.parent / f".{final_dir.name}{LOCK_SUFFIX}"


def try_lock(final_dir: str | os.PathLike[str]) -> int | None:
    """Claim ``final_dir`` for this process: create ``.<name>.lock`` (``O_EXCL``) holding our pid.

    Returns ``None`` when claimed (release with :func:`unlock`), else the pid of the live
    process that holds it. A lock whose process is dead (on this host) is stale: removed and
    claimed. A lock file without a readable pid counts as held (pid 0) unless it is older
    than a minute (a writer dies between create and write only by a crash).
    """
    import time

    path = lock_path(final_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                text = path.read_text(encoding="ascii", errors="replace").strip()
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue  # released meanwhile: try again
            if text.isdigit() and (int(text) == os.getpid() or _pid_alive(int(text))):
                return int(text)
            if not text.isdigit() and age < 60:
                return 0
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale: its process is gone
            continue
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(f"{os.getpid()}\n")
        return None
    return 0


def unlock(final_dir: str | os.PathLike[str]) -> None:
    """Release the lock of :func:`try_lock` (only when this process holds it)."""
    path = lock_path(final_dir)
    try:
        if path.read_text(encoding="ascii", errors="replace").strip() == str(os.getpid()):
            path.unlink()
    except FileNotFoundError:
        pass


def glob_escape(text: str) -> str:
    """Escape glob metacharacters in a literal name."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


@contextlib.contextmanager
def staged_dir(final_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary folder next to ``final_dir``; rename it into place on success.

    On an exception (including KeyboardInterrupt) the temporary folder is
    removed and the exception propagates. When ``final_dir`` already exists it
    is replaced only with ``overwrite=True`` (the old one is moved aside,
    the new one renamed in, then the old one deleted); otherwise
    ``FileExistsError`` is raised and nothing changes.
    """
    final_dir = Path(final_dir)
    parent = final_dir.parent
    if final_dir.name in ("", ".", "..") or os.path.normpath(final_dir) != str(final_dir):
        raise ValueError(f"{final_dir}: not a plain folder name to stage")  # never stage over a parent
    parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final_dir)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{final_dir.name}{PARTIAL_TAG}{os.getpid()}-"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        _fsync_dir(tmp)
        _commit(tmp, final_dir, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _commit(tmp: Path, final_dir: Path, *, overwrite: bool) -> None:
    parent = final_dir.parent
    if not (final_dir.exists() or final_dir.is_symlink()):
        try:
            os.rename(tmp, final_dir)
            _fsync_dir(parent)
            return
        except OSError:
            if not final_dir.exists():
                raise
            # someone created it meanwhile: fall through to the exists case
    if not overwrite:
        raise FileExistsError(f"{final_dir} already exists (use overwrite to replace it)")
    old = parent / f".{final_dir.name}{OLD_TAG}{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(final_dir, old)
    try:
        os.rename(tmp, final_dir)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(old, final_dir)
        raise
    _fsync_dir(parent)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            old.unlink()

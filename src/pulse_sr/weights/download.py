"""Downloading zoo checkpoints: resumable, retried, size- and hash-checked, renamed into place.

Standard library only (``urllib.request``). :func:`fetch` downloads one URL:

- into ``<file>.part`` beside the target; a later call resumes it with an HTTP
  ``Range`` request and keeps the bytes only when the server answers ``206``
  with a matching ``Content-Range`` (a ``200`` restarts from zero);
- connection errors, cut connections and 5xx/429 answers are retried with
  exponential backoff (``base_delay * 2**k``); an attempt that made progress
  does not count against ``attempts``;
- a web page instead of the file (``Content-Type`` text/*, or a body starting
  like HTML/XML: a quota, virus-scan or sign-in page) stops at once with a
  message naming the host, and nothing is saved;
- the size is checked against the caller's (the card's) and the server's
  ``Content-Length``/``Content-Range``; the SHA-256 against the caller's;
- the finished file is fsynced and renamed into place (``os.replace``);
- time limits (:mod:`pulse_sr.weights.deadline`): the whole download stops after
  2 h, or when less than 10 kB/s arrive over 60 s (a server trickling bytes never trips
  a socket timeout), with a one-line message; the ``.part`` is kept for a later resume.

:func:`download_entry` fetches every file of a zoo card under a lock and
records size and SHA-256 in the entry's ``manifest.json``; :func:`verify_entry`
checks cached files against the card or, where the card has no hash, against
that record. :func:`ensure_weights` is what loaders call.
"""
from __future__ import annotations

import contextlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pulse_sr.errors import WeightsError
from pulse_sr.io.hashing import sha256_file
from pulse_sr.weights.deadline import MAX_SECONDS_ENV, MIN_RATE_ENV, RATE_WINDOW_ENV, Clock
from pulse_sr.weights.deadline import duration as _duration
from pulse_sr.weights.zoo import (
    MANIFEST,
    WEIGHTS_ENV,
    ZooEntry,
    ZooFile,
    entry_dir,
    file_url,
    format_size,
    get_entry,
    is_cached,
    local_path,
)

ALLOW_ENV = "PULSE_SR_ALLOW_DOWNLOAD"
CHUNK = 1 << 20
_HTML_STARTS = (b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<!--")
Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Retry(Exception):
    """A transient failure: try again (``progressed``: this attempt saved new bytes)."""

    def __init__(self, msg: str, progressed: bool = False) -> None:
        super().__init__(msg)
        self.progressed = progressed


def _kept(part: Path) -> str:
    return f"; {part} is kept, run again to resume" if part.exists() and part.stat().st_size else ""


@dataclass(frozen=True)
class Fetched:
    """A finished download: where it is, its size in bytes and its SHA-256 (hex)."""

    path: Path
    size: int
    sha256: str


def _host(url: str) -> str:
    return urlsplit(url).hostname or url


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WeightsError(f"{url}: only http:// and https:// URLs can be downloaded")


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects (NGC sends one to its CDN) but only to http(s)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if urlsplit(newurl).scheme not in ("http", "https"):
            raise WeightsError(f"{_host(req.full_url)} redirected to {newurl}; only http(s) is followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    """http(s) only: no file://, ftp:// or data: handlers."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), _Redirects(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def prepare_folder(folder: Path) -> None:
    """Create ``folder`` and check a file can be written in it, else one clear WeightsError."""
    hint = f"set {WEIGHTS_ENV} to a writable folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create the weights folder {folder}: {e.strerror or e}; {hint}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
    except OSError as e:
        raise WeightsError(f"the weights folder {folder} is not writable: {e.strerror or e}; {hint}") from None
    os.close(fd)
    os.unlink(probe)


def _refuse_page(host: str, label: str, url: str, what: str) -> WeightsError:
    return WeightsError(
        f"{host} sent {what} instead of {label}: most likely a download-quota, virus-scan, sign-in or "
        f"permission page; nothing was saved. Try again later or fetch {url} by hand"
    )


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes START-END/TOTAL`` -> (START, TOTAL); ``bytes */TOTAL`` -> (None, TOTAL); TOTAL may be ``*``."""
    if not value or not value.strip().lower().startswith("bytes"):
        return None, None
    spec = value.strip()[5:].strip()
    rng, _, total_text = spec.partition("/")
    total = int(total_text) if total_text.strip().isdigit() else None
    start_text = rng.partition("-")[0].strip()
    return (int(start_text) if start_text.isdigit() else None), total


def _truncate(part: Path) -> None:
    with open(part, "wb"):
        pass


def _attempt(url: str, part: Path, *, size: int | None, label: str, progress: bool, timeout: float,
             log: Log, clock: Clock) -> None:
    """One request: append to ``part`` until the response ends. Raises _Retry on transient failures."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        _truncate(part)
        offset = 0
    if size is not None and offset == size and offset > 0:
        return  # a previous run got every byte; only the checks and the rename are left
    from pulse_sr import __version__

    req = urllib.request.Request(url, headers={"User-Agent": f"pulse-sr/{__version__}", "Accept-Encoding": "identity"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = _opener().open(req, timeout=max(min(timeout, clock.remaining()), 0.001))
    except urllib.error.HTTPError as e:
        host = _host(e.geturl() or url)
        with contextlib.closing(e):
            if e.code == 416 and offset:
                if _content_range(e.headers.get("Content-Range"))[1] == offset:
                    return  # the range starts at the end: the part file is complete
                _truncate(part)
                raise _Retry(f"{host} refused to resume at byte {offset:,}; starting again") from None
            if e.code in (408, 425, 429) or e.code >= 500:
                raise _Retry(f"{host} answered HTTP {e.code} {e.reason}") from None
            ctype = (e.headers.get("Content-Type") or "").lower()
            page = " with a web page" if ctype.startswith(("text/", "application/xhtml")) else ""
            raise WeightsError(f"{host} refused the download of {label}: HTTP {e.code} {e.reason}{page} ({url})") from None
    except WeightsError:
        raise
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        import ssl

        reason = getattr(e, "reason", e)
        if isinstance(reason, ssl.SSLCertVerificationError):  # retrying will not help
            raise WeightsError(f"{_host(url)}: TLS certificate not trusted ({reason.verify_message or reason})") from None
        raise _Retry(f"cannot reach {_host(url)}: {' '.join(str(reason).split()) or type(e).__name__}") from None

    with contextlib.closing(resp):
        final = resp.geturl() or url
        host = _host(final)
        _check_url(final)
        ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype.startswith("text/") or ctype == "application/xhtml+xml":
            what = "a web page (HTML)" if "html" in ctype else f"a {ctype} text response"
            raise _refuse_page(host, label, url, what)
        length_text = resp.headers.get("Content-Length")
        length = int(length_text) if length_text and length_text.strip().isdigit() else None
        if resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                _truncate(part)
                raise _Retry(f"{host} sent bytes from {start} when asked for {offset:,}; starting again")
        elif resp.status == 200:
            if offset:
                log(f"{host} does not resume downloads; starting {label} again from zero")
                _truncate(part)
                offset = 0
            total = length
        else:
            raise WeightsError(f"{host} answered HTTP {resp.status} {resp.reason} for {label} ({url})")
        if total is not None and size is not None and total != size:
            raise WeightsError(f"{host} offers {total:,} bytes for {label} but {size:,} are expected; "
                               "refusing (a different or changed file)")
        if offset:
            log(f"resuming {label} at {format_size(offset)}")
        _stream(resp, part, offset=offset, length=length, total=total if total is not None else size,
                host=host, label=label, url=url, progress=progress, clock=clock)


def _stream(resp: Any, part: Path, *, offset: int, length: int | None, total: int | None, host: str,
            label: str, url: str, progress: bool, clock: Clock) -> None:
    """Append the response body to ``part`` with a progress bar; check it is all there. Reads
    what has arrived (``read1``), so the deadline and the minimum rate are checked however
    slowly the bytes come."""
    from tqdm import tqdm

    got = 0
    window = [clock.now(), 0.0]
    read = getattr(resp, "read1", resp.read)
    try:
        f = open(part, "ab" if offset else "wb")
    except OSError as e:
        raise WeightsError(f"cannot write {part}: {e.strerror or e}") from None
    with f, tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                 file=sys.stderr, disable=not progress, leave=False) as bar:
        while True:
            try:
                block = read(CHUNK)
            except (OSError, http.client.HTTPException) as e:
                raise _Retry(f"connection to {host} broke after {offset + got:,} bytes ({type(e).__name__})",
                             progressed=got > 0) from None
            if not block:
                break
            if offset == 0 and got == 0 and block.lstrip()[:16].lower().startswith(_HTML_STARTS):
                f.close()
                part.unlink(missing_ok=True)
                raise _refuse_page(host, label, url, "a web page (HTML)")
            try:
                f.write(block)
            except OSError as e:
                raise WeightsError(f"cannot write {part}: {e.strerror or e} (kept; run again to resume)") from None
            got += len(block)
            bar.update(len(block))
            kept = f"; {part} is kept, run again to resume"  # (bytes still buffered: no stat)
            clock.check(label, kept)
            clock.check_rate(window, got, f"{label}: {host}", kept)
        f.flush()
        os.fsync(f.fileno())
    expected = length if length is not None else (None if total is None else total - offset)
    if expected is not None and got < expected:
        raise _Retry(f"connection to {host} closed after {offset + got:,} of {offset + expected:,} bytes",
                     progressed=got > 0)
    if expected is not None and got > expected:
        _truncate(part)
        raise _Retry(f"{host} sent more bytes than announced; starting again")


def fetch(url: str, dest: str | os.PathLike[str], *, size: int | None = None, sha256: str | None = None,
          progress: bool = True, attempts: int = 5, base_delay: float = 1.0, timeout: float = 60.0,
          label: str | None = None, log: Log | None = _stderr, sleep: Callable[[float], None] = time.sleep,
          max_seconds: float | None = None, min_rate: float | None = None, rate_window: float | None = None,
          clock: Clock | None = None) -> Fetched:
    """Download ``url`` to ``dest`` (resuming ``dest.part``); check ``size`` and ``sha256`` when given.

    ``attempts``: failures in a row without progress before giving up (at most
    ``4 * attempts`` requests in all). ``max_seconds``, ``min_rate``, ``rate_window``: the
    time limits (:class:`Clock`; defaults 2 h, 10 kB/s over 60 s, or their environment
    variables), or a ``clock`` shared by several files. Raises WeightsError with one line on
    any failure; an interrupted ``.part`` is kept for the next call, a wrong one removed.
    """
    clock = clock or Clock(max_seconds, min_rate, rate_window)
    _check_url(url)
    dest = Path(dest)
    label = label or dest.name
    say: Log = log or (lambda _msg: None)
    prepare_folder(dest.parent)
    part = dest.with_name(dest.name + ".part")
    failures = requests = 0
    while True:
        requests += 1
        try:
            clock.check(label, _kept(part))
            _attempt(url, part, size=size, label=label, progress=progress, timeout=timeout, log=say, clock=clock)
            break
        except _Retry as e:
            failures = 0 if e.progressed else failures + 1
            if failures >= attempts or requests >= 4 * attempts:
                raise WeightsError(f"downloading {label} failed after {requests} tries: {e}{_kept(part)}") from None
            delay = base_delay * 2 ** max(failures - 1, 0)
            if delay >= clock.remaining():
                raise WeightsError(f"downloading {label} stopped: {e}, and the time limit "
                                   f"({_duration(clock.max_seconds)}, {MAX_SECONDS_ENV}) leaves no time to retry"
                                   f"{_kept(part)}", max_seconds=clock.max_seconds) from None
            say(f"{e}; retrying in {delay:.3g} s")
            sleep(delay)
    got = part.stat().st_size if part.exists() else 0
    if size is not None and got != size:
        part.unlink(missing_ok=True)
        raise WeightsError(f"{label}: downloaded {got:,} bytes, expected {size:,}; removed, run again")
    if got == 0:
        part.unlink(missing_ok=True)
        raise WeightsError(f"{_host(url)} sent an empty file for {label}")
    digest = sha256_file(part)
    if sha256 is not None and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise WeightsError(f"{label}: SHA-256 {digest} does not match the expected {sha256.lower()}; "
                           "the download was removed (corrupt transfer or a changed file)")
    os.replace(part, dest)
    with contextlib.suppress(OSError):
        fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return Fetched(dest, got, digest)


# -- zoo entries ----------------------------------------------------------------------------
def read_manifest(folder: Path) -> dict[str, Any]:
    """The entry's recorded sizes and hashes (``{"files": {name: {...}}}``); empty if none yet."""
    import json

    path = folder / MANIFEST
    if not path.exists():
        return {"files": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise ValueError("no 'files' table")
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: unreadable ({e}); delete it and run `pulse-sr weights download "
                           f"{folder.name} --force`") from None
    return data


def _record(folder: Path, entry: ZooEntry, f: ZooFile, size: int, digest: str, how: str, url: str) -> None:
    from pulse_sr.io.files import atomic_write_json

    data = read_manifest(folder)
    data["name"] = entry.name
    data["files"][f.name] = {
        "size": size, "sha256": digest, "hash_source": how, "url": url,
        "recorded": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    atomic_write_json(folder / MANIFEST, data)


def _expected(f: ZooFile, record: dict[str, Any] | None) -> tuple[int | None, str | None]:
    rec = record or {}
    return (f.size if f.size is not None else rec.get("size"),
            f.sha256 if f.sha256 is not None else rec.get("sha256"))


def _check_file(entry: ZooEntry, f: ZooFile, path: Path, record: dict[str, Any] | None) -> str:
    """Size and SHA-256 of a cached file against the card/record; returns the hash."""
    size, sha = _expected(f, record)
    fix = f"run `pulse-sr weights download {entry.name} --force`"
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise WeightsError(f"{path}: {actual:,} bytes, expected {size:,}: damaged or replaced; {fix}")
    digest = sha256_file(path)
    if sha is not None and digest != sha.lower():
        where = "the card" if f.sha256 else "the hash recorded at its first download"
        raise WeightsError(f"{path}: SHA-256 {digest} differs from {where} ({sha}): damaged or replaced; {fix}")
    return digest


def verify_entry(entry: ZooEntry, root: str | os.PathLike[str] | None = None) -> Path:
    """Check every cached file of ``entry``; record the hash of a file that has none yet
    (copied in by hand). Returns the path loaders take."""
    folder = entry_dir(entry, root)
    records = read_manifest(folder)["files"]
    for f in entry.files:
        path = folder / f.name
        if not path.is_file():
            raise WeightsError(f"{entry.name}: {path} is missing; run `pulse-sr weights download {entry.name}`")
        digest = _check_file(entry, f, path, records.get(f.name))
        if f.name not in records:
            with contextlib.suppress(OSError, WeightsError):
                _record(folder, entry, f, path.stat().st_size, digest, "card" if f.sha256 else "first seen", "")
    return local_path(entry, root)


@contextlib.contextmanager
def _locked(folder: Path, say: Log) -> Iterator[None]:
    """One download per entry folder at a time (POSIX ``flock``; no lock elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        handle = open(folder / ".lock", "a+")
    except OSError as e:
        raise WeightsError(f"cannot write {folder / '.lock'}: {e.strerror or e}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another pulse-sr process downloading into {folder} ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def download_entry(entry: ZooEntry | str, *, root: str | os.PathLike[str] | None = None, base_url: str | None = None,
                   force: bool = False, progress: bool = True, attempts: int = 5, base_delay: float = 1.0,
                   timeout: float = 60.0, log: Log | None = _stderr, max_seconds: float | None = None,
                   min_rate: float | None = None, rate_window: float | None = None) -> Path:
    """Download (or finish, or with ``force`` redo) every file of a zoo entry; returns its load path.

    The time limits (``max_seconds`` for the whole entry, ``min_rate`` over ``rate_window``;
    see :class:`Clock`) default to their environment variables, else 2 h and 10 kB/s over 60 s.

    Files already cached are verified, not fetched again (unless ``force``). A file
    without a published SHA-256 is checked against the hash recorded at its first
    download, if any; otherwise its hash is recorded now.
    """
    entry = get_entry(entry) if isinstance(entry, str) else entry
    say: Log = log or (lambda _msg: None)
    clock = Clock(max_seconds, min_rate, rate_window)
    folder = entry_dir(entry, root)
    prepare_folder(folder)
    with _locked(folder, say):
        for f in entry.files:
            dest = folder / f.name
            record = read_manifest(folder)["files"].get(f.name)
            if dest.is_file() and not force:
                digest = _check_file(entry, f, dest, record)
                if record is None:
                    _record(folder, entry, f, dest.stat().st_size, digest, "card" if f.sha256 else "first seen", "")
                continue
            if force:
                (folder / (f.name + ".part")).unlink(missing_ok=True)
            size, sha = _expected(f, None if force else record)
            url = file_url(f, base_url)
            got = fetch(url, dest, size=size, sha256=sha, progress=progress, attempts=attempts,
                        base_delay=base_delay, timeout=timeout, label=f"{entry.name}/{f.name}", log=log,
                        clock=clock)
            if force and record and f.sha256 is None and record.get("sha256") != got.sha256:
                say(f"note: {f.name} now has SHA-256 {got.sha256}, not the {record.get('sha256')} recorded "
                    f"on {record.get('recorded', '?')}")
            how = "card" if f.sha256 else ("first download" if record is None or force else "recorded")
            _record(folder, entry, f, got.size, got.sha256, how, url)
            say(f"{entry.name}: {f.name} {format_size(got.size)}, SHA-256 {got.sha256}")
    return local_path(entry, root)


# -- what loaders call ----------------------------------------------------------------------
def download_consent(entry: ZooEntry, *, allow_download: bool, interactive: bool | None = None,
                     root: str | os.PathLike[str] | None = None) -> bool:
    """Consent to download: the flag, ``$PULSE_SR_ALLOW_DOWNLOAD=1``, or a yes at a TTY prompt."""
    if allow_download:
        return True
    if os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    if interactive is None:
        interactive = bool(sys.stdin and sys.stdin.isatty())
    if not interactive:
        return False
    sizes = [f.size for f in entry.files]
    size = format_size(sum(s for s in sizes if s is not None)) if None not in sizes else "size not published"
    hosts = ", ".join(sorted({_host(file_url(f)) for f in entry.files}))
    _stderr(f"{entry.name} ({entry.title}) is not in {entry_dir(entry, root)}.\n"
            f"  licence: {entry.licence}\n  {len(entry.files)} file(s) from {hosts}, {size}")
    try:
        answer = input("Download it now? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def ensure_weights(name: str, *, allow_download: bool = False, progress: bool = True,
                   interactive: bool | None = None, root: str | os.PathLike[str] | None = None,
                   base_url: str | None = None, verify: bool = True, log: Log | None = _stderr) -> Path:
    """The local path of zoo checkpoint ``name`` (a folder for the StyleGAN1 pair, else the file),
    downloading it first when allowed (see :func:`download_consent`).

    Cached files are verified (size, SHA-256) unless ``verify=False``. Raises
    WeightsError (one line) for unknown names, missing consent, refused or failed
    downloads and damaged files.
    """
    entry = get_entry(name)
    if is_cached(entry, root):
        return verify_entry(entry, root) if verify else local_path(entry, root)
    if not download_consent(entry, allow_download=allow_download, interactive=interactive, root=root):
        raise WeightsError(f"{name} is not downloaded; run `pulse-sr weights download {name}` or pass --download "
                           f"(or set {ALLOW_ENV}=1)")
    if log:
        log(f"downloading {name} into {entry_dir(entry, root)} (licence: {entry.licence})")
    return download_entry(entry, root=root, base_url=base_url, progress=progress, log=log)

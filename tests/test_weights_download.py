"""The weights downloader against a real HTTP server on 127.0.0.1 that the tests start.

The server implements Range requests and, per file, a plan of misbehaviours consumed one
request at a time: a connection cut mid-body, a quota-style HTML page, 5xx answers,
ignored or wrong ranges, redirects. Nothing here touches the internet.
"""
from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from pulse_sr.errors import WeightsError
from pulse_sr.weights import download as dl
from pulse_sr.weights import zoo
from pulse_sr.weights.zoo import ZooEntry, ZooFile

QUOTA_PAGE = (b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head>"
              b"<body>Too many users have viewed or downloaded this file recently.</body></html>")


def payload(n: int = (1 << 20) + 12345, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    plans: dict[str, list[str]] = field(default_factory=dict)
    cut_at: int = 300_000
    trickle_delay: float = 0.01
    log: list[tuple[str, str | None, int]] = field(default_factory=list)  # (path, Range header, status)

    def requests_for(self, name: str) -> list[tuple[str | None, int]]:
        return [(rng, status) for path, rng, status in self.log if path.endswith("/" + name)]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/octet-stream",
              headers: dict[str, str] | None = None, length: int | None = None) -> None:
        self.server.state.log.append((self.path, self.headers.get("Range"), status))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        state = self.server.state
        path = unquote(self.path)
        name = path.rsplit("/", 1)[-1]
        if name not in state.files:
            self._send(404, b"not found", "text/plain")
            return
        data = state.files[name]
        plan = state.plans.get(name) or []
        mode = plan.pop(0) if plan else "normal"
        if mode == "html":
            self._send(200, QUOTA_PAGE, "text/html; charset=utf-8")
            return
        if mode == "html-as-binary":
            self._send(200, QUOTA_PAGE)
            return
        if mode.isdigit():
            self._send(int(mode), b"<html><body>nope</body></html>", "text/html")
            return
        if mode == "redirect" and not path.startswith("/moved/"):
            self._send(302, b"", headers={"Location": f"/moved/{name}"})
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and mode not in ("norange",):
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self._send(416, b"", headers={"Content-Range": f"bytes */{len(data)}"})
                return
        if mode == "wrong-range" and rng:
            body = data  # claims 206 but sends from byte 0
            self._send(206, body, headers={"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"})
            return
        body = data[start:]
        status = 206 if (rng and mode != "norange") else 200
        extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if status == 206 else {}
        if mode == "slow":  # the whole body in 10 pieces, 30 ms apart
            self.server.state.log.append((self.path, rng, status))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            step = len(body) // 10 + 1
            for i in range(0, len(body), step):
                self.wfile.write(body[i:i + step])
                self.wfile.flush()
                time.sleep(0.03)
            return
        if mode == "trickle":  # one byte at a time, state.trickle_delay apart, until the client hangs up
            self.server.state.log.append((self.path, rng, status))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            try:
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(state.trickle_delay)
            except OSError:
                pass
            return
        if mode == "cut":  # announce the whole body, send part of it, hang up
            self._send(status, body[: state.cut_at - start] if start < state.cut_at else body[:1000],
                       headers=extra, length=len(body))
            self.close_connection = True
            return
        self._send(status, body, headers=extra)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ServerState, str]]:
    """(state, base URL) of a fresh server on 127.0.0.1; no proxy for it."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(zoo.BASE_URL_ENV, raising=False)
    monkeypatch.delenv(dl.ALLOW_ENV, raising=False)
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.state = ServerState()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield srv.state, f"http://127.0.0.1:{srv.server_address[1]}/files"
    finally:
        srv.shutdown()
        srv.server_close()


def card(files: dict[str, bytes | None], *, name: str = "test-ckpt", published: bool = True,
         layout: str | None = None) -> ZooEntry:
    """A zoo entry whose files' sizes and hashes are 'published' (from the bytes) or not."""
    zfiles = tuple(
        ZooFile(fname, f"https://unreachable.invalid/{fname}",
                len(data) if (published and data is not None) else None,
                hashlib.sha256(data).hexdigest() if (published and data is not None) else None)
        for fname, data in files.items()
    )
    return ZooEntry(name=name, title="test checkpoint", backend="stylegan2", resolution=32, latent="-",
                    layout=layout or ("file" if len(zfiles) == 1 else "folder"), files=zfiles,
                    licence="test licence", training_data="none", biases="none", source="tests")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".part", ".tmp")) or p.name.startswith(".write"))


QUICK: dict = {"progress": False, "base_delay": 0.001, "log": None}


# -- full downloads ---------------------------------------------------------------------------
def test_full_download_checks_and_records(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, base = server
    data = payload()
    state.files["g.pkl"] = data
    entry = card({"g.pkl": data})
    path = dl.download_entry(entry, root=tmp_path, base_url=base, **QUICK)
    assert path == tmp_path / "test-ckpt" / "g.pkl"
    assert path.read_bytes() == data
    assert state.requests_for("g.pkl") == [(None, 200)]
    rec = json.loads((tmp_path / "test-ckpt" / "manifest.json").read_text())["files"]["g.pkl"]
    assert rec["sha256"] == hashlib.sha256(data).hexdigest() and rec["size"] == len(data)
    assert rec["hash_source"] == "card"
    assert leftovers(tmp_path / "test-ckpt") == []
    # a second call finds it cached and verified: no request
    assert dl.download_entry(entry, root=tmp_path, base_url=base, **QUICK) == path
    assert len(state.log) == 1


def test_two_file_entry_returns_the_folder(server: tuple[ServerState, str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    state, base = server
    a, b = payload(5000, 1), payload(7000, 2)
    state.files.update({"synthesis.pt": a, "mapping.pt": b})
    entry = card({"synthesis.pt": a, "mapping.pt": b}, name="pair")
    monkeypatch.setitem(zoo.ZOO, "pair", entry)
    path = dl.ensure_weights("pair", allow_download=True, root=tmp_path, base_url=base, progress=False, log=None)
    assert path == tmp_path / "pair" and path.is_dir()
    assert (path / "synthesis.pt").read_bytes() == a and (path / "mapping.pt").read_bytes() == b


def test_progress_bar_goes_to_stderr(server: tuple[ServerState, str], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    state, base = server
    data = payload(300_000)
    state.files["g.pkl"] = data
    dl.fetch(f"{base}/g.pkl", tmp_path / "g.pkl", progress=True, log=None)
    out, err = capsys.readouterr()
    assert out == "" and "g.pkl" in err and "%" in err
    dl.fetch(f"{base}/g.pkl", tmp_path / "h.pkl", progress=False, log=None)
    assert capsys.readouterr() == ("", "")


def test_redirect_is_followed(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, base = server
    data = payload(50_000)
    state.files["g.pkl"] = data
    state.plans["g.pkl"] = ["redirect"]
    got = dl.fetch(f"{base}/g.pkl", tmp_path / "g.pkl", sha256=hashlib.sha256(data).hexdigest(), **QUICK)
    assert got.path.read_bytes() == data
    assert [s for _, s in state.requests_for("g.pkl")] == [302, 200]


# -- resume ----------------------------------------------------------------------------------
def test_resume_after_cut_connection(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, base = server
    data = payload()
    state.files["g.pkl"] = data
    state.plans["g.pkl"] = ["cut"]
    entry = card({"g.pkl": data})
    path = dl.download_entry(entry, root=tmp_path, base_url=base, **QUICK)
    assert path.read_bytes() == data
    assert state.requests_for("g.pkl") == [(None, 200), (f"bytes={state.cut_at}-", 206)]


def test_interrupted_download_keeps_part_and_a_later_run_resumes(server: tuple[ServerState, str],
                                                                  tmp_path: Path) -> None:
    state, base = server
    data = payload()
    state.files["g.pkl"] = data
    state.plans["g.pkl"] = ["cut", "503", "503"]
    entry = card({"g.pkl": data})
    with pytest.raises(WeightsError, match=r"failed after 3 tries: .*HTTP 503.*is kept, run again to resume"):
        dl.download_entry(entry, root=tmp_path, base_url=base, attempts=2, **QUICK)
    folder = tmp_path / "test-ckpt"
    assert not (folder / "g.pkl").exists()
    assert (folder / "g.pkl.part").read_bytes() == data[: state.cut_at]
    path = dl.download_entry(entry, root=tmp_path, base_url=base, **QUICK)
    assert path.read_bytes() == data
    assert state.requests_for("g.pkl")[-1] == (f"bytes={state.cut_at}-", 206)
    assert leftovers(folder) == []


def test_server_ignoring_range_restarts_from_zero(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, base = server
    data = payload()
    state.files["g.pkl"] = data
    state.plans["g.pkl"] = ["cut", "norange"]
    got = dl.fetch(f"{base}/g.pkl", tmp_path / "g.pkl", **QUICK)
    assert got.path.read_bytes() == data and got.size == len(data)  # not the first 300 kB twice
    assert state.requests_for("g.pkl") == [(None, 200), (f"bytes={state.cut_at}-", 200)]


def test_wrong_content_range_is_not_appended(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, base = server
    data = payload()
    state.files["g.pkl"] = data
    state.plans["g.pkl"] = ["cut", "wrong-range"]
    got = dl.fetch(f"{base}/g.pkl", tmp_path / "g.pkl", **QUICK)
    assert got.path.read_bytes() == data
    assert state.requests_for("g.pkl") == [(None, 200), (f"bytes={state.cut_at}-", 206), (None, 200)]


def test_complete_part_file_needs_no_request(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, base = server
    data = payload(10_000)
    state.files["g.pkl"] = data
    (tmp_path / "g.pkl.part").write_bytes(data)
    got = dl.fetch(f"{base}/g.pkl", tmp_path / "g.pkl", size=len(data), sha256=hashlib.sha256(data).hexdigest(), **QUICK)
    assert got.path.read_bytes() == data and state.log == []
    # without a known size the server is asked from the end and answers 416 'complete'
    (tmp_path / "h.pkl.part").write_bytes(data)
    state.files["h.pkl"] = data
    got = dl.fetch(f"{base}/h.pkl", tmp_path / "h.pkl", **QUICK)
    assert got.path.read_bytes() == data and state.requests_for("h.pkl") == [(f"bytes={len(data)}-", 416)]


# -- retries ---------------------------------------------------------------------------------
def test_5xx_is_retried_with_exponential_backoff(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, base = server
    data = payload(20_000)
    state.files["g.pkl"] = data
    state.plans["g.pkl"] = ["503", "500", "502"]
    delays: list[float] = []
    got = dl.fetch(f"{base}/g.pkl", tmp_path / "g.pkl", progress=False, base_delay=0.5, log=None, sleep=delays.append)
    assert got.path.read_bytes() == data
    assert delays == [0.5, 1.0, 2.0]
    delays.clear()
    state.plans["g.pkl"] = ["503"] * 10
    with pytest.raises(WeightsError, match=r"failed after 3 tries: 127\.0\.0\.1 answered HTTP 503"):
        dl.fetch(f"{base}/g.pkl", tmp_path / "x.pkl", progress=False, attempts=3, base_delay=0.5, log=None,
                 sleep=delays.append)
    assert delays == [0.5, 1.0]
    assert not (tmp_path / "x.pkl").exists() and not (tmp_path / "x.pkl.part").exists()


def test_refused_connection_is_retried_then_reported(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    delays: list[float] = []
    with pytest.raises(WeightsError, match=r"failed after 2 tries: cannot reach 127\.0\.0\.1"):
        dl.fetch(f"http://127.0.0.1:{port}/g.pkl", tmp_path / "g.pkl", progress=False, attempts=2, log=None,
                 sleep=delays.append)
    assert delays == [1.0]


def test_http_403_is_not_retried(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, base = server
    state.files["g.pkl"] = payload(100)
    state.plans["g.pkl"] = ["403"]
    with pytest.raises(WeightsError, match=r"127\.0\.0\.1 refused the download of g\.pkl: HTTP 403 .*web page"):
        dl.fetch(f"{base}/g.pkl", tmp_path / "g.pkl", **QUICK)
    assert len(state.log) == 1


def test_concurrent_downloads_of_one_entry_fetch_once(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, base = server
    data = payload(400_000)
    state.files["g.pkl"] = data
    state.plans["g.pkl"] = ["slow", "slow"]
    entry = card({"g.pkl": data})
    results: list[object] = []

    def worker() -> None:
        try:
            results.append(dl.download_entry(entry, root=tmp_path, base_url=base, **QUICK))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            results.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    target = tmp_path / "test-ckpt" / "g.pkl"
    assert results == [target, target]
    assert target.read_bytes() == data
    assert len(state.requests_for("g.pkl")) == 1  # the second waited for the lock, then found it cached


# -- refused content -------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["html", "html-as-binary"])
def test_quota_page_is_refused_not_saved(server: tuple[ServerState, str], tmp_path: Path, mode: str) -> None:
    state, base = server
    state.files["synthesis.pt"] = payload(1000)
    state.plans["synthesis.pt"] = [mode]
    entry = card({"synthesis.pt": None}, published=False)
    with pytest.raises(WeightsError) as info:
        dl.download_entry(entry, root=tmp_path, base_url=base, **QUICK)
    msg = str(info.value)
    assert msg.startswith("127.0.0.1 sent a web page (HTML) instead of test-ckpt/synthesis.pt")
    assert "quota" in msg and "\n" not in msg
    folder = tmp_path / "test-ckpt"
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # no weights, no part, no manifest
    assert len(state.log) == 1  # not retried


def test_wrong_hash_is_removed(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, base = server
    good, bad = payload(40_000, 1), payload(40_000, 2)
    state.files["g.pkl"] = bad
    entry = card({"g.pkl": good})  # same size, other bytes
    with pytest.raises(WeightsError, match=rf"SHA-256 {hashlib.sha256(bad).hexdigest()} does not match the expected "
                                           rf"{hashlib.sha256(good).hexdigest()}"):
        dl.download_entry(entry, root=tmp_path, base_url=base, **QUICK)
    folder = tmp_path / "test-ckpt"
    assert not (folder / "g.pkl").exists() and leftovers(folder) == [] and not (folder / "manifest.json").exists()


def test_size_differing_from_card_is_refused_before_download(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, base = server
    state.files["g.pkl"] = payload(40_001)
    entry = card({"g.pkl": payload(40_000)})
    with pytest.raises(WeightsError, match=r"offers 40,001 bytes for test-ckpt/g\.pkl but 40,000 are expected"):
        dl.download_entry(entry, root=tmp_path, base_url=base, **QUICK)
    assert not (tmp_path / "test-ckpt" / "g.pkl.part").exists()


def test_only_http_urls(tmp_path: Path) -> None:
    for url in ("file:///etc/passwd", "ftp://example.com/x.pkl", "data:,hello", "/etc/passwd"):
        with pytest.raises(WeightsError, match="only http:// and https:// URLs"):
            dl.fetch(url, tmp_path / "x.pkl", **QUICK)


# -- the cache folder ------------------------------------------------------------------------
def test_cache_folder_not_writable(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, base = server
    state.files["g.pkl"] = payload(100)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    entry = card({"g.pkl": payload(100)})
    with pytest.raises(WeightsError) as info:
        dl.download_entry(entry, root=blocker / "weights", base_url=base, **QUICK)
    msg = str(info.value)
    assert msg == (f"cannot create the weights folder {blocker / 'weights' / 'test-ckpt'}: Not a directory; "
                   "set PULSE_SR_WEIGHTS to a writable folder")
    assert state.log == []  # failed before any request


def test_weights_root_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(zoo.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "c"))
    assert zoo.weights_root() == tmp_path / "c" / "weights"
    monkeypatch.setenv(zoo.WEIGHTS_ENV, str(tmp_path / "w"))
    assert zoo.weights_root() == tmp_path / "w"
    entry = zoo.get_entry("stylegan2-ffhq-1024")
    assert zoo.local_path(entry) == tmp_path / "w" / "stylegan2-ffhq-1024" / "stylegan2-ffhq-1024x1024.pkl"
    assert zoo.local_path(zoo.get_entry("pulse-stylegan1-ffhq-1024")) == tmp_path / "w" / "pulse-stylegan1-ffhq-1024"
    monkeypatch.setenv(zoo.BASE_URL_ENV, "http://mirror.test/zoo/")
    assert zoo.file_url(entry.files[0]) == "http://mirror.test/zoo/stylegan2-ffhq-1024x1024.pkl"
    monkeypatch.delenv(zoo.BASE_URL_ENV)
    assert zoo.file_url(entry.files[0]) == (
        "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/stylegan2-ffhq-1024x1024.pkl")


# -- hashes recorded at first download -------------------------------------------------------
def test_unpublished_hash_is_recorded_then_enforced(server: tuple[ServerState, str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    state, base = server
    data = payload(60_000)
    state.files["g.pkl"] = data
    entry = card({"g.pkl": None}, published=False, name="tofu")
    monkeypatch.setitem(zoo.ZOO, "tofu", entry)
    path = dl.ensure_weights("tofu", allow_download=True, root=tmp_path, base_url=base, progress=False, log=None)
    rec = dl.read_manifest(tmp_path / "tofu")["files"]["g.pkl"]
    assert rec["sha256"] == hashlib.sha256(data).hexdigest() and rec["size"] == len(data)
    assert rec["hash_source"] == "first download"
    assert dl.ensure_weights("tofu", root=tmp_path, log=None) == path  # verified, no download
    # the same size, one byte changed: caught on the next load
    changed = bytearray(data)
    changed[1234] ^= 0xFF
    path.write_bytes(bytes(changed))
    with pytest.raises(WeightsError, match=r"differs from the hash recorded at its first download"):
        dl.ensure_weights("tofu", root=tmp_path, log=None)
    # deleted, and the server now has other bytes of the same size: refused against the record
    path.unlink()
    state.files["g.pkl"] = bytes(changed)
    with pytest.raises(WeightsError, match="does not match the expected"):
        dl.ensure_weights("tofu", allow_download=True, root=tmp_path, base_url=base, progress=False, log=None)
    # --force accepts the new file and records its hash
    dl.download_entry(entry, root=tmp_path, base_url=base, force=True, **QUICK)
    assert dl.read_manifest(tmp_path / "tofu")["files"]["g.pkl"]["sha256"] == hashlib.sha256(changed).hexdigest()


# -- consent ---------------------------------------------------------------------------------
def test_no_download_without_consent(server: tuple[ServerState, str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    state, base = server
    data = payload(5000)
    state.files["g.pkl"] = data
    monkeypatch.setitem(zoo.ZOO, "ask", card({"g.pkl": data}, name="ask"))
    kwargs: dict = {"root": tmp_path, "base_url": base, "progress": False, "log": None}
    with pytest.raises(WeightsError) as info:
        dl.ensure_weights("ask", interactive=False, **kwargs)
    assert str(info.value) == ("ask is not downloaded; run `pulse-sr weights download ask` or pass --download "
                               "(or set PULSE_SR_ALLOW_DOWNLOAD=1)")
    answers = iter(["n", "yes"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    with pytest.raises(WeightsError, match="is not downloaded"):
        dl.ensure_weights("ask", interactive=True, **kwargs)
    assert state.log == []
    assert dl.ensure_weights("ask", interactive=True, **kwargs).read_bytes() == data
    (tmp_path / "ask" / "g.pkl").unlink()
    monkeypatch.setenv(dl.ALLOW_ENV, "1")
    assert dl.ensure_weights("ask", interactive=False, **kwargs).read_bytes() == data


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"unknown zoo checkpoint 'nope'; known: pulse-stylegan1-ffhq-1024, "
                                           r"stylegan2-ffhq-1024, stylegan3-t-ffhq-1024, stylegan3-r-ffhq-1024"):
        dl.ensure_weights("nope", root=tmp_path)


# -- what the registry will load -------------------------------------------------------------
def test_zoo_name_loads_through_load_generator(server: tuple[ServerState, str], tmp_path: Path,
                                              weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A zoo name is a generator name: refused without consent, downloaded with it, then loaded
    from the cache (PULSE-format stand-in weights served as the zoo's StyleGAN1 pair)."""
    import torch

    from pulse_sr.errors import WeightsError
    from pulse_sr.generators.registry import load_generator

    state, base = server
    for name in ("synthesis.pt", "mapping.pt"):
        state.files[name] = (weights_dir / name).read_bytes()
    monkeypatch.setenv("PULSE_SR_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("PULSE_SR_ZOO_BASE_URL", base)
    monkeypatch.delenv("PULSE_SR_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(WeightsError, match="pulse-stylegan1-ffhq-1024 is not downloaded; run `pulse-sr weights download"):
        load_generator("pulse-stylegan1-ffhq-1024")
    assert not (tmp_path / "pulse-stylegan1-ffhq-1024" / "synthesis.pt").exists()
    gen = load_generator("pulse-stylegan1-ffhq-1024", allow_download=True, progress=False)
    ref = load_generator("stylegan1", weights=weights_dir)
    assert gen.name == "pulse-stylegan1-ffhq-1024" and gen.backend == "stylegan1"
    assert gen.weights_source.startswith("zoo:pulse-stylegan1-ffhq-1024")
    assert gen.weights_hash == ref.weights_hash
    for (k, a), (k2, b) in zip(gen.state_dict().items(), ref.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    requests = len(state.log)
    again = load_generator("pulse-stylegan1-ffhq-1024")  # cached now: no consent needed, no request
    assert again.weights_hash == ref.weights_hash
    assert len(state.log) == requests


# -- time limits (issue 14) -------------------------------------------------------------------
def test_trickling_server_is_stopped_by_the_minimum_rate(server: tuple[ServerState, str], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: a server sending a byte every so often kept `weights download` busy forever
    # (no socket timeout ever fires). Limits from the environment, as a user would set them.
    state, base = server
    data = payload(2000)
    state.files["w.pkl"] = data
    state.plans["w.pkl"] = ["trickle"]
    monkeypatch.setenv("PULSE_SR_DOWNLOAD_MIN_RATE", "1000")  # bytes/s; the trickle sends about 100
    monkeypatch.setenv("PULSE_SR_DOWNLOAD_RATE_WINDOW", "0.3")
    with pytest.raises(WeightsError) as info:
        dl.fetch(f"{base}/w.pkl", tmp_path / "w.pkl", size=len(data), **QUICK)
    msg = str(info.value)
    assert "stopped" in msg and "below the minimum 1,000 bytes/s" in msg and "PULSE_SR_DOWNLOAD_MIN_RATE" in msg
    assert "\n" not in msg and "is kept, run again to resume" in msg
    part = tmp_path / "w.pkl.part"
    assert 0 < part.stat().st_size < len(data) and part.read_bytes() == data[:part.stat().st_size]
    assert not (tmp_path / "w.pkl").exists() and len(state.requests_for("w.pkl")) == 1  # not retried


def test_overall_deadline_stops_a_download_that_keeps_its_rate(server: tuple[ServerState, str],
                                                               tmp_path: Path) -> None:
    state, base = server
    data = payload(100_000)
    state.files["w.pkl"] = data
    state.plans["w.pkl"] = ["trickle"]
    state.trickle_delay = 0.001
    with pytest.raises(WeightsError, match=r"took longer than 0.3 s, the time limit \(PULSE_SR_DOWNLOAD_MAX_SECONDS\)"):
        dl.fetch(f"{base}/w.pkl", tmp_path / "w.pkl", size=len(data), max_seconds=0.3, min_rate=0, **QUICK)
    assert 0 < (tmp_path / "w.pkl.part").stat().st_size < len(data)


def test_deadline_covers_retries(server: tuple[ServerState, str], tmp_path: Path) -> None:
    state, base = server
    data = payload(1000)
    state.files["w.pkl"] = data
    state.plans["w.pkl"] = ["503"] * 50
    with pytest.raises(WeightsError, match="leaves no time to retry"):
        dl.fetch(f"{base}/w.pkl", tmp_path / "w.pkl", size=len(data), max_seconds=0.2,
                 **{**QUICK, "base_delay": 0.5})
    assert len(state.requests_for("w.pkl")) == 1


def test_bad_limit_values_are_one_line_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(dl.MAX_SECONDS_ENV, "soon")
    with pytest.raises(WeightsError, match="PULSE_SR_DOWNLOAD_MAX_SECONDS='soon': not a number"):
        dl.fetch("http://127.0.0.1:9/x", tmp_path / "x", **QUICK)
    monkeypatch.delenv(dl.MAX_SECONDS_ENV)
    with pytest.raises(WeightsError, match="non-negative"):
        dl.fetch("http://127.0.0.1:9/x", tmp_path / "x", min_rate=-1, **QUICK)
    clock = dl.Clock()
    assert (clock.max_seconds, clock.min_rate, clock.rate_window) == (7200.0, 10_000.0, 60.0)

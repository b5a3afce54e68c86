"""The web app under hostile requests (issue 14) and its settings and errors (issue 12).

In-process (Starlette's TestClient) where no search needs to run: requests are served
without the app's lifespan, so queued jobs never start. Only the public modules are
imported at the top, so that on old code these tests fail rather than error.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

with warnings.catch_warnings():  # starlette 1.x would rather use httpx2; httpx works the same here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from pulse_sr.web.app import STATIC_DIR, create_app
from pulse_sr.web.jobs import JobManager, WebSettings

from test_web_api import planted_png, rgb_png, seed_tiny_fit  # noqa: E402 - shared helpers

BASE = "http://127.0.0.1:8000"
OWN = {"Origin": BASE, "Sec-Fetch-Site": "same-origin"}  # what the page itself sends
OCTET = {"Content-Type": "application/octet-stream"}
JSON_TYPE = {"Content-Type": "application/json"}


@contextlib.contextmanager
def app_client(tmp_path: Path, **kw: Any) -> Iterator[tuple[TestClient, Any]]:
    """A client of an app whose workers never start (no lifespan); removes its folder after."""
    settings = WebSettings(work_dir=str(tmp_path / "work"), generators=("tiny",), **kw)
    app = create_app(settings)
    try:
        yield TestClient(app, base_url=BASE, raise_server_exceptions=False), app
    finally:
        app.state.manager.stop()


def error_of(r: httpx.Response) -> str:
    """The API's JSON error line (asserts the refusal has that form)."""
    assert r.headers["content-type"].startswith("application/json"), (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    assert "Traceback" not in body["error"]
    return body["error"]


def upload_id(c: TestClient, data: bytes | None = None) -> str:
    r = c.post("/api/inputs", content=data or planted_png()[0], headers=OCTET)
    assert r.status_code == 200, r.text
    return r.json()["input_id"]


def stored_uploads(app: Any) -> int:
    return sum(1 for _ in (app.state.manager.root / "inputs").iterdir())


# -- issue 12: one way to build settings, errors from kind and data ------------------------------
@pytest.mark.parametrize("given", [{}, {"steps": 7}, {"steps": 5, "eps": 1e-3}])
def test_web_job_runs_the_settings_build_settings_makes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        given: dict[str, Any]) -> None:
    """The settings a job searches with are exactly the CLI's for the same request (lean
    memory on): the search is replaced by a stub that records its settings."""
    import pulse_sr.search.pulse as pulse
    from pulse_sr.front_end import build_settings

    seen: list[Any] = []

    def fake_search(*args: Any, settings: Any = None, **kw: Any) -> Any:
        seen.append(settings)
        raise RuntimeError("stub search")

    monkeypatch.setattr(pulse, "pulse_search", fake_search)
    seed_tiny_fit()
    with app_client(tmp_path) as (c, app), c:  # with the lifespan: a worker runs the job
        body = {"input_id": upload_id(c), "generator": "tiny", "n": 1, **given}
        r = c.post("/api/jobs", json=body)
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 60
        while c.get(f"/api/jobs/{r.json()['job_id']}").json()["state"] not in ("failed", "done"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    expected = build_settings(given)
    assert seen == [expected] and expected.lean_memory is True
    assert seen[0].steps == given.get("steps", 100) and seen[0].mode == "auto"


def test_size_errors_are_rendered_from_their_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's hint comes from the error's data, the status from its kind: a message
    saying 'not an image' or naming CLI flags changes neither."""
    import pulse_sr.io.images as images
    from pulse_sr.errors import SizeError

    def refuse(img: Any, res: int, **kw: Any) -> Any:
        raise refusal

    monkeypatch.setattr(images, "fit_to_generator", refuse)
    with app_client(tmp_path) as (c, _app):
        iid = upload_id(c)
        refusal = SizeError("input: not an image, use --resize", size=20, valid_sizes=[4, 8, 16],
                            nearest=16, square=True)
        r = c.post("/api/jobs", json={"input_id": iid, "generator": "tiny"})
        text = error_of(r)
        assert r.status_code == 400 and "--" not in text and "not an image" not in text
        assert "20x20" in text and "4, 8 or 16" in text and "tick “resize”" in text and "(16x16)" in text
        refusal = SizeError("input: use --center-crop", size=[16, 8], square=False)
        r = c.post("/api/jobs", json={"input_id": iid, "generator": "tiny"})
        text = error_of(r)
        assert r.status_code == 400 and "16x8" in text and "“centre-crop”" in text and "8x8" in text


def test_error_status_comes_from_the_kind() -> None:
    from pulse_sr.errors import ImageError, PulseError, SettingsError, WeightsError
    from pulse_sr.web.messages import web_error

    upload = Path("/srv/secret/inputs/abc/upload.bin")
    for err, status in [(ImageError(f"{upload}: too small (2x2)"), 400),
                        (WeightsError("not an image"), 503), (PulseError("x"), 400),
                        (SettingsError("bad", field="steps", value=0, problem="must be at least 1"), 400)]:
        e = web_error(err, upload=upload)
        assert e.status == status and "/srv/secret" not in e.message, (err, e.message)
    assert web_error(SettingsError("bad", field="steps", problem="must be at least 1")).message == \
        "steps: must be at least 1"
    assert web_error(ImageError("x"), status=415).status == 415


# -- issue 14: cross-site requests -----------------------------------------------------------------
def test_cross_site_requests_are_refused(tmp_path: Path) -> None:
    """Regression: a page of another site could store uploads (fetch no-cors sends no
    Content-Type) and use examples (a form POST). Foreign Origin or Sec-Fetch-Site: 403;
    a content type a form can send: 415; the page's own requests and scripts pass."""
    png = planted_png()[0]
    with app_client(tmp_path) as (c, app):
        evil = {"Origin": "http://evil.example"}
        for headers in [evil, {**evil, **OCTET}, {"Origin": "null", **OCTET},
                        {"Origin": "http://127.0.0.1:9999", **OCTET},
                        {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site", **OCTET}]:
            r = c.post("/api/inputs", content=png, headers=headers)
            assert r.status_code == 403 and "cross-site" in error_of(r), headers
        assert stored_uploads(app) == 0
        for url in ("/api/examples/face16", "/api/jobs", "/api/jobs/abc/cancel"):
            form = {"Content-Type": "application/x-www-form-urlencoded"}
            r = c.post(url, content=b"a=b", headers={**form, "Origin": "http://evil.example"})
            assert r.status_code == 403, url
            r = c.post(url, content=b"a=b", headers=form)  # no Origin: still not a form
            assert r.status_code == 415 and "application/json" in error_of(r), url
            r = c.post(url, headers={"Sec-Fetch-Site": "same-origin"})  # a browser, no type
            assert r.status_code == 415, url
        r = c.post("/api/inputs", content=png, headers={"Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 415 and "octet-stream" in error_of(r)
        assert stored_uploads(app) == 0
        # the page's own requests, and scripts without browser headers
        assert c.post("/api/inputs", content=png, headers={**OWN, "Content-Type": "image/png"}).status_code == 200
        assert c.post("/api/inputs", content=png, headers={"Sec-Fetch-Site": "none", **OCTET}).status_code == 200
        assert c.post("/api/examples/face16", headers={**OWN, **JSON_TYPE}).status_code == 200
        assert c.post("/api/examples/face16").status_code == 200  # curl -X POST
        assert c.post("/api/jobs/abc/cancel", headers={**OWN, **JSON_TYPE}).status_code == 404
        # the Host check (DNS rebinding) stays, and answers in JSON
        r = c.get("/api/config", headers={"Host": "evil.example:8000"})
        assert r.status_code == 400 and "Host" in error_of(r)
        assert c.get("/api/config", headers={"Host": "[::1]:8000"}).status_code == 200


def test_origin_and_host_comparison() -> None:
    """Origins compare as scheme, host and port (default ports written out); IPv6 hosts keep
    their brackets; an opaque origin (``null``) is foreign."""
    from pulse_sr.web.guard import LOOPBACK, check_request, host_name

    assert [host_name(h) for h in ("[::1]:8000", "LocalHost:80", "127.0.0.1", "[::1]")] == \
        ["[::1]", "localhost", "127.0.0.1", "[::1]"]
    ok = {"content-type": "application/json"}
    for host, origin, refused in [("127.0.0.1:80", "http://127.0.0.1", False),
                                  ("localhost:8000", "http://LOCALHOST:8000/", False),
                                  ("[::1]:8000", "http://[::1]:8000", False),
                                  ("127.0.0.1:8000", "https://127.0.0.1:8000", True),
                                  ("127.0.0.1:8000", "http://127.0.0.1:8001", True),
                                  ("127.0.0.1:8000", "null", True)]:
        got = check_request("POST", "/api/jobs", "http", {"host": host, "origin": origin, **ok}, LOOPBACK)
        assert (got is not None and got[0] == 403) == refused, (host, origin, got)
    assert check_request("GET", "/", "http", {"host": "evil.example"}, LOOPBACK)[0] == 400
    assert check_request("GET", "/", "http", {"host": "evil.example"}, None) is None


def test_the_page_sends_acceptable_requests() -> None:
    """Every POST in static/app.js names a content type the server accepts for its route."""
    js = (STATIC_DIR / "app.js").read_text()
    calls = re.findall(r"api\(([^;]*?method: \"POST\".*?)\);", js, re.S)
    assert len(calls) == 4
    for call in calls:
        wanted = "application/octet-stream" if "/api/inputs" in call else "application/json"
        assert f'"Content-Type": "{wanted}"' in call, call


# -- issue 14: bounded storage and bodies ----------------------------------------------------------
def test_stored_uploads_are_capped(tmp_path: Path) -> None:
    """Regression: uploads were bounded one by one, never all together."""
    png = rgb_png(16, 16)  # about 850 bytes of noise
    with app_client(tmp_path, max_stored_files=3, max_stored_mb=2500 / 2**20) as (c, app):
        upload_id(c, png)
        upload_id(c, png)
        r = c.post("/api/inputs", content=png, headers=OCTET)  # 3 x ~850 > 2500 bytes
        assert r.status_code == 507 and "full" in error_of(r)
        assert stored_uploads(app) == 2  # nothing half-written stays
        upload_id(c, planted_png()[0])  # a small one still fits: the refused bytes were released
        r = c.post("/api/examples/face16", headers=JSON_TYPE)
        assert r.status_code == 429 and "3 uploads" in error_of(r)
        r = c.post("/api/inputs", content=planted_png()[0], headers=OCTET)
        assert r.status_code == 429
        assert stored_uploads(app) == 3
        manager = app.state.manager
        assert manager.cleanup(now=time.time() + 2 * manager.settings.job_ttl) == 3
        upload_id(c, png)  # expired uploads free their room


def test_job_bodies_are_bounded(tmp_path: Path) -> None:
    with app_client(tmp_path) as (c, _app):
        iid = upload_id(c)
        padded = json.dumps({"input_id": iid, "generator": "tiny", "pad": "x" * 70_000})
        r = c.post("/api/jobs", content=padded, headers=JSON_TYPE)
        assert r.status_code == 413 and "64 KB" in error_of(r)
        r = c.post("/api/jobs", content=iter([padded.encode()[:40_000], padded.encode()[40_000:]]),
                   headers=JSON_TYPE)  # streamed, no length
        assert r.status_code == 413


# -- issue 14: 500s from malformed requests --------------------------------------------------------
def test_malformed_job_requests_are_400_not_500(tmp_path: Path) -> None:
    """Regression: ``generator`` as a list or a dict, or 100,000 ``[``, gave a plain-text 500."""
    with app_client(tmp_path) as (c, _app):
        iid = upload_id(c)
        for field, value in [("generator", ["tiny"]), ("generator", {"a": 1}), ("input_id", [iid]),
                             ("input_id", {"x": iid}), ("n", "2"), ("n", [2]), ("steps", {"a": 1}),
                             ("eps", "0.1"), ("eps", [0.1]), ("seed", 1.5), ("resize", "yes"),
                             ("center_crop", [True]), ("face", {"i": 0}), ("face", 1.0), ("size", [8]),
                             ("size", "8")]:
            r = c.post("/api/jobs", json={"input_id": iid, "generator": "tiny", field: value})
            assert r.status_code == 400, (field, value, r.status_code, r.text)
            error_of(r)
        r = c.post("/api/jobs", content=b"[" * 100_000, headers=JSON_TYPE)
        assert r.status_code == 413  # beyond the default 64 KB
        error_of(r)
    with app_client(tmp_path / "b", max_json_kb=200) as (c, _app):  # deep nesting within the limit
        iid = upload_id(c)
        for raw in [b"[" * 100_000, b"{\"a\":" * 30_000, b"\xff\xfe", b"NaN", b"[1, 2]", b"\"text\"",
                    b'{"input_id": "%s", "eps": NaN}' % iid.encode(),
                    b'{"input_id": "%s", "steps": 1%s}' % (iid.encode(), b"0" * 5000)]:
            r = c.post("/api/jobs", content=raw, headers=JSON_TYPE)
            assert r.status_code == 400, (raw[:20], r.status_code, r.text)
            error_of(r)


# -- issue 14: uploads a killed server left behind -------------------------------------------------
def test_work_folders_of_killed_servers_are_removed(tmp_path: Path) -> None:
    """Regression: ``kill -9`` of ``pulse-sr serve`` left its uploads on disk for good. The
    next server in the same --work-dir removes them, and nothing else of the user's."""
    work = tmp_path / "w"
    work.mkdir()
    mine = work / "pulse-sr-web-my-notes"  # the user's, named like ours but never marked
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    (work / "photo.png").write_bytes(b"user file")
    env = {**os.environ, "PULSE_SR_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pulse_sr.cli", "serve", "--port", "0", "--work-dir", str(work)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("pulse-sr web app: open "), line + proc.stderr.read()
        url = line.split("open ", 1)[1].strip()
        r = httpx.post(url + "api/inputs", content=planted_png()[0], headers=OCTET, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    left = [p for p in work.iterdir() if p not in (mine, work / "photo.png")]
    assert len(left) == 1 and any((left[0] / "inputs").iterdir())  # what kill -9 leaves
    manager = JobManager(WebSettings(work_dir=str(work), generators=("tiny",)))
    try:
        assert not left[0].exists()
        assert (mine / "keep.txt").read_text() == "mine" and (work / "photo.png").is_file()
        assert sorted(work.iterdir()) == sorted([mine, work / "photo.png", manager.root])
    finally:
        manager.stop()


def test_only_marked_folders_of_dead_servers_of_this_host_are_removed(tmp_path: Path) -> None:
    from pulse_sr.web.workdir import MARKER, PREFIX

    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    dead, host = done.pid, socket.gethostname()

    def folder(name: str, marker: Any) -> Path:
        p = tmp_path / name
        p.mkdir()
        (p / "upload.bin").write_bytes(b"x")
        if marker is not None:
            (p / MARKER).write_text(marker if isinstance(marker, str) else json.dumps(marker))
        return p

    stale = folder(PREFIX + "stale", {"pid": dead, "host": host})
    kept = [folder(PREFIX + "live", {"pid": os.getpid(), "host": host}),
            folder(PREFIX + "elsewhere", {"pid": dead, "host": host + "-other"}),
            folder(PREFIX + "unmarked", None), folder(PREFIX + "garbled", "{not json"),
            folder(PREFIX + "badpid", {"pid": "1; rm -rf /", "host": host}),
            folder("not-ours", {"pid": dead, "host": host})]
    target = folder("outside", {"pid": dead, "host": host})
    (tmp_path / (PREFIX + "link")).symlink_to(target, target_is_directory=True)
    manager = JobManager(WebSettings(work_dir=str(tmp_path), generators=("tiny",)))
    try:
        assert not stale.exists()
        assert all((p / "upload.bin").is_file() for p in [*kept, target])
        assert (tmp_path / (PREFIX + "link")).is_symlink()
        marker = json.loads((manager.root / MARKER).read_text())
        assert marker["pid"] == os.getpid() and marker["host"] == host
    finally:
        manager.stop()
    assert not manager.root.exists()


# -- issue 14: property test: random bodies give 2xx or a JSON 4xx, never a 500 --------------------
def test_random_requests_get_json_answers_never_500(tmp_path: Path) -> None:
    """Random JSON (and random bytes) to ``/api/jobs``, random and mangled image bytes to
    ``/api/inputs``: every answer is a 2xx, or a 4xx whose body is the API's JSON error."""
    from hypothesis import given, settings, strategies as st

    leaves = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
              | st.integers(-3, 20))
    values = st.recursive(leaves, lambda kids: st.lists(kids, max_size=3)
                          | st.dictionaries(st.text(max_size=6), kids, max_size=3), max_leaves=8)
    fields = st.sampled_from(["n", "steps", "eps", "seed", "resize", "center_crop", "face", "size", "x"])
    png = rgb_png(16, 16)
    mangled = st.builds(lambda at, junk, cut: (png[:at] + junk + png[at + len(junk):])[:cut],
                        st.integers(0, len(png)), st.binary(max_size=16), st.integers(0, len(png)))
    with app_client(tmp_path, max_queue=2, max_candidates=2, max_steps=3) as (c, _app):
        iid = upload_id(c)
        useful = st.sampled_from([iid, "tiny", 1, 2, 8, 16, 1e-3, True, False, None])
        base = st.fixed_dictionaries({"input_id": st.just(iid) | values, "generator": st.just("tiny") | values})
        bodies = st.builds(lambda b, extra: {**b, **extra}, base,  # mostly past the input look-up
                           st.dictionaries(fields, useful | values, max_size=9)) | values

        def check(r: httpx.Response) -> None:
            assert r.status_code < 500, (r.status_code, r.text)
            if r.status_code >= 400:
                error_of(r)
            else:
                assert isinstance(r.json(), dict)

        @settings(max_examples=100, deadline=None, database=None)
        @given(body=bodies, raw=st.none() | st.binary(max_size=64))
        def jobs(body: Any, raw: bytes | None) -> None:
            content = raw if raw is not None else json.dumps(body).encode()
            check(c.post("/api/jobs", content=content, headers=JSON_TYPE))

        @settings(max_examples=100, deadline=None, database=None)
        @given(data=st.binary(max_size=256) | mangled,
               kind=st.sampled_from(["application/octet-stream", "image/png", "image/x-what", "text/plain", ""]),
               name=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30))
        def inputs(data: bytes, kind: str, name: str) -> None:
            headers = {"X-Filename": name, **({"Content-Type": kind} if kind else {})}
            check(c.post("/api/inputs", content=data, headers=headers))

        jobs()
        inputs()

"""The web app's HTTP API against a live server (uvicorn in a thread), with the tiny generator."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from pulse_sr.degradations.bicubic import bicubic_downsample
from pulse_sr.generators.tiny import make_tiny_generator
from pulse_sr.io.images import png_bytes
from pulse_sr.search.gaussian_fit import DEFAULT_SAMPLES, DEFAULT_SEED, fit_gaussian, store_gaussian_fit
from pulse_sr.web.app import create_app
from pulse_sr.web.jobs import WebSettings

LIMITS = dict(max_upload_mb=0.25, max_pixels=600_000, max_candidates=3, max_steps=400, max_queue=4)


def seed_tiny_fit() -> None:
    """Put a small Gaussian fit of ``tiny`` where the server looks, so no test runs the 1M fit."""
    gen = make_tiny_generator()
    mean, std = fit_gaussian(gen, samples=20_000)
    store_gaussian_fit(gen.weights_hash, mean, std, samples=DEFAULT_SAMPLES, seed=DEFAULT_SEED)


@contextlib.contextmanager
def live_server(settings: WebSettings) -> Iterator[tuple[str, Any]]:
    """``(base URL, app)`` of the app served by uvicorn on a free port, stopped afterwards."""
    import uvicorn

    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    SERVED[base] = app
    try:
        yield base, app
    finally:
        SERVED.pop(base, None)
        server.should_exit = True
        thread.join(30)
        assert not app.state.manager.root.exists(), "temporary folder left behind"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Any]]:
    seed_tiny_fit()
    with live_server(WebSettings(preview_every=2, **LIMITS)) as s:
        yield s


@pytest.fixture()
def client(server: tuple[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], timeout=120) as c:
        yield c


def planted_png(seed: int = 0, side: int = 8) -> tuple[bytes, torch.Tensor]:
    """A downscaled sample of the tiny generator (a face with a known latent), as PNG bytes."""
    gen = make_tiny_generator()
    z = torch.randn(1, gen.z_dim, generator=torch.Generator().manual_seed(1000 + seed))
    with torch.no_grad():
        x = ((gen(z) + 1) / 2).clamp(0, 1)
    lr = bicubic_downsample(x, 32 // side)[0].clamp(0, 1)
    return png_bytes(lr), lr


def rgb_png(w: int, h: int, fmt: str = "PNG", noise: bool = True) -> bytes:
    """Random (or, with ``noise=False``, flat grey: a few hundred bytes) RGB image bytes."""
    rng = np.random.default_rng(w * 1000 + h)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if noise else np.full((h, w, 3), 128, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt)
    return buf.getvalue()


def read_png(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


def client_app(c: httpx.Client) -> Any:
    """The app served at ``c``'s base URL (the tests' servers run in this process)."""
    return SERVED[str(c.base_url).rstrip("/")]


SERVED: dict[str, Any] = {}


def upload(c: httpx.Client, data: bytes, name: str = "face.png") -> httpx.Response:
    return c.post("/api/inputs", content=data,
                  headers={"X-Filename": name, "Content-Type": "application/octet-stream"})


def start_job(c: httpx.Client, input_id: str, **kw: Any) -> str:
    body = {"input_id": input_id, "generator": "tiny", "n": 2, "steps": 10, **kw}
    r = c.post("/api/jobs", json=body)
    assert r.status_code == 201, r.text
    return r.json()["job_id"]


def events(c: httpx.Client, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every server-sent event of a job until its ``end`` event."""
    out = []
    with c.stream("GET", f"/api/jobs/{job_id}/events") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append((kind, json.loads(line[6:])))
    assert out and out[-1][0] == "end"
    return out


def wait_state(c: httpx.Client, job_id: str, states: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = c.get(f"/api/jobs/{job_id}").json()
        if s["state"] in states:
            return s
        assert time.monotonic() < deadline, f"job stuck in {s['state']}"
        time.sleep(0.05)


# -- page and configuration ------------------------------------------------------------------
def test_page_static_files_and_config(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "generated, not recovered" in page.text and "/static/app.js" in page.text
    for name in ("app.js", "style.css", "example_face16.png"):
        assert client.get(f"/static/{name}").status_code == 200
    for bad in ("/static/nothing.js", "/static/..%2Fjobs.py", "/static/%2E%2E%2Fapp.py"):
        r = client.get(bad)
        assert r.status_code == 404 and "error" in r.json()
    cfg = client.get("/api/config").json()
    assert cfg["max_candidates"] == 3 and cfg["max_steps"] == 400 and cfg["max_upload_mb"] == 0.25
    gens = {g["name"]: g for g in client.get("/api/generators").json()}
    assert "tiny" not in gens  # a test network, not a face model: not listed (requests may name it)
    tiny = {e.name: e for e in client_app(client).state.manager.generators.entries.values()}["tiny"]
    assert tiny.to_json()["resolution"] == 32 and tiny.to_json()["input_sizes"] == [4, 8, 16]
    assert gens["dcgan-digiface"]["default"] and gens["dcgan-digiface"]["model_card"].startswith("https://")
    assert "stylegan1" not in gens  # needs a user-supplied path
    names = [e["name"] for e in client.get("/api/examples").json()]
    assert names == ["face16", "face16_b", "face32"]


# -- the main path ---------------------------------------------------------------------------
def test_planted_face_live_events_results_and_zip(client: httpx.Client) -> None:
    data, lr = planted_png(seed=0)
    rec = upload(client, data).json()
    assert (rec["width"], rec["height"], rec["kind"]) == (8, 8, "small")
    assert torch.equal(read_png(client.get(rec["preview"]).content), read_png(data))
    job = start_job(client, rec["input_id"], n=2, steps=100, seed=0)

    evs = events(client, job)
    updates = [d for k, d in evs if k == "update"]
    steps = [u["step"] for u in updates]
    assert steps == sorted(steps) and steps[-1] >= 1
    curve = [p for u in updates for p in u["curve"]]
    assert [p[0] for p in curve] == list(range(1, len(curve) + 1))  # every step, once
    previews = [u["previews"] for u in updates if "previews" in u]
    assert len(previews) >= 2 and all(len(p) == 2 for p in previews)
    first = read_png(base64.b64decode(previews[0][0].split(",", 1)[1]))
    last = read_png(base64.b64decode(previews[-1][0].split(",", 1)[1]))
    assert first.shape == (3, 32, 32) and not torch.equal(first, last)  # the live face changed

    s = client.get(f"/api/jobs/{job}").json()
    assert s["state"] == "done" and s["step"] == len(curve)
    res = s["result"]
    eps = s["params"]["eps"]
    target = read_png(client.get(f"/api/jobs/{job}/files/input.png").content)
    # the 8-bit input.png against the float target: <= 0.5/255 rounding, + allclose's rtol 1e-5,
    # 1/255 + 1e-6 allows the rounding of the planted downscale to 8 bits in the upload as well
    assert torch.allclose(target, lr, atol=1 / 255 + 1e-6)
    hrs = []
    for c in res["candidates"]:
        hr = read_png(client.get(f"/api/jobs/{job}/files/{c['hr']}").content)
        own = read_png(client.get(f"/api/jobs/{job}/files/{c['lr']}").content)
        hrs.append(hr)
        assert hr.shape == (3, 32, 32) and own.shape == (3, 8, 8)
        # the proof: lr is the downscale of hr, its L2 against the input is what the page shows
        # hr and lr as 8-bit PNGs: 0.5/255 x sum |w| (1.15) + 0.5/255 = 1.08/255; 3/255 with margin
        assert torch.allclose(bicubic_downsample(hr[None], 4)[0].clamp(0, 1), own, atol=3 / 255)
        l2 = float(((own - target) ** 2).mean())
        # as in test_cli: 8-bit lr moves L2 by <= 2 sqrt(L2) 2e-3 + 4e-6 in the worst case, and by
        # ~2 sqrt(L2) 1.1e-3 / sqrt(192) when the rounding errors are independent of d (2e-5 at
        # L2 = 1e-3): rel 0.05 / abs 2e-5 covers that
        assert l2 == pytest.approx(c["final_l2"], rel=0.05, abs=2e-5)
        assert c["converged"] == (c["final_l2"] <= eps)
    assert any(c["converged"] for c in res["candidates"]), "planted face not found within eps"
    # spread map: per-pixel std across the candidates, averaged over RGB
    std = torch.stack(hrs).std(dim=0, unbiased=False).mean(dim=0)
    # from float images in the app, from 8-bit PNGs here: a std moves by <= the 0.5/255 = 2e-3
    # rounding; 0.01 with margin, while the spread itself is O(0.1)
    assert res["spread_max"] == pytest.approx(float(std.max()), abs=0.01)
    heat = read_png(client.get(f"/api/jobs/{job}/files/spread.png").content)
    brightness = heat.sum(dim=0)
    hot, cold = std.flatten().argmax(), std.flatten().argmin()
    assert brightness.flatten()[hot] > brightness.flatten()[cold]

    z = client.get(res["zip"])
    assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
        names = {Path(n).name: n for n in zf.namelist()}
        assert set(names) == {"input.png", "report.json", "spread.png", "hr_00.png", "lr_00.png",
                              "hr_01.png", "lr_01.png"}
        report = json.loads(zf.read(names["report.json"]))
        assert zf.read(names["hr_01.png"]) == client.get(f"/api/jobs/{job}/files/hr_01.png").content
    assert report["generator"]["name"] == "tiny" and report["settings"]["n"] == 2
    assert [c["final_l2"] for c in report["candidates"]] == [c["final_l2"] for c in res["candidates"]]
    assert "not a recovery" in report["notice"]


def test_same_faces_as_the_command_line(client: httpx.Client, tmp_path: Path) -> None:
    """The web app runs the library's search and writes results like ``pulse-sr run``."""
    from pulse_sr.cli import main

    data = planted_png(seed=3)[0]
    (tmp_path / "face.png").write_bytes(data)
    assert main(["run", str(tmp_path / "face.png"), "-o", str(tmp_path / "out"), "--generator", "tiny",
                 "--n", "2", "--steps", "5", "--seed", "7", "--eps", "1e-9", "--quiet"]) == 3
    job = start_job(client, upload(client, data).json()["input_id"], n=2, steps=5, seed=7, eps=1e-9)
    s = wait_state(client, job, ("done", "failed"))
    cli_report = json.loads((tmp_path / "out" / "face" / "report.json").read_text())
    for c, ref in zip(s["result"]["candidates"], cli_report["candidates"]):
        assert c["final_l2"] == ref["final_l2"] and c["seed"] == ref["seed"]
        for kind in ("hr", "lr"):
            web = client.get(f"/api/jobs/{job}/files/{c[kind]}").content
            assert web == (tmp_path / "out" / "face" / ref["files"][kind]).read_bytes()


def test_example_input_and_size_handling(client: httpx.Client) -> None:
    rec = client.post("/api/examples/face16").json()
    assert (rec["width"], rec["kind"], rec["name"]) == (16, "small", "face16.png")
    r = client.post("/api/jobs", json={"input_id": rec["input_id"], "generator": "tiny", "n": 1,
                                      "steps": 1})
    assert r.status_code == 201  # 16 fits the 32x32 tiny generator
    assert client.post("/api/examples/nope").status_code == 404

    odd = upload(client, rgb_png(20, 20)).json()
    r = client.post("/api/jobs", json={"input_id": odd["input_id"], "generator": "tiny", "steps": 1})
    assert r.status_code == 400 and "4, 8 or 16" in r.json()["error"] and "resize" in r.json()["error"]
    job = start_job(client, odd["input_id"], n=1, steps=1, resize=True)
    s = wait_state(client, job, ("done", "failed"))
    assert s["state"] == "done" and any("resized 20x20 to 16x16" in n for n in s["notes"])

    wide = upload(client, rgb_png(16, 8)).json()
    r = client.post("/api/jobs", json={"input_id": wide["input_id"], "generator": "tiny", "steps": 1})
    assert r.status_code == 400 and "centre-crop" in r.json()["error"]
    job = start_job(client, wide["input_id"], n=1, steps=1, center_crop=True)
    assert wait_state(client, job, ("done", "failed"))["result"]["candidates"][0]["final_l2"] >= 0


# -- cancel and queue ------------------------------------------------------------------------
def test_cancel_stops_the_running_search(client: httpx.Client) -> None:
    rec = upload(client, planted_png(seed=1)[0]).json()
    job = start_job(client, rec["input_id"], n=1, steps=400, eps=1e-12)  # never stops early
    deadline = time.monotonic() + 60
    while client.get(f"/api/jobs/{job}").json()["step"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    r = client.post(f"/api/jobs/{job}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"]
    s = wait_state(client, job, ("cancelled", "done", "failed"), timeout=30)
    assert s["state"] == "cancelled" and 2 <= s["step"] < 400 and s["result"] is None
    time.sleep(0.3)
    assert client.get(f"/api/jobs/{job}").json()["step"] == s["step"]  # the work really stopped
    assert client.get(f"/api/jobs/{job}/files/report.json").status_code == 404
    assert client.get(f"/api/jobs/{job}/results.zip").status_code == 409
    assert [k for k, _ in events(client, job)] == ["update", "end"]
    # the worker is free again
    again = start_job(client, rec["input_id"], n=1, steps=2)
    assert wait_state(client, again, ("done", "failed"))["state"] == "done"


def test_queue_positions_and_cancel_while_queued(client: httpx.Client) -> None:
    rec = upload(client, planted_png(seed=2)[0]).json()
    first = start_job(client, rec["input_id"], n=3, steps=400, eps=1e-12)
    wait_state(client, first, ("running",))
    second = client.post("/api/jobs", json={"input_id": rec["input_id"], "generator": "tiny", "steps": 2})
    third = client.post("/api/jobs", json={"input_id": rec["input_id"], "generator": "tiny", "steps": 2})
    assert (second.json()["position"], third.json()["position"]) == (1, 2)
    client.post(f"/api/jobs/{second.json()['job_id']}/cancel")
    assert client.get(f"/api/jobs/{second.json()['job_id']}").json()["state"] == "cancelled"
    assert client.get(f"/api/jobs/{third.json()['job_id']}").json()["position"] == 1
    # a full queue refuses politely
    more = [client.post("/api/jobs", json={"input_id": rec["input_id"], "generator": "tiny", "steps": 2})
            for _ in range(LIMITS["max_queue"])]
    assert more[-1].status_code == 429 and "queue is full" in more[-1].json()["error"]
    for r in [third, *more]:
        if r.status_code == 201:
            client.post(f"/api/jobs/{r.json()['job_id']}/cancel")
    client.post(f"/api/jobs/{first}/cancel")
    assert wait_state(client, first, ("cancelled",))["step"] < 400


# -- refusals --------------------------------------------------------------------------------
def test_limits_are_refused_with_messages(client: httpx.Client) -> None:
    big = b"\0" * 300_000
    r = upload(client, big)
    assert r.status_code == 413 and "0.25 MB" in r.json()["error"]
    r = client.post("/api/inputs", content=iter([b"\0" * 100_000] * 3),  # streamed, no length
                    headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413
    r = upload(client, rgb_png(1000, 700, noise=False))  # 700,000 pixels > 600,000
    assert r.status_code == 400 and "too many pixels" in r.json()["error"]
    rec = upload(client, planted_png()[0]).json()
    for body, text in [({"n": 4}, "candidates must be between 1 and 3"),
                       ({"steps": 401}, "steps must be between 1 and 400"),
                       ({"steps": 2.5}, "steps must be a whole number"),
                       ({"eps": 0}, "eps"), ({"seed": -1}, "seed"),
                       ({"generator": "stylegan1"}, "unknown generator"),
                       ({"face": 0}, "no such face")]:
        r = client.post("/api/jobs", json={"input_id": rec["input_id"], "generator": "tiny", **body})
        assert r.status_code == 400 and text in r.json()["error"], (body, r.text)
    r = client.post("/api/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]


def test_other_sites_cannot_submit_work(client: httpx.Client) -> None:
    """Bodies a foreign page could send without a CORS preflight are refused, and so are
    Host names other than this computer's (DNS rebinding)."""
    rec = upload(client, planted_png()[0]).json()
    body = json.dumps({"input_id": rec["input_id"], "generator": "tiny", "steps": 1})
    r = client.post("/api/jobs", content=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    for kind in ("text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"):
        r = client.post("/api/inputs", content=planted_png()[0], headers={"Content-Type": kind})
        assert r.status_code == 415 and "not as a form" in r.json()["error"]
    assert client.get("/", headers={"Host": "evil.example:8000"}).status_code == 400
    assert client.get("/api/config", headers={"Host": "localhost"}).status_code == 200


def test_bad_files_are_checked_by_content(client: httpx.Client) -> None:
    r = upload(client, b"definitely not an image", "face.png")
    assert r.status_code == 415 and "not an image" in r.json()["error"]
    assert "upload.bin" not in r.json()["error"]  # server paths never shown
    r = upload(client, rgb_png(16, 16)[:60], "face.png")
    assert r.status_code == 400 and "corrupt" in r.json()["error"]
    r = upload(client, b"", "face.png")
    assert r.status_code == 400 and "empty" in r.json()["error"]
    # a JPEG named like a text file with a path: read by content; the name is only displayed
    r = upload(client, rgb_png(16, 16, "JPEG"), "..%2F..%2Fetc%2Fpasswd.txt")
    assert r.status_code == 200 and r.json()["name"] == "passwd.txt" and r.json()["width"] == 16


def test_unknown_ids_and_file_names_are_404(client: httpx.Client) -> None:
    for method, url in [("GET", "/api/jobs/abc"), ("GET", "/api/jobs/abc/events"),
                        ("POST", "/api/jobs/abc/cancel"), ("GET", "/api/jobs/abc/files/hr_00.png"),
                        ("GET", "/api/jobs/abc/results.zip"), ("GET", "/api/inputs/abc/preview.png")]:
        r = client.request(method, url)
        assert r.status_code == 404 and "error" in r.json(), url
    r = client.post("/api/jobs", json={"input_id": "abc", "generator": "tiny"})
    assert r.status_code == 404 and "unknown input" in r.json()["error"]
    rec = upload(client, planted_png()[0]).json()
    job = start_job(client, rec["input_id"], n=1, steps=1)
    wait_state(client, job, ("done",))
    for name in ("upload.bin", "..%2Freport.json", "intermediate", "%2Fetc%2Fpasswd"):
        assert client.get(f"/api/jobs/{job}/files/{name}").status_code == 404
        assert client.get(f"/api/inputs/{rec['input_id']}/{name}").status_code == 404


# -- photos ------------------------------------------------------------------------------------
def astronaut_jpeg() -> bytes:
    import skimage.data

    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def test_photo_faces_aligned_and_pasted_back(client: httpx.Client) -> None:
    rec = upload(client, astronaut_jpeg(), "astronaut.jpg").json()
    assert rec["kind"] == "photo" and rec["align_available"] and len(rec["faces"]) == 1
    left, top, right, bottom = rec["faces"][0]["box"]
    assert 150 < (left + right) / 2 < 290 and 60 < (top + bottom) / 2 < 190  # her face
    assert client.get(rec["faces"][0]["image"]).status_code == 200
    gain = rec["faces"][0]["gain"]
    assert gain["tiny"]["decision"] == "skip" and gain["tiny"]["size"] > 100  # ~135 px face, 32-px net
    assert gain["dcgan-digiface"]["decision"] == "skip"  # and for the 64-px default
    r = client.post("/api/jobs", json={"input_id": rec["input_id"], "generator": "tiny", "n": 2,
                                       "steps": 2, "face": 0, "size": 8})
    assert r.status_code == 409 and "nothing to gain" in r.json()["error"]
    assert "restore anyway" in r.json()["error"]
    job = start_job(client, rec["input_id"], n=2, steps=2, face=0, size=8, force=True)
    s = wait_state(client, job, ("done", "failed"))
    assert s["state"] == "done", s["error"]
    res = s["result"]
    assert res["photo"] == "photo.png" and [c["restored"] for c in res["candidates"]] == [
        "restored_00.png", "restored_01.png"]
    before = read_png(client.get(f"/api/jobs/{job}/files/photo.png").content)
    after = read_png(client.get(f"/api/jobs/{job}/files/restored_00.png").content)
    assert before.shape == after.shape and before.shape[1] >= 512
    changed = (before - after).abs().sum(dim=0) > 0.05
    xs = changed.nonzero(as_tuple=True)[1]
    scale = before.shape[2] / 512
    assert changed.any() and not changed[int(320 * scale):].any()  # only around the face
    assert left * scale - 80 * scale < float(xs.float().mean()) < right * scale + 80 * scale
    report = json.loads(client.get(f"/api/jobs/{job}/files/report.json").content)
    assert report["input"]["used_size"] == [8, 8] and report["input"]["face"]["mode"] == "detected"
    assert report["input"]["face_gain"]["forced"] and report["input"]["face_gain"]["decision"] == "warn"
    # the restored photo says what it is; the enlarged original ("before") is the user's
    from pulse_sr.io.provenance import read_provenance

    for name, kind in (("restored_00.png", "composite"), ("photo.png", None)):
        path = client_app(client).state.manager.job_file(job, name)
        assert read_provenance(path).get("kind") == kind, name


def test_photo_without_alignment_offers_whole_image(client: httpx.Client,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from pulse_sr.web import photos

    monkeypatch.setattr(photos, "align_module", lambda: None)
    rec = upload(client, rgb_png(200, 150)).json()
    assert rec["kind"] == "photo" and not rec["align_available"] and rec["faces"] == []
    assert "not installed" in rec["message"] and "centre-crop" in rec["message"]
    assert client.get("/api/config").json()["align_available"] is False
    job = start_job(client, rec["input_id"], n=1, steps=1, center_crop=True, resize=True)
    s = wait_state(client, job, ("done", "failed"))
    assert s["state"] == "done" and s["result"]["photo"] is None
    assert any("center-cropped 200x150" in n for n in s["notes"])


# -- cleanup -----------------------------------------------------------------------------------
def test_expired_jobs_and_inputs_are_removed() -> None:
    seed_tiny_fit()
    with live_server(WebSettings(job_ttl=2.0)) as (url, app), httpx.Client(base_url=url, timeout=60) as c:
        rec = upload(c, planted_png()[0]).json()
        job = start_job(c, rec["input_id"], n=1, steps=1)
        wait_state(c, job, ("done",))
        folder = app.state.manager.jobs[job].dir
        assert (folder / "result" / "hr_00.png").is_file()
        deadline = time.monotonic() + 20
        while c.get(f"/api/jobs/{job}").status_code != 404:  # the janitor runs every ttl/4
            assert time.monotonic() < deadline, "expired job not removed"
            time.sleep(0.1)
        assert not folder.exists()
        assert c.get(rec["preview"]).status_code == 404
        assert not any((app.state.manager.root / "inputs").iterdir())


# -- generators from the weights zoo, and the command ------------------------------------------
def test_cached_zoo_checkpoints_are_offered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pulse_sr.errors import WeightsError
    from pulse_sr.web.generators import list_generators

    monkeypatch.setenv("PULSE_SR_WEIGHTS", str(tmp_path))
    assert [e.name for e in list_generators()] == ["dcgan-digiface", "tiny"]  # nothing cached
    folder = tmp_path / "stylegan2-ffhq-1024"
    folder.mkdir()
    (folder / "stylegan2-ffhq-1024x1024.pkl").write_bytes(b"not a pickle")
    entries = {e.name: e for e in list_generators()}
    zoo = entries["stylegan2-ffhq-1024"]
    assert zoo.resolution == 1024 and zoo.model_card.startswith("https://") and "Licence" in zoo.card_text
    with pytest.raises(WeightsError, match="not a pickle"):  # loads the cached file, no download
        zoo.load("cpu")
    assert [e.name for e in list_generators(("tiny",))] == ["tiny"]


def test_zoo_checkpoint_cached_after_start_up_is_offered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pulse_sr.web.jobs import JobManager

    monkeypatch.setenv("PULSE_SR_WEIGHTS", str(tmp_path / "weights"))
    with live_server(WebSettings(work_dir=str(tmp_path / "w"))) as (url, _app), httpx.Client(base_url=url) as c:
        assert [g["name"] for g in c.get("/api/generators").json()] == ["dcgan-digiface"]  # not tiny
        folder = tmp_path / "weights" / "stylegan2-ffhq-1024"  # `pulse-sr weights download` meanwhile
        folder.mkdir(parents=True)
        (folder / "stylegan2-ffhq-1024x1024.pkl").write_bytes(b"not a pickle")
        names = [g["name"] for g in c.get("/api/generators").json()]
        assert names == ["dcgan-digiface", "stylegan2-ffhq-1024"]
    restricted = JobManager(WebSettings(work_dir=str(tmp_path / "w2"), generators=("tiny",)))
    try:
        assert list(restricted.generators.refresh()) == ["tiny"]  # --generators still limits the offer
    finally:
        restricted.stop()


def test_serve_command_prints_the_address_and_serves(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "PULSE_SR_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pulse_sr.cli", "serve", "--port", "0", "--work-dir", str(tmp_path / "w")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("pulse-sr web app: open http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split("open ", 1)[1].strip()
        deadline = time.monotonic() + 60
        while True:
            try:
                page = httpx.get(url, timeout=10)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert page.status_code == 200 and "pulse-sr" in page.text
        assert len(list((tmp_path / "w").iterdir())) == 1  # its temporary folder
    finally:
        proc.terminate()
        proc.wait(30)
    assert not any((tmp_path / "w").iterdir()), "temporary folder left behind after Ctrl-C/TERM"


# -- issue 15 ----------------------------------------------------------------------------------
def planted_hr(seed: int) -> torch.Tensor:
    """The tiny generator's face behind :func:`planted_png` (``[3, 32, 32]`` in [0, 1])."""
    gen = make_tiny_generator()
    z = torch.randn(1, gen.z_dim, generator=torch.Generator().manual_seed(1000 + seed))
    with torch.no_grad():
        return ((gen(z) + 1) / 2).clamp(0, 1)[0]


def test_cancel_keeps_the_candidates_already_within_eps(tmp_path: Path) -> None:
    """Regression (issue 15): cancel threw away the candidates already within eps."""
    from types import SimpleNamespace

    from pulse_sr.io.provenance import read_provenance
    from pulse_sr.web.jobs import JobManager

    seed_tiny_fit()
    m = JobManager(WebSettings(work_dir=str(tmp_path / "w")))  # no workers: the test drives it
    try:
        data, _ = planted_png(seed=3)
        iid, folder = m.store.open_slot()
        (folder / "upload.bin").write_bytes(data)
        m.store.charge(len(data))
        m.store.register(iid, folder, "planted.png", len(data))
        # eps 1e-5: the upload is the planted face's downscale rounded to 8 bits, at most
        # 0.5/255 off per value, so its mean squared error is <= (1/510)^2 = 3.8e-6 < 1e-5
        job = m.create_job({"input_id": iid, "generator": "tiny", "n": 3, "steps": 50, "eps": 1e-5})
        m._queue.clear()
        job.state, job.started, job.started_perf = "running", time.time(), time.perf_counter()
        noise = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
        hr = planted_hr(3)
        job.last_info = SimpleNamespace(step=7, hr=torch.stack([noise[0], hr, noise[1]]))
        m._cancelled(job)  # what the worker does when the search raises JobCancelled
        s = m.snapshot(job)
        assert s["state"] == "cancelled" and "kept 1 candidate" in s["error"]
        res = s["result"]
        assert res["cancelled"] and [c["index"] for c in res["candidates"]] == [1]
        assert res["candidates"][0]["hr"] == "hr_01.png" and res["best_index"] == 1
        got = read_png(m.job_file(job.id, "hr_01.png").read_bytes())
        assert (got - hr).abs().max() <= 0.5 / 255 + 1e-6  # the kept face, 8-bit rounded
        lr = read_png(m.job_file(job.id, "lr_01.png").read_bytes())
        target = read_png(m.job_file(job.id, "input.png").read_bytes())
        assert float((lr - target).pow(2).mean()) <= 1e-5
        report = json.loads(m.job_file(job.id, "report.json").read_text())
        assert report["cancelled"] and report["candidates"][0]["cancelled"]
        assert report["candidates"][0]["kept_at_step"] == 7 and "within eps" in report["cancelled_note"]
        assert read_provenance(m.job_file(job.id, "hr_01.png"))["kind"] == "generated"
        assert read_provenance(m.job_file(job.id, "input.png")).get("kind") is None  # the user's
        with zipfile.ZipFile(io.BytesIO(m.zip_bytes(job.id))) as z:
            assert sorted(Path(n).name for n in z.namelist()) == [
                "hr_01.png", "input.png", "lr_01.png", "report.json", "spread.png"]
    finally:
        m.stop()


def test_job_lines_on_the_server_log(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    rec = upload(client, planted_png(seed=4)[0]).json()
    with caplog.at_level(logging.INFO, logger="pulse_sr.web"):
        job = start_job(client, rec["input_id"], n=1, steps=2)
        assert wait_state(client, job, ("done", "failed"))["state"] == "done"
        deadline = time.monotonic() + 10
        while not any("finished" in r.getMessage() for r in caplog.records if job[:8] in r.getMessage()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    lines = [r.getMessage() for r in caplog.records if job[:8] in r.getMessage()]
    assert [ln.split()[2].rstrip(":") for ln in lines] == ["queued", "started", "finished"], lines
    assert "tiny" in lines[0] and "done in" in lines[2] and lines[2].endswith(" s")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the test's own 100.5-MP image
def test_big_phone_photo_is_taken_not_refused(tmp_path: Path) -> None:
    """Regression (issue 15): photos over 16.7 MP were refused; now only > 100 MP is. The
    face is found on a shrunk copy, and pasted back where it was on the shrunk result."""
    import skimage.data

    seed_tiny_fit()
    w, h = 5000, 3500  # 17.5 MP: over the old 4096 * 4096 limit
    canvas = Image.new("RGB", (w, h), (120, 130, 140))
    canvas.paste(Image.fromarray(skimage.data.astronaut()), (3000, 1500))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=85)
    with live_server(WebSettings(work_dir=str(tmp_path / "w"))) as (url, _app), \
            httpx.Client(base_url=url, timeout=120) as c:
        rec = upload(c, buf.getvalue(), "phone.jpg").json()
        assert (rec["width"], rec["height"], rec["kind"]) == (w, h, "photo")
        assert len(rec["faces"]) == 1
        left, top, right, bottom = rec["faces"][0]["box"]
        cx, cy = (left + right) / 2, (top + bottom) / 2
        assert 3150 < cx < 3290 and 1560 < cy < 1690  # her face, in full-size coordinates
        job = start_job(c, rec["input_id"], n=1, steps=1, face=0, size=8, force=True)
        assert wait_state(c, job, ("done", "failed"))["state"] == "done"
        before = read_png(c.get(f"/api/jobs/{job}/files/photo.png").content)
        after = read_png(c.get(f"/api/jobs/{job}/files/restored_00.png").content)
        scale = 2048 / 5000  # the restored view's longer side is capped at 2048
        assert before.shape == after.shape == (3, round(h * scale), 2048)
        changed = (before - after).abs().sum(dim=0) > 0.05
        ys, xs = changed.nonzero(as_tuple=True)
        # the pasted frame (~170 px at full size, ~70 px here) is centred near the face
        assert abs(float(xs.float().mean()) - cx * scale) < 40 and abs(float(ys.float().mean()) - cy * scale) < 40
        # a whole big photo (no face chosen) is shrunk as uint8 before it becomes a float tensor
        whole = start_job(c, rec["input_id"], n=1, steps=1, center_crop=True, resize=True)
        s = wait_state(c, whole, ("done", "failed"))
        assert s["state"] == "done" and any("shrunk from 5000x3500" in n for n in s["notes"]), s["notes"]
        huge = io.BytesIO()
        Image.new("RGB", (10_050, 10_000)).save(huge, "PNG")  # 100.5 MP: absurd
        r = upload(c, huge.getvalue(), "huge.png")
        assert r.status_code == 400 and "too many pixels" in r.json()["error"]


def test_finished_job_faces_carry_provenance(client: httpx.Client) -> None:
    from pulse_sr.io.provenance import read_provenance

    rec = upload(client, planted_png(seed=6)[0]).json()
    job = start_job(client, rec["input_id"], n=1, steps=2)
    assert wait_state(client, job, ("done", "failed"))["state"] == "done"
    for name in ("hr_00.png", "lr_00.png"):
        assert read_provenance(client_app(client).state.manager.job_file(job, name)).get("kind") == "generated"


def test_web_job_of_a_mosaic_says_mosaic(client: httpx.Client) -> None:
    """Issue 13: the web job uses the same analysis as the CLI and says what it detected."""
    rng = np.random.default_rng(13)
    grid = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.repeat(np.repeat(grid, 8, 0), 8, 1)).save(buf, "PNG")
    rec = upload(client, buf.getvalue(), name="mosaic.png").json()
    job = start_job(client, rec["input_id"], n=1, steps=1)
    s = wait_state(client, job, ("done", "failed"))
    assert s["state"] == "done", s
    assert "mosaic of 8 px blocks detected" in s["result"]["detected"]
    assert s["result"]["target"] == "target.png"
    target = read_png(client.get(f"/api/jobs/{job}/files/target.png").content)
    assert target.shape == (3, 8, 8) and torch.equal(target, torch.from_numpy(grid).permute(2, 0, 1).float() / 255)

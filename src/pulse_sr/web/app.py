"""The HTTP layer of the web app: a FastAPI app over :class:`~pulse_sr.web.jobs.JobManager`.

Routes (all JSON unless noted; refusals are ``{"error": "..."}`` with a 4xx status):

- ``GET /`` the page; ``GET /static/NAME`` its files (looked up in a fixed list)
- ``GET /api/config`` limits and defaults; ``GET /api/generators``; ``GET /api/examples``
- ``POST /api/inputs`` body = the image bytes (streamed, size-limited) -> input info
- ``POST /api/examples/NAME`` use a bundled example as the input
- ``GET /api/inputs/ID/preview.png``, ``/api/inputs/ID/face_K.png``
- ``POST /api/jobs`` ``{"input_id", "generator", "n", "steps", "eps", "seed", "resize",
  "center_crop", "face", "size", "force"}`` -> ``{"job_id", "position"}``; a face of a photo
  with nothing to gain (:mod:`pulse_sr.io.face_gain`) is refused with 409 unless ``force``
- ``GET /api/jobs/ID`` status; ``GET /api/jobs/ID/events`` server-sent events (``update``
  with status, new loss-curve points and live previews; ``end`` once finished)
- ``POST /api/jobs/ID/cancel``; ``GET /api/jobs/ID/files/NAME``; ``GET /api/jobs/ID/results.zip``
  (a cancelled job keeps, and offers, the candidates already within eps)

Refusals: 400 malformed request or unusable input; 403 cross-site request (foreign ``Origin``
or ``Sec-Fetch-Site``); 404 unknown id or name; 409 no results yet, or a face skipped
(nothing to gain); 413 body too large
(uploads: ``max_upload_mb``; ``/api/jobs``: ``max_json_kb``); 415 wrong content type (uploads:
``application/octet-stream`` or ``image/*``, other POSTs ``application/json``) or not an
image; 429 queue full or ``max_stored_files`` uploads stored; 503 generator cannot be loaded
or server stopping; 507 ``max_stored_mb`` of uploads stored. See :mod:`pulse_sr.web.guard`.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.parse
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from pulse_sr.web.guard import LOOPBACK, RequestGuard
from pulse_sr.web.inputs import UPLOAD
from pulse_sr.web.job_request import parse_json
from pulse_sr.web.jobs import FINAL_STATES, JobManager, WebError, WebSettings

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}
EXAMPLE_PREFIX = "example_"
#: how often an event stream looks for news, and sends a keep-alive comment
POLL_SECONDS, KEEPALIVE_SECONDS = 0.1, 15.0


def static_files() -> dict[str, Path]:
    """Name -> path of every file shipped in ``static/`` (the only files served from it)."""
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in STATIC_TYPES}


def examples() -> dict[str, Path]:
    """Bundled example inputs: ``face16`` -> ``static/example_face16.png`` ..."""
    return {name[len(EXAMPLE_PREFIX):-4]: p for name, p in static_files().items()
            if name.startswith(EXAMPLE_PREFIX) and name.endswith(".png")}


def create_app(settings: WebSettings | None = None) -> FastAPI:
    """The web app. Worker threads start with the app's lifespan and stop (removing every
    temporary file) when it ends."""
    settings = settings or WebSettings()
    manager = JobManager(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        manager.start()
        try:
            yield
        finally:
            await run_in_threadpool(manager.stop)

    app = FastAPI(title="pulse-sr", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.manager = manager
    # Host names (DNS rebinding; loopback servers only), cross-site requests, form bodies
    app.add_middleware(RequestGuard, hosts=LOOPBACK if settings.host in LOOPBACK else None)
    _add_error_handlers(app)
    _add_page_routes(app, static_files())
    _add_config_routes(app, settings, manager)
    _add_input_routes(app, settings, manager)
    _add_job_routes(app, settings, manager)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal is ``{"error": "..."}`` with its status."""

    @app.exception_handler(WebError)
    async def web_error(request: Request, exc: WebError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        text = exc.detail if isinstance(exc.detail, str) else "request refused"
        return JSONResponse({"error": text}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "malformed request"}, status_code=400)


def _add_page_routes(app: FastAPI, files: dict[str, Path]) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(files["index.html"], media_type=STATIC_TYPES[".html"],
                            headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        path = files.get(name)
        if path is None:
            raise WebError(404, "no such file")
        return FileResponse(path, media_type=STATIC_TYPES[path.suffix],
                            headers={"Cache-Control": "no-cache"})


def _add_config_routes(app: FastAPI, settings: WebSettings, manager: JobManager) -> None:
    example_files = examples()

    @app.get("/api/config")
    async def config() -> dict[str, Any]:
        from pulse_sr.web.photos import align_status

        align_ok, align_why = align_status()
        return {
            "max_upload_mb": settings.max_upload_mb, "max_pixels": settings.max_pixels,
            "max_candidates": settings.max_candidates, "max_steps": settings.max_steps,
            "small_max_side": settings.small_max_side, "workers": settings.workers,
            "align_available": align_ok, "align_message": align_why,
            "defaults": {"n": min(4, settings.max_candidates), "steps": min(100, settings.max_steps),
                         "eps": 2e-3, "seed": 0},
        }

    @app.get("/api/generators")
    async def generators() -> list[dict[str, Any]]:
        from pulse_sr.web.generators import listed

        entries = await run_in_threadpool(manager.generators.refresh)  # zoo downloads since start-up
        return [e.to_json() for e in listed(entries, settings.generators)]

    @app.get("/api/examples")
    async def list_examples() -> list[dict[str, Any]]:
        return [{"name": k, "image": f"/static/{p.name}"} for k, p in sorted(example_files.items())]


def _add_input_routes(app: FastAPI, settings: WebSettings, manager: JobManager) -> None:
    store, example_files = manager.store, examples()

    @app.post("/api/inputs")
    async def upload(request: Request) -> dict[str, Any]:
        limit = int(settings.max_upload_mb * 1024 * 1024)
        too_big = f"the file is larger than this server's limit of {settings.max_upload_mb:g} MB"
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise WebError(413, too_big)
        name = _display_name(request.headers.get("x-filename", ""))
        input_id, folder = store.open_slot()
        size = 0
        try:
            with open(folder / UPLOAD, "wb") as f:
                async for chunk in request.stream():
                    if size + len(chunk) > limit:
                        raise WebError(413, too_big)
                    store.charge(len(chunk))
                    size += len(chunk)
                    f.write(chunk)
            if size == 0:
                raise WebError(400, "empty upload: choose an image file")
            rec = await run_in_threadpool(store.register, input_id, folder, name, size)
        except ClientDisconnect:
            store.discard(folder, size)
            raise WebError(400, "upload interrupted") from None
        except BaseException:
            store.discard(folder, size)
            raise
        return rec.to_json()

    @app.post("/api/examples/{name}")
    async def use_example(name: str) -> dict[str, Any]:
        path = example_files.get(name)
        if path is None:
            raise WebError(404, "no such example")
        data = path.read_bytes()
        input_id, folder = store.open_slot()
        charged = 0
        try:
            store.charge(len(data))
            charged = len(data)
            (folder / UPLOAD).write_bytes(data)
            rec = await run_in_threadpool(store.register, input_id, folder, f"{name}.png", len(data))
        except BaseException:
            store.discard(folder, charged)
            raise
        return rec.to_json()

    @app.get("/api/inputs/{input_id}/{name}")
    async def input_file(input_id: str, name: str) -> Response:
        return FileResponse(store.file(input_id, name), media_type="image/png")


def _add_job_routes(app: FastAPI, settings: WebSettings, manager: JobManager) -> None:
    @app.post("/api/jobs")
    async def create_job(request: Request) -> JSONResponse:
        raw = await _bounded_body(request, int(settings.max_json_kb * 1024))
        job = await run_in_threadpool(manager.create_job, parse_json(raw))
        return JSONResponse({"job_id": job.id, "position": manager.position(job),
                             "events": f"/api/jobs/{job.id}/events"}, status_code=201)

    @app.get("/api/jobs/{job_id}")
    async def job_status(job_id: str) -> dict[str, Any]:
        return manager.snapshot(manager.get_job(job_id))

    @app.post("/api/jobs/{job_id}/cancel")
    async def cancel(job_id: str) -> dict[str, Any]:
        job = manager.cancel(job_id)
        return {"job_id": job.id, "state": job.state, "cancel_requested": True}

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str, request: Request) -> StreamingResponse:
        job = manager.get_job(job_id)
        return StreamingResponse(
            _event_stream(manager, job, request), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/api/jobs/{job_id}/files/{name}")
    async def job_file(job_id: str, name: str) -> Response:
        path = manager.job_file(job_id, name)
        media = "application/json" if name.endswith(".json") else "image/png"
        return FileResponse(path, media_type=media)

    @app.get("/api/jobs/{job_id}/results.zip")
    async def results_zip(job_id: str) -> Response:
        data = await run_in_threadpool(manager.zip_bytes, job_id)
        return Response(data, media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="pulse-sr-{job_id[:8]}.zip"'})


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 beyond ``limit`` bytes (before reading it all)."""
    too_big = f"the request is larger than this server's limit of {limit // 1024} KB"
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise WebError(413, too_big)
    parts, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise WebError(413, too_big)
            parts.append(chunk)
    except ClientDisconnect:
        raise WebError(400, "request interrupted") from None
    return b"".join(parts)


async def _event_stream(manager: JobManager, job: Any, request: Request) -> AsyncIterator[str]:
    """Server-sent events for one client: ``update`` whenever the job changed (status, loss-curve
    points this client has not seen, previews when new), then ``end``."""
    sent_curve, sent_previews, last_key = 0, 0, None
    last_sent = time.monotonic()
    while True:
        snap = manager.snapshot(job)
        with job.lock:
            key = (job.version, snap["position"])
            curve = job.curve[sent_curve:]
            previews = job.previews if job.preview_version != sent_previews else None
            preview_version = job.preview_version
        if key != last_key:
            snap["curve"] = curve
            sent_curve += len(curve)
            if previews is not None:
                snap["previews"] = previews
                sent_previews = preview_version
            yield f"event: update\ndata: {json.dumps(snap, allow_nan=False)}\n\n"
            last_key, last_sent = key, time.monotonic()
        if snap["state"] in FINAL_STATES:
            yield f"event: end\ndata: {json.dumps({'state': snap['state']})}\n\n"
            return
        if await request.is_disconnected():
            return
        if time.monotonic() - last_sent > KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(POLL_SECONDS)


def _display_name(header: str) -> str:
    """The client's file name, for display only (never used as a path)."""
    name = urllib.parse.unquote(header or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[^\w .,()+-]", "_", name).strip()[:80]
    return name or "upload"

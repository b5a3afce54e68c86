"""``pulse-sr serve``: the local web app (upload, watch the search, download the results)."""
from __future__ import annotations

import argparse
import socket
from typing import Any

from pulse_sr.cli.common import EXIT_OK, UsageError, err, int_at_least, out, positive_float


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="start the local web app",
        description="Start the web app on HOST:PORT (default 127.0.0.1:8000) and print the "
        "address to open. Uploads and results live in a temporary folder removed after "
        "--job-ttl seconds and when the server stops. Needs the web extra: "
        "pip install 'pulse-sr[web]'.",
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this computer only)")
    p.add_argument("--port", type=int_at_least(0), default=8000,
                   help="port (default 8000; 0 picks a free one)")
    p.add_argument("--workers", type=int_at_least(1), default=1,
                   help="searches run at the same time (default 1: one per CPU worker)")
    p.add_argument("--max-upload-mb", type=positive_float, default=20.0,
                   help="largest upload in MB (default 20)")
    p.add_argument("--max-pixels", type=int_at_least(16), default=100_000_000,
                   help="largest upload in pixels (default 100,000,000; larger photos are "
                        "shrunk for detection, not refused)")
    p.add_argument("--max-candidates", type=int_at_least(1), default=8,
                   help="most candidates per search (default 8)")
    p.add_argument("--max-steps", type=int_at_least(1), default=1000,
                   help="most steps per search (default 1000)")
    p.add_argument("--max-queue", type=int_at_least(1), default=32,
                   help="most jobs waiting (default 32)")
    p.add_argument("--max-stored-mb", type=positive_float, default=500.0,
                   help="all stored uploads together, in MB (default 500); then 507 until old ones expire")
    p.add_argument("--max-stored-files", type=int_at_least(1), default=200,
                   help="most uploads stored at once (default 200); then 429 until old ones expire")
    p.add_argument("--job-ttl", type=positive_float, default=3600.0,
                   help="seconds an upload or result is kept after its last use (default 3600)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N or mps")
    p.add_argument("--work-dir", default=None, metavar="DIR",
                   help="make the temporary folder inside DIR (default: the system temp folder)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server until interrupted (Ctrl-C); returns 0. Missing web packages, a bad device or
    an address it cannot listen on are a UsageError (exit 2)."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"the web app needs FastAPI and uvicorn ({', '.join(missing)} missing): "
                         "pip install 'pulse-sr[web]'")
    import uvicorn

    from pulse_sr.cli.common import resolve_device
    from pulse_sr.web.app import create_app
    from pulse_sr.web.jobs import WebSettings

    device = resolve_device(args.device)
    try:
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
    except OSError as e:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    port = sock.getsockname()[1]
    settings = WebSettings(
        host=args.host, port=port, workers=args.workers, max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels, max_candidates=args.max_candidates, max_steps=args.max_steps,
        max_queue=args.max_queue, job_ttl=args.job_ttl, device=device, work_dir=args.work_dir,
        max_stored_mb=args.max_stored_mb, max_stored_files=args.max_stored_files,
    )
    try:
        app = create_app(settings)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot make the temporary folder: {e.strerror or e} ({e.filename})") from None
    shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(args.host, args.host)
    shown = f"[{shown}]" if ":" in shown else shown
    out(f"pulse-sr web app: open http://{shown}:{port}/")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        err(f"warning: listening on {args.host}: other computers on your network can use this server")
    _log_jobs()
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return EXIT_OK


def _log_jobs() -> None:
    """One stderr line per job event (queued, started, finished with its time)."""
    import logging
    import sys

    log = logging.getLogger("pulse_sr.web")
    if not any(getattr(h, "_pulse_sr", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("pulse-sr: %(message)s"))
        handler._pulse_sr = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

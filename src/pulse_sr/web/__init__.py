"""The local web app (``pulse-sr serve``): upload a tiny face or a photo, watch the search.

:func:`pulse_sr.web.app.create_app` builds the FastAPI app over
:class:`pulse_sr.web.jobs.JobManager` (queue, worker threads, per-job temporary
folders). The search is the library's :func:`pulse_sr.search.pulse.pulse_search`
and results are written exactly as ``pulse-sr run`` writes them. Needs the
``web`` extra (FastAPI, uvicorn); nothing heavy is imported here.
"""
from __future__ import annotations

__all__ = ["create_app", "WebSettings"]


def __getattr__(name: str):  # lazy: importing pulse_sr.web stays cheap
    if name == "create_app":
        from pulse_sr.web.app import create_app

        return create_app
    if name == "WebSettings":
        from pulse_sr.web.jobs import WebSettings

        return WebSettings
    raise AttributeError(f"module 'pulse_sr.web' has no attribute {name!r}")

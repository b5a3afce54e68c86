"""Plain records of the web app: server settings, inputs, jobs, and refusals."""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FINAL_STATES = ("done", "failed", "cancelled")


class WebError(Exception):
    """A refusal for the page: HTTP status and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class JobCancelled(Exception):
    """Raised from the search callback to stop a cancelled job."""


@dataclass(frozen=True)
class WebSettings:
    """Server options (``pulse-sr serve`` flags)."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_upload_mb: float = 20.0
    #: largest upload in pixels: phone photos (12-50 MP) pass; over 100 MP is absurd. Photos
    #: stay uint8 (300 MB at the limit) and are shrunk for detection and the restored view.
    max_pixels: int = 100_000_000
    max_candidates: int = 8
    max_steps: int = 1000
    max_queue: int = 32
    job_ttl: float = 3600.0
    device: str = "cpu"
    preview_every: int = 2
    preview_max_side: int = 160
    small_max_side: int = 64
    photo_max_side: int = 2048
    work_dir: str | None = None
    generators: tuple[str, ...] | None = None
    #: all stored uploads together (inputs kept until ``job_ttl``): at most this many MB and files
    max_stored_mb: float = 500.0
    max_stored_files: int = 200
    #: largest ``POST /api/jobs`` body in KB
    max_json_kb: float = 64.0


@dataclass
class InputRecord:
    """An uploaded (or example) image. ``kind``: ``small`` (used as is, or cropped /
    resized on request) or ``photo`` (faces detected when alignment is available)."""

    id: str
    dir: Path
    name: str
    width: int
    height: int
    kind: str
    touched: float
    faces: list[Any] = field(default_factory=list)
    align_available: bool = False
    message: str = ""
    #: bytes of the stored upload (counted against ``max_stored_mb``)
    size: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "input_id": self.id, "name": self.name, "width": self.width, "height": self.height,
            "kind": self.kind, "preview": f"/api/inputs/{self.id}/preview.png",
            "faces": [{"index": f.index, "box": list(f.box),
                       "image": f"/api/inputs/{self.id}/face_{f.index}.png",
                       "gain": dict(getattr(f, "gains", {}))} for f in self.faces],
            "align_available": self.align_available, "message": self.message,
        }


@dataclass
class JobRecord:
    """One search: its parameters, live state and result files."""

    id: str
    dir: Path
    input_id: str
    params: dict[str, Any]
    target: Any  # [3, h, w] in [0, 1]
    notes: list[str]
    input_info: dict[str, Any]
    face: Any = None
    #: what is matched (:class:`pulse_sr.input_plan.InputPlan`: operator, mask, threshold, analysis)
    plan: Any = None
    #: the search settings (:func:`pulse_sr.front_end.build_settings`, as the CLI builds them)
    settings: Any = None
    state: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    step: int = 0
    l2: list[float | None] = field(default_factory=list)
    best_l2: list[float | None] = field(default_factory=list)
    converged: list[bool] = field(default_factory=list)
    curve: list[list[Any]] = field(default_factory=list)  # [step, [l2 per candidate or None]]
    previews: list[str] = field(default_factory=list)  # data URLs, one per candidate
    preview_version: int = 0
    version: int = 0
    error: str = ""
    result: dict[str, Any] | None = None
    files: set[str] = field(default_factory=set)
    cancel: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: the search's last progress report (a cancel keeps its faces within eps)
    last_info: Any = None
    #: ``time.perf_counter()`` when the search started
    started_perf: float = 0.0


def finite_or_none(x: float) -> float | None:
    """``x``, or ``None`` for nan/inf (strict JSON)."""
    return x if math.isfinite(x) else None


def int_field(body: dict[str, Any], key: str, default: int, lo: int, hi: int, label: str) -> int:
    """``body[key]`` (or ``default``) checked to be an integer in ``[lo, hi]``; else a 400."""
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise WebError(400, f"{label} must be a whole number")
    if not lo <= value <= hi:
        raise WebError(400, f"{label} must be between {lo} and {hi} on this server (got {value})")
    return value


def user_text(message: str, path: Path) -> str:
    """Library messages name the server's file and CLI flags; the page names neither."""
    text = message.replace(f"{path}: ", "").replace(str(path), "the upload").removeprefix("input: ")
    text = text.replace("use --center-crop", "tick “centre-crop”").replace("use --resize", "tick “resize”")
    return " ".join(text.split())

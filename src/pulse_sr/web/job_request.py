"""``POST /api/jobs`` bodies: parsed from bounded bytes, every field type-checked.

Anything malformed is a :class:`~pulse_sr.web.records.WebError` with a 4xx status and
one line, never an exception the server would turn into a 500. Search settings the
user gave (``steps``, ``eps``) are kept apart in ``given`` for
:func:`pulse_sr.front_end.build_settings`, as the CLI passes its flags.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from pulse_sr.web.records import WebError, WebSettings, int_field

#: web defaults where the body says nothing (capped by the server's limits)
DEFAULT_N, DEFAULT_STEPS = 4, 100
#: longest generator name or input id looked up
MAX_NAME = 200


@dataclass(frozen=True)
class JobRequest:
    """A checked job request. ``given``: the search settings fields the body set."""

    input_id: str
    generator: str | None
    n: int
    seed: int
    resize: bool = False
    center_crop: bool = False
    face: int | None = None
    size: int | None = None
    given: dict[str, Any] = field(default_factory=dict)
    #: restore a face of a photo even when it has nothing to gain (:mod:`pulse_sr.io.face_gain`)
    force: bool = False


def parse_json(raw: bytes) -> Any:
    """JSON from a request body; 400 for anything that is not (including deep nesting)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise WebError(400, "expected a JSON body") from None


def parse_job_request(body: Any, s: WebSettings) -> JobRequest:
    """Check every field of a decoded body against its type and this server's limits."""
    if not isinstance(body, dict):
        raise WebError(400, "expected a JSON object")
    input_id = body.get("input_id", "")
    if not isinstance(input_id, str) or len(input_id) > MAX_NAME:
        raise WebError(400, "input_id must be the id of an upload")
    generator = body.get("generator")
    if generator is not None and (not isinstance(generator, str) or len(generator) > MAX_NAME):
        raise WebError(400, "generator must be the name of a generator")
    n = int_field(body, "n", min(DEFAULT_N, s.max_candidates), 1, s.max_candidates, "candidates")
    seed = int_field(body, "seed", 0, 0, 2**31 - 1, "seed")
    given: dict[str, Any] = {}
    if "steps" in body or s.max_steps < DEFAULT_STEPS:
        given["steps"] = int_field(body, "steps", min(DEFAULT_STEPS, s.max_steps), 1, s.max_steps, "steps")
    if "eps" in body:
        eps = body["eps"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) \
                or not 0 < eps <= 1:
            raise WebError(400, "eps must be a number in (0, 1]")
        given["eps"] = float(eps)
    return JobRequest(
        input_id=input_id, generator=generator or None, n=n, seed=seed,
        resize=_flag(body, "resize"), center_crop=_flag(body, "center_crop"),
        face=_optional_int(body, "face", "face must be the index of a face in the photo"),
        size=_optional_int(body, "size", "size must be a whole number of pixels"), given=given,
        force=_flag(body, "force"),
    )


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise WebError(400, f"{key} must be true or false")
    return value


def _optional_int(body: dict[str, Any], key: str, message: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise WebError(400, message)
    return value

"""Refusals before any route runs: foreign Host names, cross-site requests, form bodies.

A page of another site that the user happens to visit can make the browser send requests
to this local server. Three checks keep it from submitting work, in this order:

1. ``Host`` (servers on a loopback address only): this computer's names, so a DNS name
   rebound to 127.0.0.1 is refused (400).
2. State-changing methods (anything but GET, HEAD, OPTIONS): a request whose ``Origin``
   is not this server's own ``scheme://host:port``, or whose ``Sec-Fetch-Site`` is not
   ``same-origin`` or ``none``, is refused (403). A request with neither header (curl,
   scripts) passes: browsers send ``Origin`` with every POST.
3. The same methods need a content type that a cross-site page cannot send without a
   CORS preflight (which this server never answers): ``application/octet-stream`` or
   ``image/*`` for uploads (``/api/inputs``), ``application/json`` everywhere else (415).
   Only an empty body from a client that is not a browser may omit it.

Every refusal is the API's JSON error, ``{"error": "..."}``.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
UPLOAD_PATHS = frozenset({"/api/inputs"})
DEFAULT_PORTS = {"http": "80", "https": "443"}
UPLOAD_TYPES = "application/octet-stream or image/*"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def host_name(host: str) -> str:
    """The name part of a ``Host`` header value (``[::1]:8000`` -> ``[::1]``), lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def _origin_key(value: str, scheme: str) -> str:
    """``scheme://host:port`` with the scheme's default port written out, lower case."""
    value = value.strip().lower().rstrip("/")
    if "://" in value:
        scheme, value = value.split("://", 1)
    name = host_name(value)
    port = value[len(name):].lstrip(":") or DEFAULT_PORTS.get(scheme, "")
    return f"{scheme}://{name}:{port}"


def check_request(method: str, path: str, scheme: str, headers: Mapping[str, str],
                  hosts: tuple[str, ...] | None) -> tuple[int, str] | None:
    """``(status, message)`` of the refusal for a request, or None to let it through.
    ``headers``: lower-case names; ``hosts``: allowed Host names (None: any)."""
    host = headers.get("host", "")
    if hosts is not None and host_name(host) not in hosts:
        return 400, "this server answers only to its own address (Host header refused)"
    if method.upper() in SAFE_METHODS:
        return None
    origin, site = headers.get("origin"), headers.get("sec-fetch-site")
    if origin is not None and _origin_key(origin, scheme) != _origin_key(host, scheme):
        return 403, "cross-site request refused: only this server's own page may send it"
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return 403, f"cross-site request refused (Sec-Fetch-Site: {site[:40]})"
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    has_body = headers.get("content-length", "0").strip() not in ("", "0") or "transfer-encoding" in headers
    if not media and not has_body and origin is None and site is None:
        return None  # a script's empty POST (e.g. cancel with curl)
    if path in UPLOAD_PATHS:
        if media != "application/octet-stream" and not media.startswith("image/"):
            return 415, (f"send the image bytes as the request body (Content-Type {UPLOAD_TYPES}), "
                         "not as a form")
    elif media != "application/json":
        return 415, "expected a JSON request (Content-Type application/json)"
    return None


class RequestGuard:
    """ASGI middleware applying :func:`check_request` to every HTTP request."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *,
                 hosts: tuple[str, ...] | None) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers
        from starlette.responses import JSONResponse

        headers = Headers(scope=scope)
        refusal = check_request(scope["method"], scope["path"], scope.get("scheme", "http"),
                                headers, self.hosts)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message = refusal
        await JSONResponse({"error": message}, status_code=status)(scope, receive, send)

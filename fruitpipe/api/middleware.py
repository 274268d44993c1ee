"""Three pure-ASGI middlewares: request metrics, the request guard, and security headers.

:class:`RequestGuard` refuses before reading. It finds the route a request is for (the app's own
route table, so ``/models/{version}/activate`` matches like the router will) and, before FastAPI
parses or spools one byte of the body:

* a write route (one that declares ``Depends(require_admin)``) without a valid bearer token
  gets 401/403;
* a file route called with another content type than ``multipart/form-data`` gets 415;
* a declared ``Content-Length`` over the route's limit (:meth:`Settings.body_limit`) gets 413;
* a body without a length (chunked) is counted while it streams and cut off with 413 at the limit.

Answers are sent at once, without reading the rest of the body: uvicorn (h11) discards what the
client still sends, and :mod:`fruitpipe.api.server` closes the connection after its timeout. On
Lambda the body has arrived whole already; the same limits and answers apply.
"""

from __future__ import annotations

import json
import time
from typing import Any, Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.routing import Match

from .deps import check_admin, require_admin
from .errors import ApiError, BodyTooLarge, error_body
from .metrics import Metrics
from .settings import Settings

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The dashboard and every API answer: nothing but our own files, no inline script or style, no
# plugins, no framing. (/docs sets its own policy: Swagger UI comes from a CDN.)
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                           "form-action 'self'")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"), (b"cross-origin-opener-policy", b"same-origin")]


async def send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def flat_routes(routes: Any) -> list[Any]:
    """Every endpoint route under ``routes``. FastAPI >= 0.16x keeps an included router as one
    entry that wraps the router (``original_router``); those are opened up here."""
    out: list[Any] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        out += flat_routes(inner.routes) if inner is not None else [route]
    return out


def find_route(scope: Scope) -> Any | None:
    """The route of the app in ``scope`` that will handle this request (full match), or None."""
    router = getattr(scope.get("app"), "router", None)
    for route in flat_routes(getattr(router, "routes", ())):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route
    return None


def is_write_route(route: Any) -> bool:
    """A route is a write route when it declares ``Depends(require_admin)``."""
    return any(getattr(dep, "dependency", None) is require_admin for dep in getattr(route, "dependencies", ()))


MAX_REQUEST_HEAD_BYTES = 16 * 1024  # request line + headers (h11's own default; nginx uses 8-32 KiB)


def request_head_bytes(scope: Scope) -> int:
    """About the size of the request's head as sent: method, target and every header line."""
    target = len(scope.get("raw_path") or scope.get("path", "").encode()) + len(scope.get("query_string", b""))
    return len(scope.get("method", "")) + target + 12 + sum(len(k) + len(v) + 4 for k, v in scope.get("headers", []))


class RequestGuard:
    """Authorisation, content type and body size, checked before the body is read (module doc).
    A request head over :data:`MAX_REQUEST_HEAD_BYTES` gets 431 first: h11's incomplete-event cap
    (fruitpipe.api.server) only bounds a head that arrives in pieces, not one sent in one write."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if request_head_bytes(scope) > MAX_REQUEST_HEAD_BYTES:
            await send_json(send, 431, error_body(
                "request_head_too_large", f"the request line and headers exceed {MAX_REQUEST_HEAD_BYTES} bytes"))
            return
        route = find_route(scope)
        template = getattr(route, "path", "") if route is not None else ""
        if route is not None:
            scope["route"] = route  # the metrics label, also for answers given here
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        try:
            if route is not None and is_write_route(route):
                await run_in_threadpool(check_admin, headers.get(b"authorization", b"").decode("latin-1"),
                                        self.settings)
            self._check_content_type(scope, template, headers)
            limit = self.settings.body_limit(template)
            self._check_declared_length(template, headers, limit)
        except BodyTooLarge as exc:
            await send_json(send, 413, error_body("too_large", str(exc.detail), **exc.extra))
            return
        except ApiError as exc:
            await send_json(send, exc.status, error_body(exc.code, exc.detail, **exc.extra), exc.headers)
            return
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise self._too_large(template, None, limit)
            return message

        await self.app(scope, limited_receive, send)

    def _check_content_type(self, scope: Scope, template: str, headers: dict[bytes, bytes]) -> None:
        if scope.get("method") != "POST" or self.settings.files_per_request(template) is None:
            return
        ctype = headers.get(b"content-type", b"").decode("latin-1").lower()
        if not ctype.startswith("multipart/form-data"):
            raise ApiError(415, "unsupported_media_type",
                           f"{template} expects multipart/form-data, got {ctype or 'no content type'}")

    def _check_declared_length(self, template: str, headers: dict[bytes, bytes], limit: int) -> None:
        declared = headers.get(b"content-length")
        if declared is None:
            return
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "bad_request", "invalid Content-Length") from None
        if size > limit:
            raise self._too_large(template, size, limit)

    def _too_large(self, template: str, size: int | None, limit: int) -> BodyTooLarge:
        """The 413 for a body over ``limit``; where the deployment's transport cap is what binds,
        it names the route for bigger files (``Settings.large_upload_route``)."""
        what = f"the request body is {size} bytes" if size is not None else "the request body is too large"
        detail = f"{what}; the limit for {template or 'this route'} is {limit} bytes"
        cap, route = self.settings.max_request_bytes, self.settings.large_upload_route
        if cap is None or limit < cap or not route:
            return BodyTooLarge(limit, detail)
        detail += (f": no request body over {cap} bytes reaches this deployment. "
                   f"Upload bigger files through POST {route} (a presigned upload straight to storage).")
        return BodyTooLarge(limit, detail, upload_url=route)


class SecurityHeaders:
    """``X-Content-Type-Options``, ``Referrer-Policy``, ``X-Frame-Options`` on every answer, and
    :data:`CONTENT_SECURITY_POLICY` on every answer that does not bring its own policy."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_wrapper)


class MetricsMiddleware:
    """Counts and times every request by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        done: float | None = None  # when the last body byte went out: background tasks come after

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status, done
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                done = time.perf_counter()

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = (done or time.perf_counter()) - start
            route = scope.get("route")
            path = getattr(route, "path", None) or ("/static" if scope.get("path", "").startswith("/static/")
                                                    else "unmatched")
            labels = {"method": scope.get("method", "GET"), "route": path, "status": str(status)}
            self.metrics.requests.labels(**labels).inc()
            self.metrics.latency.labels(**labels).observe(elapsed)
            if path == "/predict" and status == 200:
                self.metrics.record_predict_latency(elapsed)
            if path == "/predict" and self.metrics.observer is not None:
                self.metrics.observer.observe(status, elapsed * 1000)

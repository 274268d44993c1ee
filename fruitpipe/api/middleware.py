"""Two pure-ASGI middlewares: request metrics, and the body-size / content-type fence.

The fence runs before FastAPI reads a body: a declared ``Content-Length`` over the route's limit
is answered 413 without buffering it, a streamed body is cut off at the limit, and a multipart
route called with another content type gets 415 instead of a confusing validation error.
"""

from __future__ import annotations

import json
import time
from typing import Any, Awaitable, Callable

from .errors import BodyTooLarge, error_body
from .metrics import Metrics
from .settings import Settings

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MULTIPART_ROUTES = {"/predict", "/predict/batch", "/upload-training-data"}
DRAIN_LIMIT = 256 * 1024 * 1024  # past this an oversize body is not drained, the connection just closes


async def send_json(send: Send, status: int, body: dict[str, Any], close: bool = False) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class BodyFence:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def limit_for(self, path: str) -> int:
        if path == "/predict":
            return self.settings.max_single_request_bytes
        if path in MULTIPART_ROUTES:
            return self.settings.max_multi_request_bytes
        return 64 * 1024

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if method == "POST" and path in MULTIPART_ROUTES:
            ctype = headers.get(b"content-type", b"").decode("latin-1").lower()
            if not ctype.startswith("multipart/form-data"):
                await self._drain(receive, DRAIN_LIMIT)
                await send_json(send, 415, error_body(
                    "unsupported_media_type", f"{path} expects multipart/form-data, got {ctype or 'no content type'}"))
                return
        limit = self.limit_for(path)
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await send_json(send, 400, error_body("bad_request", "invalid Content-Length"), close=True)
                return
            if size > limit:
                drained = await self._drain(receive, DRAIN_LIMIT) if size <= DRAIN_LIMIT else False
                await send_json(send, 413, error_body(
                    "too_large", f"the request body is {size} bytes; the limit for {path} is {limit} bytes"),
                    close=not drained)
                return
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)

    @staticmethod
    async def _drain(receive: Receive, cap: int) -> bool:
        """Read and discard the body so the client sees our answer instead of a reset."""
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            seen += len(message.get("body", b""))
            if seen > cap:
                return False
            if not message.get("more_body", False):
                return True


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

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            path = getattr(route, "path", None) or ("/static" if scope.get("path", "").startswith("/static/")
                                                    else "unmatched")
            labels = {"method": scope.get("method", "GET"), "route": path, "status": str(status)}
            self.metrics.requests.labels(**labels).inc()
            self.metrics.latency.labels(**labels).observe(elapsed)
            if path == "/predict" and status == 200:
                self.metrics.record_predict_latency(elapsed)

"""Every error leaves as JSON ``{"error": code, "detail": text}`` with a 4xx/503 status.

Client input never produces a 500: invalid images map to their :mod:`fruitpipe.imaging` code,
malformed multipart bodies to 400, validation errors to 422, oversize bodies to 413. An
unexpected server-side bug still answers JSON (500, ``internal_error``) without a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import imaging
from ..backends.base import NothingToLearn, NotFound, NotRunning, RetrainRunning, VersionRejected
from ..bundle import BundleError
from ..dataset import UnknownClass

log = logging.getLogger("fruitpipe.api")

IMAGE_STATUS: dict[str, int] = {
    "empty": 400,
    "truncated": 400,
    "not_an_image": 415,
    "unsupported_format": 415,
    "too_large": 413,
    "too_many_pixels": 413,
    "too_small": 422,
}

HTTP_CODES: dict[int, str] = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
    422: "invalid_request", 503: "unavailable",
}


class ApiError(Exception):
    """Raised by handlers: a status, a stable code and a human sentence."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers
        self.extra = extra


class BodyTooLarge(StarletteHTTPException):
    """Raised while streaming a body past the limit (an HTTPException so FastAPI re-raises it)."""

    def __init__(self, limit: int, detail: str | None = None, **extra: Any) -> None:
        super().__init__(413, detail or f"the request body is larger than {limit} bytes")
        self.limit = limit
        self.extra = {"limit_bytes": limit, **extra}


def error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail, **extra}


def respond(status: int, code: str, detail: str, headers: dict[str, str] | None = None,
            **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(code, detail, **extra), status_code=status, headers=headers)


def image_error(exc: imaging.InvalidImage) -> ApiError:
    return ApiError(IMAGE_STATUS.get(exc.code, 400), exc.code, exc.detail)


# A JSON body that is missing, unparsable or not an object, in words (pydantic's own messages name
# its internals: "0: JSON decode error", "a valid dictionary or object to extract fields from").
BODY_ERRORS: dict[str, str] = {
    "missing": "the request needs a JSON body (Content-Type: application/json)",
    "json_invalid": "the body is not valid JSON",
    "model_attributes_type": "the body must be a JSON object, sent as Content-Type: application/json",
}


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = tuple(err.get("loc", ()))
        whole_body = loc[:1] == ("body",) and (len(loc) == 1 or err.get("type") == "json_invalid")
        if whole_body and err.get("type") in BODY_ERRORS:
            parts.append(BODY_ERRORS[err["type"]])
            continue
        where = ".".join(str(x) for x in loc if x not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is not valid"


# Domain exceptions raised below the API, and the answer each one gets.
DOMAIN_ERRORS: dict[type[Exception], tuple[int, str]] = {
    UnknownClass: (422, "unknown_class"),
    NotFound: (404, "not_found"),
    RetrainRunning: (409, "retrain_running"),
    NothingToLearn: (409, "nothing_new"),
    NotRunning: (409, "not_running"),
    VersionRejected: (409, "version_rejected"),
    BundleError: (503, "model_invalid"),
}


def _domain_handler(status: int, code: str):  # type: ignore[no-untyped-def]
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return respond(status, code, str(exc))
    return handle


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return respond(exc.status, exc.code, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(imaging.InvalidImage)
    async def _invalid_image(_: Request, exc: imaging.InvalidImage) -> JSONResponse:
        return respond(IMAGE_STATUS.get(exc.code, 400), exc.code, exc.detail)

    for exc_type, (status, code) in DOMAIN_ERRORS.items():
        app.add_exception_handler(exc_type, _domain_handler(status, code))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(422, "invalid_request", _validation_detail(exc))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return respond(413, "too_large", str(exc.detail), **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        code = HTTP_CODES.get(status, "error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if status == 400 and "parsing the body" in detail:
            code, detail = "malformed_body", "the request body is not valid multipart/form-data"
        return respond(status, code, detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - bugs only
        log.exception("unhandled error")
        return respond(500, "internal_error", "an unexpected server error happened; it was logged")

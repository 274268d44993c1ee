"""Helpers the routers share: reading an upload within the size limit, error response docs."""

from __future__ import annotations

from typing import Any

from fastapi import UploadFile

from ..errors import ApiError
from ..schemas import ErrorResponse


def read_upload(upload: UploadFile, limit: int) -> bytes:
    """The file's bytes, or 413 ``too_large`` without reading more than ``limit + 1`` bytes."""
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "too_large", f"{upload.filename or 'the file'} is larger than {limit} bytes")
    return data


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries: every listed status answers :class:`ErrorResponse`."""
    return {code: {"model": ErrorResponse} for code in codes}

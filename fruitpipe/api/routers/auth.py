"""``GET /auth/check`` (admin): whether a bearer token is the admin token, for the dashboard's sign-in."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from ..deps import require_admin
from .common import errors

router = APIRouter(tags=["auth"])


@router.get("/auth/check", status_code=204, response_class=Response, responses=errors(401, 403),
            dependencies=[Depends(require_admin)])
def auth_check() -> Response:
    """204 when the ``Authorization: Bearer`` token is the admin token; 401 (none) / 403 (wrong) otherwise."""
    return Response(status_code=204)

"""``GET /auth/check``: is this admin token valid? (the dashboard's sign-in asks before it says yes)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from ..deps import require_admin
from .common import errors

router = APIRouter(tags=["auth"])


@router.get("/auth/check", status_code=204, response_class=Response, responses=errors(401, 403, 503),
            dependencies=[Depends(require_admin)])
def auth_check() -> Response:
    """204 with a valid admin token; 401 without one, 403 with a wrong one. Changes nothing."""
    return Response(status_code=204)

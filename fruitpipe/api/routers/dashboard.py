"""``GET /``: the dashboard (plain HTML/CSS/JS shipped in the package; no CDN)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from ..deps import state

router = APIRouter(tags=["dashboard"])


@router.get("/", include_in_schema=False)
def index(request: Request) -> FileResponse:
    return FileResponse(state(request).static_dir / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache"})

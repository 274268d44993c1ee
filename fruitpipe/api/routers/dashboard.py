"""``GET /``: the dashboard (plain HTML/CSS/JS shipped in the package; no CDN), and ``GET /docs``.

The dashboard gets the app's strict ``Content-Security-Policy`` (no inline script, nothing from
elsewhere; :mod:`fruitpipe.api.middleware`). ``/docs`` is FastAPI's Swagger UI, which loads from a
CDN and starts with one inline script: its policy allows that CDN and exactly that script (by hash).
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from ..deps import state

router = APIRouter(tags=["dashboard"])

SWAGGER_CDN = "https://cdn.jsdelivr.net"  # where FastAPI's get_swagger_ui_html loads Swagger UI from
SWAGGER_FAVICON = "https://fastapi.tiangolo.com"
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)


def docs_policy(html: bytes) -> str:
    """The CSP for a Swagger UI page: the CDN, and each inline script of ``html`` by its sha256."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'"
                      for s in _INLINE_SCRIPT.findall(html))
    return (f"default-src 'none'; script-src {SWAGGER_CDN} {hashes}; style-src {SWAGGER_CDN}; "
            f"img-src 'self' data: {SWAGGER_FAVICON}; connect-src 'self'; base-uri 'none'; "
            "frame-ancestors 'none'; form-action 'none'")


@router.get("/", include_in_schema=False)
def index(request: Request) -> FileResponse:
    return FileResponse(state(request).static_dir / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache"})


@router.get("/docs", include_in_schema=False)
def docs(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(openapi_url=request.app.openapi_url, title=f"{request.app.title} - API docs")
    page.headers["Content-Security-Policy"] = docs_policy(page.body)
    return page

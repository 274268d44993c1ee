"""``GET /``: the dashboard (plain HTML/CSS/JS shipped in the package; no CDN), and ``GET /docs``.

The dashboard gets the app's strict ``Content-Security-Policy`` (no inline script, nothing from
elsewhere; :mod:`fruitpipe.api.middleware`). ``/docs`` is FastAPI's Swagger UI served from this
app, never a CDN, so it works offline: its assets come from the ``fastapi-offline`` wheel (which
ships the Swagger UI distribution, Apache-2.0, under its MIT licence) and are mounted at
``/docs-assets`` (:func:`mount_docs_assets`), as FastAPI's "self-hosting JavaScript and CSS for docs"
recipe describes. The page starts with one inline script: its policy allows exactly that script (by
hash) and nothing from elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from ..deps import state

router = APIRouter(tags=["dashboard"])

DOCS_ASSETS = "/docs-assets"
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)


def docs_assets_dir() -> Path:
    """The Swagger UI files (``swagger-ui-bundle.js``, ``swagger-ui.css``, ``favicon.png``) shipped
    by the ``fastapi-offline`` wheel."""
    import fastapi_offline
    return Path(fastapi_offline.__file__).resolve().parent / "static"


def mount_docs_assets(app: FastAPI) -> None:
    """Serve the Swagger UI assets at ``/docs-assets`` (no CDN: ``/docs`` works offline)."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=docs_assets_dir()), name="docs-assets")


def docs_policy(html: bytes) -> str:
    """The CSP for the Swagger UI page: this origin only, plus each inline script of ``html`` by its sha256."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'"
                      for s in _INLINE_SCRIPT.findall(html))
    return (f"default-src 'none'; script-src 'self' {hashes}; style-src 'self'; "
            "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
            "frame-ancestors 'none'; form-action 'none'")


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)  # HEAD: curl -I, link checkers
def index(request: Request) -> FileResponse:
    """The dashboard page (FileResponse sends only the headers to a HEAD)."""
    return FileResponse(state(request).static_dir / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache"})


@router.get("/docs", include_in_schema=False)
def docs(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(openapi_url=request.app.openapi_url, title=f"{request.app.title} - API docs",
                               swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                               swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                               swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png")
    page.headers["Content-Security-Policy"] = docs_policy(page.body)
    return page

"""``create_app(backend, settings)``: the FastAPI app, independent of where it runs."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..backends.base import Backend
from ..capture import Capturer
from ..rollback import RollbackGuard
from ..shadow import Shadow
from . import errors, multipart
from .deps import AppState, ModelHolder
from .metrics import Metrics
from .middleware import MetricsMiddleware, RequestGuard, SecurityHeaders
from .routers import auth, dashboard, data, feedback, health, models, predict, retrain
from .settings import Settings

STATIC_DIR = Path(__file__).resolve().parent / "static"
log = logging.getLogger("fruitpipe.api")


def create_app(backend: Backend, settings: Settings | None = None, *, load_model: bool = True) -> FastAPI:
    """Build the app. With ``load_model`` the live model is loaded now (first request is fast);
    a registry without a live version still starts, and predictions answer 503 until one exists."""
    settings = settings or Settings()
    metrics = Metrics(settings.latency_window)
    app = FastAPI(title=settings.title, version=__version__, docs_url=None, redoc_url=None,  # /docs: dashboard.py
                  description="Fresh-or-rotten fruit classifier. Writes need `Authorization: Bearer <token>`.")
    holder = ModelHolder(backend, settings, metrics)
    capture = Capturer(backend.capture, settings.capture)
    rollback = RollbackGuard(backend.registry, settings.rollback_bars,
                             accuracy=lambda v: capture.accuracy(v, settings.rollback_bars.window_seconds / 86400),
                             on_rollback=lambda: holder.refresh(True), load=holder.load_version)
    holder.on_swap, metrics.observer = rollback.on_swap, rollback
    app.state.fruitpipe = AppState(backend=backend, settings=settings, holder=holder, metrics=metrics,
                                   static_dir=STATIC_DIR, capture=capture, rollback=rollback,
                                   shadow=Shadow(backend.shadow, backend.registry, holder.load_version,
                                                 settings.shadow_bounds, in_thread=settings.capture.write_in_thread,
                                                 refresh_seconds=settings.model_refresh_seconds,
                                                 on_promote=lambda: holder.refresh(True)))
    errors.install(app)
    multipart.install()  # file parts named only with RFC 5987 filename*= are files too
    for router in (dashboard.router, predict.router, data.router, retrain.router, models.router,
                   health.router, feedback.router, auth.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    dashboard.mount_docs_assets(app)
    # the last added runs first: metrics and security headers also cover the guard's own answers
    app.add_middleware(RequestGuard, settings=settings)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if app.state.fruitpipe.capture.enabled:
        app.state.fruitpipe.capture.prune()  # nothing older than the retention limit survives a restart
    if load_model:
        holder.refresh(force=True)
        if holder.current is None:
            log.warning("no live model: %s", holder.last_error or "the registry has no live version")
    return app

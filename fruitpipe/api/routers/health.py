"""``GET /health``, ``GET /stats`` (dashboard numbers) and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..deps import state
from ..errors import ApiError
from ..schemas import HealthResponse, StatsResponse

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse)
def health(request: Request) -> HealthResponse:
    """Liveness and the live version; ``degraded`` when no model can be served."""
    st = state(request)
    try:
        version: str | None = st.holder.get().version
    except ApiError:
        version = None
    stats = st.metrics.stats()
    return HealthResponse(status="ok" if version else "degraded", uptime_seconds=stats["uptime_seconds"],
                          predictions=stats["predictions"], model_version=version,
                          model_loaded=version is not None, backend=st.backend.name)


@router.head("/health", include_in_schema=False)
def health_head(request: Request) -> HealthResponse:
    """``HEAD /health`` (``curl -I``, uptime checks): GET's status and headers; the server sends no body."""
    return health(request)


@router.get("/stats", response_model=StatsResponse)
def stats(request: Request) -> StatsResponse:
    """Live numbers for the dashboard: predictions by class and verdict, recent latency."""
    return StatsResponse(**state(request).metrics.stats())


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request) -> Response:
    """Prometheus text format (request counts and latency by route and status, predictions, the
    latest retrain's state, ...). The retrain gauges are read from the local status file at scrape
    time; on AWS, CloudWatch has the pipeline's own metrics."""
    st = state(request)
    if st.backend.name == "local":
        status = st.backend.trainer.status()
        st.metrics.set_retrain(status.state, status.finished)
    if st.capture.enabled:
        live = st.holder.current.version if st.holder.current is not None else None
        st.metrics.set_review_accuracy(st.capture.accuracy(live, st.settings.accuracy_window_days))
    return Response(st.metrics.render(), media_type=CONTENT_TYPE_LATEST)

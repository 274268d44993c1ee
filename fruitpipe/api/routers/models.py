"""``GET /model-info``, ``GET /models`` and ``POST /models/{version}/activate`` (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from ..deps import require_admin, state
from ..schemas import ActivateResponse, ModelInfoResponse, ModelsResponse, ModelVersionResponse
from .common import errors

router = APIRouter(tags=["models"])


@router.get("/model-info", response_model=ModelInfoResponse, responses=errors(503))
def model_info(request: Request) -> ModelInfoResponse:
    """The live model's manifest: version, labels, metrics, rejection thresholds, created."""
    m = state(request).holder.get().manifest
    raw = m.to_dict()
    rejection = {k: v for k, v in m.rejection.items() if k != "other_classes"}
    return ModelInfoResponse(version=m.version, created=m.created, labels=list(m.labels), metrics=m.metrics,
                             rejection=rejection, preprocessing=m.preprocessing,
                             training_data=m.training_data, backbone=raw.get("backbone", {}))


@router.get("/models", response_model=ModelsResponse)
def models(request: Request) -> ModelsResponse:
    """Every version (newest first) with its metrics; which one is live; why rejected ones were."""
    reg = state(request).backend.registry
    return ModelsResponse(live=reg.live_version(),
                          versions=[ModelVersionResponse(**v.as_dict()) for v in reg.versions()])


@router.post("/models/{version}/activate", response_model=ActivateResponse,
             responses=errors(401, 403, 404, 409, 503), dependencies=[Depends(require_admin)])
async def activate(version: str, request: Request) -> ActivateResponse:
    """Make ``version`` live (rollback or roll forward); served from the next request on."""
    st = state(request)
    previous = st.backend.registry.live_version()
    await run_in_threadpool(st.backend.registry.activate, version)
    await run_in_threadpool(st.holder.refresh, True)
    return ActivateResponse(live=version, previous=previous)

"""``GET /model-info``, ``GET /models``; admin: ``POST /models/{version}/activate``,
``POST /models/{version}/shadow`` and ``POST /models/{version}/shadow/stop``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from ..deps import require_admin, state
from ... import version_metrics
from ...backends.base import VersionRejected, pointer_summary
from ...shadow import ShadowRunning
from ..errors import ApiError
from ..schemas import ActivateResponse, ModelInfoResponse, ModelsResponse, ModelVersionResponse, ShadowRequest
from .common import errors

router = APIRouter(tags=["models"])


@router.get("/model-info", response_model=ModelInfoResponse, responses=errors(503))
def model_info(request: Request) -> ModelInfoResponse:
    """The live model's manifest: version, labels, metrics (the frozen-set score first, the manifest's
    own figures under ``metrics.training``), rejection thresholds, created."""
    st = state(request)
    m = st.holder.get().manifest
    raw = m.to_dict()
    rejection = {k: v for k, v in m.rejection.items() if k != "other_classes"}
    metrics = version_metrics.shown(m.metrics, st.backend.registry.frozen_metrics(m.version))
    return ModelInfoResponse(version=m.version, created=m.created, labels=list(m.labels), metrics=metrics,
                             rejection=rejection, preprocessing=m.preprocessing,
                             training_data=m.training_data, backbone=raw.get("backbone", {}),
                             head=raw.get("head", {}))


@router.get("/models", response_model=ModelsResponse)
def models(request: Request) -> ModelsResponse:
    """Every version (newest first) with its metrics; which one is live and why (the live pointer:
    since when, from which version, e.g. an automatic rollback's reason); why rejected ones were."""
    st = state(request)
    reg = st.backend.registry
    return ModelsResponse(live=reg.live_version(), shadow=st.shadow.state(), rollbacks=st.rollback.events,
                          live_pointer=pointer_summary(reg.live_record()),
                          versions=[ModelVersionResponse(**{**v.as_dict(), "metrics": version_metrics.shown(v.metrics)})
                                    for v in reg.versions()])


@router.post("/models/{version}/shadow", responses=errors(401, 403, 404, 409, 422, 503),
             dependencies=[Depends(require_admin)])
async def shadow(version: str, request: Request, body: ShadowRequest | None = None) -> dict:
    """Run ``version`` in shadow beside the live model (never answering with it); promoted when
    agreement, not-fruit rate and latency stay within the bounds, otherwise held with the reason."""
    st = state(request)
    body = body or ShadowRequest()
    try:
        return await run_in_threadpool(st.shadow.start, version, body.requests, body.seconds, body.sample_rate)
    except ShadowRunning as exc:
        raise ApiError(409, "shadow_running", str(exc)) from None
    except VersionRejected as exc:  # a ValueError too: answered as activate answers it
        raise ApiError(409, "version_rejected", str(exc)) from None
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None


@router.post("/models/{version}/shadow/stop", responses=errors(401, 403, 404, 409, 503),
             dependencies=[Depends(require_admin)])
async def stop_shadow(version: str, request: Request) -> dict:
    """Stop the running shadow of ``version`` before its decision: ``stopped`` with ``reason_code``
    ``stopped_by_operator`` and the counts so far under ``result``; never promoted, the live model
    unchanged. 409 ``not_running`` when no shadow of ``version`` is running, 404 for an unknown version."""
    return await run_in_threadpool(state(request).shadow.stop, version)


@router.post("/models/{version}/activate", response_model=ActivateResponse,
             responses=errors(401, 403, 404, 409, 503), dependencies=[Depends(require_admin)])
async def activate(version: str, request: Request) -> ActivateResponse:
    """Make ``version`` live (rollback or roll forward); served from the next request on."""
    st = state(request)
    previous = st.backend.registry.live_version()
    await run_in_threadpool(st.backend.registry.activate, version)
    await run_in_threadpool(st.holder.refresh, True)
    return ActivateResponse(live=version, previous=previous)

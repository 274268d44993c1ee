"""``POST /retrain`` (admin) and ``GET /retraining-status``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from ..deps import require_admin, state
from ..schemas import RetrainStatusResponse
from .common import errors

router = APIRouter(tags=["retrain"])


@router.post("/retrain", response_model=RetrainStatusResponse, status_code=202,
             responses=errors(401, 403, 409), dependencies=[Depends(require_admin)])
async def retrain(request: Request, force: bool = Query(
        False, description="retrain even when no image was added since the live model was trained")
                  ) -> RetrainStatusResponse:
    """Start a retrain in a separate process; 409 ``retrain_running`` if one is already running,
    409 ``nothing_new`` when no image was added since the live model was trained (unless ``force``)."""
    st = state(request)
    status = await run_in_threadpool(st.backend.trainer.start, "manual", force)
    st.metrics.retrain_runs.labels(trigger="manual").inc()
    return RetrainStatusResponse(**status.as_dict())


@router.post("/retrain/cancel", response_model=RetrainStatusResponse, responses=errors(401, 403, 409),
             dependencies=[Depends(require_admin)])
async def cancel_retrain(request: Request) -> RetrainStatusResponse:
    """Stop the running retrain (its training job included) before its gate; the live model and
    the data are unchanged. 409 ``not_running`` when none is running or it has reached its gate."""
    st = state(request)
    status = await run_in_threadpool(st.backend.trainer.cancel)
    return RetrainStatusResponse(**status.as_dict())


@router.get("/retraining-status", response_model=RetrainStatusResponse)
def retraining_status(request: Request) -> RetrainStatusResponse:
    """The current or last run: stage, percent over the whole run (never goes backwards), ETA,
    log tail, result (gate decision)."""
    st = state(request)
    status = st.backend.trainer.status()
    if status.state in ("succeeded",):
        st.holder.refresh()  # pick up a published version without waiting for the next check
    return RetrainStatusResponse(**status.as_dict())

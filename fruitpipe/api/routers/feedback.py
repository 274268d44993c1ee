"""Learning from production: ``POST /feedback`` (public, rate-limited) and the review queue
(admin): ``GET /review``, ``GET /review/{id}/image``, ``POST /review/{id}``, plus
``GET /review/accuracy`` (public aggregate numbers, as ``/stats``).

Feedback is public because the people who see a wrong answer are the app's users, not its
operators; it is safe to take from anyone because (1) a prediction id is unguessable (64 random
bits), so only whoever got an answer can comment on it, (2) feedback never changes the dataset or
the model: it only moves an item up the review queue, where an admin decides, and (3) it is
rate-limited per client (:mod:`fruitpipe.api.ratelimit`; on AWS also the route's throttle).
"""

from __future__ import annotations

import math
from typing import Any, Callable, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ...capture import CaptureDisabled, CaptureFailed, Record, UnknownPrediction
from ..deps import require_admin, state
from ..errors import ApiError
from ..ratelimit import RateLimiter
from ..schemas import (AccuracyResponse, CaptureItem, FeedbackRequest, FeedbackResponse, ReviewQueueResponse,
                       ReviewRequest, ReviewResponse, UploadItem)
from .common import errors

router = APIRouter(tags=["feedback"])
T = TypeVar("T")


def _call(fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except CaptureDisabled as exc:
        raise ApiError(503, "capture_disabled", str(exc)) from None
    except CaptureFailed as exc:
        raise ApiError(503, "capture_failed", str(exc)) from None
    except UnknownPrediction as exc:
        raise ApiError(404, "unknown_prediction", str(exc)) from None


def _item(rec: Record) -> CaptureItem:
    return CaptureItem(**rec.as_dict(), answered=rec.answered, image_url=f"/review/{rec.prediction_id}/image")


def _limiter(request: Request) -> RateLimiter:
    app_state = request.app.state
    if getattr(app_state, "feedback_limiter", None) is None:
        app_state.feedback_limiter = RateLimiter(state(request).settings.feedback_per_minute)
    return app_state.feedback_limiter


@router.post("/feedback", response_model=FeedbackResponse, responses=errors(404, 422, 429, 503))
def feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse:
    """Say what the right answer for a prediction was (one of the six classes, or ``not_fruit``).

    Public and rate-limited (per client address). A prediction whose image is still held (kept by
    the capture policy, or made in the last few minutes) is kept for review with the feedback;
    404 ``unknown_prediction`` otherwise; 503 ``capture_disabled`` when capture is off,
    ``capture_failed`` when the prediction cannot be stored (it stays pending: retry).
    """
    wait = _limiter(request).take(request.client.host if request.client else "unknown")
    if wait > 0:
        raise ApiError(429, "rate_limited", f"too much feedback from this address; try again in {math.ceil(wait)} s",
                       {"Retry-After": str(math.ceil(wait))})
    rec = _call(state(request).capture.feedback, body.prediction_id, body.correct)
    return FeedbackResponse(prediction_id=rec.prediction_id, correct=body.correct, kept=True)


@router.get("/review", response_model=ReviewQueueResponse, responses=errors(401, 403, 503),
            dependencies=[Depends(require_admin)])
def review_queue(request: Request, include_reviewed: bool = Query(False),
                 limit: int = Query(50, ge=1, le=500)) -> ReviewQueueResponse:
    """Captured predictions, most worth a look first: feedback that disagrees with the model, then
    ``uncertain`` answers, then the smallest top-1/top-2 margin."""
    capture = state(request).capture
    if not capture.enabled:
        return ReviewQueueResponse(enabled=False, count=0, items=[])
    items = [_item(r) for r in _call(capture.queue, include_reviewed, limit)]
    return ReviewQueueResponse(enabled=True, count=len(items), items=items)


@router.get("/review/accuracy", response_model=AccuracyResponse)
def review_accuracy(request: Request) -> AccuracyResponse:
    """Accuracy of the live model on reviewed captures over the accuracy window, per class."""
    st = state(request)
    live = st.holder.current.version if st.holder.current is not None else st.backend.registry.live_version()
    return AccuracyResponse(**st.capture.accuracy(live, st.settings.accuracy_window_days))


@router.get("/review/{prediction_id}/image", response_class=Response, responses=errors(401, 403, 404, 503),
            dependencies=[Depends(require_admin)])
def review_image(prediction_id: str, request: Request) -> Response:
    """The captured image (JPEG, no metadata)."""
    data = _call(state(request).capture.image, prediction_id)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, no-store"})


@router.post("/review/{prediction_id}", response_model=ReviewResponse, responses=errors(401, 403, 404, 422, 503),
             dependencies=[Depends(require_admin)])
async def review(prediction_id: str, body: ReviewRequest, request: Request) -> ReviewResponse:
    """Accept a label: a class files the image into the dataset through the uploads' path
    (validated, de-duplicated), tagged with origin ``review``; ``not_fruit`` is recorded only."""
    st = state(request)
    rec, result = await run_in_threadpool(_call, st.capture.accept, prediction_id, body.label, st.backend.store)
    if result is not None:
        st.metrics.uploads.labels(status=result.status).inc()
    st.metrics.record_review(rec.answered, body.label)
    return ReviewResponse(item=_item(rec), dataset=UploadItem(**result.as_dict()) if result is not None else None)

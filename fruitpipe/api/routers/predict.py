"""``POST /predict`` and ``POST /predict/batch``.

Both handlers are plain ``def``: FastAPI runs them in its threadpool, so decoding and LiteRT
inference (which release the GIL) never block the event loop, and the Classifier's interpreter
pool (one per core) serves that many requests at once.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, BackgroundTasks, Depends, File, Query, Request, UploadFile

from ... import imaging
from ...explain import CannotExplain, explain as explanation_of
from ...labels import LABELS
from ...shadow import predict_live
from ..deps import state
from ..errors import ApiError, image_error
from ..schemas import BatchItem, BatchResponse, Explanation, PredictionResponse
from .common import errors, read_upload

router = APIRouter(tags=["predict"])


KEEP = Query(True, description="false: never keep this image for review (capture opt-out; "
              "docs/api.md#feedback-and-capture)")


def _response(pred, latency_ms: float, prediction_id: str) -> PredictionResponse:  # type: ignore[no-untyped-def]
    return PredictionResponse(**pred.as_dict(), latency_ms=round(latency_ms, 3), prediction_id=prediction_id)


def _offer(request: Request, tasks: BackgroundTasks, pred, data: bytes, keep: bool) -> str:  # type: ignore[no-untyped-def]
    """A new prediction id; when the capture policy keeps this one, it is handed to the capture
    writer once the answer has been sent (:meth:`~fruitpipe.capture.Capturer.submit`)."""
    capture = state(request).capture
    pid = capture.new_id()
    if keep:
        prediction = pred.as_dict()
        reasons = capture.offer(pid, prediction, data)
        if reasons:
            tasks.add_task(capture.submit, pid, prediction, data, reasons)
    return pid


async def one_file_part(request: Request) -> None:
    """422 when the body has more than one ``file`` part (FastAPI would silently keep the last).

    The form is already parsed (and cached on the request) when dependencies run.
    """
    parts = (await request.form()).getlist("file")
    if len(parts) > 1:
        raise ApiError(422, "duplicate_part", f"{len(parts)} 'file' parts; /predict takes exactly one "
                       "(use /predict/batch with 'files' for several)")


@router.post("/predict", response_model=PredictionResponse,
             responses=errors(400, 409, 413, 415, 422, 503), dependencies=[Depends(one_file_part)])
def predict(request: Request, tasks: BackgroundTasks,
            file: UploadFile = File(..., description=f"a {imaging.ACCEPTED_NAMES} image"),
            explain: bool = Query(False, description="also return where the evidence for the predicted "
                                  "class lies (a 7x7 map; about one more backbone pass)"),
            keep: bool = KEEP) -> PredictionResponse:
    """Classify one image: class, confidence, all six probabilities and a verdict."""
    st = state(request)
    t0 = time.perf_counter()
    data = read_upload(file, st.settings.max_file_bytes)
    clf = st.holder.get()
    try:
        image = imaging.load_image(data, size=clf.size)
    except imaging.InvalidImage as exc:
        raise image_error(exc) from None
    live = predict_live(clf, image)  # = clf.predict_arrays, keeping the backbone outputs for the shadow
    pred = live.prediction
    tasks.add_task(st.shadow.offer, live)  # after the answer
    tasks.add_task(st.rollback.offer, live)  # after a promotion: the previous model on the same image
    explanation = None
    if explain:
        try:
            explanation = Explanation(**explanation_of(clf, image, LABELS.index(pred.predicted_class)))
        except CannotExplain as exc:
            raise ApiError(409, "cannot_explain", str(exc)) from None
    elapsed = time.perf_counter() - t0
    st.metrics.inference.labels(endpoint="predict").observe(elapsed)
    st.metrics.record_prediction(pred.predicted_class, pred.verdict)
    response = _response(pred, elapsed * 1000, _offer(request, tasks, pred, data, keep))
    response.explanation = explanation
    return response


@router.post("/predict/batch", response_model=BatchResponse,
             responses=errors(400, 413, 415, 422, 503))
def predict_batch(request: Request, tasks: BackgroundTasks,
                  files: list[UploadFile] = File(..., description="up to 32 images"), keep: bool = KEEP
                  ) -> BatchResponse:
    """Classify several images in one inference batch; a bad file gets its own error entry."""
    st = state(request)
    if len(files) > st.settings.max_batch_files:
        raise ApiError(413, "too_many_files",
                       f"{len(files)} files; at most {st.settings.max_batch_files} per batch")
    t0 = time.perf_counter()
    blobs: list[bytes | None] = []
    items: list[BatchItem] = []
    for f in files:
        name = (f.filename or "(unnamed)")[:200]
        try:
            blobs.append(read_upload(f, st.settings.max_file_bytes))
            items.append(BatchItem(filename=name, ok=False))
        except ApiError as exc:
            blobs.append(None)
            items.append(BatchItem(filename=name, ok=False, error=exc.code, detail=exc.detail))
    clf = st.holder.get()
    good = [i for i, b in enumerate(blobs) if b is not None]
    results = clf.predict_many([blobs[i] for i in good])  # type: ignore[misc]
    elapsed = time.perf_counter() - t0
    for i, res in zip(good, results):
        if isinstance(res, imaging.InvalidImage):
            items[i].error, items[i].detail = res.code, res.detail
        else:
            items[i].ok = True
            items[i].prediction = _response(res, elapsed * 1000 / max(1, len(good)),
                                            _offer(request, tasks, res, blobs[i], keep))  # type: ignore[arg-type]
            st.metrics.record_prediction(res.predicted_class, res.verdict)
    st.metrics.inference.labels(endpoint="predict_batch").observe(elapsed)
    return BatchResponse(model_version=clf.version, count=len(items), ok=sum(it.ok for it in items),
                         results=items)

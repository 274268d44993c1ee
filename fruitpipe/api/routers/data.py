"""``POST /upload-training-data`` (admin) and ``GET /dataset``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse

from ...dataset import UnknownClass, check_label
from ..deps import require_admin, state
from ..errors import ApiError, error_body
from ..schemas import DatasetResponse, UploadItem, UploadRejectedResponse, UploadResponse
from .common import errors, read_upload

router = APIRouter(tags=["data"])


@router.post("/upload-training-data", response_model=UploadResponse,
             responses={**errors(401, 403, 413, 415, 422), 400: {"model": UploadRejectedResponse}},
             dependencies=[Depends(require_admin)])
def upload_training_data(request: Request,
                         class_name: str = Form(..., description="one of the six class names"),
                         files: list[UploadFile] = File(..., description="images of that class")):
    """File images under ``dataset/<class>/<sha256>.jpg``: validated, de-duplicated by content.

    Each file gets its own result (added, duplicate, rejected with a reason). When no file at
    all could be used the answer is 400 with the same per-file list, and nothing was stored.
    """
    st = state(request)
    try:
        label = check_label(class_name.strip())
    except UnknownClass as exc:
        raise ApiError(422, "unknown_class", str(exc)) from None
    if len(files) > st.settings.max_files:
        raise ApiError(413, "too_many_files", f"{len(files)} files; at most {st.settings.max_files} per request")
    results: list[UploadItem] = []
    for f in files:
        try:
            data = read_upload(f, st.settings.max_file_bytes)
        except ApiError as exc:
            results.append(UploadItem(filename=(f.filename or "(unnamed)")[:200], status="rejected",
                                      label=label, error=exc.code, detail=exc.detail))
            continue
        res = st.backend.store.add(label, data, f.filename or "")
        results.append(UploadItem(**res.as_dict()))
    for item in results:
        st.metrics.uploads.labels(status=item.status).inc()
    added = sum(r.status == "added" for r in results)
    dup = sum(r.status == "duplicate" for r in results)
    rejected = sum(r.status == "rejected" for r in results)
    if added + dup == 0:
        reasons = sorted({r.error or "rejected" for r in results})
        return JSONResponse(error_body("all_rejected", f"none of the {len(results)} files was added "
                                       f"({', '.join(reasons)}); each file's reason is in results",
                                       results=[r.model_dump() for r in results]), status_code=400)
    return UploadResponse(class_name=label, added=added, duplicates=dup, rejected=rejected,
                          results=results, counts=st.backend.store.counts())


@router.get("/dataset", response_model=DatasetResponse)
def dataset_counts(request: Request) -> DatasetResponse:
    """Images per class: the store's uploads (``counts``) and the seed data every retrain also
    trains on (``seed``, when the backend reports it)."""
    backend = state(request).backend
    counts, seed = backend.store.counts(), backend.trainer.seed_counts()
    return DatasetResponse(counts=counts, total=sum(counts.values()), seed=seed, seed_total=sum(seed.values()))

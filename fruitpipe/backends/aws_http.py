"""HTTP pieces that exist only on AWS, added to the shared FastAPI app by ``functions/api``.

* ``POST /upload-url`` (admin): presigned S3 POST forms into ``incoming/<class>/`` for files too big
  for API Gateway + Lambda, or for bulk uploads: one exact key each, the content type fixed, at
  most :data:`fruitpipe.imaging.MAX_BYTES` bytes, valid for a few minutes; the ingest files them.
* 501 for ``POST /retrain`` on a deployment without the retrain state machine.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from .. import imaging
from ..api.deps import require_admin  # the app's bearer-token check; also marks the route a write route
from ..dataset import UnknownClass
from .aws import PRESIGN_SECONDS, S3DataStore, TrainerUnavailable

MAX_URLS = 100


class UploadUrlRequest(BaseModel):
    class_name: str = Field(description="one of the six class names")
    filenames: list[str] = Field(default_factory=lambda: ["upload.jpg"], min_length=1, max_length=MAX_URLS)


class UploadUrl(BaseModel):
    filename: str
    url: str = Field(description="POST a multipart/form-data body here")
    method: str = Field(description="always POST")
    key: str
    fields: dict[str, str] = Field(description="form fields to send, as given, before the 'file' field")


class UploadUrlResponse(BaseModel):
    class_name: str
    expires_in: int
    max_bytes: int
    uploads: list[UploadUrl]
    note: str


router = APIRouter(tags=["data"])


@router.post("/upload-url", response_model=UploadUrlResponse, dependencies=[Depends(require_admin)])
def upload_url(body: UploadUrlRequest, request: Request) -> UploadUrlResponse | JSONResponse:
    """Presigned S3 POST forms into ``incoming/<class>/``: POST ``fields`` then ``file`` to ``url``."""
    store = request.app.state.fruitpipe.backend.store
    if not isinstance(store, S3DataStore):
        return JSONResponse({"error": "not_supported", "detail": "this backend has no S3 drop folder"}, 501)
    try:
        items = [store.presign_upload(body.class_name, name) for name in body.filenames]
    except UnknownClass as exc:
        return JSONResponse({"error": "unknown_class", "detail": str(exc)}, 422)
    return UploadUrlResponse(
        class_name=body.class_name, expires_in=PRESIGN_SECONDS, max_bytes=imaging.MAX_BYTES,
        uploads=[UploadUrl(filename=name, url=i["url"], method="POST", key=i["key"], fields=i["fields"])
                 for name, i in zip(body.filenames, items)],
        note="files are validated, de-duplicated and filed into the dataset within seconds; "
             "bad files go to quarantine/ with a .reason.json",
    )


def install(app: FastAPI) -> None:
    app.include_router(router)

    @app.exception_handler(TrainerUnavailable)
    async def _no_trainer(_: Request, exc: TrainerUnavailable) -> JSONResponse:
        return JSONResponse({"error": "not_implemented", "detail": str(exc)}, status_code=501)

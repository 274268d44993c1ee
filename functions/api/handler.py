"""Lambda ``api``: the shared FastAPI app with the AWS backend, served through Mangum.

Built once per execution environment (during Lambda's init phase): the backbone and the live
model are loaded here, not per request. The app re-checks the live pointer (``live.json``) at
most every ``FRUITPIPE_MODEL_REFRESH_SECONDS`` (60), so a newly published version reaches every
warm instance within a minute without a redeploy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mangum import Mangum

from fruitpipe.api.app import create_app
from fruitpipe.api.settings import LAMBDA_MAX_BODY_BYTES, Settings
from fruitpipe import aws_metrics
from fruitpipe.backends import aws_http
from fruitpipe.backends.aws import AwsConfig, SecretsManagerToken, create_aws_backend
from fruitpipe.models_path import default_model_dir
from fruitpipe.rollback import RollbackBars

# The most a request body can be and still reach this function (fruitpipe.api.settings explains
# the figure); the app answers 413 above it, naming POST /upload-url for bigger files.
MAX_REQUEST_BYTES = int(os.environ.get("FRUITPIPE_MAX_REQUEST_BYTES", str(LAMBDA_MAX_BODY_BYTES)))


def build() -> Mangum:
    config = AwsConfig.from_env()
    backend = create_aws_backend(config, seed_bundle=default_model_dir())
    refresh = float(os.environ.get("FRUITPIPE_MODEL_REFRESH_SECONDS", "60"))
    backbone = os.environ.get("FRUITPIPE_BACKBONE")
    settings = Settings(
        model_refresh_seconds=refresh,
        token_provider=SecretsManagerToken(config.admin_token_secret, ttl=min(refresh, 60.0)),
        inference_workers=1,  # one request at a time per Lambda environment
        inference_threads=int(os.environ.get("FRUITPIPE_THREADS", "1")),
        backbone_path=Path(backbone) if backbone else None,
        max_request_bytes=MAX_REQUEST_BYTES,
        large_upload_route="/upload-url",
        # Each instance sees only its share of the traffic: the rollback decision is the PostPromotion
        # alarm's, on metrics CloudWatch pools over every instance (fruitpipe.rollback). The window is
        # the rollback Lambda's (-c rollbackWindowMinutes).
        rollback_bars=RollbackBars(enabled=False, window_seconds=float(
            os.environ.get("FRUITPIPE_ROLLBACK_WINDOW_SECONDS", "7200"))),
    )
    app = create_app(backend, settings)
    # ... but each instance still pairs its /predict answers with the previous model's within that
    # window and emits the outcome (NotFruitOnlyNew / NotFruitOnlyPrevious) for the pooled alarm.
    app.state.fruitpipe.rollback.on_pair = aws_metrics.record_pair
    aws_http.install(app)
    # Production metrics (EMF): predictions by class/verdict, latency, confidence, drift deltas.
    aws_metrics.install(app, backend.registry)
    return Mangum(app, lifespan="off")


_app: Mangum | None = None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _app
    if _app is None:  # only when the init-phase build below was skipped
        _app = build()
    return _app(event, context)


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):  # in Lambda: build in the init phase, before the first request
    _app = build()

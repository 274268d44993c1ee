"""Lambda ``ingest``: S3 ``Object Created`` events (via EventBridge) for ``incoming/<class>/…``.

Validates with :mod:`fruitpipe.imaging` (through :func:`fruitpipe.dataset.prepare`), files into
``dataset/`` by content hash, deletes the incoming object version the event names (never a newer
upload under the same key), quarantines bad files with a reason,
counts newly filed images in the state table and emits EMF metrics. The logic lives in
:meth:`fruitpipe.backends.aws.S3DataStore.ingest`; this file only adapts the event.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import S3EventBridgeNotificationEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from fruitpipe.backends.aws import NewImageCounter, S3DataStore

logger = Logger()
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Fruitpipe"))
_stores: dict[str, S3DataStore] = {}

METRIC = {"added": "ImagesAdded", "duplicate": "Duplicates", "quarantined": "Rejected", "gone": "Redelivered", "skipped": "Ignored"}


def store_for(bucket: str) -> S3DataStore:
    """One store (and boto3 clients) per bucket per execution environment."""
    if bucket not in _stores:
        _stores[bucket] = S3DataStore(bucket, NewImageCounter(os.environ.get("FRUITPIPE_STATE_TABLE")))
    return _stores[bucket]


@metrics.log_metrics
@logger.inject_lambda_context
@event_source(data_class=S3EventBridgeNotificationEvent)
def handler(event: S3EventBridgeNotificationEvent, context: LambdaContext) -> dict[str, Any]:
    bucket = event.detail.bucket.name
    expected = os.environ.get("FRUITPIPE_DATA_BUCKET")
    if expected and bucket != expected:
        logger.warning("event for another bucket ignored", extra={"bucket": bucket})
        metrics.add_metric(name="Ignored", unit=MetricUnit.Count, value=1)
        return {"status": "ignored", "bucket": bucket}
    # EventBridge carries the key as stored (S3's own notifications form-encode it); the store
    # tries it as given, then decoded, and acts only on the version (or ETag) the event names.
    obj = event.detail.object.raw_event
    outcome = store_for(bucket).ingest(obj["key"], obj.get("size"), version_id=obj.get("version-id"),
                                       etag=obj.get("etag"))
    metrics.add_metric(name=METRIC[outcome.status], unit=MetricUnit.Count, value=1)
    log = logger.warning if outcome.status == "quarantined" else logger.info
    log("ingest", extra=outcome.as_dict())
    return outcome.as_dict()

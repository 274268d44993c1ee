"""Lambda: publish a promoted candidate and move the live pointer (fruitpipe.pipeline.publish)."""

import os
from pathlib import Path

import boto3

from fruitpipe.pipeline import publish


def handler(event, context):
    return publish.publish(boto3.client("s3"), models_bucket=os.environ["FRUITPIPE_MODELS_BUCKET"],
                           model_artifacts=event["model_artifacts"], expected_version=event.get("version"),
                           baseline=event.get("baseline"), metrics=event.get("metrics"),
                           reason=event.get("reason", ""), workdir=Path("/tmp"),
                           lineage=event.get("lineage"),
                           shadow_requests=int(os.environ.get("FRUITPIPE_SHADOW_REQUESTS", "0")))

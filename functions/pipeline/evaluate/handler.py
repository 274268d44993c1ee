"""Lambda: evaluate candidate and live on the same images, apply the gate (fruitpipe.pipeline.evaluate)."""

import os
from pathlib import Path

import boto3

from fruitpipe.pipeline import evaluate


def handler(event, context):
    return evaluate.run(boto3.client("s3"), models_bucket=os.environ["FRUITPIPE_MODELS_BUCKET"],
                        model_artifacts=event["model_artifacts"],
                        validation_manifest=event["validation_manifest"],
                        expected_version=event.get("version"), workdir=Path("/tmp"),
                        tolerance=float(os.environ.get("FRUITPIPE_GATE_TOLERANCE", "0")))

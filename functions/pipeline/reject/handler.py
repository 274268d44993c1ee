"""Lambda: keep a rejected candidate under rejected/<version>/ with its reason (fruitpipe.pipeline.publish)."""

import os

import boto3

from fruitpipe.pipeline import publish


def handler(event, context):
    return publish.reject(boto3.client("s3"), models_bucket=os.environ["FRUITPIPE_MODELS_BUCKET"],
                          model_artifacts=event["model_artifacts"], version=event.get("version"),
                          reason=event.get("reason", ""), evaluation=event.get("evaluation"))

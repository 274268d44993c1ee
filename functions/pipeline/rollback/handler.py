"""Lambda: re-activate the previous model when the post-promotion alarm fires (fruitpipe.pipeline.rollback)."""

import os

import boto3

from fruitpipe.pipeline import rollback


def handler(event, context):
    return rollback.handle(event, s3=boto3.client("s3"), sns=boto3.client("sns"),
                           models_bucket=os.environ["FRUITPIPE_MODELS_BUCKET"],
                           topic_arn=os.environ.get("FRUITPIPE_ALERTS_TOPIC_ARN"),
                           window_seconds=float(os.environ.get("FRUITPIPE_ROLLBACK_WINDOW_SECONDS", "7200")))

"""Lambda: guard + dataset snapshot (logic in fruitpipe.pipeline.prepare)."""

import os

import boto3

from fruitpipe.pipeline import prepare


def handler(event, context):
    settings = prepare.Settings(
        data_bucket=os.environ["FRUITPIPE_DATA_BUCKET"], models_bucket=os.environ["FRUITPIPE_MODELS_BUCKET"],
        state_table=os.environ.get("FRUITPIPE_STATE_TABLE"),
        min_images_per_class=int(os.environ.get("FRUITPIPE_MIN_IMAGES_PER_CLASS", "20")),
        validation_percent=int(os.environ.get("FRUITPIPE_VALIDATION_PERCENT", "10")))
    return prepare.run(boto3.client("s3"), settings, sfn=boto3.client("stepfunctions"),
                       ddb=boto3.client("dynamodb"), state_machine_arn=event.get("state_machine_arn"),
                       execution_arn=event.get("execution_arn"),
                       trigger=(event.get("input") or {}).get("trigger", "manual"))

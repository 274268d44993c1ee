"""Lambda: start a retrain from a schedule, the new-data check or the drift alarm (fruitpipe.pipeline.trigger)."""

import os

import boto3

from fruitpipe.pipeline import trigger


def handler(event, context):
    return trigger.handle_event(event, sfn=boto3.client("stepfunctions"), ddb=boto3.client("dynamodb"),
                                state_machine_arn=os.environ["FRUITPIPE_STATE_MACHINE_ARN"],
                                table=os.environ.get("FRUITPIPE_STATE_TABLE"),
                                threshold=int(os.environ.get("FRUITPIPE_NEW_IMAGES_THRESHOLD", "1000")))

"""Lambda: write the run's outcome metrics to CloudWatch, consume the new-images counter (fruitpipe.pipeline.report)."""

import os

import boto3

from fruitpipe.pipeline import report


def handler(event, context):
    table = os.environ.get("FRUITPIPE_STATE_TABLE")
    return report.run(boto3.client("cloudwatch"), event,
                      namespace=os.environ.get("FRUITPIPE_RETRAIN_NAMESPACE", report.NAMESPACE),
                      ddb=boto3.client("dynamodb") if table else None, table=table)

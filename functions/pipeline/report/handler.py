"""Lambda: write the run's outcome metrics to CloudWatch (fruitpipe.pipeline.report)."""

import os

import boto3

from fruitpipe.pipeline import report


def handler(event, context):
    return report.run(boto3.client("cloudwatch"), event,
                      namespace=os.environ.get("FRUITPIPE_RETRAIN_NAMESPACE", report.NAMESPACE))

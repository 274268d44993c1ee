"""The AWS rollback step against the moto server: within the window after a promotion the
post-promotion alarm re-activates the previous version and says so on the alerts topic; a rollback
is never rolled back, and an alarm outside the window changes nothing."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone

import boto3

from fruitpipe import bundle
from fruitpipe.backends.aws import S3ModelRegistry
from fruitpipe.pipeline import publish, rollback, s3util
from tests.conftest import DEFAULT_MODEL

EVENT = {"source": "aws.cloudwatch", "detail-type": "CloudWatch Alarm State Change",
         "detail": {"alarmName": "fruitpipe-PostPromotion", "state": {"value": "ALARM"}}}


def copy_bundle(tmp_path, version: str):  # type: ignore[no-untyped-def]
    dest = tmp_path / version
    shutil.copytree(DEFAULT_MODEL, dest)
    manifest = json.loads((dest / bundle.MANIFEST).read_text())
    manifest["version"] = version
    (dest / bundle.MANIFEST).write_text(json.dumps(manifest))
    return dest


def test_rollback_within_the_window_only(aws, tmp_path):
    s3, sns, sqs = aws["s3"], boto3.client("sns"), boto3.client("sqs")
    topic = sns.create_topic(Name=f"alerts-{aws['models']}")["TopicArn"]
    queue = sqs.create_queue(QueueName=f"q-{aws['models']}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    reg = S3ModelRegistry(aws["models"], tmp_path / "cache", s3=s3)
    v1 = reg.publish(copy_bundle(tmp_path, "v20260101-000000-aaaaaa"))
    v2 = reg.publish(copy_bundle(tmp_path, "v20260102-000000-bbbbbb"))
    publish.move_pointer(s3, aws["models"], v1)
    publish.move_pointer(s3, aws["models"], v2)  # the promotion: previous = v1
    updated = datetime.fromisoformat(s3util.get_json(s3, aws["models"], "live.json")["updated"].replace("Z", "+00:00"))

    late = rollback.handle(EVENT, s3=s3, sns=sns, models_bucket=aws["models"], topic_arn=topic,
                           window_seconds=600, now=updated + timedelta(seconds=601))
    assert late["rolled_back"] is False and "outside the rollback window" in late["skipped"]
    assert s3util.live_version(s3, aws["models"]) == v2

    out = rollback.handle(EVENT, s3=s3, sns=sns, models_bucket=aws["models"], topic_arn=topic,
                          window_seconds=600, now=updated + timedelta(seconds=60))
    assert out["rolled_back"] is True and out["from"] == v2 and out["to"] == v1
    pointer = s3util.get_json(s3, aws["models"], "live.json")
    assert pointer["version"] == v1 and pointer["reason"].startswith("automatic rollback: fruitpipe-PostPromotion")

    again = rollback.handle(EVENT, s3=s3, sns=sns, models_bucket=aws["models"], topic_arn=topic,
                            window_seconds=600, now=datetime.now(timezone.utc))
    assert again["rolled_back"] is False and "itself a rollback" in again["skipped"]
    assert s3util.live_version(s3, aws["models"]) == v1

    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    texts = [json.loads(m["Body"])["Message"] for m in messages]
    assert any(t.startswith(f"Rolled back {v2} -> {v1}") for t in texts), texts

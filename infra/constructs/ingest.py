"""The S3 drop folder: ``incoming/<class>/…`` object created → EventBridge → Lambda ``ingest``.

S3 cannot call Step Functions and its direct Lambda notifications allow one consumer per prefix;
EventBridge lets part 2 listen to the same events and gives retries plus a dead-letter queue.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from ..nag import acknowledge, iam5_object_finding

from .api import FunctionSettings, function_log_group, function_role
from .storage import Storage

INGEST_MEMORY_MB = 1024  # decoding a 10 MB photo; CPU scales with memory
INGEST_TIMEOUT = Duration.seconds(60)


class Ingest(Construct):
    """``function``, ``rule`` (EventBridge) and ``dead_letters`` (events that failed every retry)."""

    def __init__(self, scope: Construct, construct_id: str, *, storage: Storage, code: lambda_.Code,
                 layer: lambda_.ILayerVersion, settings: FunctionSettings,
                 reserved_concurrency: int | None = None, retain: bool = True) -> None:
        super().__init__(scope, construct_id)
        data = storage.data_bucket
        self.log_group = function_log_group(self, "Logs", retain)
        self.role = function_role(self, "Role", self.log_group)
        self.function = lambda_.Function(
            self, "Function",
            description="fruitpipe S3 drop folder: validate, de-duplicate, file into dataset/",
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=settings.architecture,
            handler="functions.ingest.handler.handler",
            code=code,
            layers=[layer],
            memory_size=INGEST_MEMORY_MB,
            timeout=INGEST_TIMEOUT,
            reserved_concurrent_executions=reserved_concurrency,
            role=self.role,
            log_group=self.log_group,
            environment={
                "FRUITPIPE_STAGE": settings.stage,
                "FRUITPIPE_DATA_BUCKET": data.bucket_name,
                "FRUITPIPE_STATE_TABLE": storage.state_table.table_name,
                "POWERTOOLS_SERVICE_NAME": "fruitpipe-ingest",
                "POWERTOOLS_METRICS_NAMESPACE": "Fruitpipe",
            },
        )
        # The bucket is versioned: the ingest reads and deletes the version an event names.
        self.role.add_to_policy(iam.PolicyStatement(
            sid="TakeIncoming",
            actions=["s3:GetObject", "s3:GetObjectVersion", "s3:DeleteObject", "s3:DeleteObjectVersion"],
            resources=[data.arn_for_objects("incoming/*")]))
        self.role.add_to_policy(iam.PolicyStatement(
            sid="FileDataset", actions=["s3:GetObject", "s3:PutObject"],
            resources=[data.arn_for_objects("dataset/*")]))
        self.role.add_to_policy(iam.PolicyStatement(
            sid="Quarantine", actions=["s3:PutObject"], resources=[data.arn_for_objects("quarantine/*")]))
        # Without ListBucket a HEAD on a missing key (or version) answers 403 instead of 404; S3
        # checks it with the key as s3:prefix, so only the prefixes the ingest reads.
        self.role.add_to_policy(iam.PolicyStatement(
            sid="HeadMissingKeys", actions=["s3:ListBucket", "s3:ListBucketVersions"], resources=[data.bucket_arn],
            conditions={"StringLike": {"s3:prefix": ["incoming/*", "dataset/*"]}}))
        self.role.add_to_policy(iam.PolicyStatement(
            sid="CountNewImages", actions=["dynamodb:PutItem", "dynamodb:UpdateItem"],
            resources=[storage.state_table.table_arn]))
        for resource in ("incoming/*", "dataset/*", "quarantine/*"):
            acknowledge(self.role, iam5_object_finding(data, resource),
                        f"Objects under one prefix ({resource}) of the data bucket: keys are not known in advance.")

        self.dead_letters = sqs.Queue(
            self, "DeadLetters", retention_period=Duration.days(14), enforce_ssl=True,
            encryption=sqs.QueueEncryption.SQS_MANAGED)
        acknowledge(self.dead_letters, "AwsSolutions-SQS3",
                    "This queue is the dead-letter queue of the ingest rule; it needs none of its own.")
        self.rule = events.Rule(
            self, "ObjectCreated",
            description="S3 drop folder: new objects under incoming/ go to the ingest function",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={"bucket": {"name": [data.bucket_name]},
                        "object": {"key": [{"prefix": "incoming/"}]}},
            ),
            targets=[targets.LambdaFunction(
                self.function, retry_attempts=4, max_event_age=Duration.hours(2),
                dead_letter_queue=self.dead_letters)],
        )
        # EventBridge invokes asynchronously: a failing run is retried by Lambda, then parked here.
        self.function.configure_async_invoke(
            retry_attempts=2, max_event_age=Duration.hours(2),
            on_failure=destinations.SqsDestination(self.dead_letters))

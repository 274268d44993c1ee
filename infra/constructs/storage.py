"""Storage: the data bucket (drop folder, dataset, quarantine), the models bucket, the state table.

Every bucket blocks public access, refuses plain HTTP, is encrypted (SSE-S3) and logs its
access into a separate access-log bucket. Data outlives the stack by default (``retain``).
"""

from __future__ import annotations

from aws_cdk import CfnOutput, Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct
# Lifecycle: ingest deletes every incoming object it handled, so what stays in incoming/ is an
# object whose event failed every retry; a week is time enough to look at it. Quarantined files
# carry a reason for a person to read; a month, then they go.
INCOMING_EXPIRY_DAYS = 7
QUARANTINE_EXPIRY_DAYS = 30
NONCURRENT_MODEL_VERSIONS_DAYS = 90
# The data bucket is versioned so that the ingest acts on the exact object version an event names
# (a second IMG_0001.jpg under the same key is another version, left for its own event). The
# ingest deletes versions outright; what becomes noncurrent (a lifecycle expiry, an overwritten
# quarantine file, a mistaken delete) stays recoverable this long, then goes.
NONCURRENT_DATA_VERSIONS_DAYS = 30
# Captured predictions (fruitpipe.capture): people's photos, kept for review at most this long; the
# API prunes them itself at the same limit (and deletes every version), the lifecycle rule is the
# backstop. A replaced record version (feedback, review) goes a day later.
CAPTURE_RETENTION_DAYS = 30
CAPTURE_MAX_ITEMS = 1000  # the review queue reads every record; 1,000 keeps a listing near a second


class Storage(Construct):
    """``data_bucket``, ``models_bucket``, ``state_table`` and the ``access_logs_bucket``."""

    def __init__(self, scope: Construct, construct_id: str, *, retain: bool = True,
                 upload_origins: tuple[str, ...] = ()) -> None:
        super().__init__(scope, construct_id)
        removal = RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY
        common = dict(
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=removal,
            auto_delete_objects=not retain,
        )

        # Server access logs need SSE-S3 (not KMS) on the target bucket and bucket-owner ACLs off.
        self.access_logs_bucket = s3.Bucket(
            self, "AccessLogs",
            lifecycle_rules=[s3.LifecycleRule(id="expire-logs", expiration=Duration.days(365),
                                              abort_incomplete_multipart_upload_after=Duration.days(1))],
            **common,
        )

        self.data_bucket = s3.Bucket(
            self, "Data",
            versioned=True,
            server_access_logs_bucket=self.access_logs_bucket,
            server_access_logs_prefix="data/",
            lifecycle_rules=[
                s3.LifecycleRule(id="expire-unprocessed-incoming", prefix="incoming/",
                                 expiration=Duration.days(INCOMING_EXPIRY_DAYS)),
                s3.LifecycleRule(id="expire-quarantine", prefix="quarantine/",
                                 expiration=Duration.days(QUARANTINE_EXPIRY_DAYS)),
                s3.LifecycleRule(id="expire-capture", prefix="capture/",
                                 expiration=Duration.days(CAPTURE_RETENTION_DAYS),
                                 noncurrent_version_expiration=Duration.days(1)),
                s3.LifecycleRule(id="expire-noncurrent-versions",
                                 noncurrent_version_expiration=Duration.days(NONCURRENT_DATA_VERSIONS_DAYS)),
                s3.LifecycleRule(id="remove-expired-delete-markers", expired_object_delete_marker=True),
                s3.LifecycleRule(id="abort-multipart", abort_incomplete_multipart_upload_after=Duration.days(1)),
            ],
            # Presigned uploads are form POSTs; browsers may send them only from the origins the
            # stage names (context uploadOrigins). None by default: no CORS rule at all.
            cors=[s3.CorsRule(allowed_methods=[s3.HttpMethods.POST], allowed_origins=list(upload_origins),
                              allowed_headers=["content-type"], max_age=3000)] if upload_origins else None,
            **common,
        )
        # dataset/ is write-once (content-addressed): whoever writes there must send
        # If-None-Match: *, so no role can overwrite a filed image (AWS S3 User Guide, "Enforce
        # conditional writes": the s3:if-none-match condition key in a bucket policy).
        self.data_bucket.add_to_resource_policy(iam.PolicyStatement(
            sid="DatasetIsWriteOnce", effect=iam.Effect.DENY, principals=[iam.AnyPrincipal()],
            actions=["s3:PutObject"], resources=[self.data_bucket.arn_for_objects("dataset/*")],
            conditions={"Null": {"s3:if-none-match": "true"}}))

        # incoming/ → EventBridge → ingest. Set on the CloudFormation resource itself: the L2
        # ``event_bridge_enabled`` flag deploys a custom-resource Lambda with a wildcard policy.
        cfn_data = self.data_bucket.node.default_child
        cfn_data.notification_configuration = s3.CfnBucket.NotificationConfigurationProperty(  # type: ignore[union-attr]
            event_bridge_configuration=s3.CfnBucket.EventBridgeConfigurationProperty(event_bridge_enabled=True))

        # Versions are immutable folders and the live pointer is one small object; bucket
        # versioning keeps every earlier pointer and guards against an accidental overwrite.
        self.models_bucket = s3.Bucket(
            self, "Models",
            versioned=True,
            server_access_logs_bucket=self.access_logs_bucket,
            server_access_logs_prefix="models/",
            lifecycle_rules=[
                s3.LifecycleRule(id="expire-old-object-versions",
                                 noncurrent_version_expiration=Duration.days(NONCURRENT_MODEL_VERSIONS_DAYS)),
                # each API instance's running shadow counts (fruitpipe.shadow): rewritten every
                # few seconds while a shadow runs, worth nothing once it is decided
                s3.LifecycleRule(id="expire-shadow-stats", prefix="shadow-stats/", expiration=Duration.days(30),
                                 noncurrent_version_expiration=Duration.days(1)),
                s3.LifecycleRule(id="abort-multipart", abort_incomplete_multipart_upload_after=Duration.days(1)),
            ],
            **common,
        )

        self.state_table = dynamodb.Table(
            self, "StateTable",
            partition_key=dynamodb.Attribute(name="id", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True),
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            removal_policy=removal,
        )

        CfnOutput(self, "DataBucketName", value=self.data_bucket.bucket_name,
                  description="drop folder: aws s3 cp FILES s3://<this>/incoming/<class>/")
        CfnOutput(self, "ModelsBucketName", value=self.models_bucket.bucket_name)
        CfnOutput(self, "StateTableName", value=self.state_table.table_name)

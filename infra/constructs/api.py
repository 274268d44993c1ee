"""The HTTP API: API Gateway (HTTP API, payload format 2.0) → Lambda ``api`` (FastAPI via Mangum).

Why an HTTP API and not a REST API (docs/architecture.md has the long form): a third of the price
per request, lower added latency, binary bodies arrive base64-encoded with no binary-media-type
setup, and stage throttling covers what we need. Write routes are authorised by the app itself
(bearer token held in Secrets Manager), so the API needs no authorizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import CfnOutput, Duration, RemovalPolicy
from aws_cdk import aws_apigatewayv2 as apigw
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from ..nag import acknowledge, iam5_object_finding

from .storage import CAPTURE_MAX_ITEMS, CAPTURE_RETENTION_DAYS, Storage

MODEL_REFRESH_SECONDS = 60
# HTTP API integrations time out at 30 s.
API_TIMEOUT = Duration.seconds(29)
# The write routes (bearer token), each its own route with its own throttle budget: stage
# throttling is per route, so anonymous traffic that uses up the public routes' budget (the
# $default route) cannot lock the operators out of these.
ADMIN_ROUTES = (("/upload-training-data", "POST"), ("/upload-url", "POST"), ("/retrain", "POST"),
                ("/models/{version}/activate", "POST"), ("/models/{version}/shadow", "POST"),
                ("/review/{prediction_id}", "POST"))


@dataclass(frozen=True)
class FunctionSettings:
    """What the stack's context decides about the Lambda functions."""

    architecture: lambda_.Architecture
    memory_mb: int
    reserved_concurrency: int | None
    throttle_rate: float
    throttle_burst: int
    stage: str
    admin_throttle_rate: float = 5.0
    admin_throttle_burst: int = 10


def function_log_group(scope: Construct, construct_id: str, retain: bool) -> logs.LogGroup:
    return logs.LogGroup(scope, construct_id, retention=logs.RetentionDays.ONE_MONTH,
                         removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY)


def function_role(scope: Construct, construct_id: str, log_group: logs.LogGroup) -> iam.Role:
    """A role with only what writing its own log group needs (no managed policy)."""
    role = iam.Role(scope, construct_id, assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    log_group.grant_write(role)
    return role


class Api(Construct):
    """``function`` (the FastAPI app), ``http_api``, ``admin_token`` (secret), ``url``."""

    def __init__(self, scope: Construct, construct_id: str, *, storage: Storage, code: lambda_.Code,
                 layer: lambda_.ILayerVersion, settings: FunctionSettings, retain: bool = True) -> None:
        super().__init__(scope, construct_id)
        self.storage = storage
        self.admin_token = secretsmanager.Secret(
            self, "AdminToken",
            description="Bearer token for the fruitpipe write routes (upload, retrain, activate)",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                exclude_punctuation=True, password_length=40),
            removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY,
        )
        acknowledge(self.admin_token, "AwsSolutions-SMG4",
                    "A static bearer token for a handful of operators; it is rotated by hand with "
                    "`aws secretsmanager put-secret-value` (docs/deploy.md) and the function picks a "
                    "new value up within its 60 s cache. A rotation Lambda would add code for no gain.")

        self.log_group = function_log_group(self, "Logs", retain)
        self.role = function_role(self, "Role", self.log_group)
        self.function = lambda_.Function(
            self, "Function",
            description="fruitpipe HTTP API (FastAPI via Mangum, LiteRT int8 MobileNetV2)",
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=settings.architecture,
            handler="functions.api.handler.handler",
            code=code,
            layers=[layer],
            memory_size=settings.memory_mb,
            timeout=API_TIMEOUT,
            reserved_concurrent_executions=settings.reserved_concurrency,
            role=self.role,
            log_group=self.log_group,
            environment={
                "FRUITPIPE_STAGE": settings.stage,
                "FRUITPIPE_DATA_BUCKET": storage.data_bucket.bucket_name,
                "FRUITPIPE_MODELS_BUCKET": storage.models_bucket.bucket_name,
                "FRUITPIPE_STATE_TABLE": storage.state_table.table_name,
                "FRUITPIPE_ADMIN_TOKEN_SECRET": self.admin_token.secret_arn,
                "FRUITPIPE_MODEL_REFRESH_SECONDS": str(MODEL_REFRESH_SECONDS),
                # The backbones travel inside the code asset (the build copies them there): the
                # default in backbone/, the others in model-zoo layout; the live bundle names its own.
                "FRUITPIPE_BACKBONE": "/var/task/backbone",
                "FRUITPIPE_MODEL_ZOO": "/var/task/backbone",
                "FRUITPIPE_THREADS": "1",
                "FRUITPIPE_CAPTURE_RETENTION_DAYS": str(CAPTURE_RETENTION_DAYS),
                "FRUITPIPE_CAPTURE_MAX_ITEMS": str(CAPTURE_MAX_ITEMS),
                "POWERTOOLS_SERVICE_NAME": "fruitpipe-api",
                "POWERTOOLS_METRICS_NAMESPACE": "Fruitpipe",
            },
        )
        self._grant()

        self.access_logs = function_log_group(self, "AccessLogs", retain)
        integration = integrations.HttpLambdaIntegration("Lambda", self.function)
        self.http_api = apigw.HttpApi(
            self, "HttpApi",
            description=f"fruitpipe ({settings.stage})",
            default_integration=integration,
            create_default_stage=False,
        )
        admin_routes = [route for path, method in ADMIN_ROUTES for route in self.http_api.add_routes(
            path=path, methods=[apigw.HttpMethod(method)], integration=integration)]
        self.stage = self.http_api.add_stage(
            "Stage", stage_name="$default", auto_deploy=True,
            throttle=apigw.ThrottleSettings(rate_limit=settings.throttle_rate, burst_limit=settings.throttle_burst),
        )
        cfn_stage = self.stage.node.default_child
        cfn_stage.route_settings = {  # type: ignore[union-attr]
            f"{method} {path}": {"ThrottlingRateLimit": settings.admin_throttle_rate,
                                 "ThrottlingBurstLimit": settings.admin_throttle_burst}
            for path, method in ADMIN_ROUTES}
        for route in admin_routes:  # route settings name routes that must exist first
            self.stage.node.add_dependency(route)
        cfn_stage.access_log_settings = apigw.CfnStage.AccessLogSettingsProperty(  # type: ignore[union-attr]
            destination_arn=self.access_logs.log_group_arn,
            format=('{"requestId":"$context.requestId","ip":"$context.identity.sourceIp",'
                    '"time":"$context.requestTime","method":"$context.httpMethod","path":"$context.path",'
                    '"status":"$context.status","length":"$context.responseLength",'
                    '"latency":"$context.integrationLatency","error":"$context.integrationErrorMessage"}'),
        )
        acknowledge(self.http_api, "AwsSolutions-APIG4",
                    "Reads (/predict, /health, /model-info) are public by design; write routes check a "
                    "bearer token from Secrets Manager inside the app (tests cover allow and deny).")
        self.url = self.http_api.api_endpoint
        CfnOutput(self, "Url", value=self.http_api.api_endpoint, description="fruitpipe API base URL")
        CfnOutput(self, "AdminTokenSecret", value=self.admin_token.secret_arn,
                  description="aws secretsmanager get-secret-value --secret-id <this> to read the admin token")

    def _grant(self) -> None:
        """Least privilege, by prefix: what the app reads and writes, and nothing else."""
        data, models = self.storage.data_bucket, self.storage.models_bucket
        # shadow-stats/: each instance's running shadow counts, summed by whichever decides (fruitpipe.shadow)
        self.role.add_to_policy(iam.PolicyStatement(
            sid="ReadModels", actions=["s3:GetObject"],
            resources=[models.arn_for_objects("versions/*"), models.arn_for_objects("rejected/*"),
                       models.arn_for_objects("live.json"), models.arn_for_objects("shadow.json"),
                       models.arn_for_objects("shadow-stats/*")]))
        self.role.add_to_policy(iam.PolicyStatement(
            sid="MoveLivePointer", actions=["s3:PutObject"],
            resources=[models.arn_for_objects("live.json"), models.arn_for_objects("shadow.json"),
                       models.arn_for_objects("shadow-stats/*")]))
        # ListBucket only under the prefixes the app reads; S3 also checks it (with the key as
        # s3:prefix) to answer a HEAD of a missing key 404 rather than 403.
        self.role.add_to_policy(iam.PolicyStatement(
            sid="ListModels", actions=["s3:ListBucket"], resources=[models.bucket_arn],
            conditions={"StringLike": {"s3:prefix": ["versions/*", "rejected/*", "live.json", "shadow.json",
                                                     "shadow-stats/*"]}}))
        # HEAD on dataset/ (de-duplication) needs GetObject. Writes there must be conditional
        # (If-None-Match: the data bucket's policy denies the others), so a filed image is never
        # overwritten. PutObject on incoming/ is what presigned upload forms carry.
        self.role.add_to_policy(iam.PolicyStatement(
            sid="FileImages", actions=["s3:GetObject", "s3:PutObject"],
            resources=[data.arn_for_objects("dataset/*")]))
        self.role.add_to_policy(iam.PolicyStatement(
            sid="PresignIncoming", actions=["s3:PutObject"], resources=[data.arn_for_objects("incoming/*")]))
        self.role.add_to_policy(iam.PolicyStatement(
            sid="ListDataset", actions=["s3:ListBucket"], resources=[data.bucket_arn],
            conditions={"StringLike": {"s3:prefix": ["dataset/*"]}}))
        # Captured predictions: kept, read, and pruned for good (every version) by the app itself.
        self.role.add_to_policy(iam.PolicyStatement(
            sid="CapturePredictions",
            actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion"],
            resources=[data.arn_for_objects("capture/*")]))
        self.role.add_to_policy(iam.PolicyStatement(
            sid="ListCapture", actions=["s3:ListBucket", "s3:ListBucketVersions"], resources=[data.bucket_arn],
            conditions={"StringLike": {"s3:prefix": ["capture/*"]}}))
        self.role.add_to_policy(iam.PolicyStatement(
            sid="CountNewImages", actions=["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
            resources=[self.storage.state_table.table_arn]))
        self.role.add_to_policy(iam.PolicyStatement(
            sid="ReadAdminToken", actions=["secretsmanager:GetSecretValue"],
            resources=[self.admin_token.secret_arn]))
        for resource in ("versions/*", "rejected/*", "shadow-stats/*", "dataset/*", "incoming/*", "capture/*"):
            bucket = models if resource in ("versions/*", "rejected/*", "shadow-stats/*") else data
            acknowledge(self.role, iam5_object_finding(bucket, resource),
                        f"Objects under one prefix ({resource}) of one bucket: keys are not known in advance.")

    def connect_state_machine(self, state_machine: sfn.IStateMachine) -> None:
        """Hook for the retrain pipeline (AWS part 2): let ``POST /retrain`` start it and read status."""
        self.function.add_environment("FRUITPIPE_STATE_MACHINE_ARN", state_machine.state_machine_arn)
        state_machine.grant_start_execution(self.function)
        # Only what status needs (grant_read would add states:Describe*/List* on "*").
        state_machine.grant(self.function, "states:ListExecutions")
        state_machine.grant_execution(self.function, "states:DescribeExecution", "states:GetExecutionHistory")


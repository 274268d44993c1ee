"""``RetrainPipeline``: the Step Functions state machine that retrains, gates and publishes.

Prepare (guard + dataset snapshot) → SageMaker training job (``.sync``, image built from
``training_job/`` at deploy time) → evaluate + gate → publish | reject → outcome metrics.
Every task has a Catch that records a ``failed`` outcome and notifies SNS; the live pointer is only
ever moved by the publish step, after its checks. Triggers: a weekly schedule, a periodic
new-data check against ingest's counter, and alarms routed by :meth:`retrain_on_alarm` (drift);
the API starts it for ``POST /retrain``. Step logic lives in :mod:`fruitpipe.pipeline`.

Context (``-c key=value``): trainingInstanceType, trainingVolumeGb, trainingMaxRuntimeMinutes,
trainingHyperparameters (JSON object), retrainSchedule (EventBridge expression or ``off``),
newImagesThreshold, newDataCheckMinutes (0 = off), minImagesPerClass, gateTolerance, alertEmail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aws_cdk import Duration, IgnoreMode, RemovalPolicy, Size, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from aws_cdk import aws_cloudwatch as cloudwatch
from constructs import Construct

from fruitpipe.pipeline import states

from ..nag import acknowledge, iam5_object_finding
from fruitpipe.pipeline.report import NAMESPACE as RETRAIN_NAMESPACE

REPO = Path(__file__).resolve().parents[2]
DEFAULTS: dict[str, Any] = {
    "trainingInstanceType": "ml.m5.large",  # the backbone is int8 LiteRT on CPU: no GPU needed
    "trainingVolumeGb": 30,
    "trainingMaxRuntimeMinutes": 120,
    "trainingHyperparameters": {},
    "retrainSchedule": "cron(0 3 ? * SUN *)",  # weekly, Sunday 03:00 UTC
    "newImagesThreshold": 1000,
    "newDataCheckMinutes": 15,
    "minImagesPerClass": 20,
    "gateTolerance": 0,
    "shadowRequests": 0,  # > 0: a candidate the gate passed runs in shadow for this many requests first
    "alertEmail": "",
}
# SageMaker parses these from the job's `name=value` log lines (see training_job).
TRAINING_METRICS = ("accuracy", "macro_f1", "train_accuracy", "train_loss", "val_accuracy", "val_loss",
                    "embedded_new", "cached", "n_train", "n_validation", "train_seconds", "progress")
LAMBDA_THROTTLES = ["Lambda.TooManyRequestsException", "Lambda.ServiceException",
                    "Lambda.AWSLambdaException", "Lambda.SdkClientException", "ThrottlingException"]


def metric_definitions() -> list[dict[str, str]]:
    return [{"Name": m, "Regex": rf"(?:^|\s){m}=([-+0-9.eE]+)"} for m in TRAINING_METRICS]


class RetrainPipeline(Construct):
    """``state_machine``, ``alerts`` (SNS topic), ``trigger_function``, ``training_role``, step functions."""

    def __init__(self, scope: Construct, construct_id: str, *, storage: Any, code: lambda_.Code,
                 layer: lambda_.ILayerVersion | None, settings: Any, training_dir: Path | None = None,
                 retain: bool = True) -> None:
        super().__init__(scope, construct_id)
        self.storage, self.code, self.layer, self.settings = storage, code, layer, settings
        self.retain = retain
        stack = Stack.of(self)
        cfg = {k: self.node.try_get_context(k) if self.node.try_get_context(k) is not None else v
               for k, v in DEFAULTS.items()}
        self.config = cfg
        # A fixed name lets the step roles name the state machine's ARN without a dependency cycle.
        self.state_machine_name = f"{stack.stack_name}-retrain"
        sm_arn = stack.format_arn(service="states", resource="stateMachine",
                                  resource_name=self.state_machine_name,
                                  arn_format=_colon())

        # --- alerts ------------------------------------------------------------------------------
        key = kms.Key(self, "AlertsKey", enable_key_rotation=True,
                      description="Encrypts the fruitpipe alerts topic",
                      removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY)
        for service in ("cloudwatch.amazonaws.com", "events.amazonaws.com"):
            key.grant(iam.ServicePrincipal(service), "kms:Decrypt", "kms:GenerateDataKey*")
        self.alerts = sns.Topic(self, "Alerts", display_name="fruitpipe alerts", master_key=key,
                                enforce_ssl=True)
        if cfg["alertEmail"]:
            self.alerts.add_subscription(subs.EmailSubscription(str(cfg["alertEmail"])))

        # --- step functions (Lambda) --------------------------------------------------------------
        data, models, table = storage.data_bucket, storage.models_bucket, storage.state_table
        base_env = {"FRUITPIPE_DATA_BUCKET": data.bucket_name, "FRUITPIPE_MODELS_BUCKET": models.bucket_name,
                    "FRUITPIPE_STATE_TABLE": table.table_name, "FRUITPIPE_BACKBONE": "/var/task/backbone",
                    "FRUITPIPE_MODEL_ZOO": "/var/task/backbone", "FRUITPIPE_THREADS": "2", "POWERTOOLS_SERVICE_NAME": "fruitpipe-retrain"}
        self.prepare_fn = self._function("Prepare", "prepare", base_env | {
            "FRUITPIPE_MIN_IMAGES_PER_CLASS": str(cfg["minImagesPerClass"]),
            "FRUITPIPE_VALIDATION_PERCENT": "10"}, memory=512, timeout=Duration.minutes(5))
        self.evaluate_fn = self._function("Evaluate", "evaluate", base_env | {
            "FRUITPIPE_GATE_TOLERANCE": str(cfg["gateTolerance"])}, memory=3008, timeout=Duration.minutes(15),
            ephemeral_mb=4096)
        self.publish_fn = self._function("Publish", "publish", base_env | {
            "FRUITPIPE_SHADOW_REQUESTS": str(int(cfg["shadowRequests"]))}, memory=512, timeout=Duration.minutes(5))
        self.reject_fn = self._function("Reject", "reject", base_env, memory=256, timeout=Duration.minutes(2))
        self.report_fn = self._function("Report", "report", base_env | {
            "FRUITPIPE_RETRAIN_NAMESPACE": RETRAIN_NAMESPACE}, memory=256, timeout=Duration.minutes(1))
        self.trigger_function = self._function("Trigger", "trigger", base_env | {
            "FRUITPIPE_STATE_MACHINE_ARN": sm_arn,
            "FRUITPIPE_NEW_IMAGES_THRESHOLD": str(cfg["newImagesThreshold"])},
            memory=256, timeout=Duration.minutes(1))
        self._grant_steps(sm_arn)

        # --- SageMaker ------------------------------------------------------------------------------
        self.training_role = self._training_role()
        # The same asset DockerImage.from_asset makes (built and pushed at deploy time, only staged at
        # synth), held here so the pull grant can go on the role explicitly: the task receives an
        # immutable view of the role, because for JSON-path S3 locations it would otherwise add
        # s3:GetObject/PutObject/ListBucket on "*".
        # Build context = the repository root (the image installs the fruitpipe package), limited
        # to what the Dockerfile copies so synth never hashes venvs, build output or data.
        # linux/amd64 whatever the build machine: SageMaker's ml.* CPU instances are x86_64, and
        # tensorflow-cpu has no aarch64 wheel for Python 3.12. The image installs the layer's pinned
        # versions (layers/requirements.txt as a constraints file, see training_job/requirements.txt).
        self.training_asset = ecr_assets.DockerImageAsset(
            self, "TrainingImage", directory=str(training_dir or REPO), file="training_job/Dockerfile",
            platform=ecr_assets.Platform.LINUX_AMD64, ignore_mode=IgnoreMode.DOCKER,
            exclude=["*", "!pyproject.toml", "!README.md", "!fruitpipe", "!training_job", "!layers",
                     "layers/*", "!layers/requirements.txt", "**/__pycache__", "**/*.pyc"])
        self.training_asset.repository.grant_pull(self.training_role)
        self.training_image = tasks.DockerImage.from_ecr_repository(
            self.training_asset.repository, self.training_asset.image_tag)

        # --- state machine --------------------------------------------------------------------------
        # No fixed name: CloudFormation names it, so a deploy retried after a rollback (which keeps a
        # retained group) never fails with "already exists".
        self.log_group = logs.LogGroup(
            self, "StateMachineLogs", retention=logs.RetentionDays.THREE_MONTHS,
            removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY)
        self.state_machine = sfn.StateMachine(
            self, "StateMachine", state_machine_name=self.state_machine_name,
            definition_body=sfn.DefinitionBody.from_chainable(self._definition()),
            timeout=Duration.minutes(int(cfg["trainingMaxRuntimeMinutes"]) + 60),
            tracing_enabled=True,
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=True),
        )
        # The topic is encrypted with a customer-managed key: publishing needs kms:GenerateDataKey*
        # and kms:Decrypt on it too, which SnsPublish's own grant (sns:Publish) does not add.
        self.alerts.grant_publish(self.state_machine)
        self._triggers(cfg)
        self._acknowledge()

    def _acknowledge(self) -> None:
        """cdk-nag IAM5 findings of this construct, each with why the wildcard is the narrowest choice."""
        data, models = self.storage.data_bucket, self.storage.models_bucket
        steps = [self.prepare_fn, self.evaluate_fn, self.publish_fn, self.reject_fn, self.report_fn,
                 self.trigger_function]
        star = ("X-Ray (xray:PutTraceSegments/PutTelemetryRecords), cloudwatch:PutMetricData (limited by a "
                "cloudwatch:namespace condition) and ecr:GetAuthorizationToken support no resource-level "
                "permissions; AWS documents '*' as their only resource.")
        for fn in steps:
            acknowledge(fn.role, "AwsSolutions-IAM5[Resource::*]", star)  # type: ignore[arg-type]
        acknowledge(self.training_role, "AwsSolutions-IAM5[Resource::*]", star)
        acknowledge(self.state_machine.role, "AwsSolutions-IAM5[Resource::*]", star)
        acknowledge(self.state_machine.role, "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
                    "Topic.grant_publish on the alerts topic's own key only: SNS needs GenerateDataKey "
                    "(and its WithoutPlaintext form) to encrypt each message with the customer-managed key.")
        prefixes = {"runs/*": "per-run training inputs and outputs, named by the run's version",
                    "cache/embeddings/*": "embedding-cache shards, named by image hash",
                    "versions/*": "immutable model versions, named at training time",
                    "rejected/*": "rejected candidates, named at training time",
                    "dataset/*": "filed images, named by content hash (Prepare: a HEAD for the origin)"}
        grants = {self.prepare_fn.role: ["runs/*", "dataset/*"], self.evaluate_fn.role: ["runs/*", "cache/embeddings/*",
                  "versions/*", "dataset/*"], self.publish_fn.role: ["runs/*", "versions/*"],
                  self.reject_fn.role: ["runs/*", "rejected/*"],
                  self.training_role: ["runs/*", "cache/embeddings/*", "versions/*", "dataset/*"]}
        for role, patterns in grants.items():
            for pattern in patterns:
                bucket = data if pattern == "dataset/*" else models
                acknowledge(role, iam5_object_finding(bucket, pattern),  # type: ignore[arg-type]
                            f"Objects under one prefix of one bucket ({prefixes[pattern]}); keys are not "
                            "known when the stack is deployed.")
        acknowledge(self.training_role, "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:"
                    "<AWS::AccountId>:log-group:/aws/sagemaker/TrainingJobs:*]",
                    "SageMaker writes one log stream per training job into this one log group; stream names "
                    "are chosen by SageMaker.")
        stack = Stack.of(self)
        for fn in steps[:5]:
            lid = stack.get_logical_id(fn.node.default_child)  # type: ignore[arg-type]
            acknowledge(self.state_machine.role, f"AwsSolutions-IAM5[Resource::<{lid}.Arn>:*]",
                        "CDK's LambdaInvoke grant covers the function's versions and aliases (ARN:*); the "
                        "function itself is named exactly.")
        acknowledge(self.state_machine.role, "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:sagemaker:"
                    "<AWS::Region>:<AWS::AccountId>:training-job/*]",
                    "Training jobs are named per run (the candidate version) at run time; the .sync "
                    "integration must describe/stop whichever job this execution created.")

    # ------------------------------------------------------------------------------------------------
    def _function(self, name: str, step: str, env: dict[str, str], *, memory: int, timeout: Duration,
                  ephemeral_mb: int = 512) -> lambda_.Function:
        log_group = logs.LogGroup(self, f"{name}Logs", retention=logs.RetentionDays.ONE_MONTH,
                                  removal_policy=RemovalPolicy.RETAIN if self.retain else RemovalPolicy.DESTROY)
        role = iam.Role(self, f"{name}Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
        log_group.grant_write(role)
        return lambda_.Function(
            self, f"{name}Function", description=f"fruitpipe retrain step: {step}",
            runtime=lambda_.Runtime.PYTHON_3_12, architecture=self.settings.architecture,
            handler=f"functions.pipeline.{step}.handler.handler", code=self.code,
            layers=[self.layer] if self.layer else None, memory_size=memory, timeout=timeout,
            ephemeral_storage_size=Size.mebibytes(ephemeral_mb), role=role, log_group=log_group,
            tracing=lambda_.Tracing.ACTIVE, environment=env)

    @staticmethod
    def _objects(role: iam.IRole, sid: str, actions: list[str], bucket: Any, *patterns: str) -> None:
        role.add_to_principal_policy(iam.PolicyStatement(
            sid=sid, actions=actions, resources=[bucket.arn_for_objects(p) for p in patterns]))

    @staticmethod
    def _list(role: iam.IRole, sid: str, bucket: Any, *prefixes: str) -> None:
        role.add_to_principal_policy(iam.PolicyStatement(
            sid=sid, actions=["s3:ListBucket"], resources=[bucket.bucket_arn],
            conditions={"StringLike": {"s3:prefix": list(prefixes)}} if prefixes else None))

    def _grant_steps(self, sm_arn: str) -> None:
        data, models, table = self.storage.data_bucket, self.storage.models_bucket, self.storage.state_table
        get, put = ["s3:GetObject"], ["s3:PutObject"]
        r = self.prepare_fn.role
        self._list(r, "ListDataset", data, "dataset/*")
        self._list(r, "ListModels", models)  # HeadObject of a missing key answers 404 only with ListBucket
        self._objects(r, "WriteRunInputs", put, models, "runs/*", "cache/embeddings/.keep",
                      "cache/embeddings/origins.json")
        self._objects(r, "ReadCacheMarker", get, models, "cache/embeddings/.keep", "cache/embeddings/origins.json")
        # HEAD of each filed image new since the last run: its "source" metadata (its origin)
        self._objects(r, "ReadDatasetOrigins", get, data, "dataset/*")
        # live.json: the live version, which fills the base_model channel of a warm start
        self._objects(r, "ReadLivePointer", get, models, "live.json")
        r.add_to_principal_policy(iam.PolicyStatement(sid="ReadCounter", actions=["dynamodb:GetItem"],
                                                      resources=[table.table_arn]))
        r.add_to_principal_policy(iam.PolicyStatement(sid="Guard", actions=["states:ListExecutions"],
                                                      resources=[sm_arn]))
        r = self.evaluate_fn.role
        self._list(r, "ListModels", models)
        self._objects(r, "ReadModels", get, models, "runs/*", "versions/*", "live.json", "cache/embeddings/*")
        self._objects(r, "WriteCache", put, models, "cache/embeddings/*")
        self._objects(r, "ReadDataset", get, data, "dataset/*")
        r = self.publish_fn.role
        self._list(r, "ListModels", models)
        self._objects(r, "ReadModels", get, models, "runs/*", "versions/*", "live.json")
        self._objects(r, "WriteVersions", put, models, "versions/*", "live.json", "shadow.json")
        r = self.reject_fn.role
        self._list(r, "ListModels", models)
        self._objects(r, "ReadRuns", get, models, "runs/*")
        self._objects(r, "WriteRejected", put, models, "rejected/*")
        self.report_fn.role.add_to_principal_policy(iam.PolicyStatement(
            sid="PutRetrainMetrics", actions=["cloudwatch:PutMetricData"], resources=["*"],
            conditions={"StringEquals": {"cloudwatch:namespace": RETRAIN_NAMESPACE}}))
        # A run that ends (promoted or rejected) consumes the new-images it trained on; a failed one does not.
        self.report_fn.role.add_to_principal_policy(iam.PolicyStatement(
            sid="ConsumeCounter", actions=["dynamodb:UpdateItem"], resources=[table.table_arn]))
        r = self.trigger_function.role
        r.add_to_principal_policy(iam.PolicyStatement(sid="StartRetrain", actions=[
            "states:ListExecutions", "states:StartExecution"], resources=[sm_arn]))
        r.add_to_principal_policy(iam.PolicyStatement(sid="ReadCounter", actions=["dynamodb:GetItem"],
                                                      resources=[table.table_arn]))

    def _training_role(self) -> iam.Role:
        """What the training container may do: read its inputs, write its outputs, log. Nothing else."""
        data, models = self.storage.data_bucket, self.storage.models_bucket
        stack = Stack.of(self)
        role = iam.Role(self, "TrainingRole", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
                        description="fruitpipe SageMaker training job")
        self._objects(role, "ReadDataset", ["s3:GetObject"], data, "dataset/*")
        # versions/*: the live bundle, the base_model channel of a warm start.
        self._objects(role, "ReadRunInputsAndCache", ["s3:GetObject"], models, "runs/*", "cache/embeddings/*",
                      "versions/*")
        self._objects(role, "WriteRunOutputs", ["s3:PutObject"], models, "runs/*")
        self._list(role, "ListDataset", data, "dataset/*")
        self._list(role, "ListRunsAndCache", models, "runs/*", "cache/embeddings/*", "versions/*")
        log_arn = stack.format_arn(service="logs", resource="log-group",
                                   resource_name="/aws/sagemaker/TrainingJobs:*", arn_format=_colon())
        role.add_to_policy(iam.PolicyStatement(sid="TrainingLogs", actions=[
            "logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            resources=[log_arn]))
        role.add_to_policy(iam.PolicyStatement(
            sid="TrainingMetrics", actions=["cloudwatch:PutMetricData"], resources=["*"],
            conditions={"StringEquals": {"cloudwatch:namespace": "/aws/sagemaker/TrainingJobs"}}))
        return role

    # ------------------------------------------------------------------------------------------------
    def _invoke(self, state: str, fn: lambda_.IFunction, payload: dict[str, Any] | None, result: str) -> tasks.LambdaInvoke:
        task = tasks.LambdaInvoke(self, state, state_name=state, lambda_function=fn,
                                  payload=sfn.TaskInput.from_object(payload) if payload is not None else None,
                                  payload_response_only=True,
                                  retry_on_service_exceptions=False, result_path=result)
        task.add_retry(errors=LAMBDA_THROTTLES, interval=Duration.seconds(2), max_attempts=6,
                       backoff_rate=2, jitter_strategy=sfn.JitterType.FULL)
        return task

    def _definition(self) -> sfn.IChainable:
        cfg = self.config
        # The execution fails with the step's own cause (e.g. a failed training job's description
        # with its FailureReason), which DescribeExecution and GET /retraining-status show; every
        # path here has $.error (the Catches write it). The error name stays fixed for consumers;
        # the step's own error name is in $.error.Error, the history and the SNS alert.
        failed = sfn.Fail(self, states.FAILED, error="RetrainFailed", cause_path="$.error.Cause")
        notify = tasks.SnsPublish(
            self, states.NOTIFY_FAILURE, state_name=states.NOTIFY_FAILURE, topic=self.alerts,
            subject="fruitpipe retrain failed",
            message=sfn.TaskInput.from_object({
                "execution": sfn.JsonPath.string_at("$$.Execution.Id"),
                "error": sfn.JsonPath.string_at("$.error.Error"),
                "cause": sfn.JsonPath.string_at("$.error.Cause"),
                "live_model": "unchanged"}),
            result_path=sfn.JsonPath.DISCARD)
        notify.add_retry(errors=["SNS.ThrottledException", "SNS.InternalErrorException", "ThrottlingException"],
                         interval=Duration.seconds(2), max_attempts=4, backoff_rate=2)
        notify.add_catch(failed, result_path="$.notify_error")
        # The whole state: a failure in Prepare leaves no $.prepare, and a missing path here would be
        # a States.Runtime error, which no Catch can handle (the SNS notification would be lost).
        report_failure = self._invoke(states.REPORT_FAILURE, self.report_fn, None, "$.report")
        report_failure.add_catch(notify, result_path="$.report_error")
        report_failure.next(notify).next(failed)

        def guarded(task: sfn.TaskStateBase) -> sfn.TaskStateBase:
            task.add_catch(report_failure, errors=["States.ALL"], result_path="$.error")
            return task

        prepare = guarded(self._invoke(states.PREPARE, self.prepare_fn, {
            "input.$": "$", "execution_arn.$": "$$.Execution.Id",
            "state_machine_arn.$": "$$.StateMachine.Id"}, "$.prepare"))

        # Hyperparameters the job knows (fruitpipe.training.Config); it names the bundle version itself.
        hyper = {str(k): str(v) for k, v in _mapping(cfg["trainingHyperparameters"]).items()}

        def channel(name: str, path: str, data_type: tasks.S3DataType) -> tasks.Channel:
            return tasks.Channel(channel_name=name, data_source=tasks.DataSource(s3_data_source=tasks.S3DataSource(
                s3_data_type=data_type, s3_location=tasks.S3Location.from_json_expression(path),
                s3_data_distribution_type=tasks.S3DataDistributionType.FULLY_REPLICATED)))

        def train_task(state: str, warm: bool) -> sfn.TaskStateBase:
            data = [
                channel("train", "$.prepare.train_manifest", tasks.S3DataType.MANIFEST_FILE),
                channel("validation", "$.prepare.validation_manifest", tasks.S3DataType.MANIFEST_FILE),
                # The embedding cache: shards keyed by image sha256, so a retrain embeds only new images.
                channel("cache", "$.prepare.cache_uri", tasks.S3DataType.S3_PREFIX),
            ]
            if warm:  # the live bundle (versions/<live>/): the job warm-starts from its block and head
                data.append(channel("base_model", "$.prepare.base_model_uri", tasks.S3DataType.S3_PREFIX))
            task = tasks.SageMakerCreateTrainingJob(
                self, state, state_name=state,
                integration_pattern=sfn.IntegrationPattern.RUN_JOB,
                # A new name for every attempt (a Retry, a redrive): SageMaker refuses a name it has
                # seen before. The run's version plus 8 hex digits of a UUID (<= 63 characters).
                training_job_name=sfn.JsonPath.format(
                    "{}-{}", sfn.JsonPath.string_at("$.prepare.version"),
                    sfn.JsonPath.array_get_item(sfn.JsonPath.string_split(sfn.JsonPath.uuid(), "-"), 0)),
                role=self.training_role.without_policy_updates(),
                algorithm_specification=tasks.AlgorithmSpecification(
                    training_image=self.training_image, training_input_mode=tasks.InputMode.FILE,
                    metric_definitions=[tasks.MetricDefinition(name=d["Name"], regex=d["Regex"])
                                        for d in metric_definitions()]),
                input_data_config=data,
                output_data_config=tasks.OutputDataConfig(
                    s3_output_location=tasks.S3Location.from_json_expression("$.prepare.output_uri")),
                resource_config=tasks.ResourceConfig(
                    instance_count=1,
                    instance_type=ec2.InstanceType(str(cfg["trainingInstanceType"]).removeprefix("ml.")),
                    volume_size=Size.gibibytes(int(cfg["trainingVolumeGb"]))),
                stopping_condition=tasks.StoppingCondition(
                    max_runtime=Duration.minutes(int(cfg["trainingMaxRuntimeMinutes"]))),
                hyperparameters=hyper or None,
                result_selector={"job_name.$": "$.TrainingJobName", "status.$": "$.TrainingJobStatus",
                                 "model_artifacts.$": "$.ModelArtifacts.S3ModelArtifacts"},
                result_path="$.training",
            )
            task.add_retry(errors=["SageMaker.AmazonSageMakerException", "ThrottlingException"],
                           interval=Duration.seconds(30), max_attempts=3, backoff_rate=2,
                           jitter_strategy=sfn.JitterType.FULL)
            return guarded(task)

        train, train_warm = train_task(states.TRAIN, False), train_task(states.TRAIN_WARM, True)

        evaluate = guarded(self._invoke(states.EVALUATE, self.evaluate_fn, {
            "model_artifacts.$": "$.training.model_artifacts",
            "validation_manifest.$": "$.prepare.validation_manifest",
            "version.$": "$.prepare.version"}, "$.evaluation"))
        publish = guarded(self._invoke(states.PUBLISH, self.publish_fn, {
            "model_artifacts.$": "$.training.model_artifacts",
            "version.$": "$.evaluation.candidate_version", "baseline.$": "$.evaluation.baseline",
            "metrics.$": "$.evaluation.candidate", "reason.$": "$.evaluation.reason",
            "lineage": {"training_job.$": "$.training.job_name", "execution_arn.$": "$$.Execution.Id",
                        "snapshot.$": "$.prepare.snapshot_uri", "base_model.$": "$.prepare.base_model"}},
            "$.publish"))
        reject = guarded(self._invoke(states.REJECT, self.reject_fn, {
            "model_artifacts.$": "$.training.model_artifacts",
            "version.$": "$.evaluation.candidate_version", "reason.$": "$.evaluation.reason",
            "evaluation.$": "$.evaluation"}, "$.publish"))
        report = guarded(self._invoke(states.REPORT, self.report_fn, {
            "prepare.$": "$.prepare", "evaluation.$": "$.evaluation"}, "$.report"))
        done = sfn.Succeed(self, states.DONE)
        already = sfn.Succeed(self, states.ALREADY_RUNNING,
                              comment="Another execution is running; this one ends without training")

        report.next(done)
        promote = sfn.Choice(self, states.PROMOTE).when(
            sfn.Condition.boolean_equals("$.evaluation.promote", True), publish.next(report)
        ).otherwise(reject.next(report))
        evaluate.next(promote)
        train.next(evaluate)
        train_warm.next(evaluate)
        # Prepare names the live version when there is one; the first run has none and trains cold.
        warm_start = sfn.Choice(self, states.WARM_START).when(
            sfn.Condition.is_not_null("$.prepare.base_model"), train_warm).otherwise(train)
        proceed = sfn.Choice(self, states.PROCEED).when(
            sfn.Condition.boolean_equals("$.prepare.proceed", False), already
        ).otherwise(warm_start)
        return prepare.next(proceed)

    # ------------------------------------------------------------------------------------------------
    def _triggers(self, cfg: dict[str, Any]) -> None:
        self.rules: dict[str, events.Rule] = {}
        schedule = str(cfg["retrainSchedule"]).strip()
        if schedule and schedule.lower() != "off":
            self.rules["schedule"] = events.Rule(
                self, "ScheduleRule", description="Scheduled retrain (context retrainSchedule)",
                schedule=events.Schedule.expression(schedule),
                targets=[targets.LambdaFunction(self.trigger_function, retry_attempts=2,
                                                event=events.RuleTargetInput.from_object({"trigger": "schedule"}))])
        minutes = int(cfg["newDataCheckMinutes"])
        if minutes > 0:
            self.rules["new-data"] = events.Rule(
                self, "NewDataRule",
                description=f"Retrain once {cfg['newImagesThreshold']} new images are filed (checked every {minutes} min)",
                schedule=events.Schedule.rate(Duration.minutes(minutes)),
                targets=[targets.LambdaFunction(self.trigger_function, retry_attempts=2,
                                                event=events.RuleTargetInput.from_object({"trigger": "new-data"}))])

    def retrain_on_alarm(self, construct_id: str, alarm: cloudwatch.IAlarm) -> events.Rule:
        """Route ``alarm`` entering ALARM (EventBridge "CloudWatch Alarm State Change") to a retrain."""
        rule = events.Rule(self, construct_id, description=f"Retrain when {construct_id} fires",
                           event_pattern=events.EventPattern(
                               source=["aws.cloudwatch"], detail_type=["CloudWatch Alarm State Change"],
                               resources=[alarm.alarm_arn], detail={"state": {"value": ["ALARM"]}}),
                           targets=[targets.LambdaFunction(self.trigger_function, retry_attempts=2)])
        self.rules[construct_id] = rule
        return rule

    def rollback_on_alarm(self, construct_id: str, alarm: cloudwatch.IAlarm, window_seconds: int) -> events.Rule:
        """Route ``alarm`` entering ALARM to the rollback Lambda (``functions/pipeline/rollback``),
        which re-activates ``live.json``'s previous version when the live one became live less than
        ``window_seconds`` ago. Its role may read the versions and the pointer, write the pointer
        and publish to the alerts topic; nothing else."""
        models = self.storage.models_bucket
        fn = self._function("Rollback", "rollback", {
            "FRUITPIPE_MODELS_BUCKET": models.bucket_name, "FRUITPIPE_ALERTS_TOPIC_ARN": self.alerts.topic_arn,
            "FRUITPIPE_ROLLBACK_WINDOW_SECONDS": str(window_seconds), "POWERTOOLS_SERVICE_NAME": "fruitpipe-rollback"},
            memory=256, timeout=Duration.minutes(2))
        self._objects(fn.role, "ReadVersions", ["s3:GetObject"], models, "versions/*", "live.json")  # type: ignore[arg-type]
        self._objects(fn.role, "MoveLivePointer", ["s3:PutObject"], models, "live.json")  # type: ignore[arg-type]
        self._list(fn.role, "ListModels", models, "versions/*", "live.json")  # type: ignore[arg-type]
        self.alerts.grant_publish(fn)
        self.rollback_function = fn
        acknowledge(fn.role, "AwsSolutions-IAM5[Resource::*]",  # type: ignore[arg-type]
                    "X-Ray (xray:PutTraceSegments/PutTelemetryRecords) supports no resource-level permissions; "
                    "AWS documents '*' as its only resource.")
        acknowledge(fn.role, iam5_object_finding(models, "versions/*"),  # type: ignore[arg-type]
                    "Objects under one prefix of one bucket (immutable model versions, named at training "
                    "time): the rollback verifies the previous version's files before pointing at it.")
        acknowledge(fn.role, "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",  # type: ignore[arg-type]
                    "Topic.grant_publish on the alerts topic's own key only: SNS needs GenerateDataKey "
                    "(and its WithoutPlaintext form) to encrypt each message with the customer-managed key.")
        rule = events.Rule(self, construct_id, description=f"Roll back when {construct_id} fires",
                           event_pattern=events.EventPattern(
                               source=["aws.cloudwatch"], detail_type=["CloudWatch Alarm State Change"],
                               resources=[alarm.alarm_arn], detail={"state": {"value": ["ALARM"]}}),
                           targets=[targets.LambdaFunction(fn, retry_attempts=2)])
        self.rules[construct_id] = rule
        return rule

    def grant_status_read(self, grantee: iam.IGrantable) -> None:
        """Let ``grantee`` (the API, which already may start and read executions) read the training
        job of a run, for ``GET /retraining-status``."""
        grantee.grant_principal.add_to_principal_policy(iam.PolicyStatement(
            sid="ReadTrainingJobs", actions=["sagemaker:DescribeTrainingJob"],
            resources=[Stack.of(self).format_arn(service="sagemaker", resource="training-job", resource_name="*")]))
        stack = Stack.of(self)
        sm_id = stack.get_logical_id(self.state_machine.node.default_child)  # type: ignore[arg-type]
        acknowledge(grantee.grant_principal, "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:"
                    "<AWS::AccountId>:training-job/*]",
                    "Training jobs are named per run at run time; status reads whichever job the latest "
                    "execution started (DescribeTrainingJob only).")
        acknowledge(grantee.grant_principal, "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:"
                    "<AWS::AccountId>:execution:{\"Fn::Select\":[6,{\"Fn::Split\":[\":\",{\"Ref\":\""
                    f"{sm_id}\"}}]}}]}}:*]",
                    "Executions of this one state machine (names are chosen per run): status reads the latest.")



def _mapping(value: Any) -> dict[str, Any]:
    """A context value that is a JSON object (``-c trainingHyperparameters='{"epochs": "60"}'``)."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else {}
    if not isinstance(value, dict):
        raise ValueError(f"context trainingHyperparameters must be a JSON object, not {value!r}")
    return value


def _colon() -> Any:
    from aws_cdk import ArnFormat
    return ArnFormat.COLON_RESOURCE_NAME



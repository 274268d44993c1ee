"""Run the synthesized retrain state machine on moto's ASL interpreter, end to end.

moto (5.2+) executes a definition when ``execute_state_machine`` is on (``moto.core.config``). Its
interpreter calls each service over HTTP on ``localhost:$MOTO_PORT`` (the moto server). Two edges
are emulated here, in the server's process, after their real contracts:

* **Lambda** (``Invoke``): moto's ``LambdaFunction._invoke_lambda`` runs the function's handler in a
  clean CPython 3.12 (``python3.12 -I -S``) with only the function asset, the layer and the runtime's
  boto3 on its path (what Lambda has), with the function's environment from the template. The one
  rewrite: ``/var/task`` (the asset's root on Lambda) becomes the built asset's folder.
* **SageMaker** (``createTrainingJob.sync``): the interpreter ships no SageMaker integration, so
  :class:`SageMakerTask` (modelled on its Batch ``.sync`` integration) calls ``CreateTrainingJob`` and
  polls ``DescribeTrainingJob`` on the server, where :class:`TrainingJobs` answers: the request is
  validated against botocore's service model, a used name is refused (``ValidationException``), the
  channels are materialised from S3 into an ``/opt/ml`` tree (``S3Prefix``: keys relative to the
  prefix; ``ManifestFile``: the manifest's entries), the image's ``ENTRYPOINT`` (read from
  ``training_job/Dockerfile``) runs with the argument ``train`` and no ``SM_*`` variable, the tree
  bind-mounted at the real ``/opt/ml`` in a private mount namespace (``unshare -m``); ``model/`` and
  ``output/data/`` are uploaded as ``<S3OutputPath>/<job>/output/model.tar.gz`` / ``output.tar.gz``;
  a failed job answers ``Failed`` with ``FailureReason`` from ``/opt/ml/output/failure``.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from fruitpipe.pipeline import s3util

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "training_job" / "Dockerfile"
RUNTIME_SCRIPT = Path(__file__).with_name("lambda_runtime.py")
ACCOUNT, REGION = "123456789012", "us-east-1"
# Bind the job's folder at /opt/ml in a private mount namespace. /opt/ml does not exist on this
# machine: /opt is covered with a tmpfs holding links to its old entries and an empty ml/.
_NAMESPACE_SCRIPT = r"""
set -e
mount --make-rprivate /
if [ ! -d /opt/ml ]; then
  mkdir -p "$FP_KEEP"
  mount --bind /opt "$FP_KEEP"
  mount -t tmpfs tmpfs /opt
  for e in "$FP_KEEP"/*; do ln -s "$e" /opt/; done
  mkdir /opt/ml
fi
mount --bind "$FP_JOB" /opt/ml
cd "$FP_WORKDIR"
exec "$@"
"""


def image_entrypoint() -> list[str]:
    """The Dockerfile's ``ENTRYPOINT`` (exec form); ``python`` is this interpreter, which has the
    packages the image installs."""
    line = next(x for x in DOCKERFILE.read_text().splitlines() if x.startswith("ENTRYPOINT"))
    argv = json.loads(line.split(None, 1)[1])
    return [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]


def image_env() -> dict[str, str]:
    """The Dockerfile's ``ENV`` values, except the backbone cache the image bakes in at build time
    (here the host's verified cache stands in for it)."""
    env: dict[str, str] = {}
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("ENV "):
            env.update(item.split("=", 1) for item in shlex.split(line[4:]))
    env.pop("FRUITPIPE_CACHE", None)
    return env


def run_container(job_dir: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``docker run IMAGE train`` with ``job_dir`` as ``/opt/ml``: returns the finished process."""
    full = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "PYTHONPATH": str(REPO),
            "FRUITPIPE_THREADS": "1", **image_env(), **env,
            "FP_JOB": str(job_dir), "FP_KEEP": str(job_dir.parent / f".opt-{job_dir.name}"),
            "FP_WORKDIR": str(REPO)}
    return subprocess.run(["unshare", "-m", "sh", "-c", _NAMESPACE_SCRIPT, "sh", *image_entrypoint(), "train"],
                          env=full, capture_output=True, text=True, timeout=timeout)


class TrainingJobs:
    """SageMaker's training-job API as the moto server answers it (see the module docstring)."""

    def __init__(self, s3: Any, workdir: Path, *, timeout: float = 300) -> None:
        import botocore.session
        self.s3, self.workdir, self.timeout = s3, workdir, timeout
        self.model = botocore.session.get_session().get_service_model("sagemaker")
        self.jobs: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.hooks: list[Callable[[dict[str, Any], Path], None]] = []  # called before the container runs
        self.tamper_archive: Callable[[bytes], bytes] | None = None  # applied to model.tar.gz

    # --- API ---------------------------------------------------------------------------------------
    def create(self, request: dict[str, Any]) -> dict[str, Any]:
        from botocore.validate import ParamValidator
        from moto.sagemaker.exceptions import ValidationError
        report = ParamValidator().validate(request, self.model.operation_model("CreateTrainingJob").input_shape)
        if report.has_errors():
            raise ValidationError(report.generate_report())
        name = request["TrainingJobName"]
        arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/{name}"
        with self.lock:
            if name in self.jobs:
                raise ValidationError("Training job names must be unique within an AWS account and region, "
                                      f"and a training job with this name already exists ({arn})")
            now = datetime.now(timezone.utc)
            self.jobs[name] = {**request, "TrainingJobArn": arn, "TrainingJobStatus": "InProgress",
                               "SecondaryStatus": "Starting", "CreationTime": now, "LastModifiedTime": now}
        threading.Thread(target=self._run, args=(name,), daemon=True).start()
        return {"TrainingJobArn": arn}

    def describe(self, name: str) -> dict[str, Any]:
        from moto.sagemaker.exceptions import ValidationError
        with self.lock:
            if name not in self.jobs:
                raise ValidationError("Requested resource not found.")
            return dict(self.jobs[name])

    # --- the job -----------------------------------------------------------------------------------
    def _materialise(self, channel: dict[str, Any], dest: Path) -> None:
        src = channel["DataSource"]["S3DataSource"]
        bucket, _, key = src["S3Uri"][5:].partition("/")
        dest.mkdir(parents=True, exist_ok=True)
        if src["S3DataType"] == "ManifestFile":
            entries = json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            bucket, _, prefix = entries[0]["prefix"][5:].partition("/")
            keys = [(prefix + rel, rel) for rel in entries[1:]]
        else:
            keys = [(obj["Key"], obj["Key"][len(key):].lstrip("/"))
                    for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
                    for obj in page.get("Contents", [])]
            if not keys:  # SageMaker fails a job whose S3Prefix matches nothing
                raise RuntimeError(f"ClientError: No S3 objects found under S3 URL \"{src['S3Uri']}\"")
        for full, rel in keys:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.s3.get_object(Bucket=bucket, Key=full)["Body"].read())

    def _update(self, name: str, **fields: Any) -> None:
        with self.lock:
            self.jobs[name].update(fields, LastModifiedTime=datetime.now(timezone.utc))

    def _run(self, name: str) -> None:
        job = self.describe(name)
        root = self.workdir / name
        try:
            config = root / "input" / "config"
            config.mkdir(parents=True)
            (config / "hyperparameters.json").write_text(json.dumps(job.get("HyperParameters", {})))
            (config / "inputdataconfig.json").write_text(json.dumps({
                c["ChannelName"]: {"TrainingInputMode": job["AlgorithmSpecification"]["TrainingInputMode"],
                                   "S3DistributionType": c["DataSource"]["S3DataSource"].get(
                                       "S3DataDistributionType", "FullyReplicated"),
                                   "RecordWrapperType": "None"}
                for c in job.get("InputDataConfig", [])}))
            (config / "resourceconfig.json").write_text(json.dumps(
                {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
            self._update(name, SecondaryStatus="Downloading")
            for channel in job.get("InputDataConfig", []):
                self._materialise(channel, root / "input" / "data" / channel["ChannelName"])
            (root / "model").mkdir()
            (root / "output" / "data").mkdir(parents=True)
            for hook in self.hooks:
                hook(job, root)
            self._update(name, SecondaryStatus="Training", TrainingStartTime=datetime.now(timezone.utc))
            proc = run_container(root, {"TRAINING_JOB_NAME": name, "TRAINING_JOB_ARN": job["TrainingJobArn"]},
                                 job["StoppingCondition"]["MaxRuntimeInSeconds"] if self.timeout is None
                                 else min(self.timeout, job["StoppingCondition"]["MaxRuntimeInSeconds"]))
            (self.workdir / f"{name}.log").write_text(proc.stdout + proc.stderr)
            self._update(name, SecondaryStatus="Uploading")
            out = job["OutputDataConfig"]["S3OutputPath"].rstrip("/") + f"/{name}/output"
            bucket, _, prefix = out[5:].partition("/")
            self.s3.put_object(Bucket=bucket, Key=f"{prefix}/output.tar.gz", Body=s3util.tar_gz(root / "output" / "data"))
            if proc.returncode != 0:
                failure = root / "output" / "failure"
                reason = failure.read_text()[:1024] if failure.is_file() else f"exit code {proc.returncode}"
                self._update(name, TrainingJobStatus="Failed", SecondaryStatus="Failed",
                             FailureReason=f"AlgorithmError: {reason}", TrainingEndTime=datetime.now(timezone.utc))
                return
            archive = s3util.tar_gz(root / "model")
            if self.tamper_archive is not None:
                archive = self.tamper_archive(archive)
            self.s3.put_object(Bucket=bucket, Key=f"{prefix}/model.tar.gz", Body=archive)
            self._update(name, TrainingJobStatus="Completed", SecondaryStatus="Completed",
                         ModelArtifacts={"S3ModelArtifacts": f"{out}/model.tar.gz"},
                         TrainingEndTime=datetime.now(timezone.utc))
        except Exception as exc:  # noqa: BLE001 - the job fails with the reason, as SageMaker's would
            self._update(name, TrainingJobStatus="Failed", SecondaryStatus="Failed",
                         FailureReason=f"{type(exc).__name__}: {exc}"[:1024])


def _serialisable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, dict):
        return {k: _serialisable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_serialisable(v) for v in value]
    return value


def install_sagemaker(mp: Any, jobs: TrainingJobs) -> None:
    """Route the server's CreateTrainingJob/DescribeTrainingJob to ``jobs``, and the interpreter's
    ``sagemaker`` integration to :class:`SageMakerTask`."""
    from moto.core.responses import ActionResult
    from moto.sagemaker.responses import SageMakerResponse
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import state_task_factory

    mp.setattr(SageMakerResponse, "create_training_job",
               lambda self: ActionResult(jobs.create(json.loads(self.body))))
    mp.setattr(SageMakerResponse, "describe_training_job",
               lambda self: ActionResult(jobs.describe(self._get_param("TrainingJobName"))))
    original = state_task_factory.state_task_service_for
    mp.setattr(state_task_factory, "state_task_service_for",
               lambda service_name: sagemaker_task() if service_name == "sagemaker" else original(service_name))


def sagemaker_task() -> Any:
    """The interpreter's ``arn:aws:states:::sagemaker:createTrainingJob.sync`` integration."""
    from botocore.exceptions import ClientError
    from moto.stepfunctions.parser.api import HistoryEventType, TaskFailedEventDetails
    from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import CustomErrorName
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
        FailureEvent, FailureEventException)
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
        StatesErrorNameType)
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.resource import ResourceCondition
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_callback import (
        StateTaskServiceCallback)
    from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
    from moto.stepfunctions.parser.asl.utils.boto_client import boto_client_for
    from moto.stepfunctions.parser.asl.utils.encoding import to_json_str

    class SageMakerTask(StateTaskServiceCallback):
        def __init__(self) -> None:
            # WaitForTaskToken only because moto's callback base needs a callback endpoint for
            # every pattern (it interrupts it after .sync too); the definition uses .sync.
            super().__init__(supported_integration_patterns={ResourceCondition.Sync,
                                                             ResourceCondition.WaitForTaskToken})

        def _get_supported_parameters(self) -> set[str] | None:
            if self.resource.api_action.lower() != "createtrainingjob":
                return None  # the only SageMaker API this emulation knows
            import botocore.session
            shape = botocore.session.get_session().get_service_model("sagemaker").operation_model(
                "CreateTrainingJob").input_shape
            return set(shape.members)

        def _from_error(self, env: Any, ex: Exception) -> Any:
            if isinstance(ex, ClientError):  # Step Functions names every SageMaker API error so
                code, meta = ex.response["Error"]["Code"], ex.response["ResponseMetadata"]
                cause = (f"{ex.response['Error']['Message']} (Service: AmazonSageMaker; Status Code: "
                         f"{meta['HTTPStatusCode']}; Error Code: {code}; Request ID: {meta.get('RequestId')}; "
                         "Proxy: null)")
                return FailureEvent(env=env, error_name=CustomErrorName("SageMaker.AmazonSageMakerException"),
                                    event_type=HistoryEventType.TaskFailed, event_details=EventDetails(
                                        taskFailedEventDetails=TaskFailedEventDetails(
                                            error="SageMaker.AmazonSageMakerException", cause=cause,
                                            resource=self._get_sfn_resource(),
                                            resourceType=self._get_sfn_resource_type())))
            return super()._from_error(env=env, ex=ex)

        def _eval_service_task(self, env: Any, resource_runtime_part: Any, normalised_parameters: dict,
                               state_credentials: Any) -> None:
            client = boto_client_for(region=resource_runtime_part.region, service="sagemaker",
                                     state_credentials=state_credentials)
            response = client.create_training_job(**normalised_parameters)
            response.pop("ResponseMetadata", None)
            response["TrainingJobName"] = normalised_parameters["TrainingJobName"]
            env.stack.append(response)

        def _build_sync_resolver(self, env: Any, resource_runtime_part: Any, normalised_parameters: dict,
                                 state_credentials: Any) -> Callable[[], Any]:
            client = boto_client_for(region=resource_runtime_part.region, service="sagemaker",
                                     state_credentials=state_credentials)
            name = env.stack.pop()["TrainingJobName"]

            def resolve() -> dict | None:
                job = client.describe_training_job(TrainingJobName=name)
                job.pop("ResponseMetadata", None)
                job = _serialisable(job)
                if job["TrainingJobStatus"] == "Completed":
                    return job
                if job["TrainingJobStatus"] in ("Failed", "Stopped"):
                    raise FailureEventException(FailureEvent(
                        env=env, error_name=StatesErrorName(typ=StatesErrorNameType.StatesTaskFailed),
                        event_type=HistoryEventType.TaskFailed, event_details=EventDetails(
                            taskFailedEventDetails=TaskFailedEventDetails(
                                resource=self._get_sfn_resource(), resourceType=self._get_sfn_resource_type(),
                                error=StatesErrorNameType.StatesTaskFailed.to_name(), cause=to_json_str(job)))))
                return None
            return resolve

    return SageMakerTask()


# --- Lambda ------------------------------------------------------------------------------------------
def install_lambda(mp: Any, assets: dict[str, Path], base_env: dict[str, str], workdir: Path) -> None:
    """Run every invoked function in a clean CPython 3.12 with only the assets on its path."""
    from moto.awslambda.models import LambdaFunction

    def invoke(self: Any, event: Any = None) -> tuple[str, bool, str]:
        env = {**base_env, "PYENV_VERSION": "3.12.1", "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
               "TMPDIR": str(workdir),
               **{k: v.replace("/var/task", str(assets["function"])) for k, v in self.environment_vars.items()}}
        proc = subprocess.run(
            ["python3.12", "-I", "-S", str(RUNTIME_SCRIPT), self.handler, str(assets["function"]),
             str(assets["layer"]), str(assets["runtime"])],
            input=json.dumps(event if event is not None else {}), capture_output=True, text=True, env=env,
            timeout=int(self.timeout))
        lines = proc.stdout.strip().splitlines()
        try:
            line = json.loads(lines[-1])
        except (IndexError, ValueError):  # the process died: Lambda reports Runtime.ExitError
            line = {"error": {"errorType": "Runtime.ExitError",
                              "errorMessage": f"exit status {proc.returncode}: {proc.stderr[-1500:]}"}}
        with (workdir / "lambda.log").open("a") as log:
            log.write(f"--- {self.function_name}\n{proc.stderr[-4000:]}\n")
        if "error" in line:
            return json.dumps(line["error"]), True, proc.stderr
        return json.dumps(line["ok"]), False, proc.stderr

    mp.setattr(LambdaFunction, "_invoke_lambda", invoke)


# --- the deployment ----------------------------------------------------------------------------------
def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("placeholder.py", "# the code runs from the built assets (see install_lambda)\n")
    return buf.getvalue()


def resolve(value: Any, refs: dict[str, str]) -> Any:
    """A CloudFormation value with ``Ref``/``Fn::GetAtt``/``Fn::Join``/``Fn::Sub`` resolved from ``refs``."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return [resolve(v, refs) for v in value]
    if "Fn::Join" in value:
        sep, parts = value["Fn::Join"]
        return sep.join(resolve(p, refs) for p in parts)
    if "Ref" in value:
        return refs[value["Ref"]]
    if "Fn::GetAtt" in value:
        return refs[".".join(value["Fn::GetAtt"])]
    if "Fn::Sub" in value:
        text = value["Fn::Sub"]
        for k, v in refs.items():
            text = text.replace("${" + k + "}", v)
        return text
    return {k: resolve(v, refs) for k, v in value.items()}


def deploy(template: dict[str, Any], clients: Any, suffix: str) -> dict[str, str]:
    """Create the template's buckets, table, topic, step functions and state machine on the moto
    server (names made unique with ``suffix``); returns their names and ARNs."""
    res = template["Resources"]
    refs = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
            "AWS::URLSuffix": "amazonaws.com"}
    role = clients.iam.create_role(RoleName=f"fp-{suffix}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    out: dict[str, str] = {}
    for lid, r in res.items():
        if r["Type"] == "AWS::S3::Bucket":
            name = f"{lid.lower()[:30]}-{suffix}"
            clients.s3.create_bucket(Bucket=name)
            refs[lid] = name
            refs[f"{lid}.Arn"] = f"arn:aws:s3:::{name}"
        elif r["Type"] == "AWS::DynamoDB::Table":
            name = f"{lid}-{suffix}"
            clients.dynamodb.create_table(TableName=name, KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                                          AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                                          BillingMode="PAY_PER_REQUEST")
            refs[lid] = name
        elif r["Type"] == "AWS::SNS::Topic":
            refs[lid] = clients.sns.create_topic(Name=f"{lid}-{suffix}")["TopicArn"]
        elif r["Type"] == "AWS::IAM::Role":
            refs[f"{lid}.Arn"] = role
    sm_name = next(r["Properties"]["StateMachineName"] for r in res.values()
                   if r["Type"] == "AWS::StepFunctions::StateMachine")
    refs["StateMachineArn"] = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{sm_name}"
    for lid, r in res.items():
        if r["Type"] == "AWS::Lambda::Function" and r["Properties"]["Handler"].startswith("functions.pipeline."):
            p = r["Properties"]
            env = {k: resolve(v, refs) for k, v in p.get("Environment", {}).get("Variables", {}).items()}
            name = f"{lid[:40]}-{suffix}"
            arn = clients.awslambda.create_function(
                FunctionName=name, Runtime=p["Runtime"], Role=role, Handler=p["Handler"],
                Code={"ZipFile": _zip()}, Timeout=p.get("Timeout", 3), MemorySize=p.get("MemorySize", 128),
                Environment={"Variables": env})["FunctionArn"]
            refs[f"{lid}.Arn"] = arn
            out[p["Handler"].split(".")[2]] = name
    (sm,) = [r for r in res.values() if r["Type"] == "AWS::StepFunctions::StateMachine"]
    definition = resolve(sm["Properties"]["DefinitionString"], refs)
    out["state_machine_arn"] = clients.stepfunctions.create_state_machine(
        name=sm_name, definition=definition, roleArn=role)["stateMachineArn"]
    for lid, r in res.items():
        if r["Type"] == "AWS::S3::Bucket" and "Data" in lid and "Log" not in lid:
            out.setdefault("data_bucket", refs[lid])
        if r["Type"] == "AWS::S3::Bucket" and "Models" in lid and "Log" not in lid:
            out.setdefault("models_bucket", refs[lid])
        if r["Type"] == "AWS::DynamoDB::Table":
            out["table"] = refs[lid]
        if r["Type"] == "AWS::SNS::Topic":
            out["topic_arn"] = refs[lid]
    out["definition"] = definition
    return out


def wait(sfn: Any, execution_arn: str, timeout: float = 400) -> dict[str, Any]:
    """Poll ``DescribeExecution`` until the execution leaves RUNNING."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ex = sfn.describe_execution(executionArn=execution_arn)
        if ex["status"] != "RUNNING":
            return ex
        time.sleep(0.5)
    raise TimeoutError(f"{execution_arn} still RUNNING after {timeout} s")


def unique() -> str:
    return uuid.uuid4().hex[:8]

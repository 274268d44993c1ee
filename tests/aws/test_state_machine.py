"""The synthesized retrain state machine, executed: moto's ASL interpreter runs the definition from
``cdk.out`` against a moto server on 127.0.0.1; every Lambda task runs the real handler from the
built assets in a clean CPython 3.12, and the SageMaker ``.sync`` task runs the real training job
under SageMaker's container contract (see tests/helpers/aws_emulation.py). Small real data: a few
images per class from ../shared, tiny hyperparameters.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.aws.test_layer import assets  # noqa: F401  (the built Lambda assets, cached per session)
from tests.conftest import FRUITS, needs_shared
from tests.helpers import aws_emulation as emu

pytestmark = [pytest.mark.slow, needs_shared]
TRAIN_PER_CLASS, VALIDATION_PER_CLASS = 8, 2
HYPERPARAMETERS = {"epochs": "5", "hidden": "32", "prototypes_per_class": "3", "features": "emb+b17mm+156mm",
                   "finetune_epochs": "2", "warm_epochs": "1"}


class Clients:
    def __init__(self, url: str) -> None:
        import boto3
        self.url = url
        self._make = lambda name: boto3.client(name, endpoint_url=url, region_name=emu.REGION)

    def __getattr__(self, name: str) -> Any:
        return self._make({"awslambda": "lambda"}.get(name, name))


SOURCES = ("api", "drop-folder", "review")  # the "source" metadata each filing path sets


def file_images(s3: Any, bucket: str, *, start: int = 0, train: int, validation: int) -> int:
    """File real photos as ingest does (``dataset/<class>/<sha256>.jpg``): per class ``train``
    images of the train split and ``validation`` of the validation split (the split is by hash);
    the n-th filed image carries ``source`` metadata ``SOURCES[n % 3]``."""
    from fruitpipe import dataset
    from fruitpipe.labels import LABELS
    from fruitpipe.pipeline.prepare import split_of
    n = 0
    for label in LABELS:
        want = {"train": train, "validation": validation}
        for path in sorted((FRUITS / "train" / label).glob("*.jpg"))[start:]:
            filed = dataset.prepare(label, path.read_bytes())
            side = split_of(filed.key.split("/")[-1].split(".")[0], 10)
            if want[side] > 0:
                s3.put_object(Bucket=bucket, Key=filed.key, Body=filed.data, Metadata={"source": SOURCES[n % 3]})
                want[side] -= 1
                n += 1
            if not any(want.values()):
                break
    return n


@pytest.fixture(scope="module")
def cloud(assets, tmp_path_factory):  # noqa: F811
    from moto.core.config import default_user_config
    from moto.server import ThreadedMotoServer
    from tests.aws.conftest import _free_port
    from tests.infra.synth import synth

    template, _ = synth(tmp_path_factory.mktemp("cdk"), {
        "minImagesPerClass": "3", "trainingHyperparameters": json.dumps(HYPERPARAMETERS)})
    port = _free_port()
    mp = pytest.MonkeyPatch()
    url = f"http://127.0.0.1:{port}"
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": emu.REGION,
                 "AWS_ENDPOINT_URL": url, "MOTO_PORT": str(port)}.items():
        mp.setenv(k, v)  # MOTO_PORT: where the interpreter sends its service calls
    mp.setitem(default_user_config, "stepfunctions", {"execute_state_machine": True})
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    work = tmp_path_factory.mktemp("emulation")
    try:
        clients = Clients(url)
        jobs = emu.TrainingJobs(clients.s3, work / "jobs")
        emu.install_sagemaker(mp, jobs)
        emu.install_lambda(mp, assets, {
            "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": emu.REGION,
            "AWS_REGION": emu.REGION, "AWS_ENDPOINT_URL": url}, work)
        (work / "jobs").mkdir()
        names = emu.deploy(template, clients, emu.unique())
        file_images(clients.s3, names["data_bucket"], train=TRAIN_PER_CLASS, validation=VALIDATION_PER_CLASS)
        queue = clients.sqs.create_queue(QueueName="alerts")["QueueUrl"]
        queue_arn = clients.sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        clients.sns.subscribe(TopicArn=names["topic_arn"], Protocol="sqs", Endpoint=queue_arn)
        yield {"c": clients, "jobs": jobs, "work": work, "queue": queue, **names}
    finally:
        server.stop()
        mp.undo()


def set_counter(cloud: dict[str, Any], n: int) -> None:
    cloud["c"].dynamodb.put_item(TableName=cloud["table"], Item={"id": {"S": "new-images"}, "count": {"N": str(n)}})


def counter(cloud: dict[str, Any]) -> int:
    item = cloud["c"].dynamodb.get_item(TableName=cloud["table"], Key={"id": {"S": "new-images"}}).get("Item")
    return int(item["count"]["N"]) if item else 0


def get_json(cloud: dict[str, Any], key: str) -> Any:
    from fruitpipe.pipeline import s3util
    return s3util.get_json(cloud["c"].s3, cloud["models_bucket"], key)


def trainer(cloud: dict[str, Any]) -> Any:
    from fruitpipe.pipeline.trainer import StepFunctionsTrainer
    return StepFunctionsTrainer(cloud["c"].stepfunctions, cloud["c"].sagemaker, cloud["state_machine_arn"])


def run(cloud: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start a retrain the way the API does, wait for it; the execution and its history."""
    started = trainer(cloud).start("manual")
    ex = emu.wait(cloud["c"].stepfunctions, started.run_id)
    return ex, history(cloud, started.run_id)


def history(cloud: dict[str, Any], arn: str) -> list[dict[str, Any]]:
    return cloud["c"].stepfunctions.get_execution_history(executionArn=arn, maxResults=1000)["events"]


def entered(events: list[dict[str, Any]]) -> list[str]:
    return [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]


def failures(events: list[dict[str, Any]]) -> list[Any]:
    """The failure details in a history (for assertion messages)."""
    return [{k: v for k, v in e.items() if k.endswith("EventDetails") and "ailed" in k} for e in events
            if "Failed" in e["type"] or "Aborted" in e["type"]]


def job_names(events: list[dict[str, Any]]) -> list[str]:
    return [json.loads(e["taskScheduledEventDetails"]["parameters"])["TrainingJobName"] for e in events
            if e.get("taskScheduledEventDetails", {}).get("resourceType") == "sagemaker"]


def job_log(cloud: dict[str, Any], name: str) -> str:
    return (cloud["jobs"].workdir / f"{name}.log").read_text()


def failure_message(cloud: dict[str, Any]) -> dict[str, Any]:
    msgs = cloud["c"].sqs.receive_message(QueueUrl=cloud["queue"], WaitTimeSeconds=2).get("Messages", [])
    assert msgs, "no SNS alert arrived"
    for m in msgs:
        cloud["c"].sqs.delete_message(QueueUrl=cloud["queue"], ReceiptHandle=m["ReceiptHandle"])
    return json.loads(json.loads(msgs[-1]["Body"])["Message"])


# --- scenarios, in order: each starts from what the previous one left --------------------------------

def test_first_run_trains_cold_and_promotes(cloud):
    set_counter(cloud, 60)
    ex, events = run(cloud)
    assert ex["status"] == "SUCCEEDED", (ex.get("error"), ex.get("cause"), failures(events))
    out = json.loads(ex["output"])
    states = entered(events)
    assert states[:4] == ["Prepare", "Proceed?", "WarmStart?", "Train"] and "TrainWarmStart" not in states
    assert out["report"]["outcome"] == "promoted" and out["evaluation"]["live_version"] is None
    (job,) = job_names(events)
    assert job.startswith(out["prepare"]["version"] + "-") and len(job) <= 63
    request = cloud["jobs"].describe(job)
    assert {c["ChannelName"] for c in request["InputDataConfig"]} == {"train", "validation", "cache"}
    log = job_log(cloud, job)
    assert f"embedded_new={6 * (TRAIN_PER_CLASS + VALIDATION_PER_CLASS)}" in log, log[-2000:]
    version = out["evaluation"]["candidate_version"]
    assert get_json(cloud, "live.json")["version"] == version
    manifest = get_json(cloud, f"versions/{version}/manifest.json")
    assert manifest["lineage"] == {"training_job": job, "execution_arn": ex["executionArn"], "base_model": None,
                                   "snapshot": out["prepare"]["snapshot_uri"]}
    assert get_json(cloud, out["prepare"]["snapshot_uri"].split("/", 3)[3])["version"] == out["prepare"]["version"]
    # origins: Prepare reads each filed object's "source" into cache/embeddings/origins.json, the
    # cache channel brings it to the job, which counts its training images' origins
    origins = manifest["training_data"]["origins"]
    assert origins == out["prepare"]["origins"] and set(origins) == set(SOURCES), (origins, out["prepare"])
    assert sum(origins.values()) == out["prepare"]["n_train"] == 6 * TRAIN_PER_CLASS
    assert len(get_json(cloud, "cache/embeddings/origins.json")) == 6 * (TRAIN_PER_CLASS + VALIDATION_PER_CLASS)
    assert counter(cloud) == 0  # consumed by the run that ended
    st = trainer(cloud).status()
    assert st.state == "succeeded" and st.result["training_job"] == job and st.result["training_status"] == "Completed"


def test_second_run_warm_starts_from_the_live_model(cloud):
    live = get_json(cloud, "live.json")["version"]
    file_images(cloud["c"].s3, cloud["data_bucket"], start=300, train=1, validation=0)
    set_counter(cloud, 6)
    ex, events = run(cloud)
    assert ex["status"] == "SUCCEEDED", (ex.get("error"), ex.get("cause"))
    out = json.loads(ex["output"])
    assert "TrainWarmStart" in entered(events) and "Train" not in entered(events)
    (job,) = job_names(events)
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in cloud["jobs"].describe(job)["InputDataConfig"]}
    assert channels["base_model"]["S3Uri"] == f"s3://{cloud['models_bucket']}/versions/{live}/"
    log = job_log(cloud, job)
    assert "warm_start=1" in log and "embedded_new=6" in log, log[-2000:]  # only the new images embedded
    assert out["evaluation"]["live_version"] == live and out["report"]["outcome"] in ("promoted", "rejected")
    if out["report"]["outcome"] == "promoted":
        version = out["evaluation"]["candidate_version"]
        assert get_json(cloud, f"versions/{version}/manifest.json")["lineage"]["base_model"] == live
    assert counter(cloud) == 0


@pytest.mark.filterwarnings("ignore:Exception\\(InternalFailure\\):UserWarning")  # a common AWS error, not in the model
def test_worse_candidate_is_rejected_and_a_retried_train_gets_a_new_job_name(cloud):
    """Labels rotated in the job's train channel: a real, much worse model the gate must reject.
    The first CreateTrainingJob is accepted by SageMaker but its answer is lost (HTTP 500): the
    Retry must not reuse the job's name, which SageMaker would refuse."""
    from moto.core.exceptions import ServiceException

    class InternalFailure(ServiceException):
        code, message = "InternalFailure", "We encountered an internal error. Please try again."

    live = get_json(cloud, "live.json")["version"]
    jobs = cloud["jobs"]
    original_create = jobs.create
    calls: list[str] = []

    def lossy_create(request: dict[str, Any]) -> dict[str, Any]:
        calls.append(request["TrainingJobName"])
        if len(calls) == 1:
            with jobs.lock:  # SageMaker recorded the job; the caller never heard back
                jobs.jobs[request["TrainingJobName"]] = {**request, "TrainingJobStatus": "Stopped"}
            raise InternalFailure()
        return original_create(request)

    def rotate_labels(job: dict[str, Any], root: Path) -> None:
        from fruitpipe.labels import LABELS
        data = root / "input" / "data" / "train"
        for label in LABELS:
            (data / label).rename(data / f"{label}.tmp")
        for i, label in enumerate(LABELS):
            (data / f"{label}.tmp").rename(data / LABELS[(i + 1) % len(LABELS)])

    jobs.create = lossy_create
    jobs.hooks.append(rotate_labels)
    try:
        ex, events = run(cloud)
    finally:
        jobs.create = original_create
        jobs.hooks.remove(rotate_labels)
    assert ex["status"] == "SUCCEEDED", (ex.get("error"), ex.get("cause"))
    names = job_names(events)
    assert len(names) == 2 and names[0] != names[1] and calls == names
    out = json.loads(ex["output"])
    assert out["report"]["outcome"] == "rejected" and "worse" in out["evaluation"]["reason"]
    assert get_json(cloud, "live.json")["version"] == live
    rejected = get_json(cloud, f"rejected/{out['evaluation']['candidate_version']}/rejection.json")
    assert rejected["reason"] == out["evaluation"]["reason"]


def test_training_failure_reports_alerts_and_keeps_live(cloud):
    """A class emptied in the job's channel: the job fails with its reason; Catch → metric + SNS."""
    live = get_json(cloud, "live.json")["version"]
    set_counter(cloud, 5)

    def empty_a_class(job: dict[str, Any], root: Path) -> None:
        shutil.rmtree(root / "input" / "data" / "train" / "rottenoranges")
        (root / "input" / "data" / "train" / "rottenoranges").mkdir()

    cloud["jobs"].hooks.append(empty_a_class)
    try:
        ex, events = run(cloud)
    finally:
        cloud["jobs"].hooks.remove(empty_a_class)
    assert ex["status"] == "FAILED"
    assert entered(events)[-3:] == ["ReportFailure", "NotifyFailure", "RetrainFailed"]
    assert ex["error"] == "RetrainFailed"  # and the Fail state carries the real cause
    cause = json.loads(ex["cause"])
    assert cause["TrainingJobStatus"] == "Failed"
    assert "no usable training image for rottenoranges" in cause["FailureReason"], cause["FailureReason"]
    alert = failure_message(cloud)
    assert alert["live_model"] == "unchanged" and alert["execution"] == ex["executionArn"]
    assert "no usable training image" in alert["cause"]
    assert get_json(cloud, "live.json")["version"] == live
    assert counter(cloud) == 5  # a failed run does not swallow the trigger
    outcomes = cloud["c"].cloudwatch.list_metrics(Namespace="Fruitpipe/Retrain", MetricName="RetrainOutcome")
    assert [{"Name": "Outcome", "Value": "failed"}] in [m["Dimensions"] for m in outcomes["Metrics"]]
    st = trainer(cloud).status()  # what GET /retraining-status answers
    assert st.state == "failed" and "no usable training image" in st.result["failure_reason"]
    set_counter(cloud, 0)


def test_garbage_model_is_rejected_and_a_trigger_meanwhile_is_already_running(cloud):
    """While the job runs, a second execution stops at AlreadyRunning; the job's model archive is
    garbage, which ends in Reject (a bad candidate), not in a failed run."""
    from fruitpipe.backends.base import RetrainRunning
    live = get_json(cloud, "live.json")["version"]
    training, release = threading.Event(), threading.Event()

    def hold(job: dict[str, Any], root: Path) -> None:
        training.set()
        assert release.wait(300)

    cloud["jobs"].hooks.append(hold)
    cloud["jobs"].tamper_archive = lambda archive: b"\x00garbage, not a tar.gz" * 100
    sfn = cloud["c"].stepfunctions
    try:
        first = trainer(cloud).start("manual")
        assert training.wait(120)
        with pytest.raises(RetrainRunning):
            trainer(cloud).start("manual")
        # a trigger racing past that check: the state machine's own guard stops it
        second = sfn.start_execution(stateMachineArn=cloud["state_machine_arn"], name=f"race-{emu.unique()}",
                                     input=json.dumps({"trigger": "schedule"}))["executionArn"]
        ex2 = emu.wait(sfn, second, timeout=120)
        assert ex2["status"] == "SUCCEEDED" and entered(history(cloud, second))[-1] == "AlreadyRunning"
        release.set()
        ex = emu.wait(sfn, first.run_id)
    finally:
        release.set()
        cloud["jobs"].hooks.remove(hold)
        cloud["jobs"].tamper_archive = None
    assert ex["status"] == "SUCCEEDED", (ex.get("error"), ex.get("cause"))
    out = json.loads(ex["output"])
    assert out["report"]["outcome"] == "rejected" and "corrupt" in out["evaluation"]["reason"]
    assert get_json(cloud, "live.json")["version"] == live

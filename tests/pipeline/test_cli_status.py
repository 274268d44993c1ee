"""``fruitpipe retrain --aws`` / ``fruitpipe models --aws`` against a moto server, rollback through
the S3 registry (the drift baseline follows the pointer), and the status reader on a real-shaped
execution history with a moto SageMaker training job."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from fruitpipe.cli import main
from fruitpipe.pipeline import publish, rollback, s3util, trainer
from tests.conftest import needs_shared
from tests.pipeline.conftest import make_bundle

pytestmark = needs_shared
MODELS = "fp-cli-models"


@pytest.fixture(scope="module")
def machine(aws):
    role = aws.iam.create_role(RoleName="sfn-cli", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    return aws.stepfunctions.create_state_machine(name="cli-retrain", roleArn=role, definition=json.dumps(
        {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}))["stateMachineArn"]


def test_cli_retrain_starts_once(aws, machine, capsys):
    assert main(["retrain", "--aws", "--state-machine", machine, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["state"] == "running" and first["trigger"] == "manual"
    assert main(["retrain", "--aws", "--state-machine", machine]) == 1
    assert "already running" in capsys.readouterr().err
    assert len(aws.stepfunctions.list_executions(stateMachineArn=machine)["executions"]) == 1
    assert main(["retrain", "--aws"]) == 2  # no ARN anywhere: a usage error
    assert "--state-machine is required" in capsys.readouterr().err


def test_cli_models_rollback_keeps_baseline(aws, tmp_path, capsys):
    s3 = aws.s3
    s3.create_bucket(Bucket=MODELS)
    for version, conf in (("v20260101-000000-aaaaaa", 0.91), ("v20260102-000000-bbbbbb", 0.88)):
        uri = upload_candidate_to(s3, make_bundle(tmp_path, version))
        publish.publish(s3, models_bucket=MODELS, model_artifacts=uri,
                        baseline={"mean_confidence": conf, "not_fruit_rate": 0.02})
    assert s3util.live_version(s3, MODELS) == "v20260102-000000-bbbbbb"
    assert main(["models", "--aws", "--bucket", MODELS, "--activate", "v20260101-000000-aaaaaa"]) == 0
    pointer = s3util.get_json(s3, MODELS, "live.json")
    assert pointer["version"] == "v20260101-000000-aaaaaa"
    assert pointer["baseline"] == {"mean_confidence": 0.91, "not_fruit_rate": 0.02}
    assert pointer["previous"] == "v20260102-000000-bbbbbb"
    capsys.readouterr()
    assert main(["models", "--aws", "--bucket", MODELS, "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {v["version"]: v["status"] for v in listed}["v20260101-000000-aaaaaa"] == "live"
    assert main(["models", "--aws", "--bucket", MODELS, "--activate", "v20990101-000000-cccccc"]) == 2
    capsys.readouterr()
    # the PostPromotion alarm fires: the rollback Lambda's step moves the pointer back, and the CLI says why
    outcome = rollback.handle({"detail": {"alarmName": "PostPromotion"}}, s3=s3, sns=None, models_bucket=MODELS,
                              topic_arn=None)
    assert outcome["rolled_back"] and outcome["to"] == "v20260102-000000-bbbbbb"
    assert main(["models", "--aws", "--bucket", MODELS]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("live: v20260102-000000-bbbbbb since ") and ", from v20260101-000000-aaaaaa: " \
        "automatic rollback: PostPromotion fired" in line
    assert main(["models", "--aws", "--bucket", MODELS, "--json"]) == 0
    live = next(v for v in map(json.loads, capsys.readouterr().out.splitlines()) if v["status"] == "live")
    assert live["live_pointer"]["reason"].startswith("automatic rollback: PostPromotion fired")


def upload_candidate_to(s3, bundle_dir):
    from tests.pipeline.conftest import archive
    key = f"runs/{bundle_dir.name}/output/model.tar.gz"
    s3.put_object(Bucket=MODELS, Key=key, Body=archive(bundle_dir))
    return f"s3://{MODELS}/{key}"


JOB = "v20261126-120000-abcdef-1a2b3c4d"


class RecordedSfn:
    """A Step Functions client answering with the shapes AWS returns for a run in training (moto
    keeps executions RUNNING with a canned history, so the history here is written out)."""

    def __init__(self, status: str, output: dict | None = None) -> None:
        t = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
        self.execution = {"executionArn": "arn:aws:states:us-east-1:123456789012:execution:sm:manual-1",
                          "stateMachineArn": "arn:sm", "name": "manual-1", "status": status, "startDate": t,
                          "input": json.dumps({"trigger": "schedule"}),
                          **({"output": json.dumps(output), "stopDate": t} if output is not None else {})}
        prep = {"prepare": {"proceed": True, "version": "v20261126-120000-abcdef"}}
        self.events = [
            {"timestamp": t, "type": "ExecutionStarted", "id": 1},
            {"timestamp": t, "type": "TaskStateEntered", "id": 2, "stateEnteredEventDetails": {"name": "Prepare"}},
            {"timestamp": t, "type": "TaskStateExited", "id": 3,
             "stateExitedEventDetails": {"name": "Prepare", "output": json.dumps(prep)}},
            {"timestamp": t, "type": "ChoiceStateEntered", "id": 4, "stateEnteredEventDetails": {"name": "Proceed?"}},
            {"timestamp": t, "type": "TaskStateEntered", "id": 5, "stateEnteredEventDetails": {"name": "Train"}},
            # each attempt of Train has its own job name: the latest scheduled one is the job
            {"timestamp": t, "type": "TaskScheduled", "id": 6, "taskScheduledEventDetails": {
                "resourceType": "sagemaker", "resource": "createTrainingJob.sync", "region": "us-east-1",
                "parameters": json.dumps({"TrainingJobName": f"{JOB}-0"})}},
            {"timestamp": t, "type": "TaskScheduled", "id": 7, "taskScheduledEventDetails": {
                "resourceType": "sagemaker", "resource": "createTrainingJob.sync", "region": "us-east-1",
                "parameters": json.dumps({"TrainingJobName": JOB})}},
        ]

    def list_executions(self, **kw):
        return {"executions": [self.execution]}

    def describe_execution(self, executionArn):
        return self.execution

    def get_paginator(self, name):
        events = self.events

        class P:
            def paginate(self, **kw):
                yield {"events": events}
        return P()


def test_status_reads_stage_and_training_job(aws):
    sm = aws.sagemaker
    role = aws.iam.create_role(RoleName="sm-train", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    sm.create_training_job(
        TrainingJobName=JOB, RoleArn=role,
        AlgorithmSpecification={"TrainingImage": "123.dkr.ecr.us-east-1.amazonaws.com/t:1", "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": "s3://b/runs/"}, StoppingCondition={"MaxRuntimeInSeconds": 3600},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 30})
    st = trainer.StepFunctionsTrainer(RecordedSfn("RUNNING"), sm, "arn:sm").status()
    assert st.state == "running" and st.stage == "training" and st.trigger == "schedule"
    assert st.result["training_job"] == JOB
    assert st.result["training_status"] == sm.describe_training_job(
        TrainingJobName=JOB)["TrainingJobStatus"]
    assert "training_metrics" in st.result
    done = trainer.StepFunctionsTrainer(RecordedSfn("SUCCEEDED", {
        "report": {"outcome": "rejected"}, "evaluation": {"reason": "worse"}}), sm, "arn:sm").status()
    assert done.state == "rejected" and done.result["evaluation"] == {"reason": "worse"} and done.percent == 100
    # the CLI's summary of an AWS run: the gate's figures are under result.evaluation
    from fruitpipe.commands.retrain import summary
    ev = {"candidate_version": "v20261126-120000-abcdef", "reason": "macro-F1 0.80 < live 0.90",
          "candidate": {"n": 60, "accuracy": 0.8, "macro_f1": 0.8}, "live": {"n": 60, "accuracy": 0.9, "macro_f1": 0.9},
          "live_version": "v20261120-000000-aaaaaa"}
    done = trainer.StepFunctionsTrainer(RecordedSfn("SUCCEEDED", {"report": {"outcome": "rejected"}, "evaluation": ev}),
                                        sm, "arn:sm").status()
    lines = summary(done.as_dict()).splitlines()
    assert lines[0] == ("retrain rejected by the gate: v20261126-120000-abcdef kept aside, "
                        "v20261120-000000-aaaaaa stays live")
    assert lines[1] == "  reason:    macro-F1 0.80 < live 0.90"
    assert lines[2].startswith("  candidate: accuracy 80.0% of 60 fruit photos, macro-F1 80.0%")
    assert lines[3].startswith("  live:      accuracy 90.0%") and lines[3].endswith("(v20261120-000000-aaaaaa)")

"""The retrain state machine, its triggers, alarms, dashboard and IAM, on the real synthesized
template (cdk-nag runs during the synth and fails it on any unacknowledged finding)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.infra.synth import REPO, synth

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory):
    """The default synth, with ``docker`` replaced by a recorder that fails: synth must not call it."""
    fake = tmp_path_factory.mktemp("fakebin")
    calls = fake / "docker-calls"
    (fake / "docker").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexit 1\n")
    (fake / "docker").chmod(0o755)
    mp = pytest.MonkeyPatch()
    mp.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    mp.setenv("CDK_DOCKER", str(fake / "docker"))
    try:
        tpl, path = synth(tmp_path_factory.mktemp("cdk"))
    finally:
        mp.undo()
    return tpl, path, calls


@pytest.fixture(scope="module")
def tpl(synthesized) -> dict[str, Any]:
    return synthesized[0]


def of_type(tpl: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in tpl["Resources"].items() if v["Type"] == kind}


def flatten(value: Any) -> str:
    """A CloudFormation string (Fn::Join of literals and tokens) with tokens shown as <Logical.Attr>."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        return "".join(flatten(p) for p in value["Fn::Join"][1])
    if "Fn::GetAtt" in value:
        return f"<{value['Fn::GetAtt'][0]}.{value['Fn::GetAtt'][1]}>"
    if "Ref" in value:
        return f"<{value['Ref']}>"
    return "<token>"


@pytest.fixture(scope="module")
def machine(tpl) -> dict[str, Any]:
    (sm,) = of_type(tpl, "AWS::StepFunctions::StateMachine").values()
    return sm


@pytest.fixture(scope="module")
def definition(machine) -> dict[str, Any]:
    return json.loads(flatten(machine["Properties"]["DefinitionString"]))


def policies_of(tpl, role_prefix: str) -> list[dict[str, Any]]:
    out = []
    for p in of_type(tpl, "AWS::IAM::Policy").values():
        if any(r["Ref"].startswith(role_prefix) for r in p["Properties"]["Roles"]):
            out += p["Properties"]["PolicyDocument"]["Statement"]
    return out


def as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else [x]


def test_synth_needs_no_docker_and_stages_the_training_image(synthesized):
    assert not synthesized[2].exists(), f"synth called docker: {synthesized[2].read_text()}"
    assets = json.loads((synthesized[1].parent / "fruitpipe-dev.assets.json").read_text())
    (image,) = assets["dockerImages"].values()
    staged = synthesized[1].parent / image["source"]["directory"]
    assert image["source"]["dockerFile"] == "training_job/Dockerfile"
    assert (staged / "training_job" / "Dockerfile").is_file()
    # the build context holds exactly what the Dockerfile copies (no venv, build output or data)
    assert sorted(p.name for p in staged.iterdir()) == ["README.md", "fruitpipe", "layers", "pyproject.toml",
                                                        "training_job"]
    assert [p.name for p in (staged / "layers").iterdir()] == ["requirements.txt"]  # not the built layer
    # first-deploy blocker: built for SageMaker's x86_64 instances whatever the build machine is
    assert image["source"]["platform"] == "linux/amd64"


def test_training_image_pins_the_layer_versions():
    """One constraints file: every package the layer pins, the image installs at the same version."""
    docker = (REPO / "training_job" / "Dockerfile").read_text()
    reqs = (REPO / "training_job" / "requirements.txt").read_text().splitlines()
    assert "pip install --no-cache-dir -r training_job/requirements.txt '.[train]'" in docker
    assert "COPY layers/requirements.txt ./layers/requirements.txt" in docker
    assert "-c ../layers/requirements.txt" in reqs
    pins = [r for r in reqs if r and not r.startswith(("#", "-"))]
    assert pins and all("==" in r for r in pins), pins
    assert docker.strip().splitlines()[-1] == 'ENTRYPOINT ["python", "-m", "training_job"]'


def test_state_order_and_guard(definition):
    s = definition["States"]
    assert definition["StartAt"] == "Prepare"
    assert s["Prepare"]["Next"] == "Proceed?"
    assert s["Prepare"]["Parameters"] == {"input.$": "$", "execution_arn.$": "$$.Execution.Id",
                                          "state_machine_arn.$": "$$.StateMachine.Id"}
    choice = s["Proceed?"]
    assert choice["Choices"] == [{"Variable": "$.prepare.proceed", "BooleanEquals": False, "Next": "AlreadyRunning"}]
    assert s["AlreadyRunning"]["Type"] == "Succeed" and choice["Default"] == "WarmStart?"
    # the first run has no live model: a cold Train; later runs fill base_model with the live bundle
    assert s["WarmStart?"]["Choices"] == [{"Variable": "$.prepare.base_model", "IsNull": False,
                                           "Next": "TrainWarmStart"}]
    assert s["WarmStart?"]["Default"] == "Train"
    assert s["Train"]["Next"] == s["TrainWarmStart"]["Next"] == "EvaluateAndGate"
    assert s["EvaluateAndGate"]["Next"] == "Promote?"
    promote = s["Promote?"]
    assert promote["Choices"][0] == {"Variable": "$.evaluation.promote", "BooleanEquals": True, "Next": "Publish"}
    assert promote["Default"] == "Reject"
    assert s["Publish"]["Next"] == s["Reject"]["Next"] == "ReportOutcome"
    assert s["ReportOutcome"]["Next"] == "Done" and s["Done"]["Type"] == "Succeed"
    assert s["ReportFailure"]["Next"] == "NotifyFailure" and s["NotifyFailure"]["Next"] == "RetrainFailed"
    assert s["RetrainFailed"] == {"Type": "Fail", "Error": "RetrainFailed", "CausePath": "$.error.Cause"}
    # ReportFailure takes the whole state: it must not depend on paths a failed step never wrote
    assert "Parameters" not in s["ReportFailure"] and "InputPath" not in s["ReportFailure"], s["ReportFailure"]
    assert s["NotifyFailure"]["Parameters"]["Message"] == {"execution.$": "$$.Execution.Id", "error.$": "$.error.Error",
                                                           "cause.$": "$.error.Cause", "live_model": "unchanged"}


def test_sagemaker_task_is_sync_with_parameters(definition):
    t = definition["States"]["Train"]
    assert t["Resource"].endswith(":states:::sagemaker:createTrainingJob.sync")
    p = t["Parameters"]
    # a new name per attempt (SageMaker refuses a name it has seen): version + 8 hex digits of a UUID
    assert p["TrainingJobName.$"] == ("States.Format('{}-{}', $.prepare.version, "
                                      "States.ArrayGetItem(States.StringSplit(States.UUID(), '-'), 0))")
    assert p["ResourceConfig"] == {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 30}
    assert p["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200}
    assert "HyperParameters" not in p  # none by default: the job's defaults (fruitpipe.training.Config)
    assert p["OutputDataConfig"] == {"S3OutputPath.$": "$.prepare.output_uri"}
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in p["InputDataConfig"]}
    assert channels["train"]["S3DataType"] == channels["validation"]["S3DataType"] == "ManifestFile"
    assert channels["cache"] == {"S3Uri.$": "$.prepare.cache_uri", "S3DataType": "S3Prefix",
                                 "S3DataDistributionType": "FullyReplicated"}
    assert p["AlgorithmSpecification"]["TrainingImage"].startswith("<") or "dkr.ecr" in p["AlgorithmSpecification"]["TrainingImage"]
    defs = {d["Name"]: re.compile(d["Regex"]) for d in p["AlgorithmSpecification"]["MetricDefinitions"]}
    line = "stage=evaluate val_accuracy=0.9731 val_macro_f1=0.97 embedded_new=100 cached=2000"
    assert defs["val_accuracy"].search(line).group(1) == "0.9731"
    assert defs["embedded_new"].search(line).group(1) == "100"
    assert defs["accuracy"].search(line) is None, "accuracy must not match inside val_accuracy"
    assert t["ResultSelector"]["model_artifacts.$"] == "$.ModelArtifacts.S3ModelArtifacts"
    warm = definition["States"]["TrainWarmStart"]["Parameters"]
    warm_channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in warm["InputDataConfig"]}
    assert set(warm_channels) == {*channels, "base_model"} and "base_model" not in channels
    assert warm_channels["base_model"]["S3Uri.$"] == "$.prepare.base_model_uri"
    assert {k: v for k, v in warm.items() if k != "InputDataConfig"} == \
        {k: v for k, v in p.items() if k != "InputDataConfig"}


def test_publish_records_lineage(definition):
    assert definition["States"]["Publish"]["Parameters"]["lineage"] == {
        "training_job.$": "$.training.job_name", "execution_arn.$": "$$.Execution.Id",
        "snapshot.$": "$.prepare.snapshot_uri", "base_model.$": "$.prepare.base_model"}


def test_every_task_has_retry_and_catch(definition):
    tasks = {n: s for n, s in definition["States"].items() if s["Type"] == "Task"}
    assert set(tasks) == {"Prepare", "Train", "TrainWarmStart", "EvaluateAndGate", "Publish", "Reject", "ReportOutcome",
                          "ReportFailure", "NotifyFailure"}
    for name, s in tasks.items():
        assert s.get("Retry"), f"{name} has no Retry"
        assert all(r["BackoffRate"] >= 2 and r["MaxAttempts"] >= 3 for r in s["Retry"]), name
        (catch,) = s["Catch"]
        expected = {"ReportFailure": "NotifyFailure", "NotifyFailure": "RetrainFailed"}.get(name, "ReportFailure")
        assert catch["Next"] == expected and catch["ErrorEquals"] == ["States.ALL"], name
    assert any("Lambda.TooManyRequestsException" in r["ErrorEquals"] for r in tasks["Publish"]["Retry"])
    assert "SageMaker.AmazonSageMakerException" in tasks["Train"]["Retry"][0]["ErrorEquals"]
    assert tasks["NotifyFailure"]["Resource"].endswith(":states:::sns:publish")


def test_logging_all_and_tracing(machine, tpl):
    p = machine["Properties"]
    assert p["LoggingConfiguration"]["Level"] == "ALL" and p["LoggingConfiguration"]["IncludeExecutionData"]
    assert p["TracingConfiguration"] == {"Enabled": True}
    # first-deploy blocker: a fixed name on a retained group fails a retried deploy ("already exists")
    (dest,) = p["LoggingConfiguration"]["Destinations"]
    group = tpl["Resources"][dest["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]]
    assert "LogGroupName" not in group["Properties"]


def test_state_machine_may_publish_to_the_encrypted_topic(tpl):
    """first-deploy blocker: the alerts topic uses a customer-managed key, so sns:Publish alone fails."""
    (topic_id,) = of_type(tpl, "AWS::SNS::Topic")
    key_ref = tpl["Resources"][topic_id]["Properties"]["KmsMasterKeyId"]
    sm_role = [k for k in of_type(tpl, "AWS::IAM::Role") if k.startswith("RetrainStateMachineRole")][0]
    statements = policies_of(tpl, sm_role)
    assert any("sns:Publish" in as_list(s["Action"]) and s["Resource"] == {"Ref": topic_id} for s in statements)
    kms = [s for s in statements if s["Resource"] == key_ref]
    assert kms and {"kms:Decrypt", "kms:GenerateDataKey*"} <= {a for s in kms for a in as_list(s["Action"])}


def test_triggers_schedule_new_data_and_drift(tpl):
    rules = list(of_type(tpl, "AWS::Events::Rule").values())
    schedules = sorted(r["Properties"].get("ScheduleExpression", "") for r in rules)
    assert "cron(0 3 ? * SUN *)" in schedules and "rate(15 minutes)" in schedules
    inputs = {json.loads(r["Properties"]["Targets"][0].get("Input", "{}")).get("trigger")
              for r in rules if "ScheduleExpression" in r["Properties"]}
    assert inputs == {"schedule", "new-data"}
    (drift,) = [r for r in rules if r["Properties"].get("EventPattern", {}).get("source") == ["aws.cloudwatch"]
                and r["Properties"]["Description"] == "Retrain when DriftRetrainRule fires"]
    pat = drift["Properties"]["EventPattern"]
    assert pat["detail-type"] == ["CloudWatch Alarm State Change"] and pat["detail"] == {"state": {"value": ["ALARM"]}}
    (composite,) = [k for k in of_type(tpl, "AWS::CloudWatch::CompositeAlarm") if "Drift" in k]
    assert pat["resources"] == [{"Fn::GetAtt": [composite, "Arn"]}]
    trigger_fns = [f for f in of_type(tpl, "AWS::Lambda::Function").values()
                   if f["Properties"]["Handler"] == "functions.pipeline.trigger.handler.handler"]
    assert trigger_fns[0]["Properties"]["Environment"]["Variables"]["FRUITPIPE_NEW_IMAGES_THRESHOLD"] == "1000"


def test_alarms_notify_sns(tpl):
    alarms = of_type(tpl, "AWS::CloudWatch::Alarm")
    names = {k.split("Monitoring")[1][:-8] for k in alarms}
    assert {"Api5xxRate", "ApiP95Latency", "TrainingFailure", "DriftConfidenceDrop", "DriftNotFruitRise",
            "DriftLabelAccuracy", "PostPromotionNotFruit"} <= names
    (topic,) = of_type(tpl, "AWS::SNS::Topic")
    for a in [*alarms.values(), *of_type(tpl, "AWS::CloudWatch::CompositeAlarm").values()]:
        assert a["Properties"]["AlarmActions"] == [{"Ref": topic}]
    label = next(a for k, a in alarms.items() if "DriftLabelAccuracy" in k)["Properties"]
    exprs = {m["Id"]: m for m in label["Metrics"]}
    assert label["Threshold"] == 0.8 and label["ComparisonOperator"] == "LessThanThreshold"
    assert any(m.get("Expression") == "IF(n >= 30, acc, 1)" for m in exprs.values())  # silent below 30 reviews
    assert {exprs[i]["MetricStat"]["Stat"] for i in ("acc", "n")} == {"Average", "SampleCount"}
    assert exprs["acc"]["MetricStat"]["Metric"]["MetricName"] == "ReviewCorrect"
    assert exprs["acc"]["MetricStat"]["Period"] == 7 * 86400
    (composite,) = [a for k, a in of_type(tpl, "AWS::CloudWatch::CompositeAlarm").items() if "Drift" in k]
    assert "DriftLabelAccuracy" in json.dumps(composite["Properties"]["AlarmRule"])
    fail = next(a for k, a in alarms.items() if "TrainingFailure" in k)["Properties"]
    assert fail["MetricName"] == "ExecutionsFailed" and fail["Threshold"] == 1


def test_dashboard_has_every_widget(tpl):
    (dash,) = of_type(tpl, "AWS::CloudWatch::Dashboard").values()
    body = flatten(dash["Properties"]["DashboardBody"])
    doc = (REPO / "docs" / "operations.md").read_text()
    for title in ("API requests and errors (API Gateway)", "API latency p50/p95/p99 (API Gateway)",
                  "Model latency p50/p95/p99 (app)", "Predictions by class", "Predictions by verdict",
                  "Confidence and drift signals", "API Lambda: invocations, errors, throttles",
                  "API Lambda: duration p50/p95/p99 and concurrency", "Ingest: added, duplicates, rejected",
                  "Retrain outcomes", "Retrain quality (candidate vs live)", "Retrain per-class F1",
                  "Retrain data and duration", "State machine executions", "Alarms",
                  "Accuracy on reviewed captures (label-based)"):
        assert f'"title":"{title}"' in body, title
        assert title in doc, f"docs/operations.md does not name widget {title!r}"
    for metric in ("ConfidenceDelta", "NotFruitExcess", "ColdStart", "ImagesAdded", "RetrainOutcome",
                   "ClassF1", "EmbeddedNew", "ConcurrentExecutions", "Throttles", "ReviewCorrect"):
        assert metric in body and metric in doc, metric


def test_sagemaker_iam_is_least_privilege(tpl):
    roles = of_type(tpl, "AWS::IAM::Role")
    (training,) = [k for k, r in roles.items()
                   if r["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"].get("Service")
                   == "sagemaker.amazonaws.com"]
    sm_role = [k for k in roles if k.startswith("RetrainStateMachineRole")][0]
    passes = [s for s in policies_of(tpl, sm_role) if "iam:PassRole" in as_list(s["Action"])]
    assert passes and all(s["Resource"] == {"Fn::GetAtt": [training, "Arn"]} for s in passes)
    for p in of_type(tpl, "AWS::IAM::Policy").values():
        for s in p["Properties"]["PolicyDocument"]["Statement"]:
            assert not any(a == "*" or a.endswith(":*") for a in as_list(s["Action"])), s
    s3_statements = [s for s in policies_of(tpl, training) if any(a.startswith("s3:") for a in as_list(s["Action"]))]
    allowed = ("/dataset/*", "/runs/*", "/cache/embeddings/*", "/versions/*")  # versions: base_model
    for s in s3_statements:
        assert not any("Delete" in a or "Abort" in a for a in as_list(s["Action"])), s
        for r in as_list(s["Resource"]):
            text = flatten(r)
            if as_list(s["Action"]) == ["s3:ListBucket"]:
                prefixes = s["Condition"]["StringLike"]["s3:prefix"]
                assert all(any(p.startswith(a.strip("/")[:-1]) for a in allowed) for p in as_list(prefixes)), s
            else:
                assert text.endswith(allowed), text


def test_step_roles_are_scoped(tpl):
    publish = [s for s in policies_of(tpl, "RetrainPublishRole") if "s3:PutObject" in as_list(s["Action"])]
    assert all(flatten(r).endswith(("/versions/*", "/live.json", "/shadow.json"))  # shadow.json: -c shadowRequests
               for s in publish for r in as_list(s["Resource"]))
    # Prepare reads the live pointer (to fill base_model); it may not write it
    def prepare_objects(action: str) -> list[str]:
        return [flatten(r) for s in policies_of(tpl, "RetrainPrepareRole") if action in as_list(s["Action"])
                for r in as_list(s["Resource"])]
    prepare_reads, prepare_writes = prepare_objects("s3:GetObject"), prepare_objects("s3:PutObject")
    assert any(r.endswith("/live.json") for r in prepare_reads), prepare_reads
    assert not any(r.endswith("/live.json") for r in prepare_writes), prepare_writes
    # the report step consumes the new-images counter; Prepare only reads it
    ddb = {a for s in policies_of(tpl, "RetrainReportRole") for a in as_list(s["Action"]) if a.startswith("dynamodb:")}
    assert ddb == {"dynamodb:UpdateItem"}
    assert {a for s in policies_of(tpl, "RetrainPrepareRole") for a in as_list(s["Action"])
            if a.startswith("dynamodb:")} == {"dynamodb:GetItem"}
    reject = [s for s in policies_of(tpl, "RetrainRejectRole") if "s3:PutObject" in as_list(s["Action"])]
    assert all(flatten(r).endswith("/rejected/*") for s in reject for r in as_list(s["Resource"]))
    trig = [s for s in policies_of(tpl, "RetrainTriggerRole") if "states:StartExecution" in as_list(s["Action"])]
    assert trig and all("stateMachine:" in flatten(s["Resource"]) for s in trig)


def test_cfn_lint_has_no_errors(synthesized):
    out = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), "--non-zero-exit-code", "error",
                          str(synthesized[1])], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_schedule_can_be_changed_or_turned_off(tmp_path):
    tpl, _ = synth(tmp_path, {"retrainSchedule": "off", "newImagesThreshold": "250",
                              "trainingInstanceType": "ml.c5.xlarge", "trainingHyperparameters": '{"epochs": 60}'})
    schedules = [r["Properties"].get("ScheduleExpression") for r in of_type(tpl, "AWS::Events::Rule").values()]
    assert "cron(0 3 ? * SUN *)" not in schedules and "rate(15 minutes)" in schedules
    (sm,) = of_type(tpl, "AWS::StepFunctions::StateMachine").values()
    d = json.loads(flatten(sm["Properties"]["DefinitionString"]))
    assert d["States"]["Train"]["Parameters"]["ResourceConfig"]["InstanceType"] == "ml.c5.xlarge"
    assert d["States"]["Train"]["Parameters"]["HyperParameters"] == {"epochs": "60"}
    assert d["States"]["TrainWarmStart"]["Parameters"]["HyperParameters"] == {"epochs": "60"}
    trig = [f for f in of_type(tpl, "AWS::Lambda::Function").values()
            if f["Properties"]["Handler"] == "functions.pipeline.trigger.handler.handler"]
    assert trig[0]["Properties"]["Environment"]["Variables"]["FRUITPIPE_NEW_IMAGES_THRESHOLD"] == "250"


def test_api_may_start_and_read_runs_only(tpl):
    statements = [s for s in policies_of(tpl, "ApiRole")
                  if any(a.startswith(("states:", "sagemaker:")) for a in as_list(s["Action"]))]
    actions = sorted(a for s in statements for a in as_list(s["Action"]))
    assert actions == ["sagemaker:DescribeTrainingJob", "states:DescribeExecution", "states:GetExecutionHistory",
                       "states:ListExecutions", "states:StartExecution"]
    for s in statements:
        assert s["Resource"] != "*" and "*" not in as_list(s["Resource"]), s


def test_post_promotion_alarm_rolls_back_through_eventbridge(tpl):
    """The rollback wiring: PostPromotion (5xx, p95, not-fruit beyond the previous model on the same
    requests, label accuracy) -> EventBridge -> the rollback Lambda, whose role may move live.json and
    publish alerts, and write nothing else."""
    (post_id, post), = [(k, a) for k, a in of_type(tpl, "AWS::CloudWatch::CompositeAlarm").items()
                        if "PostPromotion" in k and "NotFruit" not in k]
    rule_text = json.dumps(post["Properties"]["AlarmRule"])
    for name in ("Api5xxRate", "ApiP95Latency", "PostPromotionNotFruit", "DriftLabelAccuracy"):
        assert name in rule_text, name
    assert "DriftNotFruitRise" not in rule_text  # not-fruit traffic is no fault of the new model
    (topic,) = of_type(tpl, "AWS::SNS::Topic")
    assert post["Properties"]["AlarmActions"] == [{"Ref": topic}]
    paired = next(a for k, a in of_type(tpl, "AWS::CloudWatch::Alarm").items() if "PostPromotionNotFruit" in k)
    exprs = {m["Id"]: m for m in paired["Properties"]["Metrics"]}
    assert any(m.get("Expression", "").startswith("IF(n >= 50, IF(b - c > 0.05 * n, IF((b - c - 1) * (b - c - 1) > 9.5")
               for m in exprs.values())  # z = 3.09 for one-sided 0.001
    assert {(exprs[i]["MetricStat"]["Metric"]["MetricName"], exprs[i]["MetricStat"]["Stat"]) for i in "bcn"} == {
        ("NotFruitOnlyNew", "Sum"), ("NotFruitOnlyPrevious", "Sum"), ("NotFruitOnlyNew", "SampleCount")}
    assert all(exprs[i]["MetricStat"]["Period"] == 7200 for i in "bcn")
    (rule,) = [r for r in of_type(tpl, "AWS::Events::Rule").values()
               if r["Properties"].get("Description") == "Roll back when RollbackRule fires"]
    pat = rule["Properties"]["EventPattern"]
    assert pat["resources"] == [{"Fn::GetAtt": [post_id, "Arn"]}] and pat["detail"] == {"state": {"value": ["ALARM"]}}
    fns = {k: f for k, f in of_type(tpl, "AWS::Lambda::Function").items()
           if f["Properties"]["Handler"] == "functions.pipeline.rollback.handler.handler"}
    (fn_id, fn), = fns.items()
    assert rule["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": [fn_id, "Arn"]}
    env = fn["Properties"]["Environment"]["Variables"]
    assert env["FRUITPIPE_ROLLBACK_WINDOW_SECONDS"] == "7200" and env["FRUITPIPE_ALERTS_TOPIC_ARN"] == {"Ref": topic}
    api_fns = [f for f in of_type(tpl, "AWS::Lambda::Function").values()
               if f["Properties"]["Handler"] == "functions.api.handler.handler"]
    assert [f["Properties"]["Environment"]["Variables"]["FRUITPIPE_ROLLBACK_WINDOW_SECONDS"] for f in api_fns] == ["7200"]
    role_id = fn["Properties"]["Role"]["Fn::GetAtt"][0]
    statements = policies_of(tpl, role_id)
    writes = [s for s in statements if any(a.startswith("s3:Put") or a.startswith("s3:Delete") for a in as_list(s["Action"]))]
    assert len(writes) == 1 and as_list(writes[0]["Action"]) == ["s3:PutObject"]
    assert flatten(as_list(writes[0]["Resource"])[0]).endswith("/live.json")
    assert any("sns:Publish" in as_list(s["Action"]) and s["Resource"] == {"Ref": topic} for s in statements)


def test_publish_step_may_start_a_shadow(tpl):
    fns = [f["Properties"] for f in of_type(tpl, "AWS::Lambda::Function").values()
           if f["Properties"]["Handler"] == "functions.pipeline.publish.handler.handler"]
    (publish_fn,) = fns
    assert publish_fn["Environment"]["Variables"]["FRUITPIPE_SHADOW_REQUESTS"] == "0"  # off unless -c shadowRequests=N
    role_id = publish_fn["Role"]["Fn::GetAtt"][0]
    puts = {flatten(r).rsplit("/", 1)[-1] for s in policies_of(tpl, role_id) if "s3:PutObject" in as_list(s["Action"])
            for r in as_list(s["Resource"])}
    assert {"live.json", "shadow.json"} <= puts

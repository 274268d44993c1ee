"""The retrain steps run directly against a moto server: prepare/guard, evaluate+gate, publish,
reject, rollback, outcome metrics, triggers and the Step Functions trainer."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from fruitpipe import bundle
from fruitpipe.backends.base import RetrainRunning
from fruitpipe.pipeline import evaluate, prepare, publish, report, s3util, trainer, trigger
from tests.conftest import FRUITS, needs_shared
from tests.pipeline.conftest import archive, fill_dataset, make_bundle, simple_evaluate

pytestmark = needs_shared
DATA, MODELS, TABLE = "fp-data", "fp-models", "fp-state"


@pytest.fixture(scope="module")
def env(aws, tmp_path_factory):
    s3 = aws.s3
    for b in (DATA, MODELS):
        s3.create_bucket(Bucket=b)
    aws.dynamodb.create_table(TableName=TABLE, KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                              AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                              BillingMode="PAY_PER_REQUEST")
    fill_dataset(s3, DATA, per_class=6)
    return {"s3": s3, "tmp": tmp_path_factory.mktemp("bundles")}


def settings(**kw) -> prepare.Settings:
    return prepare.Settings(DATA, MODELS, TABLE, **{"min_images_per_class": 2, "validation_percent": 50, **kw})


def upload_candidate(s3, bundle_dir: Path, extra: dict[str, bytes] | None = None) -> str:
    key = f"runs/{bundle_dir.name}/output/model.tar.gz"
    s3.put_object(Bucket=MODELS, Key=key, Body=archive(bundle_dir))
    if extra:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, data in extra.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        s3.put_object(Bucket=MODELS, Key=f"runs/{bundle_dir.name}/output/output.tar.gz", Body=buf.getvalue())
    return f"s3://{MODELS}/{key}"


# --- prepare ------------------------------------------------------------------------------------

def test_prepare_reads_each_new_images_source_once(aws, tmp_path):
    """The origins map in the cache prefix grows by the images filed since; a filed image is never
    HEADed again (its metadata cannot change: dataset/ is write-once)."""
    from fruitpipe import dataset
    from fruitpipe.labels import LABELS
    s3 = aws.s3
    for b in ("fp-data-o", "fp-models-o"):
        s3.create_bucket(Bucket=b)
    cfg = prepare.Settings("fp-data-o", "fp-models-o", None, min_images_per_class=2, validation_percent=50)
    sources: dict[str, str] = {}
    for label in LABELS:
        for i, p in enumerate(sorted((FRUITS / "test" / label).glob("*.jpg"))[:6]):
            filed = dataset.prepare(label, p.read_bytes())
            sources[filed.key.split("/")[-1].split(".")[0]] = ("review", "api", "untagged")[i % 3]
            meta = {} if i % 3 == 2 else {"source": sources[filed.key.split("/")[-1].split(".")[0]]}
            s3.put_object(Bucket="fp-data-o", Key=filed.key, Body=filed.data, Metadata=meta)
    out = prepare.run(s3, cfg, version="v-origins")
    assert s3util.get_json(s3, "fp-models-o", "cache/embeddings/origins.json") == sources
    train = json.loads(s3.get_object(Bucket="fp-models-o", Key="runs/v-origins/train.manifest")["Body"].read())[1:]
    expected: dict[str, int] = {}
    for key in train:
        tag = sources[key.split("/")[-1].split(".")[0]]
        expected[tag] = expected.get(tag, 0) + 1
    assert out["origins"] == dict(sorted(expected.items())) and sum(expected.values()) == out["n_train"]
    # a tag changed behind prepare's back is not re-read: the map, not a HEAD, answers for known images
    key = next(iter(train))
    s3.put_object(Bucket="fp-data-o", Key=f"dataset/{key}", Body=b"x", Metadata={"source": "changed"})
    new = dataset.prepare("freshapples", (FRUITS / "train" / "freshapples").glob("*.jpg").__next__().read_bytes())
    s3.put_object(Bucket="fp-data-o", Key=new.key, Body=new.data, Metadata={"source": "drop-folder"})
    prepare.run(s3, cfg, version="v-origins-2")
    after = s3util.get_json(s3, "fp-models-o", "cache/embeddings/origins.json")
    assert after == {**sources, new.key.split("/")[-1].split(".")[0]: "drop-folder"}


def test_prepare_refuses_too_few_images(env):
    with pytest.raises(prepare.InsufficientData, match="at least 50 images per class"):
        prepare.run(env["s3"], settings(min_images_per_class=50))


def test_prepare_snapshots_manifests_and_reads_the_counter(env, aws):
    aws.dynamodb.put_item(TableName=TABLE, Item={"id": {"S": "new-images"}, "count": {"N": "7"}})
    out = prepare.run(env["s3"], settings(), ddb=aws.dynamodb, version="v-prep")
    assert out["proceed"] and out["n_train"] + out["n_validation"] == 36 and out["new_images"] == 7
    assert out["snapshot_uri"] == f"s3://{MODELS}/runs/v-prep/snapshot.json"
    bucket, key = s3util.split_uri(out["train_manifest"])
    entries = json.loads(env["s3"].get_object(Bucket=bucket, Key=key)["Body"].read())
    assert entries[0] == {"prefix": f"s3://{DATA}/dataset/"} and entries[1].count("/") == 1
    val = json.loads(env["s3"].get_object(Bucket=MODELS, Key="runs/v-prep/validation.manifest")["Body"].read())
    assert not set(entries[1:]) & set(val[1:]), "an image is in both splits"
    assert s3util.exists(env["s3"], MODELS, "cache/embeddings/.keep")
    # no filed image here carries "source" metadata: every one is untagged, each HEADed once
    assert out["origins"] == {"untagged": out["n_train"]}
    assert set(s3util.get_json(env["s3"], MODELS, "cache/embeddings/origins.json").values()) == {"untagged"}

    def count() -> str:
        return aws.dynamodb.get_item(TableName=TABLE, Key={"id": {"S": "new-images"}})["Item"]["count"]["N"]
    # the counter is consumed only by a run that ends: a failed run leaves its trigger for the next
    assert count() == "7"
    aws.dynamodb.update_item(TableName=TABLE, Key={"id": {"S": "new-images"}}, UpdateExpression="ADD #c :n",
                             ExpressionAttributeNames={"#c": "count"}, ExpressionAttributeValues={":n": {"N": "2"}})
    failed = report.run(aws.cloudwatch, {"prepare": out, "error": {"Error": "X", "Cause": "y"}},
                        namespace="Test/Retrain", ddb=aws.dynamodb, table=TABLE)
    assert "new_images_consumed" not in failed and count() == "9"
    ended = report.run(aws.cloudwatch, {"prepare": out, "evaluation": {"promote": False}},
                       namespace="Test/Retrain", ddb=aws.dynamodb, table=TABLE)
    assert ended["new_images_consumed"] == 7 and count() == "2"  # the 2 filed meanwhile still count
    aws.dynamodb.put_item(TableName=TABLE, Item={"id": {"S": "new-images"}, "count": {"N": "0"}})


def test_guard_lets_only_the_oldest_running_execution_train(env, aws):
    sfn = aws.stepfunctions
    role = aws.iam.create_role(RoleName="sfn-guard", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    arn = sfn.create_state_machine(name="guard", roleArn=role, definition=json.dumps(
        {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}))["stateMachineArn"]
    first = sfn.start_execution(stateMachineArn=arn, name="first")["executionArn"]
    second = sfn.start_execution(stateMachineArn=arn, name="second")["executionArn"]
    out2 = prepare.run(env["s3"], settings(), sfn=sfn, state_machine_arn=arn, execution_arn=second)
    assert out2 == {"proceed": False, "reason": f"already running: {first}", "trigger": "manual"}
    out1 = prepare.run(env["s3"], settings(), sfn=sfn, state_machine_arn=arn, execution_arn=first)
    assert out1["proceed"] is True


# --- evaluate + gate ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def published_live(env):
    """v1 (the default model) published and live."""
    live = make_bundle(env["tmp"], "v1-live")
    res = publish.publish(env["s3"], models_bucket=MODELS, model_artifacts=upload_candidate(env["s3"], live))
    assert res["pointer_moved"]
    return live


@pytest.fixture(scope="module")
def val_manifest(env):
    return prepare.run(env["s3"], settings(), version="v-eval")["validation_manifest"]


def gate(env, candidate: Path, manifest: str, **kw):
    return evaluate.run(env["s3"], models_bucket=MODELS, model_artifacts=upload_candidate(env["s3"], candidate, kw.pop("extra", None)),
                        validation_manifest=manifest, evaluator=kw.pop("evaluator", simple_evaluate), **kw)


def test_gate_equal_candidate_is_promoted(env, published_live, val_manifest):
    out = gate(env, make_bundle(env["tmp"], "v2-equal"), val_manifest)
    assert out["promote"] and out["live_version"] == "v1-live"
    assert out["candidate"]["accuracy"] == out["live"]["accuracy"]
    assert 0 < out["baseline"]["mean_confidence"] <= 1 and out["baseline"]["n"] == out["n_eval_images"]


def test_gate_worse_candidate_is_rejected(env, published_live, val_manifest):
    out = gate(env, make_bundle(env["tmp"], "v3-worse", shuffle_head=True), val_manifest)
    assert not out["promote"] and "worse than the live model" in out["reason"]
    assert out["candidate"]["accuracy"] < out["live"]["accuracy"]


def test_gate_better_candidate_is_promoted(env, val_manifest, tmp_path):
    s3 = env["s3"]
    before = s3.get_object(Bucket=MODELS, Key="live.json")["Body"].read()
    bad = make_bundle(env["tmp"], "v0-bad", shuffle_head=True)
    publish.publish(s3, models_bucket=MODELS, model_artifacts=upload_candidate(s3, bad))
    try:
        out = gate(env, make_bundle(env["tmp"], "v4-better"), val_manifest)
        assert out["promote"] and out["candidate"]["accuracy"] > out["live"]["accuracy"]
    finally:
        s3.put_object(Bucket=MODELS, Key="live.json", Body=before)


def test_gate_missing_metrics_rejects(env, published_live, val_manifest):
    out = gate(env, make_bundle(env["tmp"], "v5-nometrics"), val_manifest,
               evaluator=lambda clf, d: {"n": 3})
    assert not out["promote"] and "cannot be compared" in out["reason"] and "accuracy" in out["reason"]


def test_gate_corrupt_candidate_rejects(env, published_live, val_manifest):
    cand = make_bundle(env["tmp"], "v6-corrupt")
    (cand / "head.npz").write_bytes((cand / "head.npz").read_bytes()[:-10] + b"0123456789")
    out = gate(env, cand, val_manifest)
    assert not out["promote"] and "corrupt" in out["reason"] and "head.npz" in out["reason"]


def test_evaluate_persists_only_new_cache_shards(env, published_live, val_manifest):
    out = gate(env, make_bundle(env["tmp"], "v7-cache"), val_manifest,
               extra={"cache/shard-aa.npz": b"one", "cache/shard-bb.npz": b"two"})
    assert out["cache"] == {"uploaded": 2, "present": 0}
    out = gate(env, make_bundle(env["tmp"], "v8-cache"), val_manifest,
               extra={"cache/shard-aa.npz": b"one", "cache/shard-cc.npz": b"three"})
    assert out["cache"] == {"uploaded": 1, "present": 1}
    assert env["s3"].get_object(Bucket=MODELS, Key="cache/embeddings/shard-cc.npz")["Body"].read() == b"three"


def test_gate_anchor_stops_a_chain_that_drifted_below_the_best_version(env, val_manifest):
    """A bucket whose live model is a drifted one (each promotion within chance of the last) and
    whose best published version is better: a candidate equal to the live model passes the
    live comparison but not the anchor, scored again on this run's images."""
    s3, bucket = env["s3"], "fp-models-anchor"
    s3.create_bucket(Bucket=bucket)

    def artifacts(bundle_dir: Path) -> str:
        key = f"runs/{bundle_dir.name}/output/model.tar.gz"
        s3.put_object(Bucket=bucket, Key=key, Body=archive(bundle_dir))
        return f"s3://{bucket}/{key}"

    def run(bundle_dir: Path) -> dict:
        return evaluate.run(s3, models_bucket=bucket, model_artifacts=artifacts(bundle_dir),
                            validation_manifest=val_manifest, evaluator=simple_evaluate)

    best = make_bundle(env["tmp"], "a1-best")
    first = run(best)
    assert first["promote"] and first["reference_version"] is None  # the first model: nothing to anchor to
    publish.publish(s3, models_bucket=bucket, model_artifacts=artifacts(best), metrics=first["candidate"])
    drifted = make_bundle(env["tmp"], "a2-drifted", shuffle_head=True)
    # its figures as an earlier run's gate recorded them (lower, on that run's images)
    publish.publish(s3, models_bucket=bucket, model_artifacts=artifacts(drifted),
                    metrics={"accuracy": 0.5, "macro_f1": 0.5})
    assert evaluate.reference_version(s3, bucket, "a2-drifted") == "a1-best"
    out = run(make_bundle(env["tmp"], "a3-same", shuffle_head=True))
    assert not out["promote"] and out["reference_version"] == "a1-best"
    assert "best version so far" in out["reason"] and "reference a1-best" in out["reason"]
    assert "worse than the live model" not in out["reason"]  # a tie with the live model
    assert evaluate.reference_version(s3, bucket, "a1-best") is None  # the best is live: compared anyway


# --- publish / reject / rollback ----------------------------------------------------------------

def test_publish_is_idempotent(env, published_live):
    s3 = env["s3"]
    candidate = make_bundle(env["tmp"], "v9-pub")
    n_files = len(bundle.read_manifest(candidate).files)  # head, block, prototypes
    uri = upload_candidate(s3, candidate)
    lineage = {"training_job": "v9-pub-1a2b3c4d", "execution_arn": "arn:aws:states:x", "base_model": "v1-live",
               "snapshot": f"s3://{MODELS}/runs/v9-pub/snapshot.json"}
    first = publish.publish(s3, models_bucket=MODELS, model_artifacts=uri, baseline={"mean_confidence": 0.9},
                            lineage=lineage)
    published = s3util.get_json(s3, MODELS, "versions/v9-pub/manifest.json")
    assert published["lineage"] == lineage and bundle.Manifest.from_dict(published).files == \
        bundle.read_manifest(candidate).files
    again = publish.publish(s3, models_bucket=MODELS, model_artifacts=uri, baseline={"mean_confidence": 0.9})
    assert first["pointer_moved"] and first["uploaded_files"] == n_files and first["previous"] == "v1-live"
    assert again == {**again, "already_published": True, "uploaded_files": 0, "pointer_moved": False}
    pointer = s3util.get_json(s3, MODELS, "live.json")
    assert pointer["version"] == "v9-pub" and pointer["baseline"] == {"mean_confidence": 0.9}


def test_publish_refuses_checksum_mismatch_and_keeps_pointer(env, published_live):
    s3 = env["s3"]
    before = s3.get_object(Bucket=MODELS, Key="live.json")["Body"].read()
    cand = make_bundle(env["tmp"], "v10-tampered")
    (cand / "rejection.npz").write_bytes(b"not the file the manifest pinned")
    with pytest.raises(publish.PublishError, match="rejection.npz"):
        publish.publish(s3, models_bucket=MODELS, model_artifacts=upload_candidate(s3, cand))
    assert s3.get_object(Bucket=MODELS, Key="live.json")["Body"].read() == before
    assert not s3util.exists(s3, MODELS, "versions/v10-tampered/manifest.json")


def test_publish_refuses_to_overwrite_a_version_and_keeps_pointer(env, published_live):
    s3 = env["s3"]
    before = s3.get_object(Bucket=MODELS, Key="live.json")["Body"].read()
    other = make_bundle(env["tmp"] / "other", "v1-live", shuffle_head=True)
    with pytest.raises(publish.PublishError, match="already exists with different content"):
        publish.publish(s3, models_bucket=MODELS, model_artifacts=upload_candidate(s3, other))
    assert s3.get_object(Bucket=MODELS, Key="live.json")["Body"].read() == before


def test_rollback_moves_pointer_and_refuses_unknown_or_tampered(env, published_live):
    s3 = env["s3"]
    publish.publish(s3, models_bucket=MODELS,
                    model_artifacts=upload_candidate(s3, make_bundle(env["tmp"], "v11-next")))
    assert s3util.live_version(s3, MODELS) == "v11-next"
    res = publish.move_pointer(s3, MODELS, "v1-live", reason="rollback")
    assert res["moved"] and s3util.live_version(s3, MODELS) == "v1-live"
    with pytest.raises(publish.PublishError, match="does not exist"):
        publish.move_pointer(s3, MODELS, "v404")
    s3.put_object(Bucket=MODELS, Key="versions/v11-next/head.npz", Body=b"tampered")
    with pytest.raises(publish.PublishError, match="does not match"):
        publish.move_pointer(s3, MODELS, "v11-next")
    assert s3util.live_version(s3, MODELS) == "v1-live"


def test_reject_keeps_candidate_with_reason(env, published_live):
    s3 = env["s3"]
    uri = upload_candidate(s3, make_bundle(env["tmp"], "v12-rej"))
    out = publish.reject(s3, models_bucket=MODELS, model_artifacts=uri, version="v12-rej", reason="worse")
    assert out["rejected"] and s3util.exists(s3, MODELS, "rejected/v12-rej/model.tar.gz")
    assert s3util.get_json(s3, MODELS, "rejected/v12-rej/rejection.json")["reason"] == "worse"
    assert s3util.get_json(s3, MODELS, "rejected/v12-rej/manifest.json")["version"] == "v12-rej"
    assert s3util.live_version(s3, MODELS) == "v1-live"
    from fruitpipe.backends.aws import S3ModelRegistry  # the registry behind GET /models
    registry = S3ModelRegistry(MODELS, env["tmp"] / "registry-cache", s3=s3)
    listed = {v.version: v for v in registry.versions()}
    assert listed["v12-rej"].status == "rejected" and listed["v12-rej"].reason == "worse"
    assert listed["v1-live"].status == "live"


# --- metrics ------------------------------------------------------------------------------------

def test_report_writes_outcome_metrics(aws):
    cw = aws.cloudwatch
    state = {"prepare": {"proceed": True, "n_train": 30, "new_images": 4, "started": "2026-01-01T00:00:00+00:00"},
             "evaluation": {"promote": True, "cache": {"uploaded": 4},
                            "candidate": {"accuracy": 0.9, "macro_f1": 0.8, "per_class_f1": {"freshapples": 0.7}},
                            "live": {"accuracy": 0.85, "macro_f1": 0.8}}}
    out = report.run(cw, state, namespace="Test/Retrain")
    assert out == {"outcome": "promoted", "metrics_written": 10}
    names = {m["MetricName"] for m in cw.list_metrics(Namespace="Test/Retrain")["Metrics"]}
    assert {"RetrainOutcome", "CandidateAccuracy", "ClassF1", "EmbeddedNew", "DurationSeconds"} <= names
    failed = report.run(cw, {"error": {"Error": "States.TaskFailed", "Cause": "boom"}}, namespace="Test/Retrain")
    assert failed["outcome"] == "failed" and failed["cause"] == "boom"
    dims = [m["Dimensions"] for m in cw.list_metrics(Namespace="Test/Retrain", MetricName="RetrainOutcome")["Metrics"]]
    assert [{"Name": "Outcome", "Value": "failed"}] in dims


# --- triggers + trainer -------------------------------------------------------------------------

@pytest.fixture()
def machine(aws, request):
    sfn = aws.stepfunctions
    role = aws.iam.create_role(RoleName=f"sfn-{request.node.name[:40]}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    arn = sfn.create_state_machine(name=request.node.name[:60], roleArn=role, definition=json.dumps(
        {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}))["stateMachineArn"]
    return sfn, arn


def running(sfn, arn) -> int:
    return len(sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING")["executions"])


def test_new_data_threshold_starts_exactly_one_execution(aws, machine):
    sfn, arn = machine
    ddb = aws.dynamodb
    kw = dict(sfn=sfn, ddb=ddb, state_machine_arn=arn, table=TABLE, threshold=1000)
    ddb.put_item(TableName=TABLE, Item={"id": {"S": "new-images"}, "count": {"N": "999"}})
    below = trigger.handle_event({"trigger": "new-data"}, **kw)
    assert not below["started"] and "999 new images < threshold 1000" in below["reason"] and running(sfn, arn) == 0
    ddb.update_item(TableName=TABLE, Key={"id": {"S": "new-images"}}, UpdateExpression="ADD #c :n",
                    ExpressionAttributeNames={"#c": "count"}, ExpressionAttributeValues={":n": {"N": "1"}})
    results = [trigger.handle_event({"trigger": "new-data"}, **kw) for _ in range(3)]
    assert [r["started"] for r in results] == [True, False, False]
    assert results[1]["reason"] == "already running" and running(sfn, arn) == 1


def test_trigger_during_a_run_does_not_start_another(aws, machine):
    sfn, arn = machine
    kw = dict(sfn=sfn, ddb=aws.dynamodb, state_machine_arn=arn, table=TABLE, threshold=1000)
    assert trigger.handle_event({"trigger": "schedule"}, **kw)["started"]
    alarm = {"source": "aws.cloudwatch", "detail-type": "CloudWatch Alarm State Change",
             "detail": {"alarmName": "drift", "state": {"value": "ALARM"}}}
    assert trigger.handle_event(alarm, **kw) == {**trigger.handle_event(alarm, **kw), "started": False,
                                                 "reason": "already running"}
    ok = {**alarm, "detail": {"alarmName": "drift", "state": {"value": "OK"}}}
    assert trigger.handle_event(ok, **kw)["reason"] == "alarm is not in ALARM"
    t = trainer.StepFunctionsTrainer(sfn, aws.sagemaker, arn)
    with pytest.raises(RetrainRunning):
        t.start("manual")
    assert running(sfn, arn) == 1
    st = t.status()
    assert st.state == "running" and st.trigger == "schedule"
    sfn.stop_execution(executionArn=st.run_id)
    assert t.status().state == "cancelled"  # a stopped execution
    started = t.start("manual")
    assert started.state == "running" and running(sfn, arn) == 1
    with pytest.raises(ValueError, match="unknown trigger"):
        trigger.start(sfn, arn, "cron")

"""The synthesized CloudFormation template: assertions, cdk-nag (AwsSolutions) and cfn-lint.

One real synth per configuration (module fixtures): the default (x86_64, retain) and a throw-away
arm64 stage with retain=false. The layer and function assets are built first (cached).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.infra.synth import synth

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory) -> tuple[dict[str, Any], Path]:
    return synth(tmp_path_factory.mktemp("cdk"))


@pytest.fixture(scope="module")
def template(synthesized):
    from aws_cdk.assertions import Template
    return Template.from_json(synthesized[0])


def resources(tpl: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in tpl["Resources"].items() if v["Type"] == kind}


def functions(tpl):
    return {k: v["Properties"] for k, v in resources(tpl, "AWS::Lambda::Function").items()}


def test_functions_runtime_architecture_memory_timeout_layer(synthesized):
    tpl, _ = synthesized
    fns = {k: p for k, p in functions(tpl).items() if k.startswith(("Api", "Ingest"))}  # part 2: test_pipeline.py
    assert len(fns) == 2, fns.keys()
    layers = resources(tpl, "AWS::Lambda::LayerVersion")
    assert len(layers) == 1
    (layer_id,) = layers
    assert layers[layer_id]["Properties"]["CompatibleRuntimes"] == ["python3.12"]
    by_handler = {p["Handler"]: p for p in fns.values()}
    assert set(by_handler) == {"functions.api.handler.handler", "functions.ingest.handler.handler"}
    for props in fns.values():
        assert props["Runtime"] == "python3.12"
        assert props["Architectures"] == ["x86_64"]
        assert props["Layers"] == [{"Ref": layer_id}]
    api = by_handler["functions.api.handler.handler"]
    assert api["MemorySize"] == 1024 and api["Timeout"] == 29
    # no reservation by default: a new account has 10 concurrent executions in all (first-deploy blocker)
    assert "ReservedConcurrentExecutions" not in api
    env = api["Environment"]["Variables"]
    for key in ("FRUITPIPE_DATA_BUCKET", "FRUITPIPE_MODELS_BUCKET", "FRUITPIPE_STATE_TABLE",
                "FRUITPIPE_ADMIN_TOKEN_SECRET", "FRUITPIPE_BACKBONE", "FRUITPIPE_MODEL_ZOO",
                "POWERTOOLS_METRICS_NAMESPACE"):
        assert key in env, key
    assert env["FRUITPIPE_MODEL_REFRESH_SECONDS"] == "60"
    ingest = by_handler["functions.ingest.handler.handler"]
    assert ingest["Timeout"] == 60 and "ReservedConcurrentExecutions" not in ingest
    assert "FRUITPIPE_DATA_BUCKET" in ingest["Environment"]["Variables"]


def test_http_api_throttling_and_access_logs(synthesized):
    tpl, _ = synthesized
    (api,) = resources(tpl, "AWS::ApiGatewayV2::Api").values()
    assert api["Properties"]["ProtocolType"] == "HTTP"
    (stage,) = resources(tpl, "AWS::ApiGatewayV2::Stage").values()
    route = stage["Properties"]["DefaultRouteSettings"]
    assert route["ThrottlingRateLimit"] == 50 and route["ThrottlingBurstLimit"] == 100
    assert "DestinationArn" in stage["Properties"]["AccessLogSettings"]
    (integration,) = resources(tpl, "AWS::ApiGatewayV2::Integration").values()
    assert integration["Properties"]["PayloadFormatVersion"] == "2.0"


def test_every_bucket_blocks_public_access_is_encrypted_and_retained(synthesized):
    tpl, _ = synthesized
    buckets = resources(tpl, "AWS::S3::Bucket")
    assert len(buckets) == 3
    for name, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True}, name
        sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
        assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256", name
        assert bucket["DeletionPolicy"] == "Retain" and bucket["UpdateReplacePolicy"] == "Retain", name
    (table,) = resources(tpl, "AWS::DynamoDB::Table").values()
    assert table["DeletionPolicy"] == "Retain"
    assert table["Properties"]["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]


def test_every_bucket_refuses_plain_http(synthesized):
    tpl, _ = synthesized
    policies = {p["Properties"]["Bucket"]["Ref"]: p["Properties"]["PolicyDocument"]["Statement"]
                for p in resources(tpl, "AWS::S3::BucketPolicy").values()}
    assert set(policies) == set(resources(tpl, "AWS::S3::Bucket"))
    for bucket, statements in policies.items():
        assert any(s["Effect"] == "Deny" and s["Action"] == "s3:*"
                   and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in statements), bucket


def test_data_and_models_buckets(synthesized):
    tpl, _ = synthesized
    buckets = resources(tpl, "AWS::S3::Bucket")
    data = next(b["Properties"] for k, b in buckets.items() if k.startswith("StorageData"))
    models = next(b["Properties"] for k, b in buckets.items() if k.startswith("StorageModels"))
    logs = next(k for k in buckets if k.startswith("StorageAccessLogs"))
    rules = {r["Id"]: r for r in data["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-unprocessed-incoming"]["Prefix"] == "incoming/"
    assert rules["expire-unprocessed-incoming"]["ExpirationInDays"] == 7
    assert rules["expire-quarantine"]["Prefix"] == "quarantine/"
    assert data["NotificationConfiguration"] == {"EventBridgeConfiguration": {"EventBridgeEnabled": True}}
    assert models["VersioningConfiguration"] == {"Status": "Enabled"}
    for props in (data, models):
        assert props["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": logs}


def test_eventbridge_rule_sends_incoming_objects_to_ingest(synthesized):
    tpl, _ = synthesized
    (rule,) = [r for r in resources(tpl, "AWS::Events::Rule").values()
               if r["Properties"].get("EventPattern", {}).get("source") == ["aws.s3"]]
    pattern = rule["Properties"]["EventPattern"]
    data_bucket = next(k for k in resources(tpl, "AWS::S3::Bucket") if k.startswith("StorageData"))
    assert pattern == {"source": ["aws.s3"], "detail-type": ["Object Created"],
                       "detail": {"bucket": {"name": [{"Ref": data_bucket}]},
                                  "object": {"key": [{"prefix": "incoming/"}]}}}
    (target,) = rule["Properties"]["Targets"]
    ingest = next(k for k, v in resources(tpl, "AWS::Lambda::Function").items()
                  if v["Properties"]["Handler"] == "functions.ingest.handler.handler")
    assert target["Arn"] == {"Fn::GetAtt": [ingest, "Arn"]}
    assert "DeadLetterConfig" in target and target["RetryPolicy"]["MaximumRetryAttempts"] == 4


def _statements(tpl):
    """Part 1's statements; the retrain pipeline's (and the API's grants on it) are asserted in
    tests/infra/test_pipeline.py."""
    for name, policy in resources(tpl, "AWS::IAM::Policy").items():
        if name.startswith(("Retrain", "Monitoring")):
            continue
        for st in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            if all(a.startswith("states:") or a == "sagemaker:DescribeTrainingJob" for a in actions):
                continue
            yield name, st


def test_least_privilege_iam(synthesized):
    tpl, _ = synthesized
    seen = 0
    for name, st in _statements(tpl):
        seen += 1
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        for action in actions:
            assert "*" not in action, (name, action)
        res = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        for r in res:
            assert r != "*", (name, st)
            if isinstance(r, dict) and "Fn::Join" in r:
                parts = r["Fn::Join"][1]
                suffix = "".join(p for p in parts if isinstance(p, str))
                # object ARNs are scoped to a bucket (a GetAtt) and one prefix
                assert any(isinstance(p, dict) for p in parts), (name, r)
                assert suffix.strip("/") in {"versions/*", "rejected/*", "live.json", "dataset/*",
                                             "incoming/*", "quarantine/*", "capture/*", "shadow.json",
                                             "shadow-stats/*"}, (name, suffix)
    assert seen >= 8
    assert not resources(tpl, "AWS::IAM::ManagedPolicy")
    for role in resources(tpl, "AWS::IAM::Role").values():
        assert not role["Properties"].get("ManagedPolicyArns"), role


def test_ingest_may_not_touch_models_and_api_may_not_delete(synthesized):
    tpl, _ = synthesized
    text = {name: json.dumps(p["Properties"]["PolicyDocument"]) for name, p in
            resources(tpl, "AWS::IAM::Policy").items()}
    ingest = next(v for k, v in text.items() if k.startswith("IngestRole"))
    api = next(v for k, v in text.items() if k.startswith("ApiRole"))
    assert "StorageModels" not in ingest and "secretsmanager" not in ingest
    assert "s3:DeleteObject" in api  # only under capture/: test_api_and_ingest_object_permissions


def _role_statements(tpl, prefix: str) -> list[dict]:
    return [st for name, st in _statements(tpl) if name.startswith(prefix)]


def _actions(st) -> list[str]:
    return st["Action"] if isinstance(st["Action"], list) else [st["Action"]]


def _suffixes(st) -> set[str]:
    res = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
    return {"".join(p for p in r["Fn::Join"][1] if isinstance(p, str)).strip("/") for r in res
            if isinstance(r, dict) and "Fn::Join" in r}


def test_data_bucket_is_versioned_and_dataset_is_write_once(synthesized):
    tpl, _ = synthesized
    data_id, data = next((k, b["Properties"]) for k, b in resources(tpl, "AWS::S3::Bucket").items()
                         if k.startswith("StorageData"))
    assert data["VersioningConfiguration"] == {"Status": "Enabled"}
    rules = {r["Id"]: r for r in data["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-noncurrent-versions"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert rules["remove-expired-delete-markers"]["ExpiredObjectDeleteMarker"] is True
    from infra.constructs.storage import CAPTURE_RETENTION_DAYS
    capture = rules["expire-capture"]
    assert capture["Prefix"] == "capture/" and capture["Status"] == "Enabled"
    assert capture["ExpirationInDays"] == CAPTURE_RETENTION_DAYS == 30
    assert capture["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}
    models = next(b["Properties"] for k, b in resources(tpl, "AWS::S3::Bucket").items() if k.startswith("StorageModels"))
    stats = {r["Id"]: r for r in models["LifecycleConfiguration"]["Rules"]}["expire-shadow-stats"]
    assert stats["Prefix"] == "shadow-stats/" and stats["ExpirationInDays"] == 30
    assert stats["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}
    (api_fn,) = [f for f in functions(tpl).values() if f["Environment"]["Variables"].get("FRUITPIPE_CAPTURE_RETENTION_DAYS")]
    assert api_fn["Environment"]["Variables"]["FRUITPIPE_CAPTURE_RETENTION_DAYS"] == "30"  # the app prunes at the same age
    assert "CorsConfiguration" not in data  # no uploadOrigins: no browser may POST to the bucket
    (policy,) = [p["Properties"]["PolicyDocument"]["Statement"] for p in resources(tpl, "AWS::S3::BucketPolicy").values()
                 if p["Properties"]["Bucket"] == {"Ref": data_id}]
    (deny,) = [st for st in policy if st.get("Sid") == "DatasetIsWriteOnce"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == {"AWS": "*"} and deny["Action"] == "s3:PutObject"
    assert deny["Condition"] == {"Null": {"s3:if-none-match": "true"}} and _suffixes(deny) == {"dataset/*"}


def test_list_bucket_only_under_the_prefixes_each_role_reads(synthesized):
    tpl, _ = synthesized
    expected = {"ApiRole": [{"dataset/*"}, {"versions/*", "rejected/*", "live.json", "shadow.json", "shadow-stats/*"},
                            {"capture/*"}],
                "IngestRole": [{"incoming/*", "dataset/*"}]}
    for role, prefixes in expected.items():
        lists = [st for st in _role_statements(tpl, role)
                 if any(a.startswith("s3:ListBucket") for a in _actions(st))]
        assert len(lists) == len(prefixes), (role, lists)
        for st in lists:
            cond = st["Condition"]["StringLike"]["s3:prefix"]
            assert set(cond if isinstance(cond, list) else [cond]) in prefixes, (role, st)


def test_api_and_ingest_object_permissions(synthesized):
    tpl, _ = synthesized
    api = _role_statements(tpl, "ApiRole")
    puts = set().union(*(_suffixes(st) for st in api if "s3:PutObject" in _actions(st)))
    assert puts == {"dataset/*", "incoming/*", "live.json", "shadow.json", "shadow-stats/*",
                    "capture/*"}  # dataset/: If-None-Match only
    deletes = [st for st in api if any(a.startswith("s3:Delete") for a in _actions(st))]
    assert [_suffixes(st) for st in deletes] == [{"capture/*"}]  # pruning captured predictions, nothing else
    ingest = _role_statements(tpl, "IngestRole")
    take = next(st for st in ingest if "s3:DeleteObjectVersion" in _actions(st))
    assert _suffixes(take) == {"incoming/*"} and "s3:GetObjectVersion" in _actions(take)
    count = next(st for st in ingest if "dynamodb:UpdateItem" in _actions(st))
    assert sorted(_actions(count)) == ["dynamodb:PutItem", "dynamodb:UpdateItem"]


def test_admin_routes_have_their_own_throttle(synthesized):
    from infra.constructs.api import ADMIN_ROUTES
    tpl, _ = synthesized
    routes = {r["Properties"]["RouteKey"]: k for k, r in resources(tpl, "AWS::ApiGatewayV2::Route").items()}
    keys = {f"{method} {path}" for path, method in ADMIN_ROUTES}
    assert keys | {"$default"} == set(routes)
    (stage,) = resources(tpl, "AWS::ApiGatewayV2::Stage").values()
    settings = stage["Properties"]["RouteSettings"]
    assert set(settings) == keys
    for key in keys:
        assert settings[key] == {"ThrottlingRateLimit": 5, "ThrottlingBurstLimit": 10}
        assert routes[key] in stage["DependsOn"]  # the routes exist before their settings


def test_cfn_lint_has_no_errors(synthesized):
    _, path = synthesized
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    proc = subprocess.run([str(cfn_lint), "--non-zero-exit-code", "error", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cdk_nag_clean_and_every_acknowledgement_has_a_reason(synthesized, tmp_path):
    tpl, path = synthesized
    report = json.loads((path.parent / "validation-report.json").read_text())
    assert all(r.get("conclusion") != "failure" for r in report["pluginReports"]), report
    from infra import nag
    assert nag.acknowledge.__code__.co_varnames[:3] == ("scope", "rule", "reason")


def test_unacknowledged_findings_fail_the_synth(tmp_path):
    """cdk-nag really runs: a bucket without TLS enforcement or logs makes synth fail."""
    import aws_cdk as cdk
    from aws_cdk import aws_s3 as s3
    from cdk_nag import AwsSolutionsChecks
    app = cdk.App(outdir=str(tmp_path))
    stack = cdk.Stack(app, "Bad")
    s3.Bucket(stack, "Open")
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    with pytest.raises(Exception) as failed:
        app.synth()
    assert "alidation" in str(failed.value), failed.value


def test_arm64_throwaway_stage(tmp_path):
    tpl, path = synth(tmp_path, {"stage": "test", "architecture": "arm64", "memory": "2048",
                                 "retain": "false", "reservedConcurrency": "20", "ingestConcurrency": "5",
                                 "uploadOrigins": "https://fruit.example.com, http://localhost:5173",
                                 "adminThrottleRate": "2", "adminThrottleBurst": "4"})
    data = next(b["Properties"] for k, b in resources(tpl, "AWS::S3::Bucket").items() if k.startswith("StorageData"))
    assert data["CorsConfiguration"]["CorsRules"] == [{
        "AllowedHeaders": ["content-type"], "AllowedMethods": ["POST"], "MaxAge": 3000,
        "AllowedOrigins": ["https://fruit.example.com", "http://localhost:5173"]}]
    (stage,) = resources(tpl, "AWS::ApiGatewayV2::Stage").values()
    assert stage["Properties"]["RouteSettings"]["POST /retrain"] == {"ThrottlingRateLimit": 2, "ThrottlingBurstLimit": 4}
    fns = {k: p for k, p in functions(tpl).items() if p.get("Handler", "").startswith("functions.")}
    assert len(fns) == 9 and all(p["Architectures"] == ["arm64"] for p in fns.values())  # 9: + rollback
    api = next(p for p in fns.values() if p["Handler"] == "functions.api.handler.handler")
    assert api["MemorySize"] == 2048 and api["ReservedConcurrentExecutions"] == 20  # the context key sets one
    ingest = next(p for p in fns.values() if p["Handler"] == "functions.ingest.handler.handler")
    assert ingest["ReservedConcurrentExecutions"] == 5
    for bucket in resources(tpl, "AWS::S3::Bucket").values():
        assert bucket["DeletionPolicy"] == "Delete"
    (layer,) = resources(tpl, "AWS::Lambda::LayerVersion").values()
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]


def test_bad_context_is_refused():
    from infra.config import ConfigError, StackConfig
    with pytest.raises(ConfigError, match="architecture"):
        StackConfig.from_context({"architecture": "sparc"}.get)
    with pytest.raises(ConfigError, match="memory"):
        StackConfig.from_context({"memory": "64"}.get)
    for origin in ("*", "https://*.example.com", "http://example.com", "https://a.example.com/upload", "example.com"):
        with pytest.raises(ConfigError, match="uploadOrigins"):
            StackConfig.from_context({"uploadOrigins": origin}.get)
    assert StackConfig.from_context({}.get).upload_origins == ()
    with pytest.raises(ConfigError, match="backbones: unknown backbone resnet50"):
        StackConfig.from_context({"backbones": "resnet50"}.get)
    assert StackConfig.from_context({}.get).backbones == ("mobilenet_v2",)
    assert StackConfig.from_context({"backbones": "efficientnet_lite1"}.get).backbones == (
        "mobilenet_v2", "efficientnet_lite1")

"""``make cloud-demo``: the whole AWS flow on this machine, against a moto server on 127.0.0.1.

1. Start moto; create the data and models buckets, the state table, the admin-token secret, the
   alerts topic and the retrain state machine (names as the stack's functions receive them).
2. Drop real photos into ``incoming/<class>/`` and run the ingest Lambda handler on the resulting
   S3 "Object Created" EventBridge events.
3. Retrain: the state machine's steps in order (prepare → training job as a local process in place
   of SageMaker → evaluate + gate → publish | reject → metrics), see fruitpipe.pipeline.local_runner.
4. Add ``--more`` new images, ingest, retrain again: the job embeds only the new images (cache).
5. Call the API Lambda handler through Mangum (HTTP API v2 events): ``/model-info`` and ``/predict``
   on a real photo answer with the version the pipeline published.
Prints a summary (versions, accuracy before/after, images ingested, metrics written) and, with
``--json FILE``, writes it as JSON (the cloud-flow test reads it).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
FRUITS = REPO.parent / "shared" / "data" / "fruits"
REGION = "us-east-1"
NAMES = {"data": "fruitpipe-demo-data", "models": "fruitpipe-demo-models", "table": "fruitpipe-demo-state",
         "machine": "fruitpipe-demo-retrain"}


class LambdaContext:
    function_name = "fruitpipe-demo"
    function_version = "$LATEST"
    invoked_function_arn = f"arn:aws:lambda:{REGION}:123456789012:function:fruitpipe-demo"
    memory_limit_in_mb = 1024
    aws_request_id = "demo"
    log_group_name = "/aws/lambda/fruitpipe-demo"
    log_stream_name = "demo"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def object_created(bucket: str, key: str, size: int, put: dict[str, Any]) -> dict[str, Any]:
    """The EventBridge event S3 sends for the object version ``put`` (a PutObject answer) created:
    the key as stored, its ETag and version id (the data bucket is versioned, as deployed)."""
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Object Created", "source": "aws.s3",
            "account": "123456789012", "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": REGION, "resources": [f"arn:aws:s3:::{bucket}"],
            "detail": {"version": "0", "bucket": {"name": bucket},
                       "object": {"key": key, "size": size, "etag": put["ETag"].strip('"'),
                                  "version-id": put["VersionId"], "sequencer": "0"},
                       "request-id": "demo", "requester": "123456789012", "reason": "PutObject"}}


def http_event(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> dict:
    headers = {"host": "demo.execute-api.us-east-1.amazonaws.com", **(headers or {})}
    if body is not None:
        headers["content-length"] = str(len(body))
    now = datetime.now(timezone.utc)
    return {"version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "", "headers": headers,
            "requestContext": {"accountId": "123456789012", "apiId": "demo", "domainName": headers["host"],
                               "domainPrefix": "demo", "http": {"method": method, "path": path,
                                                                "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                                                                "userAgent": "cloud-demo"},
                               "requestId": uuid.uuid4().hex, "routeKey": "$default", "stage": "$default",
                               "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
                               "timeEpoch": int(now.timestamp() * 1000)},
            "body": base64.b64encode(body).decode() if body is not None else None,
            "isBase64Encoded": body is not None}


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = "----fruitpipe" + uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def images(split: str, start: int, per_class: int) -> list[tuple[str, Path]]:
    from fruitpipe.labels import LABELS
    return [(label, p) for label in LABELS
            for p in sorted((FRUITS / split / label).glob("*.jpg"))[start:start + per_class]]


def spread(total: int, start: int, split: str = "train") -> list[tuple[str, Path]]:
    """``total`` images spread over the six classes, after the first ``start`` of each."""
    from fruitpipe.labels import LABELS
    per, extra = divmod(total, len(LABELS))
    out: list[tuple[str, Path]] = []
    for i, label in enumerate(LABELS):
        n = per + (1 if i < extra else 0)
        out += [(label, p) for p in sorted((FRUITS / split / label).glob("*.jpg"))[start:start + n]]
    return out


def emf_metrics(text: str) -> dict[str, float]:
    """Sum the EMF metrics (CloudWatch embedded metric format) in captured Lambda stdout."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith('{"_aws"'):
            continue
        doc = json.loads(line)
        for group in doc["_aws"]["CloudWatchMetrics"]:
            for m in group["Metrics"]:
                value = doc[m["Name"]]
                out[m["Name"]] = out.get(m["Name"], 0.0) + (sum(value) if isinstance(value, list) else value)
    return out


def ingest(cloud: Any, batch: list[tuple[str, Path]], log: Any) -> dict[str, Any]:
    """Put each photo into incoming/<class>/ and hand the Object Created event to the ingest handler."""
    from functions.ingest import handler as ingest_handler
    outcomes: dict[str, int] = {}
    captured = io.StringIO()
    for label, path in batch:
        key = f"incoming/{label}/{path.name}"
        data = path.read_bytes()
        put = cloud.s3.put_object(Bucket=cloud.data_bucket, Key=key, Body=data)
        with contextlib.redirect_stdout(captured):  # Powertools logs + EMF metrics go to stdout
            result = ingest_handler.handler(object_created(cloud.data_bucket, key, len(data), put), LambdaContext())
        outcomes[result["status"]] = outcomes.get(result["status"], 0) + 1
    metrics = emf_metrics(captured.getvalue())
    log(f"  ingest: {len(batch)} objects → {outcomes}; EMF metrics {metrics}")
    return {"outcomes": outcomes, "emf": metrics}


def api_calls(photo: Path) -> dict[str, Any]:
    """The API Lambda handler (FastAPI via Mangum), built as in Lambda's init phase."""
    from functions.api import handler as api_handler
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        app = api_handler.build()
    ctx = LambdaContext()

    def call(event: dict[str, Any]) -> tuple[int, Any]:
        resp = app(event, ctx)
        body = resp.get("body") or ""
        if resp.get("isBase64Encoded"):
            body = base64.b64decode(body).decode()
        return resp["statusCode"], json.loads(body) if body else None

    with contextlib.redirect_stdout(captured):
        info_status, info = call(http_event("GET", "/model-info"))
        body, ctype = multipart("file", photo.name, photo.read_bytes())
        t0 = time.perf_counter()
        pred_status, pred = call(http_event("POST", "/predict", body, {"content-type": ctype}))
        ms = round((time.perf_counter() - t0) * 1000, 1)
    return {"model_info_status": info_status, "model_info": info, "predict_status": pred_status,
            "prediction": pred, "predict_ms": ms, "photo": f"{photo.parent.name}/{photo.name}",
            "emf": emf_metrics(captured.getvalue())}


def seed_metrics(s3: Any, manifest: str, dest: Path) -> dict[str, Any]:
    """The bundled seed model (what the API served before run 1) on run 1's evaluation images:
    reported as "before"; the gate does not use it (see docs/retrain-pipeline.md)."""
    from fruitpipe.classifier import Classifier
    from fruitpipe.evaluation import evaluate
    from fruitpipe.models_path import default_model_dir
    from fruitpipe.pipeline.evaluate import download_eval_images
    download_eval_images(s3, manifest, dest)
    m = evaluate(Classifier(default_model_dir()), dest)
    return {"version": m.get("model_version"), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--initial", type=int, default=150, help="images per class before the first retrain")
    ap.add_argument("--more", type=int, default=100, help="new images (all classes) before the second retrain")
    ap.add_argument("--json", type=Path, help="write the summary here as JSON")
    args = ap.parse_args(argv)
    os.environ.setdefault("FRUITPIPE_BACKBONE", str(REPO.parent / "shared/models/mobilenet_v2_1.0_224_int8"))
    if not FRUITS.is_dir():
        print(f"error: {FRUITS} (real photos) is missing", file=sys.stderr)
        return 2
    started = time.monotonic()
    log = lambda msg: print(msg, flush=True)  # noqa: E731

    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    os.environ.update({"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo", "AWS_SESSION_TOKEN": "demo",
                       "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_ENDPOINT_URL": url})
    work = Path(tempfile.mkdtemp(prefix="fruitpipe-cloud-demo-"))
    try:
        import boto3
        from fruitpipe.pipeline import local_runner, s3util
        s3, ddb = boto3.client("s3"), boto3.client("dynamodb")
        log(f"moto server on {url}; work dir {work}")
        s3.create_bucket(Bucket=NAMES["data"])
        s3.put_bucket_versioning(Bucket=NAMES["data"], VersioningConfiguration={"Status": "Enabled"})
        s3.create_bucket(Bucket=NAMES["models"])
        s3.put_bucket_versioning(Bucket=NAMES["models"], VersioningConfiguration={"Status": "Enabled"})
        ddb.create_table(TableName=NAMES["table"], KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                         AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                         BillingMode="PAY_PER_REQUEST")
        secret = boto3.client("secretsmanager").create_secret(Name="fruitpipe-demo-token",
                                                              SecretString=uuid.uuid4().hex)["ARN"]
        topic = boto3.client("sns").create_topic(Name="fruitpipe-demo-alerts")["TopicArn"]
        role = boto3.client("iam").create_role(RoleName="fruitpipe-demo-sfn",
                                               AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        sfn = boto3.client("stepfunctions")
        machine = sfn.create_state_machine(
            name=NAMES["machine"], roleArn=role,
            definition=json.dumps({"Comment": "placeholder: moto cannot run .sync; local_runner runs the steps",
                                   "StartAt": "Prepare", "States": {"Prepare": {"Type": "Pass", "End": True}}}))
        arn = machine["stateMachineArn"]
        os.environ.update({"FRUITPIPE_DATA_BUCKET": NAMES["data"], "FRUITPIPE_MODELS_BUCKET": NAMES["models"],
                           "FRUITPIPE_STATE_TABLE": NAMES["table"], "FRUITPIPE_STATE_MACHINE_ARN": arn,
                           "FRUITPIPE_ADMIN_TOKEN_SECRET": secret, "FRUITPIPE_MODEL_CACHE": str(work / "api-models"),
                           "POWERTOOLS_METRICS_NAMESPACE": "Fruitpipe", "POWERTOOLS_SERVICE_NAME": "fruitpipe-ingest"})
        cloud = local_runner.Cloud(NAMES["data"], NAMES["models"], NAMES["table"], arn, s3=s3, ddb=ddb, sfn=sfn,
                                   cloudwatch=boto3.client("cloudwatch"), sns=boto3.client("sns"),
                                   alerts_topic_arn=topic)
        summary: dict[str, Any] = {"moto": url, "runs": []}

        log(f"\n[1] drop {args.initial} photos per class into incoming/ and ingest them")
        first = images("train", 0, args.initial)
        summary["ingest_1"] = ingest(cloud, first, log)

        log("\n[2] retrain (fresh deployment: no live model yet)")
        run1 = local_runner.run_pipeline(cloud, work, log=log)
        summary["runs"].append(run1)

        if run1.get("prepare", {}).get("validation_manifest"):
            summary["seed_before"] = seed_metrics(s3, run1["prepare"]["validation_manifest"], work / "seed-eval")

        log(f"\n[3] drop {args.more} new photos and retrain")
        more = spread(args.more, args.initial)
        summary["ingest_2"] = ingest(cloud, more, log)
        run2 = local_runner.run_pipeline(cloud, work, trigger_name="manual", log=log)
        summary["runs"].append(run2)

        log("\n[4] the API Lambda handler through Mangum")
        photo = images("test", 0, 1)[3][1]  # a rotten apple the models never trained on
        summary["api"] = api_calls(photo)
        summary["live_version"] = s3util.live_version(s3, NAMES["models"])
        metrics = boto3.client("cloudwatch").list_metrics(Namespace="Fruitpipe/Retrain")["Metrics"]
        summary["retrain_metrics_written"] = sum(r.get("report", {}).get("metrics_written", 0) for r in summary["runs"])
        summary["retrain_metric_names"] = sorted({m["MetricName"] for m in metrics})
        summary["seconds"] = round(time.monotonic() - started, 1)
        print_summary(summary, log)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2, default=str))
        ok = summary["api"]["prediction"] and summary["api"]["prediction"].get("model_version") == summary["live_version"]
        return 0 if ok and not any(r.get("failed") for r in summary["runs"]) else 1
    finally:
        server.stop()


def print_summary(s: dict[str, Any], log: Any) -> None:
    log("\n=== summary ===")
    log(f"images ingested: run 1 {s['ingest_1']['outcomes']}, run 2 {s['ingest_2']['outcomes']}")
    seed = s.get("seed_before")
    if seed:
        log(f"before: seed model {seed['version']} on run 1's {seed['n']} evaluation images: accuracy "
            f"{seed['accuracy']:.4f}, macro-F1 {seed['macro_f1']:.4f} (trained on the shared dataset, "
            "these images included; not used by the gate)")
    for i, run in enumerate(s["runs"], 1):
        if run.get("failed"):
            log(f"run {i}: FAILED {run['error']}")
            continue
        ev, tr, p = run.get("evaluation", {}), run.get("training", {}), run.get("prepare", {})
        live, cand = ev.get("live") or {}, ev.get("candidate") or {}
        jm = tr.get("metrics", {})
        log(f"run {i}: {run['report']['outcome']} {ev.get('candidate_version')} "
            f"(vs live {ev.get('live_version') or 'none: the seed bundle was serving'}) on {ev.get('n_eval_images')} evaluation images: "
            f"accuracy {live.get('accuracy', float('nan')):.4f} → {cand.get('accuracy', float('nan')):.4f}, "
            f"macro-F1 {live.get('macro_f1', float('nan')):.4f} → {cand.get('macro_f1', float('nan')):.4f}")
        log(f"        training: {p.get('n_train')} train images, job embedded_new={jm.get('embedded_new')} "
            f"cached={jm.get('cached')}, cache shards uploaded {ev.get('cache', {}).get('uploaded')}, "
            f"job {tr.get('seconds')} s; gate: {ev.get('reason')}")
    api = s["api"]
    pred = api["prediction"] or {}
    log(f"API: /model-info {api['model_info_status']} version {(api['model_info'] or {}).get('version')}; "
        f"/predict {api['predict_status']} {api['photo']} → {pred.get('predicted_class')} "
        f"({pred.get('verdict')}, {pred.get('confidence')}) by {pred.get('model_version')} in {api['predict_ms']} ms")
    log(f"API EMF metrics: {api['emf']}")
    log(f"live pointer: {s['live_version']}; retrain metrics written (PutMetricData): "
        f"{s['retrain_metrics_written']} ({', '.join(s['retrain_metric_names'])})")
    log(f"total {s['seconds']} s")


if __name__ == "__main__":
    raise SystemExit(main())

"""The API Lambda handler (FastAPI through Mangum) with real API Gateway HTTP API events,
against a moto server: predict, uploads into S3, presigned POST → ingest, models in S3,
the live pointer switch, auth allow/deny, the 413 pointer to /upload-url, 501 for retrain."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from fruitpipe import bundle
from fruitpipe.labels import LABELS
from tests.aws.conftest import (FakeContext, counter, http_api_event, jpeg, keys, multipart,
                                object_created_event, response_json)
from tests.conftest import DEFAULT_MODEL, needs_shared

pytestmark = needs_shared
TOKEN = "s3cret-token"
REFRESH = 2.0


@pytest.fixture
def api(aws, monkeypatch, tmp_path):
    for k, v in aws["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("FRUITPIPE_MODEL_REFRESH_SECONDS", str(REFRESH))
    monkeypatch.setenv("FRUITPIPE_MODEL_CACHE", str(tmp_path / "cache"))
    from functions.api import handler as module
    monkeypatch.setattr(module, "_app", None)

    def call(method: str, path: str, **kw):
        resp = module.handler(http_api_event(method, path, **kw), FakeContext())
        return resp["statusCode"], response_json(resp)
    call.module = module  # type: ignore[attr-defined]
    return call


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def copy_bundle(tmp_path: Path, version: str) -> Path:
    """The default bundle under another version name (files and checksums unchanged)."""
    dest = tmp_path / version
    shutil.copytree(DEFAULT_MODEL, dest)
    manifest = json.loads((dest / bundle.MANIFEST).read_text())
    manifest["version"] = version
    (dest / bundle.MANIFEST).write_text(json.dumps(manifest))
    bundle.verify(dest)
    return dest


def registry(aws, tmp_path):
    from fruitpipe.backends.aws import S3ModelRegistry
    return S3ModelRegistry(aws["models"], tmp_path / "reg-cache", s3=aws["s3"])


def test_predict_base64_multipart_640x480_jpeg(api, classifier):
    image = jpeg(640, 480, seed=3)
    body, ctype = multipart({}, [("file", "photo.jpg", image, "image/jpeg")])
    status, out = api("POST", "/predict", body=body, headers={"content-type": ctype})
    assert status == 200, out
    direct = classifier.predict_bytes(image)
    assert out["predicted_class"] == direct.predicted_class and out["predicted_class"] in LABELS
    assert set(out["probabilities"]) == set(LABELS)
    assert out["confidence"] == pytest.approx(direct.confidence, abs=1e-5)
    assert out["model_version"] == bundle.read_manifest(DEFAULT_MODEL).version  # the seed: no live.json yet
    assert out["verdict"] in ("fresh", "rotten", "not_fruit", "uncertain") and out["timestamp"]


def test_bad_image_is_a_clear_4xx(api):
    body, ctype = multipart({}, [("file", "x.jpg", b"not an image at all", "image/jpeg")])
    status, out = api("POST", "/predict", body=body, headers={"content-type": ctype})
    assert status == 415 and out["error"] == "not_an_image"


def test_model_info_from_s3_and_pointer_switch_within_refresh_interval(api, aws, tmp_path):
    reg = registry(aws, tmp_path)
    v1 = reg.publish(copy_bundle(tmp_path, "v20260101-000000-aaaaaa"))
    reg.activate(v1)
    status, info = api("GET", "/model-info")
    assert status == 200 and info["version"] == v1  # loaded from S3 at build
    v2 = reg.publish(copy_bundle(tmp_path, "v20260102-000000-bbbbbb"))
    reg.activate(v2)  # what the pipeline's publish step does: move live.json
    status, info = api("GET", "/model-info")
    assert info["version"] == v1  # within the refresh interval the instance keeps serving v1
    time.sleep(REFRESH + 0.2)
    status, info = api("GET", "/model-info")
    assert status == 200 and info["version"] == v2
    body, ctype = multipart({}, [("file", "a.jpg", jpeg(seed=1), "image/jpeg")])
    assert api("POST", "/predict", body=body, headers={"content-type": ctype})[1]["model_version"] == v2
    status, listing = api("GET", "/models")
    assert listing["live"] == v2 and {v["version"] for v in listing["versions"]} >= {v1, v2}


def test_activate_needs_token_and_refuses_rejected_or_unknown(api, aws, tmp_path):
    reg = registry(aws, tmp_path)
    v1 = reg.publish(copy_bundle(tmp_path, "v20260103-000000-cccccc"))
    assert api("POST", f"/models/{v1}/activate")[0] == 401
    assert api("POST", f"/models/{v1}/activate", headers=auth("wrong"))[0] == 403
    status, out = api("POST", f"/models/{v1}/activate", headers=auth())
    assert status == 200 and out["live"] == v1
    assert json.loads(aws["s3"].get_object(Bucket=aws["models"], Key="live.json")["Body"].read())["version"] == v1
    rejected = copy_bundle(tmp_path, "v20260104-000000-dddddd")
    for f in rejected.iterdir():
        aws["s3"].upload_file(str(f), aws["models"], f"rejected/{rejected.name}/{f.name}")
    aws["s3"].put_object(Bucket=aws["models"], Key=f"rejected/{rejected.name}/rejection.json",
                         Body=json.dumps({"reason": "accuracy 0.91 < live 0.97"}).encode())
    status, out = api("POST", f"/models/{rejected.name}/activate", headers=auth())
    assert status == 409 and "accuracy" in out["detail"]
    assert api("POST", "/models/v-nope/activate", headers=auth())[0] == 404
    versions = {v["version"]: v for v in api("GET", "/models")[1]["versions"]}
    assert versions[rejected.name]["status"] == "rejected"


def test_upload_training_data_into_s3_with_auth(api, aws):
    image = jpeg(seed=2)
    body, ctype = multipart({"class_name": "freshbanana"}, [("files", "b.jpg", image, "image/jpeg")])
    headers = {"content-type": ctype}
    assert api("POST", "/upload-training-data", body=body, headers=headers)[0] == 401
    assert api("POST", "/upload-training-data", body=body, headers={**headers, **auth("nope")})[0] == 403
    assert keys(aws) == []
    status, out = api("POST", "/upload-training-data", body=body, headers={**headers, **auth()})
    assert status == 200, out
    (item,) = out["results"] if "results" in out else out["files"]
    assert item["status"] == "added" and item["key"].startswith("dataset/freshbanana/")
    assert keys(aws) == [item["key"]] and counter(aws) == 1
    status, out = api("POST", "/upload-training-data", body=body, headers={**headers, **auth()})
    (item,) = out["results"] if "results" in out else out["files"]
    assert item["status"] == "duplicate" and counter(aws) == 1
    assert item["detail"] == f"already uploaded: the same image is in the dataset as {item['key']}"
    status, out = api("GET", "/dataset")
    assert out["counts"]["freshbanana"] == 1 and out["total"] == 1


def test_presigned_post_then_ingest(api, aws):
    import requests
    from functions.ingest import handler as ingest
    ingest._stores.clear()
    assert api("POST", "/upload-url", body=json.dumps({"class_name": "rottenapples"}).encode(),
               headers={"content-type": "application/json"})[0] == 401
    status, out = api("POST", "/upload-url", body=json.dumps(
        {"class_name": "rottenapples", "filenames": ["big photo.jpg", "second.png"]}).encode(),
        headers={"content-type": "application/json", **auth()})
    assert status == 200, out
    assert [u["filename"] for u in out["uploads"]] == ["big photo.jpg", "second.png"]
    assert [u["fields"]["Content-Type"] for u in out["uploads"]] == ["image/jpeg", "image/png"]
    image = jpeg(1600, 1200, seed=7)
    slot = out["uploads"][0]
    assert slot["method"] == "POST" and slot["key"].startswith("incoming/rottenapples/")
    sent = requests.post(slot["url"], data=slot["fields"], files={"file": ("big photo.jpg", image, "image/jpeg")},
                         timeout=30)
    assert sent.status_code in (200, 201, 204), sent.text
    assert keys(aws, "incoming/") == [slot["key"]]
    result = ingest.handler(object_created_event(aws["data"], slot["key"], len(image)), FakeContext())
    assert result["status"] == "added"
    assert keys(aws) == [result["dataset_key"]] and counter(aws) == 1
    status, out = api("POST", "/upload-url", body=json.dumps({"class_name": "kiwis"}).encode(),
                      headers={"content-type": "application/json", **auth()})
    assert status == 422 and out["error"] == "unknown_class"


def test_oversize_body_answers_413_with_pointer_to_upload_url(api):
    body, ctype = multipart({}, [("file", "huge.jpg", b"\xff\xd8\xff" + b"0" * (5 * 1024 * 1024), "image/jpeg")])
    status, out = api("POST", "/predict", body=body, headers={"content-type": ctype})
    assert status == 413 and out["error"] == "too_large" and out["upload_url"] == "/upload-url"
    assert "/upload-url" in out["detail"]


def test_request_limit_is_what_lambda_can_take(api):
    """The API's own limit is the largest body whose API Gateway event still fits Lambda's 6 MB
    invoke payload: a body of exactly the limit reaches the app (and its event fits, with a full
    10240-byte header quota), one byte more gets our 413 naming /upload-url, on every file route."""
    from fruitpipe.api.settings import LAMBDA_MAX_BODY_BYTES, LAMBDA_PAYLOAD_BYTES
    limit = api.module.MAX_REQUEST_BYTES
    assert limit == LAMBDA_MAX_BODY_BYTES == 4_706_304
    boundary = "b" * 16
    ctype = f"multipart/form-data; boundary={boundary}"
    headers = {"content-type": ctype, **auth(), "x-pad": "p" * (10240 - 200)}  # the HTTP API header quota
    event = http_api_event("POST", "/upload-training-data", body=b"0" * limit, headers=headers)
    assert len(json.dumps(event).encode()) <= LAMBDA_PAYLOAD_BYTES

    def body(size: int) -> bytes:
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
                "Content-Type: image/jpeg\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        return head + b"\xff\xd8\xff" + b"0" * (size - len(head) - len(tail) - 3) + tail

    status, out = api("POST", "/predict", body=body(limit), headers={"content-type": ctype})
    assert status != 413 and out["error"] != "too_large"  # the app read it (and found no image in it)
    for path, headers in [("/predict", {}), ("/predict/batch", {}), ("/upload-training-data", auth())]:
        status, out = api("POST", path, body=body(limit + 1), headers={"content-type": ctype, **headers})
        assert status == 413 and out["error"] == "too_large", (path, out)
        assert out["limit_bytes"] == limit and out["upload_url"] == "/upload-url" and "/upload-url" in out["detail"]
    # JSON routes keep their own, smaller limit; anonymous writes are refused before any size check
    status, out = api("POST", "/upload-url", body=b"{" + b" " * 70_000 + b"}",
                      headers={"content-type": "application/json", **auth()})
    assert status == 413 and "upload_url" not in out
    assert api("POST", "/upload-training-data", body=body(limit + 1), headers={"content-type": ctype})[0] == 401
    assert api("POST", "/upload-url", body=b"{" + b" " * 70_000 + b"}",
               headers={"content-type": "application/json"})[0] == 401  # the AWS-only route is guarded too


def test_retrain_without_state_machine_is_501(api):
    assert api("POST", "/retrain")[0] == 401
    status, out = api("POST", "/retrain", headers=auth())
    assert status == 501 and out["error"] == "not_implemented" and "state machine" in out["detail"]
    status, out = api("GET", "/retraining-status")
    assert status == 200 and out["state"] == "idle"


def test_health(api):
    status, out = api("GET", "/health")
    assert status == 200


def test_tampered_version_is_never_served(api, aws, tmp_path):
    reg = registry(aws, tmp_path)
    good = reg.publish(copy_bundle(tmp_path, "v20260105-000000-eeeeee"))
    reg.activate(good)
    assert api("GET", "/model-info")[1]["version"] == good
    bad = copy_bundle(tmp_path, "v20260106-000000-ffffff")
    head = next(p for p in bad.iterdir() if p.suffix == ".npz")
    head.write_bytes(head.read_bytes()[:-16] + b"\0" * 16)  # bytes changed after the manifest pinned them
    for f in bad.iterdir():
        aws["s3"].upload_file(str(f), aws["models"], f"versions/{bad.name}/{f.name}")
    status, out = api("POST", f"/models/{bad.name}/activate", headers=auth())
    assert status == 503 and out["error"] == "model_invalid"  # activate verifies before moving the pointer
    assert json.loads(aws["s3"].get_object(Bucket=aws["models"], Key="live.json")["Body"].read())["version"] == good
    # a pointer moved behind the app's back to the bad version: the instance keeps the good model
    aws["s3"].put_object(Bucket=aws["models"], Key="live.json",
                         Body=json.dumps({"version": bad.name, "updated": "now"}).encode())
    time.sleep(REFRESH + 0.2)
    body, ctype = multipart({}, [("file", "a.jpg", jpeg(seed=2), "image/jpeg")])
    status, out = api("POST", "/predict", body=body, headers={"content-type": ctype})
    assert status == 200 and out["model_version"] == good


@pytest.mark.slow
def test_live_bundle_on_another_backbone_is_served_on_that_backbone(api, aws, tmp_path):
    """The function serves whichever backbone the live manifest names (found through
    FRUITPIPE_MODEL_ZOO, which the stack points at the asset's backbone/ folder)."""
    from fruitpipe.training import Config, train
    from tests.service_support import small_dataset
    data = small_dataset(tmp_path / "data", "train", 4)
    train(data, tmp_path / "lite0", backbone="efficientnet_lite0",
          config=Config(epochs=3, hidden=16, prototypes_per_class=2, flip=False))
    reg = registry(aws, tmp_path)
    version = reg.publish(tmp_path / "lite0")
    reg.activate(version)
    status, info = api("GET", "/model-info")
    assert status == 200 and info["version"] == version
    assert info["backbone"]["name"] == "efficientnet_lite0" and info["backbone"]["sha256"].startswith("cda7328e")
    body, ctype = multipart({}, [("file", "a.jpg", jpeg(seed=4), "image/jpeg")])
    status, out = api("POST", "/predict", body=body, headers={"content-type": ctype})
    assert status == 200 and out["model_version"] == version and out["predicted_class"] in LABELS

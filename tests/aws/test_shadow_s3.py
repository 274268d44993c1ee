"""Shadow evaluation on AWS against the moto server: the state lives in the models bucket
(``shadow.json`` beside ``live.json``) and the API Lambda handler runs the candidate beside the live
model; a candidate with shuffled classes is held, with its reason in ``GET /models``."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np

from fruitpipe import bundle
from fruitpipe.backends.aws import S3ModelRegistry
from fruitpipe.backends.shadow_pointers import S3ShadowPointer
from tests.aws.conftest import FakeContext, http_api_event, jpeg, multipart, response_json
from tests.conftest import DEFAULT_MODEL, needs_shared

TOKEN = "s3cret-token"


def test_s3_shadow_pointer_round_trip(aws):
    pointer = S3ShadowPointer(aws["models"], s3=aws["s3"])
    assert pointer.read() is None
    pointer.write({"version": "v1", "status": "running"})
    assert pointer.read() == {"version": "v1", "status": "running"}
    aws["s3"].put_object(Bucket=aws["models"], Key="shadow.json", Body=b"not json")
    assert pointer.read() is None


def shuffled_bundle(tmp_path, version: str):  # type: ignore[no-untyped-def]
    dest = tmp_path / version
    shutil.copytree(DEFAULT_MODEL, dest)
    head = dict(np.load(dest / "head.npz"))
    order = [3, 4, 5, 0, 1, 2]
    head["kernel_1"], head["bias_1"] = head["kernel_1"][:, order], head["bias_1"][order]
    out = io.BytesIO()
    np.savez(out, **head)
    (dest / "head.npz").write_bytes(out.getvalue())
    manifest = json.loads((dest / bundle.MANIFEST).read_text())
    manifest["version"] = version
    manifest["files"]["head.npz"] = bundle.sha256_bytes(out.getvalue())
    (dest / bundle.MANIFEST).write_text(json.dumps(manifest))
    bundle.verify(dest)
    return dest


@needs_shared
def test_shadow_through_the_lambda_handler(aws, monkeypatch, tmp_path):
    for k, v in aws["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("FRUITPIPE_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FRUITPIPE_MODEL_REFRESH_SECONDS", "0")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "fruitpipe-api")
    reg = S3ModelRegistry(aws["models"], tmp_path / "reg", s3=aws["s3"])
    bad = reg.publish(shuffled_bundle(tmp_path, "v20990101-000000-bbbbbb"))
    from functions.api import handler as module
    monkeypatch.setattr(module, "_app", None)

    def call(method, path, **kw):  # type: ignore[no-untyped-def]
        resp = module.handler(http_api_event(method, path, **kw), FakeContext())
        return resp["statusCode"], response_json(resp)

    admin = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}
    status, state = call("POST", f"/models/{bad}/shadow", body=json.dumps({"requests": 4}).encode(), headers=admin)
    assert status == 200 and state["status"] == "running", state
    assert json.loads(aws["s3"].get_object(Bucket=aws["models"], Key="shadow.json")["Body"].read())["version"] == bad
    live = call("GET", "/models")[1]["live"]
    for seed in range(4):
        body, ctype = multipart({}, [("file", "a.jpg", jpeg(seed=seed), "image/jpeg")])
        status, answer = call("POST", "/predict", body=body, headers={"content-type": ctype})
        assert status == 200 and answer["model_version"] == live  # never answered by the shadow
    status, models = call("GET", "/models")
    assert models["shadow"]["status"] == "held" and "agreement" in models["shadow"]["reason"], models["shadow"]
    assert models["live"] == live


def test_the_publish_step_can_start_a_shadow_instead_of_going_live(aws, tmp_path):
    """With ``shadowRequests`` (FRUITPIPE_SHADOW_REQUESTS) the pipeline's publish step uploads the
    candidate and writes shadow.json; live.json stays where it was."""
    from fruitpipe.pipeline import publish, s3util
    from tests.pipeline.conftest import archive, make_bundle
    s3, models = aws["s3"], aws["models"]

    def candidate(version: str) -> str:
        key = f"runs/{version}/output/model.tar.gz"
        s3.put_object(Bucket=models, Key=key, Body=archive(make_bundle(tmp_path, version)))
        return f"s3://{models}/{key}"

    live = publish.publish(s3, models_bucket=models, model_artifacts=candidate("v20260103-000000-cccccc"))["version"]
    out = publish.publish(s3, models_bucket=models, model_artifacts=candidate("v20260104-000000-dddddd"),
                          shadow_requests=50)
    assert out["shadow"] is True and out["pointer_moved"] is False
    assert s3util.live_version(s3, models) == live
    state = S3ShadowPointer(models, s3=s3).read()
    assert state["version"] == out["version"] and state["status"] == "running" and state["requests"] == 50
    assert state["live"] == live

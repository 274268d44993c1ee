"""The AWS entry points (moto server) with the field cases and real camera photos: the S3 drop
folder (ingest Lambda) quarantines bad files with their reason (never raised into a retry) and
files camera photos, still classified as what they are; the API Lambda answers each its own."""

from __future__ import annotations

import json

import pytest

from tests.aws.conftest import FakeContext, http_api_event, keys, multipart, object_created_event, response_json
from tests.conftest import needs_shared
from tests.intake_support import BAD_CASES, camera_photos, case, needs_cases

pytestmark = [needs_shared, needs_cases]


@pytest.fixture
def drop(aws, monkeypatch):
    """Put ``data`` at ``key`` in the data bucket and run the ingest handler on its event."""
    for k, v in aws["env"].items():
        monkeypatch.setenv(k, v)
    from functions.ingest import handler as module
    module._stores.clear()

    def run(key: str, data: bytes) -> dict:
        aws["s3"].put_object(Bucket=aws["data"], Key=key, Body=data)
        return module.handler(object_created_event(aws["data"], key, len(data)), FakeContext())
    return run


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_case_is_quarantined_with_its_reason(aws, drop, name):
    key = f"incoming/freshapples/{name}"
    out = drop(key, case(name))
    assert out["status"] == "quarantined" and out["error"] == BAD_CASES[name], out
    reason = json.loads(aws["s3"].get_object(Bucket=aws["data"], Key=f"quarantine/{key}.reason.json")["Body"].read())
    assert reason["error"] == BAD_CASES[name] and reason["detail"]
    assert key not in keys(aws, "incoming/")  # not left to be retried
    assert aws["s3"].get_object(Bucket=aws["data"], Key=f"quarantine/{key}")["Body"].read() == case(name)


def test_camera_photos_are_filed_and_still_apples(aws, drop, classifier):
    for name, data in camera_photos().items():
        out = drop(f"incoming/freshapples/{name}", data)
        assert out["status"] == "added", (name, out)
        stored = aws["s3"].get_object(Bucket=aws["data"], Key=out["dataset_key"])["Body"].read()
        assert stored[:3] == b"\xff\xd8\xff"  # HEIC/AVIF converted to JPEG, the MPO kept as it is
        assert classifier.predict_bytes(stored).predicted_class == "freshapples", name
    assert keys(aws, "quarantine/") == [] and keys(aws, "incoming/") == []


@pytest.fixture
def api(aws, monkeypatch, tmp_path):
    """The API Lambda handler (FastAPI through Mangum, S3 backend) on HTTP API v2 events."""
    for k, v in aws["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("FRUITPIPE_MODEL_CACHE", str(tmp_path / "cache"))
    from functions.api import handler as module
    monkeypatch.setattr(module, "_app", None)

    def call(path: str, fields: dict, files: list, headers: dict | None = None):
        body, ctype = multipart(fields, files)
        resp = module.handler(http_api_event("POST", path, body=body, headers={"content-type": ctype, **(headers or {})}),
                              FakeContext())
        return resp["statusCode"], response_json(resp)
    return call


def test_lambda_api_cases_and_camera_photos(aws, api):
    for name, code in BAD_CASES.items():
        status, out = api("/predict", {}, [("file", name, case(name), "image/jpeg")])
        assert 400 <= status < 500 and out["error"] == code, (name, status, out)
    for name, data in camera_photos().items():
        status, out = api("/predict", {}, [("file", name, data, "image/jpeg")])
        assert status == 200 and out["predicted_class"] == "freshapples", (name, out)
    files = [("files", n, case(n), "image/jpeg") for n in BAD_CASES] + \
            [("files", n, d, "image/jpeg") for n, d in camera_photos().items()]
    token = aws["sm"].get_secret_value(SecretId=aws["secret"])["SecretString"]
    status, out = api("/upload-training-data", {"class_name": "freshapples"}, files, {"authorization": f"Bearer {token}"})
    assert status == 200, out
    assert (out["added"], out["rejected"]) == (len(camera_photos()), len(BAD_CASES))

"""The S3 drop folder (ingest Lambda, moto server) with the field cases and real camera photos:
bad files are quarantined with their reason (never raised into a retry), camera photos are filed
and the filed image is still classified as what it is."""

from __future__ import annotations

import json

import pytest

from tests.aws.conftest import FakeContext, keys, object_created_event
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

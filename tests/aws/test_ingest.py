"""The ingest Lambda with real S3 ``Object Created`` EventBridge events against a moto server."""

from __future__ import annotations

import json

import pytest

from tests.aws.conftest import FakeContext, counter, jpeg, keys, object_created_event
from tests.conftest import needs_shared

pytestmark = needs_shared


@pytest.fixture
def ingest(aws, monkeypatch):
    for k, v in aws["env"].items():
        monkeypatch.setenv(k, v)
    from functions.ingest import handler as module
    module._stores.clear()

    def run(key: str, data: bytes | None = None, *, encode: bool = True, put: bool = True):
        if put:
            aws["s3"].put_object(Bucket=aws["data"], Key=key, Body=data)
        return module.handler(object_created_event(aws["data"], key, len(data or b""), encode=encode), FakeContext())
    return run


def reason_of(aws, key: str) -> dict:
    body = aws["s3"].get_object(Bucket=aws["data"], Key=f"quarantine/{key}.reason.json")["Body"].read()
    return json.loads(body)


def test_valid_image_is_filed_by_hash_counted_and_removed(aws, ingest, capsys):
    data = jpeg(seed=1)
    out = ingest("incoming/freshapples/photo 1.jpg", data)
    assert out["status"] == "added"
    assert out["dataset_key"].startswith("dataset/freshapples/") and out["dataset_key"].endswith(".jpg")
    assert keys(aws) == [out["dataset_key"]]  # incoming object gone, nothing else written
    stored = aws["s3"].get_object(Bucket=aws["data"], Key=out["dataset_key"])["Body"].read()
    assert stored == data  # JPEGs are stored as they are
    assert counter(aws) == 1
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert any(m.get("ImagesAdded") == [1.0] or m.get("ImagesAdded") == 1.0 for m in emf), emf


def test_same_file_twice_is_filed_once(aws, ingest):
    data = jpeg(seed=2)
    first = ingest("incoming/rottenbanana/a.jpg", data)
    second = ingest("incoming/rottenbanana/copy-of-a.jpg", data)
    assert (first["status"], second["status"]) == ("added", "duplicate")
    assert keys(aws) == [first["dataset_key"]]
    assert counter(aws) == 1


def test_same_event_delivered_twice_files_once(aws, ingest):
    data = jpeg(seed=3)
    first = ingest("incoming/freshoranges/x.jpg", data)
    again = ingest("incoming/freshoranges/x.jpg", data, put=False)  # redelivery: object already gone
    assert first["status"] == "added" and again["status"] == "gone"
    assert keys(aws) == [first["dataset_key"]]
    assert counter(aws) == 1


@pytest.mark.parametrize("key,data,error", [
    ("incoming/freshbanana/broken.jpg", b"\xff\xd8\xff\xe0 this is not really a jpeg", "not_an_image"),
    ("incoming/freshbanana/notes.txt", b"hello", "not_an_image"),
    ("incoming/freshbanana/empty.jpg", b"", "empty"),
    ("incoming/bananas/photo.jpg", None, "unknown_class"),
    ("incoming/photo.jpg", None, "missing_class"),
])
def test_bad_files_are_quarantined_with_a_reason(aws, ingest, key, data, error):
    data = jpeg(seed=4) if data is None else data
    out = ingest(key, data)
    assert out["status"] == "quarantined" and out["error"] == error
    assert keys(aws) == [f"quarantine/{key}", f"quarantine/{key}.reason.json"]  # nothing lost, nothing filed
    assert aws["s3"].get_object(Bucket=aws["data"], Key=f"quarantine/{key}")["Body"].read() == data
    reason = reason_of(aws, key)
    assert reason["error"] == error and reason["key"] == key and reason["detail"]
    assert counter(aws) == 0


def test_truncated_jpeg_is_quarantined(aws, ingest):
    data = jpeg(seed=5)
    out = ingest("incoming/rottenapples/cut.jpg", data[: len(data) // 2])
    assert out["status"] == "quarantined" and out["error"] == "truncated"


def test_too_large_is_quarantined_without_decoding(aws, ingest):
    from fruitpipe import imaging
    data = jpeg(seed=0) + b"\0" * (imaging.MAX_BYTES + 1)
    out = ingest("incoming/freshapples/huge.jpg", data)
    assert out["status"] == "quarantined" and out["error"] == "too_large"
    assert str(imaging.MAX_BYTES) in reason_of(aws, "incoming/freshapples/huge.jpg")["detail"]


def test_unicode_and_spaces_in_key(aws, ingest):
    key = "incoming/rottenoranges/pomme pourrie – été 🍊+1.jpg"
    out = ingest(key, jpeg(seed=6))  # the event carries the URL-encoded key, as S3 sends it
    assert out["status"] == "added" and out["key"] == key
    assert keys(aws, "incoming/") == []
    bad = "incoming/rottenoranges/ünïcödé notes.txt"
    out = ingest(bad, b"not an image")
    assert out["status"] == "quarantined"
    assert reason_of(aws, bad)["key"] == bad


def test_event_for_another_bucket_is_ignored(aws, ingest):
    from functions.ingest import handler as module
    event = object_created_event("someone-elses-bucket", "incoming/freshapples/a.jpg", 10)
    assert module.handler(event, FakeContext())["status"] == "ignored"

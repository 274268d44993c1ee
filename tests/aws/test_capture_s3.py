"""Capture on AWS against the moto server: the S3 store's contract, retention that deletes every
object version (clock under the test's control), and the whole loop through the API Lambda
handler (predict -> kept under capture/ -> feedback -> review -> dataset/ with origin metadata)."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import pytest

from fruitpipe.backends.aws_capture import S3CaptureStore
from fruitpipe.backends.base import NotFound
from fruitpipe.capture import CapturePolicy, Capturer
from tests.aws.conftest import FakeContext, http_api_event, jpeg, keys, multipart, response_json
from tests.conftest import needs_shared

TOKEN = "s3cret-token"
PREDICTION = {"model_version": "v1", "predicted_class": "freshapples", "verdict": "fresh", "confidence": 0.9,
              "probabilities": {"freshapples": 0.9, "freshbanana": 0.1}}


def all_versions(aws, prefix: str = "capture/") -> list[str]:
    resp = aws["s3"].list_object_versions(Bucket=aws["data"], Prefix=prefix)
    return [v["Key"] for v in resp.get("Versions", []) + resp.get("DeleteMarkers", [])]


def test_s3_capture_store_contract(aws):
    store = S3CaptureStore(aws["data"], s3=aws["s3"])
    store.put("20261101T000000000Z-aaaaaaaaaaaaaaaa", {"n": 1}, b"jpeg-bytes")
    assert store.get("20261101T000000000Z-aaaaaaaaaaaaaaaa") == {"n": 1}
    assert store.image("20261101T000000000Z-aaaaaaaaaaaaaaaa") == b"jpeg-bytes"
    store.update("20261101T000000000Z-aaaaaaaaaaaaaaaa", {"n": 2})
    assert store.records() == [{"n": 2}]
    for bad in ("20261101T000000000Z-bbbbbbbbbbbbbbbb", "../dataset/x"):
        with pytest.raises(NotFound):
            store.get(bad)
        with pytest.raises(NotFound):
            store.update(bad, {})


def test_retention_deletes_every_version(aws):
    clock_now = [datetime(2026, 11, 1, tzinfo=timezone.utc)]
    cap = Capturer(S3CaptureStore(aws["data"], s3=aws["s3"]),
                   CapturePolicy(sample_rate=1.0, retention_days=30, max_items=2, prune_every=1000),
                   clock=lambda: clock_now[0], rng=random.Random(0))
    first = cap.new_id()
    assert cap.keep(first, PREDICTION, jpeg(), ["sample"]) is not None
    cap.feedback(first, "rottenapples")  # a second version of its record
    assert len(all_versions(aws)) == 3
    clock_now[0] += timedelta(days=30, minutes=1)
    with pytest.raises(LookupError):
        cap.get(first)  # past the limit: not shown, even before a sweep
    later = []
    for _ in range(3):
        clock_now[0] += timedelta(seconds=1)
        later.append(cap.new_id())
        cap.keep(later[-1], PREDICTION, jpeg(), ["sample"])
    assert cap.prune() == 2  # the expired one, and the oldest beyond two
    assert keys(aws, "capture/") == sorted(f"capture/{p}{s}" for p in later[1:] for s in (".jpg", ".json"))
    assert not any(first in k or later[0] in k for k in all_versions(aws))  # no version, no delete marker left


@needs_shared
def test_capture_feedback_review_through_the_lambda_handler(aws, monkeypatch, tmp_path, capsys):
    for k, v in aws["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("FRUITPIPE_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FRUITPIPE_CAPTURE_SAMPLE_RATE", "1")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "fruitpipe-api")  # in Lambda: written before the invocation ends
    from functions.api import handler as module
    monkeypatch.setattr(module, "_app", None)

    def call(method, path, **kw):  # type: ignore[no-untyped-def]
        resp = module.handler(http_api_event(method, path, **kw), FakeContext())
        return resp["statusCode"], response_json(resp)

    body, ctype = multipart({}, [("file", "a.jpg", jpeg(seed=3), "image/jpeg")])
    status, answer = call("POST", "/predict", body=body, headers={"content-type": ctype})
    assert status == 200
    pid = answer["prediction_id"]
    assert keys(aws, "capture/") == [f"capture/{pid}.jpg", f"capture/{pid}.json"]
    status, _ = call("POST", "/feedback", body=json.dumps({"prediction_id": pid, "correct": "rottenbanana"}).encode(),
                     headers={"content-type": "application/json"})
    assert status == 200
    status, queue = call("GET", "/review", headers={"authorization": f"Bearer {TOKEN}"})
    assert status == 200 and queue["items"][0]["feedback"]["correct"] == "rottenbanana"
    assert call("GET", "/review")[0] == 401
    status, done = call("POST", f"/review/{pid}", body=json.dumps({"label": "rottenbanana"}).encode(),
                        headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"})
    assert status == 200, done
    key = done["dataset"]["key"]
    assert done["dataset"]["status"] == "added" and key.startswith("dataset/rottenbanana/")
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"ReviewCorrect"' in line]
    right = float(done["item"]["answered"] == "rottenbanana")
    assert [(m["ReviewCorrect"], m.get("class")) for m in emf] == [([right], None), ([right], "rottenbanana")]
    head = aws["s3"].head_object(Bucket=aws["data"], Key=key)
    assert head["Metadata"]["source"] == "review"
    status, acc = call("GET", "/review/accuracy")
    assert status == 200 and acc["all"]["n"] == 1

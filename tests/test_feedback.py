"""Feedback, capture, retention, review queue and label-based accuracy on the local backend
(real model, real images; FastAPI's test client runs background tasks before it returns)."""

from __future__ import annotations

import io
import json
import random
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fruitpipe import dataset
from fruitpipe.capture import (CapturePolicy, Capturer, Record, id_time, new_prediction_id, review_accuracy,
                               shrink, worth)

from .conftest import needs_shared
from .service_support import AUTH, fruit, make_app, make_backend

pytestmark = needs_shared


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


def app_with(store, clock=None, **policy):  # type: ignore[no-untyped-def]
    policy.setdefault("write_in_thread", False)  # kept by the time the answer is back (the thread: below)
    app = make_app(make_backend(store), capture=CapturePolicy(**policy))
    if clock is not None:
        app.state.fruitpipe.capture.clock = clock
    app.state.fruitpipe.capture.rng = random.Random(0)
    return app


def predict(client, label="freshapples", index=0, **params):  # type: ignore[no-untyped-def]
    r = client.post("/predict", params=params, files={"file": ("a.jpg", fruit(label, index), "image/jpeg")})
    assert r.status_code == 200, r.text
    return r.json()


def test_prediction_ids_are_time_sortable_and_unique():
    t = datetime(2026, 11, 30, 3, 4, 5, 678000, tzinfo=timezone.utc)
    a, b = new_prediction_id(t), new_prediction_id(t)
    assert a != b and id_time(a) == t
    assert new_prediction_id(t + timedelta(milliseconds=1)) > a
    with pytest.raises(ValueError):
        id_time("../../etc/passwd")


def test_every_answer_has_an_id_and_sampled_ones_are_kept(tmp_path):
    store = tmp_path / "store"
    with TestClient(app_with(store, sample_rate=1.0)) as c:
        one = predict(c)
        batch = c.post("/predict/batch", files=[("files", ("a.jpg", fruit("freshbanana"), "image/jpeg")),
                                                ("files", ("b.txt", b"not an image", "text/plain"))]).json()
        opted_out = predict(c, index=1, keep="false")
    ids = [one["prediction_id"], batch["results"][0]["prediction"]["prediction_id"]]
    kept = sorted(p.stem for p in (store / "capture").glob("*.json"))
    assert kept == sorted(ids)  # the opted-out one and the bad file are not kept
    assert opted_out["prediction_id"] not in kept
    rec = json.loads((store / "capture" / f"{ids[0]}.json").read_text())
    assert rec["model_version"] == one["model_version"] and rec["reasons"] == ["sample"]
    assert rec["predicted_class"] == one["predicted_class"] and rec["probabilities"] == one["probabilities"]
    img = Image.open(store / "capture" / f"{ids[0]}.jpg")
    assert img.format == "JPEG" and max(img.size) <= 512


def test_capture_keeps_uncertain_answers_and_drops_metadata():
    cap = Capturer(None, CapturePolicy(sample_rate=0.0))
    assert cap.reasons({"verdict": "uncertain"}) == ["uncertain"]
    assert cap.reasons({"verdict": "fresh"}) == []
    exif = Image.Exif()
    exif[0x8825] = {2: (48.0, 51.0, 30.0)}  # GPSInfo: a latitude
    exif[0x010F] = "CameraMaker"
    out = io.BytesIO()
    Image.open(io.BytesIO(fruit())).save(out, "JPEG", exif=exif.tobytes())
    assert b"CameraMaker" in out.getvalue()
    small = shrink(out.getvalue())
    assert b"CameraMaker" not in small and not Image.open(io.BytesIO(small)).getexif()


def test_feedback_keeps_a_pending_prediction_and_validates(tmp_path):
    store = tmp_path / "store"
    with TestClient(app_with(store, sample_rate=0.0)) as c:
        p = predict(c)
        assert not (store / "capture").exists()  # not sampled: nothing written
        r = c.post("/feedback", json={"prediction_id": p["prediction_id"], "correct": "rottenapples"})
        assert r.status_code == 200 and r.json()["kept"] is True
        rec = json.loads((store / "capture" / f"{p['prediction_id']}.json").read_text())
        assert rec["reasons"] == ["feedback"] and rec["feedback"]["correct"] == "rottenapples"
        # again: the kept record is updated
        r = c.post("/feedback", json={"prediction_id": p["prediction_id"], "correct": "not_fruit"})
        assert r.status_code == 200
        assert json.loads((store / "capture" / f"{p['prediction_id']}.json").read_text())["feedback"]["correct"] \
            == "not_fruit"
        unknown = new_prediction_id(datetime.now(timezone.utc))
        assert c.post("/feedback", json={"prediction_id": unknown, "correct": "freshbanana"}).status_code == 404
        for bad in ({"prediction_id": p["prediction_id"], "correct": "strawberry"}, {"prediction_id": "x"},
                    {"prediction_id": "../x", "correct": "freshbanana"}):
            r = c.post("/feedback", json=bad)
            assert r.status_code in (404, 422) and r.json()["error"] in ("invalid_request", "unknown_prediction")
        assert c.post("/feedback", content=b"{", headers={"content-type": "application/json"}).status_code == 422


def test_feedback_errors_say_what_is_wrong_in_words(tmp_path):
    """Every 4xx of POST /feedback is {"error", "detail"} with a sentence for people: no parser
    internals, no echo of what was sent."""
    with TestClient(app_with(tmp_path / "store", sample_rate=0.0)) as c:
        json_type = {"content-type": "application/json"}
        cases = [
            ({}, 422, "invalid_request", "needs a JSON body"),
            ({"content": b"{", "headers": json_type}, 422, "invalid_request", "not valid JSON"),
            ({"data": {"prediction_id": "x", "correct": "freshapples"}}, 422, "invalid_request", "a JSON object"),
            ({"json": ["freshapples"]}, 422, "invalid_request", "a JSON object"),
            ({"json": {"prediction_id": "x"}}, 422, "invalid_request", "correct: Field required"),
            ({"json": {"prediction_id": "x", "correct": "kiwi"}}, 422, "invalid_request", "correct: Input should be"),
            ({"json": {"prediction_id": "x" * 65, "correct": "kiwi"}}, 422, "invalid_request", "at most 64"),
            ({"json": {"prediction_id": "../x\n'", "correct": "freshapples"}}, 404, "unknown_prediction",
             "no prediction with this id is held: feedback is taken for 10 min"),
            ({"json": {"prediction_id": new_prediction_id(datetime.now(timezone.utc)), "correct": "freshapples"}},
             404, "unknown_prediction", "no prediction with this id is held"),
        ]
        for kw, status, code, words in cases:
            r = c.post("/feedback", **kw)
            assert (r.status_code, r.json()["error"]) == (status, code), (kw, r.text)
            assert words in r.json()["detail"], (kw, r.text)
            assert set(r.json()) == {"error", "detail"}
            for internal in ("decode error", "extract fields", "../x", "Traceback"):
                assert internal not in r.json()["detail"], r.text


def test_feedback_on_a_storage_failure_is_503_and_can_be_retried(tmp_path):
    """A prediction that cannot be written for review is not 'unknown' (404): the server failed
    (503 capture_failed), and the prediction stays pending, so the same feedback succeeds later."""
    store = tmp_path / "store"
    with TestClient(app_with(store, sample_rate=0.0)) as c:
        p = predict(c)
        capturer = c.app.state.fruitpipe.capture
        put = capturer.store.put

        def disk_full(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise OSError(28, "No space left on device")
        capturer.store.put = disk_full
        body = {"prediction_id": p["prediction_id"], "correct": "rottenapples"}
        r = c.post("/feedback", json=body)
        assert r.status_code == 503 and r.json()["error"] == "capture_failed", r.text
        assert "try again" in r.json()["detail"] and "No space" not in r.json()["detail"]
        capturer.store.put = put
        r = c.post("/feedback", json=body)
        assert r.status_code == 200 and r.json()["kept"] is True
    assert json.loads((store / "capture" / f"{p['prediction_id']}.json").read_text())["feedback"]["correct"] \
        == "rottenapples"


def test_feedback_is_rate_limited_per_client(tmp_path):
    app = make_app(make_backend(tmp_path / "s"), capture=CapturePolicy(sample_rate=0.0), feedback_per_minute=3)
    with TestClient(app) as c:
        pid = new_prediction_id(datetime.now(timezone.utc))
        codes = [c.post("/feedback", json={"prediction_id": pid, "correct": "freshbanana"}).status_code
                 for _ in range(5)]
        assert codes == [404, 404, 404, 429, 429]
        r = c.post("/feedback", json={"prediction_id": pid, "correct": "freshbanana"})
        assert r.json()["error"] == "rate_limited" and int(r.headers["retry-after"]) >= 1


def test_off_switch(tmp_path):
    store = tmp_path / "store"
    with TestClient(app_with(store, enabled=False, sample_rate=1.0)) as c:
        p = predict(c)
        assert "prediction_id" in p
        r = c.post("/feedback", json={"prediction_id": p["prediction_id"], "correct": "freshapples"})
        assert r.status_code == 503 and r.json()["error"] == "capture_disabled"
        assert c.get("/review", headers=AUTH).json() == {"enabled": False, "count": 0, "items": []}
    assert not (store / "capture").exists()
    assert CapturePolicy.from_env({"FRUITPIPE_CAPTURE": "off"}).enabled is False
    assert CapturePolicy.from_env({"FRUITPIPE_CAPTURE_SAMPLE_RATE": "0.1"}).sample_rate == 0.1
    with pytest.raises(ValueError):
        CapturePolicy.from_env({"FRUITPIPE_CAPTURE_SAMPLE_RATE": "2"})


def test_no_capture_outlives_its_retention_limit(tmp_path):
    """Days and count, with a clock the test controls: expired captures are neither shown nor kept."""
    store = tmp_path / "store"
    clock = FakeClock()
    with TestClient(app_with(store, clock, sample_rate=1.0, retention_days=30, max_items=3, prune_every=1)) as c:
        old = predict(c)["prediction_id"]
        clock.advance(days=29, hours=23)
        assert c.get(f"/review/{old}/image", headers=AUTH).status_code == 200
        clock.advance(hours=2)  # 30 days and 1 hour: past the limit
        assert c.get(f"/review/{old}/image", headers=AUTH).status_code == 404  # not shown, even before a sweep
        assert c.post("/feedback", json={"prediction_id": old, "correct": "freshapples"}).status_code == 404
        ids = []
        for i in range(4):  # each capture sweeps (prune_every=1)
            clock.advance(seconds=1)
            ids.append(predict(c, index=i)["prediction_id"])
        kept = sorted(p.stem for p in (store / "capture").glob("*.json"))
        assert kept == ids[1:]  # the expired one and the oldest beyond 3 are gone, images included
        assert sorted(p.stem for p in (store / "capture").glob("*.jpg")) == ids[1:]
        clock.advance(days=31)
        assert c.get("/review", headers=AUTH).json()["count"] == 0
    assert list((store / "capture").iterdir()) == []


def test_queue_order_accept_and_accuracy(tmp_path):
    store = tmp_path / "store"
    with TestClient(app_with(store, sample_rate=1.0)) as c:
        right = predict(c, "freshapples")  # confident and right
        wrong = predict(c, "freshbanana")
        c.post("/feedback", json={"prediction_id": wrong["prediction_id"], "correct": "rottenbanana"})
        agree = predict(c, "freshoranges")
        c.post("/feedback", json={"prediction_id": agree["prediction_id"], "correct": agree["predicted_class"]})
        assert c.get("/review").status_code == 401
        q = c.get("/review", headers=AUTH).json()
        assert q["count"] == 3 and q["items"][0]["prediction_id"] == wrong["prediction_id"]
        margins = [i["margin"] for i in q["items"][1:]]
        assert margins == sorted(margins)  # then the smallest margin first
        # accept: the image enters the dataset through the upload path, tagged with its origin
        r = c.post(f"/review/{wrong['prediction_id']}", headers=AUTH, json={"label": "rottenbanana"})
        assert r.status_code == 200, r.text
        filed = r.json()["dataset"]
        assert filed["status"] == "added" and filed["key"].startswith("dataset/rottenbanana/")
        assert (store / filed["key"]).is_file()
        assert dataset.origin_of(store / filed["key"]) == "review"
        assert c.get("/dataset").json()["counts"]["rottenbanana"] == 1
        # the same image again is a duplicate, as for uploads
        r = c.post(f"/review/{wrong['prediction_id']}", headers=AUTH, json={"label": "rottenbanana"})
        assert r.json()["dataset"]["status"] == "duplicate"
        r = c.post(f"/review/{right['prediction_id']}", headers=AUTH, json={"label": right["predicted_class"]})
        assert r.status_code == 200
        r = c.post(f"/review/{agree['prediction_id']}", headers=AUTH, json={"label": "not_fruit"})
        assert r.status_code == 200 and r.json()["dataset"] is None
        assert c.post(f"/review/{agree['prediction_id']}", headers=AUTH, json={"label": "kiwi"}).status_code == 422
        assert c.get("/review", headers=AUTH).json()["count"] == 0  # all reviewed
        assert c.get("/review", headers=AUTH, params={"include_reviewed": "true"}).json()["count"] == 3
        acc = c.get("/review/accuracy").json()
        assert acc["all"]["n"] == 3 and acc["all"]["correct"] == 1
        assert acc["all"]["per_class"]["rottenbanana"] == {"n": 1, "correct": 0, "accuracy": 0.0}
        assert acc["sampled"]["n"] == 3  # all three were in the random sample (rate 1)
        metrics = c.get("/metrics").text
        assert 'fruitpipe_review_count{class="all"} 3.0' in metrics
        assert 'fruitpipe_review_accuracy{class="rottenbanana"} 0.0' in metrics
        assert 'fruitpipe_reviews_total{correct="false",label="rottenbanana"}' in metrics


def test_worth_and_accuracy_window():
    def rec(pid: str, verdict: str = "fresh", m: float = 0.9, feedback=None, review=None) -> Record:  # type: ignore[no-untyped-def]
        return Record(pid, "", "v1", "freshapples", verdict, 0.9, m, {}, ["sample"], feedback, review)
    recs = [rec("a", m=0.1), rec("b", "uncertain", 0.5), rec("c", m=0.9, feedback={"correct": "rottenapples"}),
            rec("d", m=0.05, feedback={"correct": "freshapples"})]
    assert [r.prediction_id for r in sorted(recs, key=worth)] == ["c", "b", "d", "a"]
    now = datetime(2026, 11, 30, tzinfo=timezone.utc)
    reviewed = [rec("x", review={"label": "freshapples", "at": "2026-11-29T00:00:00Z"}),
                rec("y", review={"label": "rottenapples", "at": "2026-11-01T00:00:00Z"})]  # outside a 7-day window
    acc = review_accuracy(reviewed, "v1", now - timedelta(days=7))
    assert acc["all"]["n"] == 1 and acc["all"]["accuracy"] == 1.0
    assert review_accuracy(reviewed, "v2", now - timedelta(days=7))["all"]["n"] == 0


def test_writer_thread_keeps_after_the_answer_and_drops_when_full(tmp_path):
    store = tmp_path / "store"
    with TestClient(app_with(store, sample_rate=1.0, write_in_thread=True)) as c:
        pid = predict(c)["prediction_id"]
        c.app.state.fruitpipe.capture.flush()
        assert (store / "capture" / f"{pid}.json").is_file()
    cap = Capturer(None, CapturePolicy(queue_items=1))
    cap._worker.thread = object()  # type: ignore[assignment]  # no writer running: the queue fills
    for _ in range(3):
        cap.submit("x", {}, b"", ["sample"])
    assert cap.dropped == 2

"""The HTTP API through FastAPI's test client: every route, every error code, auth, model swaps."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fruitpipe import bundle
from fruitpipe.labels import LABELS

from .conftest import DEFAULT_MODEL, needs_shared
from .service_support import AUTH, fruit, jpeg, make_app, make_backend, tree_hash

pytestmark = needs_shared


@pytest.fixture()
def store(tmp_path):
    return tmp_path / "store"


@pytest.fixture()
def client(store):
    with TestClient(make_app(make_backend(store))) as c:
        yield c


def png_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A valid PNG header that claims a huge size (decompression-bomb shape)."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "PNG")
    data = bytearray(out.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def other_format(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 128, 0)).save(out, fmt)
    return out.getvalue()


def second_version(registry_root, suffix: str = "b") -> str:
    """Register a copy of the default bundle under a new version id (a real, verified bundle)."""
    m = bundle.verify(DEFAULT_MODEL)
    raw = m.to_dict()
    raw["version"] = f"v20990101-000000-{suffix * 6}"[:24]
    raw["created"] = "2099-01-01T00:00:00Z"
    files = {name: (DEFAULT_MODEL / name).read_bytes() for name in m.files}
    dest = registry_root / "models" / "versions" / raw["version"]
    bundle.write(dest, bundle.Manifest.from_dict(raw), files)
    return raw["version"]


# ---------------------------------------------------------------------------- reads


def test_predict_real_fruit(client):
    r = client.post("/predict", files={"file": ("a.jpg", fruit("rottenbanana"), "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["predicted_class"] == "rottenbanana"
    assert body["verdict"] == "rotten"
    assert set(body["probabilities"]) == set(LABELS)
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-4
    assert body["model_version"] == bundle.verify(DEFAULT_MODEL).version
    assert body["timestamp"].endswith("Z") and body["latency_ms"] > 0


def test_predict_person_is_not_fruit(client):
    from skimage import data
    out = io.BytesIO()
    Image.fromarray(data.astronaut()).save(out, "JPEG")
    r = client.post("/predict", files={"file": ("person.jpg", out.getvalue(), "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["verdict"] == "not_fruit"
    rejection = bundle.verify(DEFAULT_MODEL).rejection
    if "zoom_similarity" in body["scores"]:  # the zoomed quadrants were looked at too, and did not look like fruit
        assert body["scores"]["zoom_similarity"] < rejection["min_similarity_zoom"]
    else:  # a head with a not_fruit output (issue 11) rejects it at first sight: no second look needed
        assert body["scores"]["not_fruit"] > rejection["max_not_fruit"]
    fruit_body = client.post("/predict", files={"file": ("a.jpg", fruit("freshapples"), "image/jpeg")}).json()
    assert "zoom_similarity" not in fruit_body["scores"]  # a fruit accepted at first sight pays no second look


def test_predict_batch_mixes_good_and_bad(client):
    files = [("files", ("a.jpg", fruit("freshoranges"), "image/jpeg")),
             ("files", ("b.txt", b"hello", "text/plain")),
             ("files", ("c.jpg", fruit("freshbanana"), "image/jpeg"))]
    r = client.post("/predict/batch", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 3 and body["ok"] == 2
    assert body["results"][0]["prediction"]["predicted_class"] == "freshoranges"
    assert body["results"][1]["error"] == "not_an_image"
    assert body["results"][2]["prediction"]["predicted_class"] == "freshbanana"


def test_health_stats_metrics_model_info(client):
    client.post("/predict", files={"file": ("a.jpg", fruit("freshapples"), "image/jpeg")})
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["predictions"] == 1 and h["model_loaded"] and h["backend"] == "local"
    s = client.get("/stats").json()
    assert s["by_class"]["freshapples"] == 1 and s["by_verdict"]["fresh"] == 1
    assert s["latency_ms"]["p95"] is not None and s["latency_samples"] == 1
    info = client.get("/model-info").json()
    assert info["labels"] == list(LABELS) and info["version"] == h["model_version"]
    assert "min_similarity" in info["rejection"] and "other_classes" not in info["rejection"]
    text = client.get("/metrics").text
    assert 'fruitpipe_predictions_total{predicted_class="freshapples",verdict="fresh"} 1.0' in text
    assert 'fruitpipe_http_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    assert f'fruitpipe_model_info{{version="{h["model_version"]}"}} 1.0' in text
    assert "fruitpipe_http_request_duration_seconds_bucket" in text


def test_head_on_the_page_and_health(client):
    """``curl -I`` on / and /health: 200 with GET's headers (it was 405; the body, if any, is the
    server's to drop for HEAD, which uvicorn does)."""
    for path, ctype in (("/", "text/html"), ("/health", "application/json")):
        r = client.head(path)
        assert r.status_code == 200 and ctype in r.headers["content-type"], (path, r.status_code)
    assert client.head("/predict").status_code == 405  # only those two


def test_docs_openapi_and_dashboard(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/predict", "/predict/batch", "/upload-training-data", "/retrain", "/retraining-status",
                 "/models", "/models/{version}/activate", "/health", "/model-info", "/metrics"):
        assert path in spec["paths"], path
    assert "ErrorResponse" in spec["components"]["schemas"]
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert client.get("/static/app.js").status_code == 200


def test_models_and_activate_swap_without_restart(client, store):
    first = client.get("/models").json()
    assert first["live"] and [v["status"] for v in first["versions"]] == ["live"]
    new = second_version(store)
    assert client.post(f"/models/{new}/activate").status_code == 401
    r = client.post(f"/models/{new}/activate", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"live": new, "previous": first["live"]}
    pred = client.post("/predict", files={"file": ("a.jpg", fruit(), "image/jpeg")}).json()
    assert pred["model_version"] == new
    assert client.get("/model-info").json()["version"] == new
    assert client.post(f"/models/{first['live']}/activate", headers=AUTH).status_code == 200  # rollback
    assert client.get("/health").json()["model_version"] == first["live"]


def test_models_and_model_info_put_the_comparable_figure_first(client, store):
    """metrics.accuracy is the same measurement for every version: the frozen-set score where one
    is kept, else a held-out test score from the manifest, else null; the manifest's own
    (training-time) figures are under metrics.training with their split label."""
    from fruitpipe.backends.local_run import save_frozen_evaluation
    shipped = client.get("/models").json()["versions"][0]["metrics"]
    assert shipped["source"] == "manifest" and shipped["split"].startswith("test")
    assert shipped["accuracy"] == shipped["training"]["accuracy"] and "frozen" not in shipped
    seen = {"split": "validation (seen: warm-started refit on train+validation)", "accuracy": 0.999,
            "macro_f1": 0.998, "n": 50}
    scored, unscored = second_version(store, "s"), second_version(store, "u")
    for version in (scored, unscored):
        path = store / "models" / "versions" / version / "manifest.json"
        raw = json.loads(path.read_text())
        raw["metrics"] = seen
        path.write_text(json.dumps(raw))
        (store / "models" / "versions" / version / "manifest.sha256").unlink(missing_ok=True)
    save_frozen_evaluation(store, scored, "abc123", {"n": 740, "accuracy": 0.95, "macro_f1": 0.94,
                                                    "ood_n": 586, "ood_rejected_rate": 0.96, "paired": {}})
    versions = {v["version"]: v["metrics"] for v in client.get("/models").json()["versions"]}
    assert versions[scored]["source"] == "frozen" and versions[scored]["eval_set"] == "abc123"
    assert (versions[scored]["accuracy"], versions[scored]["macro_f1"]) == (0.95, 0.94)
    assert versions[scored]["training"] == seen
    assert versions[unscored]["source"] is None and versions[unscored]["accuracy"] is None
    assert versions[unscored]["training"] == seen
    assert client.post(f"/models/{scored}/activate", headers=AUTH).status_code == 200
    info = client.get("/model-info").json()["metrics"]
    assert info["source"] == "frozen" and info["accuracy"] == 0.95 and info["training"]["split"] == seen["split"]


def test_pointer_moved_by_another_process_is_picked_up(store):
    """Two apps on one store (e.g. two server processes): activation through one reaches the other."""
    import time
    with TestClient(make_app(make_backend(store))) as a, TestClient(make_app(make_backend(store))) as b:
        new = second_version(store, "c")
        assert a.post(f"/models/{new}/activate", headers=AUTH).status_code == 200
        deadline = time.monotonic() + 5
        while b.get("/health").json()["model_version"] != new:
            assert time.monotonic() < deadline, "second app never picked up the new pointer"
            time.sleep(0.1)


# ---------------------------------------------------------------------------- writes + auth


def test_upload_dedup_and_counts(client, store):
    img = fruit("freshapples", 3)
    r = client.post("/upload-training-data", data={"class_name": "freshapples"},
                    files=[("files", ("x.jpg", img, "image/jpeg")), ("files", ("y.jpg", img, "image/jpeg")),
                           ("files", ("z.txt", b"not an image", "text/plain"))], headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["status"] for x in body["results"]] == ["added", "duplicate", "rejected"]
    assert body["results"][2]["error"] == "not_an_image"
    assert body["added"] == 1 and body["duplicates"] == 1 and body["rejected"] == 1
    assert body["counts"]["freshapples"] == 1
    stored = list((store / "dataset" / "freshapples").glob("*.jpg"))
    assert [p.name for p in stored] == [body["results"][0]["sha256"] + ".jpg"]
    assert stored[0].read_bytes() == img
    again = client.post("/upload-training-data", data={"class_name": "freshapples"},
                        files=[("files", ("again.jpg", img, "image/jpeg"))], headers=AUTH)
    assert again.json()["results"][0]["status"] == "duplicate"
    assert client.get("/dataset").json() == {"counts": {**dict.fromkeys(LABELS, 0), "freshapples": 1}, "total": 1,
                                             "seed": dict.fromkeys(LABELS, 0), "seed_total": 0}


def test_dataset_reports_the_seed_data_besides_the_uploads(tmp_path):
    """/dataset: ``seed`` counts the images of the trainer's seed folders (what every retrain trains
    on besides the uploads), by class; only image files, whatever the folder holds besides."""
    from .service_support import small_dataset
    seed = small_dataset(tmp_path / "seed", "train", 2)
    (seed / "freshapples" / "notes.txt").write_text("not an image")
    (seed / "not_fruit").mkdir()
    (seed / "not_fruit" / "x.jpg").write_bytes(jpeg())
    with TestClient(make_app(make_backend(tmp_path / "store", seed=seed))) as c:
        c.post("/upload-training-data", data={"class_name": "rottenbanana"},
               files=[("files", ("x.jpg", fruit("rottenbanana", 1), "image/jpeg"))], headers=AUTH)
        d = c.get("/dataset").json()
    assert d["seed"] == dict.fromkeys(LABELS, 2) and d["seed_total"] == 12
    assert d["counts"]["rottenbanana"] == 1 and d["total"] == 1


@pytest.mark.parametrize("name", ["../../../etc/passwd.jpg", "..\\..\\evil.jpg", "/abs/path.jpg",
                                  "ünïcødé 🍎 名前.jpg", "a\x00b.jpg", ".hidden", "x" * 1000])
def test_upload_hostile_filenames_are_never_paths(client, store, name):
    before = {p for p in store.parent.rglob("*")}
    r = client.post("/upload-training-data", data={"class_name": "rottenoranges"},
                    files=[("files", (name, jpeg(color=(len(name) % 256, 10, 10)), "image/jpeg"))], headers=AUTH)
    assert r.status_code == 200, r.text
    item = r.json()["results"][0]
    assert item["status"] == "added"
    assert item["key"] == f"dataset/rottenoranges/{item['sha256']}.jpg"
    new = {p for p in store.parent.rglob("*")} - before
    assert all(p.resolve().is_relative_to(store.resolve()) for p in new)
    assert {p.name for p in new if p.is_file()} == {f"{item['sha256']}.jpg"}


def test_auth_allow_and_deny(client):
    files = [("files", ("a.jpg", jpeg(), "image/jpeg"))]
    for headers, status, code in [({}, 401, "unauthorized"),
                                  ({"Authorization": "Basic abc"}, 401, "unauthorized"),
                                  ({"Authorization": "Bearer "}, 401, "unauthorized"),
                                  ({"Authorization": "Bearer wrong"}, 403, "forbidden"),
                                  ({"Authorization": "Bearer " + AUTH["Authorization"][7:] + "x"}, 403, "forbidden")]:
        for method, path, kw in [("post", "/upload-training-data", {"data": {"class_name": "freshapples"}, "files": files}),
                                 ("post", "/retrain", {}), ("post", "/models/anything/activate", {})]:
            r = getattr(client, method)(path, headers=headers, **kw)
            assert r.status_code == status, (path, headers, r.text)
            assert r.json()["error"] == code
            if status == 401:
                assert r.headers["www-authenticate"] == "Bearer"
    # reads and predict stay public
    assert client.get("/models").status_code == 200
    assert client.post("/predict", files={"file": ("a.jpg", fruit(), "image/jpeg")}).status_code == 200


def test_no_model_is_503(tmp_path):
    from fruitpipe.backends.local import create_local_backend
    backend = create_local_backend(tmp_path / "empty", seed_bundle=None)
    # no seed: the registry is empty
    backend.registry.pointer.unlink(missing_ok=True)
    with TestClient(make_app(backend)) as c:
        r = c.post("/predict", files={"file": ("a.jpg", fruit(), "image/jpeg")})
        assert r.status_code == 503 and r.json()["error"] == "no_model"
        assert c.get("/model-info").status_code == 503
        assert c.get("/health").json()["status"] == "degraded"


def test_activate_unknown_and_rejected(client, store):
    assert client.post("/models/v404/activate", headers=AUTH).status_code == 404
    # a rejected version is kept but cannot go live
    m = bundle.verify(DEFAULT_MODEL)
    raw = m.to_dict()
    raw["version"] = "v20990101-000000-rejctd"
    dest = store / "models" / "rejected" / raw["version"]
    bundle.write(dest, bundle.Manifest.from_dict(raw), {n: (DEFAULT_MODEL / n).read_bytes() for n in m.files})
    (dest / "rejection.json").write_text('{"reason": "accuracy 0.5 < live 0.97"}')
    versions = client.get("/models").json()["versions"]
    rejected = [v for v in versions if v["status"] == "rejected"]
    assert rejected and rejected[0]["reason"] == "accuracy 0.5 < live 0.97"
    r = client.post(f"/models/{raw['version']}/activate", headers=AUTH)
    assert r.status_code == 409 and r.json()["error"] == "version_rejected"


# ---------------------------------------------------------------------------- bad-input corpus


def _multipart(body_parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> tuple[bytes, dict]:
    out = b""
    for name, filename, data in body_parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


BIG = b"\xff\xd8\xff" + b"0" * (30 * 1024 * 1024)
TRUNCATED = fruit("freshapples")[: len(fruit("freshapples")) // 2]

BAD_INPUTS = [
    # (kind, method, path, kwargs, status, error code)
    ("no file", "post", "/predict", {"data": {"x": "1"}, "files": {"other": ("a", b"1")}}, 422, "invalid_request"),
    ("empty file", "post", "/predict", {"files": {"file": ("a.jpg", b"", "image/jpeg")}}, 400, "empty"),
    ("text file", "post", "/predict", {"files": {"file": ("a.jpg", b"hello world " * 50, "image/jpeg")}}, 415, "not_an_image"),
    ("truncated jpeg", "post", "/predict", {"files": {"file": ("a.jpg", TRUNCATED, "image/jpeg")}}, 400, "truncated"),
    ("pixel bomb", "post", "/predict", {"files": {"file": ("b.png", png_bomb(), "image/png")}}, 413, "too_many_pixels"),
    ("30 MB body", "post", "/predict", {"files": {"file": ("big.jpg", BIG, "image/jpeg")}}, 413, "too_large"),
    ("wrong field name", "post", "/predict", {"files": {"image": ("a.jpg", jpeg(), "image/jpeg")}}, 422, "invalid_request"),
    ("gif", "post", "/predict", {"files": {"file": ("a.gif", other_format("GIF"), "image/gif")}}, 415, "unsupported_format"),
    ("bmp", "post", "/predict", {"files": {"file": ("a.bmp", other_format("BMP"), "image/bmp")}}, 415, "unsupported_format"),
    ("4x4 image", "post", "/predict", {"files": {"file": ("a.jpg", jpeg(4, 4), "image/jpeg")}}, 422, "too_small"),
    ("json body", "post", "/predict", {"json": {"file": "abc"}}, 415, "unsupported_media_type"),
    ("raw bytes", "post", "/predict", {"content": jpeg(), "headers": {"Content-Type": "image/jpeg"}}, 415, "unsupported_media_type"),
    ("broken multipart", "post", "/predict", {"content": b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nabc",
                                              "headers": {"Content-Type": "multipart/form-data; boundary=XyZ"}}, 422, "invalid_request"),
    ("multipart without boundary", "post", "/predict", {"content": b"abc", "headers": {"Content-Type": "multipart/form-data"}}, 400, None),
    ("file sent as text field", "post", "/predict", {"data": {"file": "not a file"}, "files": {"x": ("a", b"1")}}, 422, "invalid_request"),
    ("random bytes", "post", "/predict", {"files": {"file": ("a.jpg", bytes(range(256)) * 40, "image/jpeg")}}, 415, "not_an_image"),
    ("html", "post", "/predict", {"files": {"file": ("a.jpg", b"<html><script>alert(1)</script></html>", "text/html")}}, 415, "not_an_image"),
    ("batch too many", "post", "/predict/batch", {"files": [("files", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(33)]}, 413, "too_many_files"),
    ("batch no files", "post", "/predict/batch", {"data": {"a": "b"}, "files": {"x": ("a", b"1")}}, 422, "invalid_request"),
    ("upload unknown class", "post", "/upload-training-data", {"data": {"class_name": "bananas"}, "files": [("files", ("a.jpg", fruit(), "image/jpeg"))], "headers": AUTH}, 422, "unknown_class"),
    ("upload ../ class", "post", "/upload-training-data", {"data": {"class_name": "../../etc"}, "files": [("files", ("a.jpg", fruit(), "image/jpeg"))], "headers": AUTH}, 422, "unknown_class"),
    ("upload unicode class", "post", "/upload-training-data", {"data": {"class_name": "frèshapples"}, "files": [("files", ("a.jpg", fruit(), "image/jpeg"))], "headers": AUTH}, 422, "unknown_class"),
    ("upload no class", "post", "/upload-training-data", {"files": [("files", ("a.jpg", fruit(), "image/jpeg"))], "headers": AUTH}, 422, "invalid_request"),
    ("upload no files", "post", "/upload-training-data", {"data": {"class_name": "freshapples"}, "files": {"x": ("a", b"1")}, "headers": AUTH}, 422, "invalid_request"),
    ("upload only bad files", "post", "/upload-training-data", {"data": {"class_name": "freshapples"}, "files": [("files", ("a.jpg", b"", "image/jpeg")), ("files", ("b.jpg", b"GIF89a", "image/gif"))], "headers": AUTH}, 400, "all_rejected"),
    ("upload no token", "post", "/upload-training-data", {"data": {"class_name": "freshapples"}, "files": [("files", ("a.jpg", fruit(), "image/jpeg"))]}, 401, "unauthorized"),
    ("upload wrong token", "post", "/upload-training-data", {"data": {"class_name": "freshapples"}, "files": [("files", ("a.jpg", fruit(), "image/jpeg"))], "headers": {"Authorization": "Bearer nope"}}, 403, "forbidden"),
    ("retrain no token", "post", "/retrain", {}, 401, "unauthorized"),
    ("activate traversal", "post", "/models/..%2F..%2Fetc/activate", {"headers": AUTH}, 404, None),
    ("activate dotted", "post", "/models/.hidden/activate", {"headers": AUTH}, 404, "not_found"),
    ("activate unknown", "post", "/models/v1/activate", {"headers": AUTH}, 404, "not_found"),
    ("unknown route", "get", "/nope", {}, 404, "not_found"),
    ("wrong method", "get", "/predict", {}, 405, "method_not_allowed"),
    ("retrain big body", "post", "/retrain", {"content": b"x" * 200_000, "headers": AUTH}, 413, "too_large"),
]


def test_bad_input_corpus_is_4xx_and_changes_nothing(client, store):
    assert len({kind for kind, *_ in BAD_INPUTS}) >= 20
    before = tree_hash(store)
    for kind, method, path, kwargs, status, code in BAD_INPUTS:
        r = getattr(client, method)(path, **kwargs)
        assert r.status_code == status, (kind, r.status_code, r.text[:300])
        body = r.json()
        assert set(body) >= {"error", "detail"} and isinstance(body["detail"], str), (kind, body)
        if code:
            assert body["error"] == code, (kind, body)
    assert tree_hash(store) == before, "a rejected request changed the store"
    # still serving
    ok = client.post("/predict", files={"file": ("a.jpg", fruit("freshbanana"), "image/jpeg")})
    assert ok.status_code == 200 and ok.json()["predicted_class"] == "freshbanana"
    text = client.get("/metrics").text
    assert 'status="500"' not in text

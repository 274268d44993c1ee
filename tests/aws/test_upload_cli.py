"""``fruitpipe upload`` against the moto server: straight to the bucket, and through the API's
presigned URLs (the app served over real HTTP by uvicorn), then ingested."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from fruitpipe.cli import main
from tests.aws.conftest import FakeContext, jpeg, keys, object_created_event
from tests.conftest import needs_shared

pytestmark = needs_shared


def photos(tmp_path, n=3):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(n):
        (folder / ("sub" if i == 0 else "") / f"été {i}.jpg").write_bytes(jpeg(seed=i))
    (folder / "readme.txt").write_text("not an image, not uploaded")
    return folder


def ingest_all(aws):
    from functions.ingest import handler as ingest
    ingest._stores.clear()
    return [ingest.handler(object_created_event(aws["data"], k, 1), FakeContext())["status"]
            for k in keys(aws, "incoming/")]


def test_upload_to_bucket(aws, monkeypatch, tmp_path, capsys):
    for k, v in aws["env"].items():
        monkeypatch.setenv(k, v)
    folder = photos(tmp_path)
    assert main(["upload", "--class", "freshoranges", str(folder), "--bucket", aws["data"], "--quiet"]) == 0
    incoming = keys(aws, "incoming/")
    assert len(incoming) == 3 and all(k.startswith("incoming/freshoranges/") for k in incoming)
    assert '"uploaded": 3' in capsys.readouterr().out
    assert ingest_all(aws) == ["added"] * 3
    assert len(keys(aws, "dataset/freshoranges/")) == 3 and keys(aws, "incoming/") == []


def test_bad_input_exits_2(aws, tmp_path, capsys):
    assert main(["upload", "--class", "kiwis", str(tmp_path), "--bucket", aws["data"]]) == 2
    assert main(["upload", "--class", "freshapples", str(tmp_path / "missing"), "--bucket", aws["data"]]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["upload", "--class", "freshapples", str(tmp_path / "empty"), "--bucket", aws["data"]]) == 2
    err = capsys.readouterr().err
    assert "unknown class" in err and "no such file or folder" in err and "no .jpg" in err


@pytest.fixture
def served_api(aws, monkeypatch, tmp_path):
    import uvicorn
    for k, v in aws["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("FRUITPIPE_MODEL_CACHE", str(tmp_path / "cache"))
    from functions.api import handler as module
    app = module.build().app  # the FastAPI app inside Mangum
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_upload_through_presigned_urls(aws, served_api, tmp_path, capsys):
    folder = photos(tmp_path, n=2)
    args = ["upload", "--class", "rottenbanana", str(folder), "--api", served_api, "--presigned", "--quiet"]
    assert main(args + ["--token", "wrong"]) == 2
    assert "403" in capsys.readouterr().err
    assert main(args + ["--token", "s3cret-token"]) == 0
    assert len(keys(aws, "incoming/rottenbanana/")) == 2
    assert ingest_all(aws) == ["added", "added"]
    assert len(keys(aws, "dataset/rottenbanana/")) == 2


def test_upload_and_models_over_the_http_api(aws, served_api, tmp_path, capsys):
    """The same CLI as against a local server: POST /upload-training-data, GET /models."""
    import json
    folder = photos(tmp_path, n=2)
    args = ["upload", "--class", "rottenbanana", str(folder), "--api", served_api, "--token", "s3cret-token", "--quiet"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["added"] == 2
    assert len(keys(aws, "dataset/rottenbanana/")) == 2
    assert main(["models", "--api", served_api]) == 0
    capsys.readouterr()

"""``fruitpipe upload|retrain|models --api URL --token T``: the CLI against a real HTTP server
(uvicorn on 127.0.0.1, local backend, the tiny training job)."""

from __future__ import annotations

import json

import pytest

from fruitpipe.cli import main

from .conftest import FRUITS, needs_shared
from .service_support import TOKEN, live_server, make_app, make_backend, small_dataset

pytestmark = [needs_shared, pytest.mark.slow]


@pytest.fixture()
def server(tmp_path, monkeypatch):
    for env in ("FRUITPIPE_TOKEN", "FRUITPIPE_ADMIN_TOKEN", "FRUITPIPE_API"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.chdir(tmp_path)  # no var/admin-token here
    seed = small_dataset(tmp_path / "seed", "train", 3)
    eval_dir = small_dataset(tmp_path / "eval", "test", 2)
    with live_server(make_app(make_backend(tmp_path / "store", seed=seed, eval_dir=eval_dir))) as url:
        yield url, tmp_path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_upload_retrain_models_activate_over_http(server, capsys):
    url, tmp = server
    photos = tmp / "photos"
    photos.mkdir()
    for i, p in enumerate(sorted((FRUITS / "train" / "freshbanana").glob("*.jpg"))[10:12]):
        (photos / f"{i}.jpg").write_bytes(p.read_bytes())
    (photos / "notes.jpg").write_text("not an image")
    (photos / "test.jpg").write_bytes(sorted((tmp / "eval" / "freshbanana").iterdir())[0].read_bytes())
    code, out, err = run(capsys, "upload", str(photos), "--class", "freshbanana", "--api", url, "--token", TOKEN,
                         "--quiet")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and lines[-1] == {"added": 2, "duplicate": 0, "rejected": 2, "skipped": 0, "class": "freshbanana"}
    errors = {r["filename"]: r["error"] for r in lines[:-1] if r["status"] == "rejected"}
    assert errors["test.jpg"] == "in_evaluation_set" and errors["notes.jpg"] in ("not_an_image", "truncated")

    code, out, err = run(capsys, "retrain", "--api", url, "--token", TOKEN, "--wait")
    status = json.loads(out)
    assert code == 0 and status["state"] == "succeeded" and status["percent"] == 100
    new = status["result"]["version"]

    code, out, err = run(capsys, "retrain", "--api", url, "--token", TOKEN)  # nothing new since
    assert code == 1 and err.startswith("nothing_new: nothing new to learn")

    (tmp / "var").mkdir()
    (tmp / "var" / "admin-token").write_text(TOKEN + "\n")  # the token file, as fruitpipe serve writes it
    code, out, err = run(capsys, "models", "--api", url)
    versions = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [v["status"] for v in versions if v["version"] == new] == ["live"]
    old = next(v["version"] for v in versions if v["version"] != new)
    code, out, err = run(capsys, "models", "--api", url, "--activate", old)
    assert code == 0 and out.strip() == f"live: {old}"


def test_bad_token_and_unreachable_server_are_one_line_exit_2(server, capsys, monkeypatch):
    url, tmp = server
    code, out, err = run(capsys, "retrain", "--api", url, "--token", "wrong")
    assert code == 2 and err.count("\n") == 1 and "403 forbidden" in err
    code, out, err = run(capsys, "retrain", "--api", url)
    assert code == 2 and "admin token is needed" in err
    monkeypatch.setenv("FRUITPIPE_TOKEN", TOKEN)
    code, out, err = run(capsys, "models", "--api", "http://127.0.0.1:9", "--activate", "v1")
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1

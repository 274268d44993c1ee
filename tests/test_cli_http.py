"""``fruitpipe upload|retrain|models --api URL --token T``: the CLI against a real HTTP server
(uvicorn on 127.0.0.1, local backend, the tiny training job)."""

from __future__ import annotations

import json

import pytest

from fruitpipe.cli import main

from .conftest import FRUITS, needs_shared
from .service_support import TOKEN, live_server, make_app, make_backend, small_dataset

pytestmark = [needs_shared, pytest.mark.slow]


def serve(tmp_path, monkeypatch, mode: str = "good", sleep: float = 0.0):  # type: ignore[no-untyped-def]
    for env in ("FRUITPIPE_TOKEN", "FRUITPIPE_ADMIN_TOKEN", "FRUITPIPE_API"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.chdir(tmp_path)  # no var/admin-token here
    seed = small_dataset(tmp_path / "seed", "train", 3)
    eval_dir = small_dataset(tmp_path / "eval", "test", 2)
    return live_server(make_app(make_backend(tmp_path / "store", mode=mode, seed=seed, eval_dir=eval_dir,
                                             sleep=sleep)))


@pytest.fixture()
def server(tmp_path, monkeypatch):
    with serve(tmp_path, monkeypatch) as url:
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
    # the summary has the API's own keys (UploadResponse: class_name, added, duplicates, rejected)
    assert code == 0 and lines[-1] == {"class_name": "freshbanana", "added": 2, "duplicates": 0, "rejected": 2,
                                       "skipped": 0}
    errors = {r["filename"]: r["error"] for r in lines[:-1] if r["status"] == "rejected"}
    assert errors["test.jpg"] == "in_evaluation_set" and errors["notes.jpg"] in ("not_an_image", "truncated")
    # single files as well as folders
    code, out, err = run(capsys, "upload", "--class", "freshbanana", str(photos / "0.jpg"), "--api", url,
                         "--token", TOKEN, "--quiet")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["status"] for r in lines[:-1]] == ["duplicate"] and lines[-1]["duplicates"] == 1
    code, out, err = run(capsys, "upload", "--class", "freshbanana", str(tmp / "nothing.jpg"), "--api", url,
                         "--token", TOKEN, "--quiet")
    assert code == 2 and "no such file or folder" in err
    # nothing added (every file rejected): it ran, nothing changed, exit 1 (2 is a usage error)
    code, out, err = run(capsys, "upload", "--class", "freshbanana", str(photos / "notes.jpg"), "--api", url,
                         "--token", TOKEN, "--quiet")
    assert code == 1 and json.loads(out.splitlines()[-1])["rejected"] == 1

    code, out, err = run(capsys, "retrain", "--api", url, "--token", TOKEN, "--wait")
    # a short summary for a person, not the status JSON: state, version, reason, figures, time
    lines = out.splitlines()
    assert code == 0 and len(lines) <= 8 and lines[0].startswith("retrain promoted: v") and lines[0].endswith(" is live")
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["reason", "candidate", "live", "time"]
    assert "accuracy" in lines[2] and "macro-F1" in lines[2]
    code, out, err = run(capsys, "retrain", "--api", url, "--status", "--json")
    status = json.loads(out)
    assert code == 0 and status["state"] == "succeeded" and status["percent"] == 100
    new = status["result"]["version"]
    assert new in lines[0] and status["result"]["reason"] in lines[1]

    code, out, err = run(capsys, "retrain", "--api", url, "--token", TOKEN)  # nothing new since
    assert code == 1 and err.startswith("nothing_new: nothing new to learn")

    (tmp / "var").mkdir()
    (tmp / "var" / "admin-token").write_text(TOKEN + "\n")  # the token file, as fruitpipe serve writes it
    code, out, err = run(capsys, "models", "--api", url, "--json")
    versions = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [v["status"] for v in versions if v["version"] == new] == ["live"]
    code, out, err = run(capsys, "models", "--api", url)  # a table by default
    table = out.splitlines()
    assert code == 0 and table[0].split() == ["version", "created", "status", "accuracy", "macro-F1", "not-fruit",
                                              "rejected", "scored", "on", "reason"]
    assert len(table) == 1 + len(versions) and len(out) < 200 * len(table)
    row = next(r.split() for r in table if r.startswith(new))  # created is two words: date, time
    assert row[3] == "live" and row[4].endswith("%") and row[5].endswith("%") and row[7:9] == ["frozen", "set"]
    live_json = next(v for v in versions if v["version"] == new)["metrics"]
    assert row[4] == f"{100 * live_json['accuracy']:.1f}%" and live_json["source"] == "frozen"
    # the counts the figures are over: the frozen set's fruit photos and not-fruit images
    counts = f"({live_json['n']} fruit" + (f", {live_json['ood_n']} not-fruit)" if live_json["ood_n"] else ")")
    assert " ".join(row[9:]) == counts and live_json["n"] > 0
    assert all(r == r.rstrip() for r in table)
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
    assert code == 2 and err == "error: cannot reach http://127.0.0.1:9: is the server running?\n", err


def test_retrain_rejected_by_the_gate_exits_3(tmp_path, monkeypatch, capsys):
    with serve(tmp_path, monkeypatch, mode="bad") as url:
        code, out, err = run(capsys, "retrain", "--api", url, "--token", TOKEN, "--force", "--wait")
        lines = out.splitlines()
        assert code == 3 and lines[0].startswith("retrain rejected by the gate: v"), out
        assert lines[1].startswith("  reason:") and "candidate:" in out and "live:" in out
        code, out, err = run(capsys, "models", "--api", url)
        rejected = [r for r in out.splitlines() if r.split()[3:4] == ["rejected"]]  # the status column
        assert len(rejected) == 1 and rejected[0].rstrip().endswith(lines[1].split("reason:")[1].strip())


def test_retrain_cancel(tmp_path, monkeypatch, capsys):
    with serve(tmp_path, monkeypatch, sleep=300.0) as url:
        code, out, err = run(capsys, "retrain", "--api", url, "--token", TOKEN, "--cancel")
        assert code == 1 and err.startswith("not_running: no retrain is running")
        code, out, err = run(capsys, "retrain", "--api", url, "--token", TOKEN, "--force")
        assert code == 0 and out.startswith("retrain running")
        code, out, err = run(capsys, "retrain", "--api", url, "--token", TOKEN, "--cancel")
        assert code == 0 and out.startswith("retrain cancelled: the live model is unchanged"), out
        assert "cancelled at stage" in out
        # the latest run was cancelled: no new model, as a failed one (exit 1)
        code, out, err = run(capsys, "retrain", "--api", url, "--status")
        assert code == 1 and out.startswith("retrain cancelled"), out

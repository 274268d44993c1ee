"""Retraining end to end on the local backend: a real training process, gate, publish, swap."""

from __future__ import annotations

import json
import sys
import threading

import pytest
from fastapi.testclient import TestClient

from fruitpipe import bundle

from .conftest import DEFAULT_MODEL, needs_shared
from .service_support import AUTH, fruit, make_app, make_backend, small_dataset, tree_hash, wait_for_run

pytestmark = [needs_shared, pytest.mark.slow]
LIVE = bundle.verify(DEFAULT_MODEL).version


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain-data")
    return small_dataset(root / "seed", "train", 4), small_dataset(root / "eval", "val", 3)


def run_retrain(tmp_path, data, mode, **kw):  # type: ignore[no-untyped-def]
    seed, eval_dir = data
    store = tmp_path / "store"
    app = make_app(make_backend(store, mode=mode, seed=seed, eval_dir=eval_dir, **kw))
    return store, app


def test_gate_accepts_and_server_swaps_without_restart(tmp_path, data):
    store, app = run_retrain(tmp_path, data, "good")
    with TestClient(app) as c:
        # an upload joins the training data
        up = c.post("/upload-training-data", data={"class_name": "rottenapples"},
                    files=[("files", ("u.jpg", fruit("rottenapples", 5, "train"), "image/jpeg"))], headers=AUTH)
        assert up.status_code == 200
        r = c.post("/retrain?force=true", headers=AUTH)
        assert r.status_code == 202 and r.json()["state"] == "running"
        status = wait_for_run(c)
        assert status["state"] == "succeeded", status
        res = status["result"]
        assert res["promoted"] is True and "paired test on" in res["reason"]  # it learned a new image
        assert res["images"]["rottenapples"] == 5  # 4 seed + 1 upload
        assert any(line.startswith("stage=") for line in status["log_tail"])
        new = res["version"]
        assert new != LIVE
        assert c.get("/health").json()["model_version"] == new
        assert c.post("/predict", files={"file": ("a.jpg", fruit(), "image/jpeg")}).json()["model_version"] == new
        models = c.get("/models").json()
        assert models["live"] == new and {v["version"] for v in models["versions"]} == {new, LIVE}
        assert "evaluation" in [v for v in models["versions"] if v["version"] == new][0]["metrics"]
        assert 'fruitpipe_retrain_runs_total{trigger="manual"} 1.0' in c.get("/metrics").text


def test_gate_rejects_worse_candidate_and_keeps_it(tmp_path, data):
    store, app = run_retrain(tmp_path, data, "bad")
    with TestClient(app) as c:
        assert c.post("/retrain?force=true", headers=AUTH).status_code == 202
        status = wait_for_run(c)
        assert status["state"] == "rejected", status
        assert status["result"]["promoted"] is False and "worse" in status["result"]["reason"]
        # nothing new to learn (a forced run on unchanged data): the strict rule, no paired test
        config = json.loads((store / "retrain" / "runs" / status["run_id"] / "config.json").read_text())
        assert config["strict_gate"] is True and "paired test" not in status["result"]["reason"]
        assert c.get("/health").json()["model_version"] == LIVE
        rejected = [v for v in c.get("/models").json()["versions"] if v["status"] == "rejected"]
        assert len(rejected) == 1 and "worse" in rejected[0]["reason"]


def test_training_crash_keeps_live_model_serving(tmp_path, data):
    store, app = run_retrain(tmp_path, data, "crash")
    with TestClient(app) as c:
        models_before = tree_hash(store / "models")
        assert c.post("/retrain?force=true", headers=AUTH).status_code == 202
        status = wait_for_run(c)
        assert status["state"] == "failed"
        assert "exited with status 3" in status["result"]["error"]
        assert any("simulated out-of-memory" in line for line in status["log_tail"])
        assert tree_hash(store / "models") == models_before
        r = c.post("/predict", files={"file": ("a.jpg", fruit(), "image/jpeg")})
        assert r.status_code == 200 and r.json()["model_version"] == LIVE


def test_missing_training_command_fails_cleanly(tmp_path, data):
    store, app = run_retrain(tmp_path, data, "good", train_command=[sys.executable, "-m", "no_such_training_module"])
    with TestClient(app) as c:
        assert c.post("/retrain?force=true", headers=AUTH).status_code == 202
        status = wait_for_run(c)
        assert status["state"] == "failed" and c.get("/health").json()["model_version"] == LIVE


def test_two_concurrent_retrains_one_409(tmp_path, data):
    store, app = run_retrain(tmp_path, data, "good", sleep=3.0)
    with TestClient(app) as c:
        results: list[int] = []
        barrier = threading.Barrier(2)

        def go() -> None:
            barrier.wait()
            results.append(c.post("/retrain?force=true", headers=AUTH).status_code)

        threads = [threading.Thread(target=go) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [202, 409]
        r = c.post("/retrain?force=true", headers=AUTH)
        assert r.status_code == 409 and r.json()["error"] == "retrain_running"
        # predictions keep working while it trains
        assert c.post("/predict", files={"file": ("a.jpg", fruit(), "image/jpeg")}).status_code == 200
        assert wait_for_run(c)["state"] == "succeeded"
        assert c.post("/retrain?force=true", headers=AUTH).status_code == 202  # the lock is free again
        wait_for_run(c)


def test_status_survives_restart(tmp_path, data):
    store, app = run_retrain(tmp_path, data, "crash")
    with TestClient(app) as c:
        c.post("/retrain?force=true", headers=AUTH)
        first = wait_for_run(c)
    seed, eval_dir = data
    with TestClient(make_app(make_backend(store, mode="crash", seed=seed, eval_dir=eval_dir))) as c2:
        again = c2.get("/retraining-status").json()
        assert again["run_id"] == first["run_id"] and again["state"] == "failed"


def test_relative_store_path_works_from_any_directory(tmp_path, data, monkeypatch):
    """`fruitpipe serve --store var` from anywhere: the run process gets absolute paths."""
    from pathlib import Path
    monkeypatch.chdir(tmp_path)
    seed, eval_dir = data
    with TestClient(make_app(make_backend(Path("var"), mode="crash", seed=seed, eval_dir=eval_dir))) as c:
        assert c.post("/retrain?force=true", headers=AUTH).status_code == 202
        status = wait_for_run(c)
        assert status["state"] == "failed" and "exited with status 3" in status["result"]["error"], status
        run_dir = tmp_path / "var" / "retrain" / "runs" / status["run_id"]
        assert (run_dir / "config.json").is_file() and not (run_dir / "data").exists()


def test_garbage_candidate_fails_with_reason_and_live_untouched(tmp_path, data):
    store, app = run_retrain(tmp_path, data, "garbage")
    with TestClient(app) as c:
        models_before = tree_hash(store / "models")
        assert c.post("/retrain?force=true", headers=AUTH).status_code == 202
        status = wait_for_run(c)
        assert status["state"] == "failed" and "invalid bundle" in status["result"]["error"], status
        assert "live model is unchanged" in status["result"]["error"]
        assert tree_hash(store / "models") == models_before
        assert c.get("/health").json()["model_version"] == LIVE


def test_emptied_class_fails_before_training(tmp_path, data):
    import shutil
    seed, eval_dir = data
    partial = tmp_path / "partial"
    shutil.copytree(seed, partial)
    shutil.rmtree(partial / "rottenoranges")
    app = make_app(make_backend(tmp_path / "store", mode="good", seed=partial, eval_dir=eval_dir))
    with TestClient(app) as c:
        assert c.post("/retrain?force=true", headers=AUTH).status_code == 202
        status = wait_for_run(c)
        assert status["state"] == "failed", status
        assert "no training image for rottenoranges" in status["result"]["error"]
        assert not any("$ " in line for line in status["log_tail"])  # the job never started
        # an upload of that class fills it again: the next retrain runs
        up = c.post("/upload-training-data", data={"class_name": "rottenoranges"},
                    files=[("files", ("r.jpg", fruit("rottenoranges", 1, "train"), "image/jpeg"))], headers=AUTH)
        assert up.json()["added"] == 1
        assert c.post("/retrain", headers=AUTH).status_code == 202
        assert wait_for_run(c)["state"] == "succeeded"


def test_training_job_killed_9_fails_with_signal(tmp_path, data):
    import os
    import signal
    import time
    store, app = run_retrain(tmp_path, data, "good", sleep=30.0)
    with TestClient(app) as c:
        assert c.post("/retrain?force=true", headers=AUTH).status_code == 202
        deadline = time.monotonic() + 60
        job = None
        while job is None:
            assert time.monotonic() < deadline
            job = next((p for p in _children(c.get("/retraining-status").json(), store)), None)
            time.sleep(0.2)
        os.kill(job, signal.SIGKILL)
        status = wait_for_run(c)
        assert status["state"] == "failed" and "killed by signal 9" in status["result"]["error"], status
        assert c.get("/health").json()["model_version"] == LIVE


def test_nothing_new_is_409_unless_forced(tmp_path, data):
    store, app = run_retrain(tmp_path, data, "good")
    with TestClient(app) as c:
        r = c.post("/retrain", headers=AUTH)
        assert r.status_code == 409 and r.json()["error"] == "nothing_new"
        assert "nothing new to learn" in r.json()["detail"]
        assert c.post("/retrain?force=true", headers=AUTH).status_code == 202
        wait_for_run(c)


def test_evaluation_images_refused_seed_images_duplicates(tmp_path, data):
    import io
    from PIL import Image
    store, app = run_retrain(tmp_path, data, "good")
    seed, eval_dir = data
    test_photo = sorted((eval_dir / "freshoranges").iterdir())[0].read_bytes()
    resized = io.BytesIO()
    Image.open(io.BytesIO(test_photo)).convert("RGB").resize((150, 150)).save(resized, "JPEG", quality=75)
    seed_photo = sorted((seed / "freshoranges").iterdir())[0].read_bytes()
    with TestClient(app) as c:
        def up(*blobs: bytes):  # type: ignore[no-untyped-def]
            return c.post("/upload-training-data", data={"class_name": "freshoranges"}, headers=AUTH,
                          files=[("files", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(blobs)])
        r = up(test_photo)
        assert r.status_code == 400 and r.json()["results"][0]["error"] == "in_evaluation_set"
        assert "frozen evaluation set" in r.json()["results"][0]["detail"]
        r = up(resized.getvalue(), seed_photo, fruit("freshoranges", 30, "train"))
        assert r.status_code == 200
        near, dup, new = r.json()["results"]
        assert near["status"] == "rejected" and near["error"] == "in_evaluation_set"  # a near-duplicate
        assert dup["status"] == "duplicate" and "seed training data" in dup["detail"]
        assert new["status"] == "added"
        assert c.get("/dataset").json()["total"] == 1


def _children(status: dict, store) -> list[int]:  # type: ignore[no-untyped-def]
    """Live child processes of the run process (its training job)."""
    import json
    from pathlib import Path
    pid = json.loads((store / "retrain" / "status.json").read_text()).get("pid")
    if not pid or status.get("state") != "running":
        return []
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid and stat[0] != "Z":
                out.append(int(d.name))
    return out


def test_same_data_after_a_rejected_candidate_is_nothing_new(tmp_path, data):
    store, app = run_retrain(tmp_path, data, "bad")
    with TestClient(app) as c:
        c.post("/upload-training-data", data={"class_name": "freshapples"}, headers=AUTH,
               files=[("files", ("u.jpg", fruit("freshapples", 7, "train"), "image/jpeg"))])
        assert c.post("/retrain", headers=AUTH).status_code == 202
        assert wait_for_run(c)["state"] == "rejected"
        r = c.post("/retrain", headers=AUTH)
        assert r.status_code == 409 and r.json()["error"] == "nothing_new" and "was rejected" in r.json()["detail"]


def test_evaluation_image_filed_behind_the_guard_never_trains(tmp_path, data):
    import hashlib
    store, app = run_retrain(tmp_path, data, "good")
    seed, eval_dir = data
    sneaked = sorted((eval_dir / "rottenbanana").iterdir())[0].read_bytes()
    path = store / "dataset" / "rottenbanana" / f"{hashlib.sha256(sneaked).hexdigest()}.jpg"
    path.parent.mkdir(parents=True)
    path.write_bytes(sneaked)  # e.g. filed before the evaluation set was frozen
    with TestClient(app) as c:
        assert c.post("/retrain", headers=AUTH).status_code == 202
        status = wait_for_run(c)
        assert status["state"] == "succeeded", status
        assert status["result"]["left_out_in_evaluation_set"] == [f"rottenbanana/{path.name}"]
        assert status["result"]["images"]["rottenbanana"] == 4  # the seed photos only


def test_a_failed_warm_up_is_reported_until_the_first_run(tmp_path) -> None:
    """The first-start warm-up runs in the background; when it fails (e.g. a package missing), the
    status says so with its error instead of showing nothing (the first retrain then does the work)."""
    import json as _json
    backend = make_backend(tmp_path / "store")
    warm = tmp_path / "store" / "retrain" / "warmup.json"
    warm.write_text(_json.dumps({"state": "failed", "stage": "generated not-fruit sets",
                                 "error": "ModuleNotFoundError: No module named 'skimage'",
                                 "started": "2026-11-30T00:00:00Z", "finished": "2026-11-30T00:00:01Z"}))
    status = backend.trainer.status()
    assert status.state == "idle" and status.warmup["state"] == "failed"
    assert "skimage" in status.warmup["error"]


def _group_alive(pgid: int, wait: float = 5.0) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies awaiting their reaper do not)."""
    import time
    from pathlib import Path
    deadline = time.monotonic() + wait
    while True:
        alive = False
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive = True
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def test_cancel_stops_the_run_and_its_training_job_and_changes_nothing(tmp_path, data):
    import time
    store, app = run_retrain(tmp_path, data, "good", sleep=300.0)
    with TestClient(app) as c:
        r = c.post("/retrain/cancel", headers=AUTH)
        assert r.status_code == 409 and r.json()["error"] == "not_running"
        assert c.post("/retrain/cancel").status_code == 401
        models_before = tree_hash(store / "models")
        assert c.post("/retrain?force=true", headers=AUTH).status_code == 202
        deadline = time.monotonic() + 120
        while (status := c.get("/retraining-status").json())["stage"] != "embed":  # the job's sleep
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        pid = status.get("pid") or json.loads((store / "retrain" / "status.json").read_text())["pid"]
        assert status["state"] == "running" and _group_alive(pid, wait=0)
        r = c.post("/retrain/cancel", headers=AUTH)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["state"] == "cancelled" and "cancelled at stage" in body["result"]["error"]
        assert not _group_alive(pid)  # the run and its training job are gone
        assert c.get("/retraining-status").json()["state"] == "cancelled"
        assert tree_hash(store / "models") == models_before
        assert c.get("/health").json()["model_version"] == LIVE
        assert not (store / "retrain" / "runs" / body["run_id"] / "data").exists()
        assert c.post("/retrain?force=true", headers=AUTH).status_code == 202  # the slot is free again
        assert c.post("/retrain/cancel", headers=AUTH).json()["state"] == "cancelled"


def test_a_run_at_its_gate_is_never_cancelled(tmp_path, data):
    """From the gate on, a run finishes its decision and publication whole (decision lock)."""
    import subprocess

    from fruitpipe.backends.base import NotRunning
    from fruitpipe.backends.local import atomic_write_json
    store, app = run_retrain(tmp_path, data, "good")
    trainer = app.state.fruitpipe.backend.trainer
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        atomic_write_json(store / "retrain" / "status.json",
                          {"state": "running", "run_id": "run-at-gate", "stage": "gate", "pid": proc.pid})
        with pytest.raises(NotRunning, match="reached its gate"):
            trainer.cancel()
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_the_gate_anchors_to_the_best_version_in_the_store(tmp_path, data):
    """The live model is a drifted one (here: the shipped model with fresh and rotten swapped, made
    live by hand); the shipped model is still in the store and scored best on the frozen set, so
    the gate also compares the candidate with it, photo by photo, and says so."""
    from .test_shadow import candidate
    store, app = run_retrain(tmp_path, data, "good")
    with TestClient(app) as c:
        drifted = candidate(store, "z", shuffle=True)
        assert c.post(f"/models/{drifted}/activate", headers=AUTH).status_code == 200
        assert c.post("/retrain?force=true", headers=AUTH).status_code == 202
        status = wait_for_run(c)
        reason = status["result"]["reason"]
        assert status["state"] == "succeeded", status
        assert f"anchor: reference {LIVE} accuracy" in reason and "paired test on" in reason.split("anchor:")[1]
        assert f"anchor {LIVE}" in "\n".join(status["log_tail"])

"""The real default loop, end to end: a real ``fruitpipe serve`` process, the real training job as
its child process, the shipped recipe (fruitpipe/recipe.py: the studio photos plus the splits of
``fruits_extra`` and ``not_fruit``) on a small subset of the shared photos laid out as in ``../shared``.

upload -> retrain -> promoted -> served (the new version answers /predict), with the progress of
every poll checked to never go backwards, through the CLI's HTTP client. Then the bad-input cases
that need the real processes: a retrain with nothing new (409 unless forced), an evaluation-set
image uploaded (refused), and kill -9 of the run process (failed with a reason, no orphan
training job, live model untouched, the next retrain accepted).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fruitpipe import bundle, splits
from fruitpipe.client import Client, ClientError
from fruitpipe.labels import LABELS

from .conftest import FRUITS, REPO, needs_shared
from .service_support import free_port, tree_hash

pytestmark = [needs_shared, pytest.mark.slow]
EXTRA = FRUITS.parent / "fruits_extra"
NOT_FRUIT = FRUITS.parent / "not_fruit"
TOKEN = "e2e-token-0123456789abcdef"
SIZES = {"train": 20, "val": 8, "test": 8}  # photos per class in the subset
EXTRA_PER_SPLIT = 3  # fruits_extra photos per class and split; not_fruit: 1 per kind and split


def subset(data: Path) -> Path:
    """``data/fruits/{train,val,test}/<class>/`` plus ``data/fruits_extra`` and ``data/not_fruit``
    (symlinks to a few photos of each split, and to their ``MANIFEST.csv``, which decides the
    splits): what :func:`fruitpipe.recipe.shipped` finds beside ``FRUITS``. Returns ``data/fruits``."""
    from fruitpipe import splits
    dest = data / "fruits"
    for split, n in SIZES.items():
        for label in LABELS:
            (dest / split / label).mkdir(parents=True)
            for p in sorted((FRUITS / split / label).glob("*.jpg"))[:n]:
                (dest / split / label / p.name).symlink_to(p)
    for root, per_split in ((EXTRA, EXTRA_PER_SPLIT), (NOT_FRUIT, 1)):
        (data / root.name).mkdir()
        (data / root.name / splits.MANIFEST).symlink_to(root / splits.MANIFEST)
        taken: dict[tuple[str, str], int] = {}
        for rel, split in sorted(splits.split_of(root).items()):
            folder = rel.split("/")[0]
            if taken.get((folder, split), 0) < per_split and (root / rel).is_file():
                taken[(folder, split)] = taken.get((folder, split), 0) + 1
                (data / root.name / folder).mkdir(exist_ok=True)
                (data / root.name / rel).symlink_to(root / rel)
    return dest


def new_photos(data: Path, k: int = 0, labels: tuple[str, ...] = LABELS) -> dict[str, list[Path]]:
    """The ``k``-th fruits_extra photo per class that the subset does not hold, from the train
    split (an upload of an evaluation photo would be refused)."""
    where = splits.split_of(EXTRA)
    return {label: [[EXTRA / rel for rel, split in sorted(where.items()) if split == "train"
                     and rel.startswith(label + "/") and not (data / "fruits_extra" / rel).exists()][k]]
            for label in labels}


def descendants(pid: int) -> list[int]:
    """Every live process whose parent chain reaches ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
                if stat[0] != "Z":
                    parents[int(d.name)] = int(stat[1])
            except (OSError, IndexError):
                pass
    out, frontier = [], {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier}
        out += sorted(frontier)
    return out


def follow(client: Client, timeout: float = 400) -> tuple[dict, list[float]]:
    """Poll /retraining-status until the run ends; every percent seen."""
    deadline = time.monotonic() + timeout
    status = client.status()
    percents = [status["percent"]]
    while status["state"] == "running":
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
        status = client.status()
        percents.append(status["percent"])
        if status["state"] == "running":
            assert status["eta_seconds"] is None or status["eta_seconds"] >= 0
    return status, percents


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    fruits, store, port = subset(tmp / "data"), tmp / "store", free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "FRUITPIPE_ADMIN_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "fruitpipe", "serve", "--store", str(store), "--port", str(port),
                             "--fruits", str(fruits), "--cache", str(tmp / "cache"), "--log-level", "warning"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    client = Client(f"http://127.0.0.1:{port}", TOKEN)
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            client.status()
            break
        except ClientError:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
    yield client, store, proc, tmp / "data"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)


def test_upload_retrain_promote_serve(server):
    client, store, proc, data = server
    live = client.models()["live"]
    # the first-start warm-up (cache of the seed photos, live model scored) runs in the background
    deadline = time.monotonic() + 300
    while (client.status().get("warmup") or {}).get("state") == "running":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert (store / "evaluations" / f"{live}.json").is_file()
    photos = new_photos(data)
    assert client.upload_many(photos) == {"added": 6}
    client.retrain()
    status, percents = follow(client)
    assert status["state"] == "succeeded", status
    assert all(b >= a for a, b in zip(percents, percents[1:])), percents
    assert len(set(percents)) > 3 and status["percent"] == 100
    res = status["result"]
    assert res["promoted"] and res["live_version"] == live and res["version"] != live
    seed = {label: SIZES["train"] + len([p for p in (data / "fruits_extra" / label).glob("*.jpg")
                                         if splits.split_of(EXTRA)[f"{label}/{p.name}"] == "train"]) for label in LABELS}
    assert {k: res["images"][k] for k in LABELS} == {label: seed[label] + 1 for label in LABELS}
    assert res["training_metrics"]["embedded_new"] == "6"  # the warm-up embedded the rest
    assert res["training_metrics"]["warm_start"] == "1" and res["training_metrics"]["single_fit"] == "1"
    # the single fit keeps the base model's not_fruit bar; one calibrated on the seen val is lower (stricter)
    base_bar = bundle.read_manifest(store / "models" / "versions" / live).rejection["max_not_fruit"]
    assert float(res["training_metrics"]["max_not_fruit_from_base_model"]) == pytest.approx(base_bar, rel=1e-5)
    assert float(res["training_metrics"]["max_not_fruit_calibrated"]) < base_bar
    # served: /predict answers with the new version, and the versions table compares like with like
    deadline = time.monotonic() + 10
    while client.predict(photos["freshapples"][0])["model_version"] != res["version"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    versions = {v["version"]: v for v in client.models()["versions"]}
    assert versions[res["version"]]["status"] == "live"
    sets = {(v["metrics"]["source"], v["metrics"]["eval_set"]) for v in versions.values()}
    assert sets == {("frozen", res["eval_set"])}
    # a retrained version's own manifest figures are scored on photos it trained on: under `training`
    assert "seen" in versions[res["version"]]["metrics"]["training"]["split"]


def test_nothing_new_then_forced(server):
    client, store, proc, data = server
    with pytest.raises(ClientError) as exc:
        client.retrain()
    assert exc.value.status == 409 and exc.value.code == "nothing_new"
    live_before = client.models()["live"]
    accuracy_before = next(v for v in client.models()["versions"] if v["version"] == live_before)["metrics"]
    client.retrain(force=True)
    status, percents = follow(client)
    assert status["state"] in ("succeeded", "rejected"), status
    assert all(b >= a for a, b in zip(percents, percents[1:])), percents
    live_after = client.models()["live"]
    after = next(v for v in client.models()["versions"] if v["version"] == live_after)["metrics"]
    # unchanged data never lowers the live model
    for key in ("accuracy", "macro_f1"):
        assert after[key] >= accuracy_before[key]


def test_evaluation_image_refused_and_seed_image_duplicate(server):
    client, store, proc, data = server
    test_photo = sorted((FRUITS / "test" / "rottenapples").glob("*.jpg"))[0]
    seed_photo = sorted((FRUITS / "train" / "rottenapples").glob("*.jpg"))[0]
    with pytest.raises(ClientError) as exc:  # the only file is refused: 400, with its reason
        client._ok("POST", "/upload-training-data", fields=[("class_name", "rottenapples"),
                                                            ("files", ("t.jpg", test_photo.read_bytes(), "image/jpeg"))])
    assert exc.value.status == 400
    assert exc.value.body["results"][0]["error"] == "in_evaluation_set"
    [dup] = client.upload("rottenapples", [seed_photo])
    assert dup["status"] == "duplicate" and "seed training data" in dup["detail"]
    assert not (store / "dataset" / "rottenapples" / f"{dup['sha256']}.jpg").exists()


def test_kill_9_of_the_run_leaves_no_orphan_and_live_untouched(server):
    client, store, proc, data = server
    live = client.models()["live"]
    models_before = tree_hash(store / "models")
    [added] = client.upload("freshbanana", new_photos(data, 1, ("freshbanana",))["freshbanana"])
    assert added["status"] == "added"
    started = client.retrain()
    run_pid = None
    deadline = time.monotonic() + 120
    while True:  # wait until the training job (a child of the run process) exists
        status = client.status()
        run_pid = run_pid or _run_pid(store)
        if run_pid and descendants(run_pid):
            break
        assert time.monotonic() < deadline and status["state"] == "running", status
        time.sleep(0.2)
    group = [run_pid] + descendants(run_pid)
    os.kill(run_pid, signal.SIGKILL)
    status, _ = follow(client, timeout=30)
    assert status["state"] == "failed" and status["run_id"] == started["run_id"]
    assert "died without finishing" in status["result"]["error"] and "live model is unchanged" in status["result"]["error"]
    time.sleep(0.5)
    assert not [p for p in group if _alive(p)], "orphan training process left running"
    assert client.models()["live"] == live and tree_hash(store / "models") == models_before
    assert (store / "dataset" / "freshbanana" / f"{added['sha256']}.jpg").is_file()  # nothing lost
    client.retrain()  # accepted again
    status, _ = follow(client)
    assert status["state"] in ("succeeded", "rejected"), status


def _run_pid(store: Path) -> int | None:
    import json
    data = json.loads((store / "retrain" / "status.json").read_text())
    return data.get("pid") if data.get("state") == "running" else None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"

"""End to end on the local backend, real model, real HTTP (uvicorn on 127.0.0.1): predictions ->
feedback -> review -> the accepted label in the dataset with its origin; and the same through the
pages in headless Chromium ("Wrong? tell us" on the dashboard, keyboard labelling in review.html)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from fruitpipe import dataset
from fruitpipe.capture import CapturePolicy

from .conftest import FRUITS, needs_shared
from .service_support import AUTH, TOKEN, fruit, live_server, make_app, make_backend

pytestmark = needs_shared
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_prediction_to_dataset_over_http(tmp_path):
    store = tmp_path / "store"
    app = make_app(make_backend(store), capture=CapturePolicy(sample_rate=0.0))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        answers = [c.post("/predict", files={"file": ("p.jpg", fruit(label), "image/jpeg")}).json()
                   for label in ("freshapples", "rottenbanana", "freshoranges")]
        batch = c.post("/predict/batch", files=[("files", ("b.jpg", fruit("rottenoranges"), "image/jpeg"))]).json()
        ids = [a["prediction_id"] for a in answers] + [batch["results"][0]["prediction"]["prediction_id"]]
        assert len(set(ids)) == 4
        # a user says the banana is really rotten oranges (the model said rotten banana)
        r = c.post("/feedback", json={"prediction_id": ids[1], "correct": "rottenoranges"})
        assert r.status_code == 200 and r.json()["kept"]
        r = c.post("/feedback", json={"prediction_id": ids[3], "correct": "rottenoranges"})
        assert r.status_code == 200
        queue = c.get("/review", headers=AUTH).json()
        assert [i["prediction_id"] for i in queue["items"]][0] == ids[1]  # the disagreement comes first
        assert {i["prediction_id"] for i in queue["items"]} == {ids[1], ids[3]}  # only what has feedback
        photo = c.get(queue["items"][0]["image_url"], headers=AUTH)
        assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
        assert c.get(queue["items"][0]["image_url"]).status_code == 401
        # the admin looks and decides the model was right after all: one action files it
        r = c.post(f"/review/{ids[1]}", headers=AUTH, json={"label": "rottenbanana"})
        assert r.status_code == 200, r.text
        filed = r.json()["dataset"]
        assert filed["status"] == "added"
        assert c.get("/dataset").json()["counts"]["rottenbanana"] == 1
    path = store / filed["key"]
    assert path.is_file() and dataset.origin_of(path) == "review"
    assert path.parent.name == "rottenbanana"


@pytest.mark.slow
def test_wrong_tell_us_and_keyboard_review_in_a_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `bash scripts/ensure_test_tools.sh`")
    store = tmp_path / "store"
    app = make_app(make_backend(store), capture=CapturePolicy(sample_rate=0.0))
    apple = sorted((FRUITS / "test" / "rottenapples").glob("*.jpg"))[0]
    with live_server(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_selector("#label-accuracy tr[data-class='not_fruit']")  # the accuracy card
        page.set_input_files("#file", str(apple))
        page.wait_for_selector("#result .feedback .feedback-open")
        page.click("#result .feedback .feedback-open")
        page.select_option("#result .feedback select", "freshapples")
        page.click("#result .feedback button[type=submit]")
        page.wait_for_function("() => document.querySelector('#result .feedback-note').textContent.startsWith('Thanks')")

        review = browser.new_page()
        review.on("pageerror", lambda e: errors.append(str(e)))
        review.goto(url + "/static/review.html")
        review.fill("#token", TOKEN)
        review.press("#token", "Enter")
        review.wait_for_selector("#list li.current")
        review.wait_for_function("() => document.querySelector('#photo').naturalWidth > 0")
        assert "User says: fresh apples" in review.text_content("#fb")
        review.keyboard.press("4")  # rotten apples
        review.wait_for_function("() => document.querySelector('#done').textContent.includes('dataset: added')")
        review.wait_for_selector("#acc tr[data-class='rottenapples']")
        page.reload()
        page.wait_for_selector("#label-accuracy tr[data-class='rottenapples']")
        assert page.text_content("#label-accuracy tr[data-class='rottenapples'] td:nth-child(2)") == "1"
        browser.close()
        assert not errors, errors
    filed = list((store / "dataset" / "rottenapples").glob("*.jpg"))
    assert len(filed) == 1 and dataset.origin_of(filed[0]) == "review"


@pytest.mark.slow
def test_an_accepted_label_reaches_the_retrained_manifest(tmp_path):
    """The loop closed with the real training job: feedback -> review -> retrain -> the candidate's
    manifest counts the reviewed photo under training_data.origins (promoted or held by the gate)."""
    import sys

    from fruitpipe import bundle

    from .service_support import small_dataset, wait_for_run
    seed = small_dataset(tmp_path / "seed", "train", 4)
    eval_dir = small_dataset(tmp_path / "eval", "val", 2)
    store = tmp_path / "store"
    backend = make_backend(store, seed=seed, eval_dir=eval_dir, train_command=[sys.executable, "-m", "training_job"])
    app = make_app(backend, capture=CapturePolicy(sample_rate=0.0))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        pid = c.post("/predict", files={"file": ("p.jpg", fruit("rottenoranges", 3), "image/jpeg")}).json()["prediction_id"]
        assert c.post("/feedback", json={"prediction_id": pid, "correct": "rottenoranges"}).status_code == 200
        assert c.post(f"/review/{pid}", headers=AUTH, json={"label": "rottenoranges"}).json()["dataset"]["status"] == "added"
        assert c.post("/retrain", headers=AUTH).status_code == 202
        status = wait_for_run(c, timeout=600)
    assert status["state"] in ("succeeded", "rejected"), status
    version = status["result"]["version"]
    folder = next(p for p in (store / "models" / "versions" / version, store / "models" / "rejected" / version)
                  if p.is_dir())
    origins = bundle.read_manifest(folder).training_data["origins"]
    assert origins == {"review": 1, "untagged": 6 * 4}


@pytest.mark.slow
def test_reviewed_label_retrain_shadow_promotion(tmp_path):
    """The whole loop on the local backend (the tiny training job, real model and HTTP): feedback ->
    review -> retrain -> the gate's yes starts a shadow instead of going live -> after its shadowed
    requests the candidate is promoted; the answers never came from it before."""
    from fruitpipe.shadow import Bounds

    from .service_support import small_dataset, wait_for_run
    seed = small_dataset(tmp_path / "seed", "train", 3)
    eval_dir = small_dataset(tmp_path / "eval", "val", 2)
    store = tmp_path / "store"
    backend = make_backend(store, mode="good", seed=seed, eval_dir=eval_dir)
    backend.trainer.config.shadow_requests = 6
    app = make_app(backend, capture=CapturePolicy(sample_rate=0.0), shadow_bounds=Bounds(max_latency_ratio=5.0))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        live = c.get("/models").json()["live"]
        pid = c.post("/predict", files={"file": ("p.jpg", fruit("rottenapples", 4), "image/jpeg")}).json()["prediction_id"]
        assert c.post("/feedback", json={"prediction_id": pid, "correct": "rottenapples"}).status_code == 200
        assert c.post(f"/review/{pid}", headers=AUTH, json={"label": "rottenapples"}).status_code == 200
        assert c.post("/retrain", headers=AUTH).status_code == 202
        status = wait_for_run(c)
        assert status["state"] == "succeeded" and status["result"]["shadow"] is True, status
        candidate = status["result"]["version"]
        deadline = time.monotonic() + 10
        while (c.get("/models").json()["shadow"] or {}).get("version") != candidate:  # picked up like the pointer
            assert time.monotonic() < deadline
            time.sleep(0.1)
        answers = [c.post("/predict", files={"file": ("p.jpg", fruit(label, 2), "image/jpeg")}).json()["model_version"]
                   for label in ("freshapples", "freshbanana", "freshoranges", "rottenapples", "rottenbanana",
                                 "rottenoranges")]
        assert answers == [live] * 6
        deadline = time.monotonic() + 20
        while (shadow := c.get("/models").json()["shadow"])["status"] == "running":
            assert time.monotonic() < deadline, shadow
            time.sleep(0.1)
        assert shadow["status"] == "promoted", shadow
        assert c.get("/models").json()["live"] == candidate

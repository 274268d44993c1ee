"""Automatic rollback on the local backend with the real model: a promoted model that breaks the
latency bar is rolled back after its minimum requests; one within the bars stays; each bar alone."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from fruitpipe import bundle
from fruitpipe.rollback import RollbackBars, RollbackGuard

from .conftest import DEFAULT_MODEL, needs_shared
from .service_support import AUTH, fruit, make_app, make_backend
from .test_shadow import candidate

LIVE = bundle.verify(DEFAULT_MODEL).version


def predict(c) -> str:  # type: ignore[no-untyped-def]
    r = c.post("/predict", files={"file": ("p.jpg", fruit(), "image/jpeg")})
    assert r.status_code == 200
    return r.json()["model_version"]


@needs_shared
def test_a_promotion_that_breaks_the_latency_bar_is_rolled_back(tmp_path, caplog):
    store = tmp_path / "store"
    app = make_app(make_backend(store), rollback_bars=RollbackBars(min_requests=5, max_p95_ms=0.001))
    with TestClient(app) as c, caplog.at_level(logging.ERROR, logger="fruitpipe.rollback"):
        new = candidate(store, "n")
        assert c.post(f"/models/{new}/activate", headers=AUTH).status_code == 200
        assert [predict(c) for _ in range(5)] == [new] * 5  # watched: 5 requests, then the verdict
        assert predict(c) == LIVE
        models = c.get("/models").json()
    assert models["live"] == LIVE
    (event,) = models["rollbacks"]
    assert event["from"] == new and event["to"] == LIVE and "p95 latency" in event["reason"]
    assert any("ROLLBACK" in r.message for r in caplog.records)


@needs_shared
def test_a_promotion_within_the_bars_stands(tmp_path):
    store = tmp_path / "store"
    app = make_app(make_backend(store), rollback_bars=RollbackBars(min_requests=5, max_p95_ms=60_000))
    with TestClient(app) as c:
        new = candidate(store, "m")
        assert c.post(f"/models/{new}/activate", headers=AUTH).status_code == 200
        assert {predict(c) for _ in range(8)} == {new}
        assert c.get("/models").json()["rollbacks"] == []


class FakeRegistry:
    def __init__(self) -> None:
        self.activated: list[str] = []

    def activate(self, version: str) -> None:
        self.activated.append(version)


def test_each_bar_and_the_window():
    now = [0.0]
    reg = FakeRegistry()
    acc = {"all": {"n": 0, "accuracy": None}}
    guard = RollbackGuard(reg, RollbackBars(min_requests=4, window_seconds=100, min_reviews=3), accuracy=lambda v: acc,
                          clock=lambda: now[0])  # type: ignore[arg-type]
    guard.on_swap("v1", "v2")
    for status in (200, 500, 200):
        guard.observe(status, 5.0)
    assert reg.activated == []  # below the minimum count: no verdict yet
    guard.observe(200, 5.0)  # 1 of 4 answered 5xx
    assert reg.activated == ["v1"] and "5xx rate" in guard.events[-1]["reason"]

    guard.on_swap("v1", "v3")
    for _ in range(4):
        guard.note_verdict("not_fruit")
        guard.observe(200, 5.0)
    assert reg.activated[-1] == "v1" and "not-fruit rate" in guard.events[-1]["reason"]

    guard.on_swap("v1", "v4")
    acc["all"] = {"n": 3, "accuracy": 0.5}
    for _ in range(4):
        guard.observe(200, 5.0)
    assert "reviewed captures" in guard.events[-1]["reason"] and len(reg.activated) == 3

    acc["all"] = {"n": 0, "accuracy": None}
    guard.on_swap("v1", "v5")
    now[0] = 101.0  # past the window: the promotion stands, whatever comes
    for _ in range(10):
        guard.observe(500, 5.0)
    assert len(reg.activated) == 3


@needs_shared
@pytest.mark.slow
def test_the_dashboard_shows_the_rollback(tmp_path):
    import shutil
    from pathlib import Path

    import httpx

    from .service_support import live_server
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("chromium is not installed: run `bash scripts/ensure_test_tools.sh`")
    store = tmp_path / "store"
    app = make_app(make_backend(store), rollback_bars=RollbackBars(min_requests=2, max_p95_ms=0.001))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as c, sync_api.sync_playwright() as p:
        new = candidate(store, "d")
        assert c.post(f"/models/{new}/activate", headers=AUTH).status_code == 200
        for _ in range(2):
            predict(c)
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#model-events p")
        text = page.text_content("#model-events")
        browser.close()
    assert f"{new} → {LIVE}" in text and "p95 latency" in text

"""Shadow evaluation on the local backend with the real model: a copy of the live model is
promoted after its shadowed requests; a candidate with its classes shuffled is held with the reason."""

from __future__ import annotations

import io
import random

import numpy as np
from fastapi.testclient import TestClient

from fruitpipe import bundle
from fruitpipe.capture import CapturePolicy
from fruitpipe.shadow import Bounds, decide

from .conftest import DEFAULT_MODEL, needs_shared
from .service_support import AUTH, fruit, make_app, make_backend

pytestmark = needs_shared
LIVE = bundle.verify(DEFAULT_MODEL).version


def candidate(store, suffix: str, shuffle: bool = False) -> str:
    """A real, verified bundle registered as a new version: the live model itself, or the live
    model with its six outputs permuted (what training with shuffled labels gives: confident, wrong)."""
    m = bundle.verify(DEFAULT_MODEL)
    raw = m.to_dict()
    raw["version"] = f"v20990101-000000-{suffix * 6}"[:24]
    raw["created"] = "2099-01-01T00:00:00Z"
    files = {name: (DEFAULT_MODEL / name).read_bytes() for name in m.files}
    if shuffle:
        head = dict(np.load(io.BytesIO(files["head.npz"])))
        # fresh <-> rotten; a seventh not_fruit output (issue 11) stays where it is
        order = [3, 4, 5, 0, 1, 2, *range(6, head["bias_1"].shape[0])]
        head["kernel_1"], head["bias_1"] = head["kernel_1"][:, order], head["bias_1"][order]
        out = io.BytesIO()
        np.savez(out, **head)
        files["head.npz"] = out.getvalue()
    bundle.write(store / "models" / "versions" / raw["version"], bundle.Manifest.from_dict(raw), files)
    return raw["version"]


def shadow_app(store):  # type: ignore[no-untyped-def]
    # latency is judged by decide() below; 6 requests on a shared 2-core machine are too few to judge it here
    app = make_app(make_backend(store), capture=CapturePolicy(enabled=False, write_in_thread=False),
                   shadow_bounds=Bounds(max_latency_ratio=5.0))
    app.state.fruitpipe.shadow.rng = random.Random(0)
    return app


def traffic(c, n: int) -> None:  # type: ignore[no-untyped-def]
    labels = ["freshapples", "rottenbanana", "freshoranges", "rottenapples", "freshbanana", "rottenoranges"]
    for i in range(n):
        assert c.post("/predict", files={"file": ("p.jpg", fruit(labels[i % 6], i // 6), "image/jpeg")}).status_code == 200
    c.app.state.fruitpipe.shadow.flush()


def test_a_good_candidate_is_promoted_after_its_shadow(tmp_path):
    store = tmp_path / "store"
    with TestClient(shadow_app(store)) as c:
        good = candidate(store, "g")
        assert c.post(f"/models/{good}/shadow", json={"requests": 6}).status_code == 401
        r = c.post(f"/models/{good}/shadow", headers=AUTH, json={"requests": 6})
        assert r.status_code == 200 and r.json()["status"] == "running"
        assert c.post(f"/models/{good}/shadow", headers=AUTH).status_code == 409
        traffic(c, 3)
        seen = c.get("/models").json()["shadow"]
        assert seen["status"] == "running" and seen["seen"]["n"] == 3
        before = [c.post("/predict", files={"file": ("p.jpg", fruit(), "image/jpeg")}).json()["model_version"]]
        assert before == [LIVE]  # never answered by the shadow
        traffic(c, 2)
        models = c.get("/models").json()
        assert models["shadow"]["status"] == "promoted", models["shadow"]
        assert models["shadow"]["result"]["agreement"] == 1.0 and models["live"] == good
        assert c.post("/predict", files={"file": ("p.jpg", fruit(), "image/jpeg")}).json()["model_version"] == good


def test_a_shuffled_candidate_is_held_with_its_reason(tmp_path):
    store = tmp_path / "store"
    with TestClient(shadow_app(store)) as c:
        bad = candidate(store, "b", shuffle=True)
        assert c.post(f"/models/{LIVE}/shadow", headers=AUTH).status_code == 422  # already live
        assert c.post("/models/v-nope/shadow", headers=AUTH).status_code == 404
        assert c.post(f"/models/{bad}/shadow", headers=AUTH, json={"requests": 0}).status_code == 422
        assert c.post(f"/models/{bad}/shadow", headers=AUTH, json={"requests": 12}).status_code == 200
        traffic(c, 12)
        models = c.get("/models").json()
    shadow = models["shadow"]
    assert shadow["status"] == "held" and "agreement" in shadow["reason"], shadow
    assert shadow["result"]["agreement"] < 0.5
    assert models["live"] == LIVE


def test_decide_applies_every_bound():
    ok = {"n": 100, "agreement": 0.97, "live_not_fruit_rate": 0.01, "shadow_not_fruit_rate": 0.02,
          "live_p95_ms": 8.0, "shadow_p95_ms": 9.0}
    assert decide(ok, Bounds())[0] is True
    assert "not-fruit" in decide({**ok, "shadow_not_fruit_rate": 0.2}, Bounds())[1]
    assert "p95" in decide({**ok, "shadow_p95_ms": 20.0}, Bounds())[1]
    assert decide({**ok, "n": 0}, Bounds()) == (False, "no request was shadowed before the time limit")

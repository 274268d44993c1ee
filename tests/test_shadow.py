"""Shadow evaluation on the local backend with the real model: a copy of the live model is
promoted after its shadowed requests; a candidate with its classes shuffled is held with the reason."""

from __future__ import annotations

import io
import shutil
import json
import random
import time
from datetime import datetime, timedelta, timezone

import httpx

import numpy as np
from fastapi.testclient import TestClient

from fruitpipe import bundle
from fruitpipe.capture import CapturePolicy
from fruitpipe.shadow import Bounds, decide

from .conftest import DEFAULT_MODEL, needs_shared
from .service_support import AUTH, TOKEN, fruit, live_server, make_app, make_backend

pytestmark = needs_shared
LIVE = bundle.verify(DEFAULT_MODEL).version


def candidate(store, suffix: str, shuffle: bool = False, rejection: dict | None = None,
              hidden: int | None = None) -> str:
    """A real, verified bundle registered as a new version: the live model itself, or the live
    model with its six outputs permuted (what training with shuffled labels gives: confident, wrong),
    or with some ``rejection`` settings replaced (e.g. ``max_not_fruit`` 0: it rejects everything),
    or with ``hidden`` units in the head's hidden layer (another serving shape, same answers: the
    extra units are zero)."""
    m = bundle.verify(DEFAULT_MODEL)
    raw = m.to_dict()
    if rejection:
        raw["rejection"] = {**raw["rejection"], **rejection}
    raw["version"] = f"v20990101-000000-{suffix * 6}"[:24]
    raw["created"] = "2099-01-01T00:00:00Z"
    files = {name: (DEFAULT_MODEL / name).read_bytes() for name in m.files}
    head = dict(np.load(io.BytesIO(files["head.npz"])))
    if shuffle:
        # fresh <-> rotten; a seventh not_fruit output (issue 11) stays where it is
        order = [3, 4, 5, 0, 1, 2, *range(6, head["bias_1"].shape[0])]
        head["kernel_1"], head["bias_1"] = head["kernel_1"][:, order], head["bias_1"][order]
    if hidden:
        extra = hidden - head["bias_0"].shape[0]
        head["kernel_0"] = np.pad(head["kernel_0"], ((0, 0), (0, extra)))
        head["bias_0"] = np.pad(head["bias_0"], (0, extra))
        head["kernel_1"] = np.pad(head["kernel_1"], ((0, extra), (0, 0)))
        head["kernel_1_scale"] = np.pad(head["kernel_1_scale"], (0, extra), constant_values=1.0)
        raw["head"]["layers"][0] = {**raw["head"]["layers"][0], "units": hidden}
    if shuffle or hidden:
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


class Clock:
    """A clock the test moves: the shadow's ``clock``."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def post_fruit(c: httpx.Client, i: int = 0) -> dict:
    r = c.post("/predict", files={"file": ("p.jpg", fruit("freshbanana", i), "image/jpeg")})
    assert r.status_code == 200, r.text
    return r.json()


def live_shadow_app(store):  # type: ignore[no-untyped-def]
    """:func:`shadow_app` with the shadow's work on its worker thread, as ``fruitpipe serve`` runs it."""
    app = shadow_app(store)
    app.state.fruitpipe.shadow.in_thread = True
    return app


def settle(app, until, timeout: float = 30.0) -> dict:  # type: ignore[no-untyped-def]
    """The shadow's state once ``until(state)`` holds. Over real HTTP the shadow's hand-off runs as a
    background task after the response is sent, so the client may see the answer first."""
    shadow = app.state.fruitpipe.shadow
    deadline = time.monotonic() + timeout
    while True:
        shadow.flush()
        state = shadow.state(force=True)
        if until(state) or time.monotonic() > deadline:
            shadow.flush()  # the hand-off seen above may still be at work (sharing its counts)
            return shadow.state(force=True)
        time.sleep(0.05)


def test_a_shadow_that_reaches_its_deadline_without_enough_requests_is_held(tmp_path):
    """Over real HTTP: no request at all, the deadline passes, and the next GET /models decides
    (held, reason_code shadow_timeout); with some requests, the next /predict past the deadline decides."""
    store = tmp_path / "store"
    app = live_shadow_app(store)
    clock = Clock()
    app.state.fruitpipe.shadow.clock = clock
    idle, some = candidate(store, "t"), candidate(store, "u")
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        r = c.post(f"/models/{idle}/shadow", headers=AUTH, json={"requests": 50, "seconds": 600})
        assert r.status_code == 200 and r.json()["deadline"] == "2026-11-30T12:10:00Z"
        clock.now += timedelta(seconds=599)
        assert c.get("/models").json()["shadow"]["status"] == "running"
        clock.now += timedelta(seconds=1)
        shadow = c.get("/models").json()["shadow"]
        assert shadow["status"] == "held" and shadow["reason_code"] == "shadow_timeout", shadow
        assert shadow["reason"].startswith("shadow_timeout: 0 of 50 requests") and shadow["result"]["n"] == 0
        assert json.loads((store / "models" / "shadow.json").read_text())["status"] == "held"
        assert c.get("/models").json()["live"] == LIVE

        assert c.post(f"/models/{some}/shadow", headers=AUTH, json={"requests": 50, "seconds": 60}).status_code == 200
        for i in range(3):
            post_fruit(c, i)
        assert settle(app, lambda s: s["seen"]["n"] == 3)["seen"]["n"] == 3
        clock.now += timedelta(seconds=61)
        app.state.fruitpipe.shadow._next_read = float("inf")  # only the request's own path may decide
        post_fruit(c, 3)  # the first request past the deadline decides, on the 3 shadowed before it
        shadow = settle(app, lambda s: s["status"] != "running")
        assert shadow["status"] == "held" and shadow["reason"].startswith("shadow_timeout: 3 of 50"), shadow["reason"]
        assert c.get("/models").json()["live"] == LIVE


def test_the_counts_of_several_processes_are_pooled(tmp_path):
    """Two API processes on one store (two apps, two uvicorn servers): 3 shadowed requests each
    reach a shadow of 6 together; the decision is taken on all 6."""
    store = tmp_path / "store"
    apps = [live_shadow_app(store), live_shadow_app(store)]
    for app in apps:
        app.state.fruitpipe.shadow.flush_seconds = 0.0  # share the counts after every request
        # what is pooled is under test here, not latency: a p95 of 6 on a busy machine is noise
        app.state.fruitpipe.shadow.bounds = Bounds(max_latency_ratio=1e9)
    good = candidate(store, "p")
    with live_server(apps[0]) as a, live_server(apps[1]) as b, \
            httpx.Client(base_url=a, timeout=60) as ca, httpx.Client(base_url=b, timeout=60) as cb:
        assert ca.post(f"/models/{good}/shadow", headers=AUTH, json={"requests": 6}).status_code == 200
        for i in range(3):
            post_fruit(ca, i)
            settle(apps[0], lambda s: s["seen"]["n"] == i + 1)
        counts = sorted((store / "models" / "shadow-stats").glob("*/*.json"))
        assert len(counts) == 1 and json.loads(counts[0].read_text())["n"] == 3
        for i in range(3):
            assert cb.get("/models").json()["shadow"]["status"] == "running"
            post_fruit(cb, 3 + i)
            settle(apps[1], lambda s: s["status"] != "running" or s["seen"]["n"] == 3 + i + 1)
        settle(apps[1], lambda s: s["status"] != "running")  # the 6th request's decision, after its answer
        shadow = cb.get("/models").json()["shadow"]
        assert shadow["status"] == "promoted" and shadow["result"]["n"] == 6, (shadow["reason"], shadow["result"])
        assert ca.get("/models").json()["live"] == good


def test_a_shadowed_request_runs_the_backbone_once(tmp_path):
    """The candidate shares the live model's backbone, so it reuses the answer's backbone outputs."""
    store = tmp_path / "store"
    app = shadow_app(store)
    good = candidate(store, "o")
    with TestClient(app) as c:
        assert c.post(f"/models/{good}/shadow", headers=AUTH, json={"requests": 100}).status_code == 200
        post_fruit(c)
        app.state.fruitpipe.shadow.flush()
        backbone = app.state.fruitpipe.holder.get().backbone
        passes = []
        original = backbone.outputs
        backbone.outputs = lambda images: passes.append(len(images)) or original(images)
        try:
            for i in range(3):
                post_fruit(c, i)
            app.state.fruitpipe.shadow.flush()
        finally:
            del backbone.outputs
        assert passes == [1, 1, 1]
        assert c.get("/models").json()["shadow"]["seen"]["n"] == 4


def test_counts_merge_and_unreadable_ones_count_as_nothing(tmp_path):
    from fruitpipe.backends.shadow_pointers import LocalShadowPointer
    from fruitpipe.shadow import MAX_SAMPLES, Stats
    pointer = LocalShadowPointer(tmp_path)
    a = Stats(n=3, agree=2, live_not_fruit=1, shadow_not_fruit=0, live_ms=[5.0, 6.0, 7.0], shadow_ms=[1.0, 2.0, 3.0])
    pointer.write_counts("run-1", "a", a.to_dict())
    pointer.write_counts("run-1", "b", Stats(n=1, agree=1, live_ms=[9.0], shadow_ms=[4.0]).to_dict())
    pointer.write_counts("run-2", "c", Stats(n=50).to_dict())  # another run: not counted
    (tmp_path / "models" / "shadow-stats" / "run-1" / "broken.json").write_text("{not json")
    pointer.write_counts("run-1", "odd", {"n": "many"})
    counts = pointer.read_counts("run-1")
    assert sorted(counts) == ["a", "b", "odd"]
    total = Stats.merged(Stats.from_dict(c) for c in counts.values())
    assert (total.n, total.agree, total.live_not_fruit) == (4, 3, 1) and sorted(total.live_ms) == [5.0, 6.0, 7.0, 9.0]
    assert total.summary()["agreement"] == 0.75
    big = Stats()
    for _ in range(MAX_SAMPLES + 5):
        big.add(*[type("P", (), {"predicted_class": "freshapples", "verdict": "fresh"})()] * 2, 1.0, 1.0)
    assert big.n == MAX_SAMPLES + 5 and len(big.live_ms) == MAX_SAMPLES  # bounded memory, exact counts


def test_a_version_the_gate_rejected_cannot_be_shadowed(tmp_path):
    """It could never be promoted (activate refuses it too), so its shadow would never end well."""
    from fruitpipe.backends.local import LocalRegistry
    store = tmp_path / "store"
    with TestClient(shadow_app(store)) as c:
        version = candidate(store, "r", shuffle=True)
        staged = tmp_path / "staged"
        shutil.copytree(store / "models" / "versions" / version, staged)
        shutil.rmtree(store / "models" / "versions" / version)
        LocalRegistry(store).add(staged, version, rejected_reason="candidate is worse than the live model")
        r = c.post(f"/models/{version}/shadow", headers=AUTH, json={"requests": 6})
        assert r.status_code == 409 and r.json()["error"] == "version_rejected", r.text
        assert "cannot be shadowed" in r.json()["detail"]
        assert c.get("/models").json()["shadow"] is None


def test_a_shadow_is_held_when_the_live_model_changes_under_it(tmp_path):
    """Found by the second new-user trial: a retrain promoted a new live model while an older
    version was in shadow, and the shadow went on comparing against the model that no longer served."""
    import time
    store = tmp_path / "store"
    with TestClient(shadow_app(store)) as c:
        shadowed, newer = candidate(store, "g"), candidate(store, "h")
        assert c.post(f"/models/{shadowed}/shadow", headers=AUTH, json={"requests": 50}).status_code == 200
        traffic(c, 2)
        assert c.post(f"/models/{newer}/activate", headers=AUTH).status_code == 200
        deadline = time.monotonic() + 10
        while c.get("/health").json()["model_version"] != newer:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        traffic(c, 2)
        shadow = c.get("/models").json()["shadow"]
        assert shadow["status"] == "held" and shadow["reason_code"] == "live_changed", shadow
        assert newer in shadow["reason"] and c.get("/models").json()["live"] == newer


def test_an_operator_stops_a_running_shadow_over_http(tmp_path, capsys):
    """Two API processes on one store (two uvicorn servers): a shadow running on A is stopped through
    B (and, for a second shadow, with ``fruitpipe models --shadow-stop``): ``stopped`` with the pooled
    counts so far, nothing promoted, and A stops shadowing once it re-reads the pointer."""
    from fruitpipe.cli import main
    store = tmp_path / "store"
    apps = [live_shadow_app(store), live_shadow_app(store)]
    apps[0].state.fruitpipe.shadow.flush_seconds = 0.0  # A shares its counts after every request
    cand, other = candidate(store, "s"), candidate(store, "x")
    with live_server(apps[0]) as a, live_server(apps[1]) as b, \
            httpx.Client(base_url=a, timeout=60) as ca, httpx.Client(base_url=b, timeout=60) as cb:
        assert cb.post(f"/models/{cand}/shadow/stop", headers=AUTH).json()["error"] == "not_running"  # none yet
        assert ca.post(f"/models/{cand}/shadow", headers=AUTH, json={"requests": 50}).status_code == 200
        for i in range(2):
            post_fruit(ca, i)
            settle(apps[0], lambda s: s["seen"]["n"] == i + 1)
        assert cb.post(f"/models/{cand}/shadow/stop").status_code == 401
        assert cb.post("/models/v-nope/shadow/stop", headers=AUTH).status_code == 404
        r = cb.post(f"/models/{other}/shadow/stop", headers=AUTH)  # a known version, but not the one in shadow
        assert r.status_code == 409 and r.json()["error"] == "not_running" and cand in r.json()["detail"], r.text
        r = cb.post(f"/models/{cand}/shadow/stop", headers=AUTH)
        assert r.status_code == 200, r.text
        stopped = r.json()
        assert stopped["status"] == "stopped" and stopped["reason_code"] == "stopped_by_operator", stopped
        assert stopped["result"]["n"] == 2 and stopped["version"] == cand
        assert json.loads((store / "models" / "shadow.json").read_text()) == stopped
        r = cb.post(f"/models/{cand}/shadow/stop", headers=AUTH)  # stopping it twice
        assert r.status_code == 409 and r.json()["error"] == "not_running" and "stopped" in r.json()["detail"]
        # A learns of the stop as it learns of any pointer change: its next re-read (every refresh_seconds)
        deadline = time.monotonic() + 10
        while ca.get("/models").json()["shadow"]["status"] != "stopped":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for i in range(3):
            assert post_fruit(ca, 2 + i)["model_version"] == LIVE
        apps[0].state.fruitpipe.shadow.flush()
        assert apps[0].state.fruitpipe.shadow._stats.n == 2  # no request shadowed after the stop
        assert ca.get("/models").json()["shadow"] == stopped and ca.get("/models").json()["live"] == LIVE

        assert ca.post(f"/models/{other}/shadow", headers=AUTH, json={"requests": 50}).status_code == 200
        assert main(["models", "--api", a, "--token", TOKEN, "--shadow-stop", other]) == 0
        assert capsys.readouterr().out == f"shadow of {other} stopped after 0 of 50 requests; live model unchanged: {LIVE}\n"
        assert main(["models", "--api", a, "--token", TOKEN, "--shadow-stop", other]) == 1
        assert capsys.readouterr().err.startswith(f"not_running: the shadow of {other} is not running: it is stopped")
        assert cb.get("/models").json()["live"] == LIVE


def test_the_cli_starts_a_shadow_and_lists_it(tmp_path, capsys):
    """``fruitpipe models --shadow V [--requests --seconds --sample-rate]`` starts a shadow over HTTP
    (the options reach the pointer), a second start exits 1 ``shadow_running``, the table's last line
    shows it running with the counts so far, then stopped; bad input exits 2."""
    from fruitpipe.cli import main
    store = tmp_path / "store"
    app = live_shadow_app(store)
    app.state.fruitpipe.shadow.flush_seconds = 0.0
    cand = candidate(store, "s")
    with live_server(app) as a, httpx.Client(base_url=a, timeout=60) as c:
        assert main(["models", "--api", a, "--shadow", cand]) == 2  # a write: the token is needed
        assert "admin token" in capsys.readouterr().err
        assert main(["models", "--api", a, "--token", TOKEN, "--requests", "5"]) == 2  # without --shadow
        assert "only go with --shadow" in capsys.readouterr().err
        assert main(["models", "--api", a, "--token", TOKEN, "--shadow", LIVE]) == 2  # the live one: 422
        assert "already live" in capsys.readouterr().err
        assert main(["models", "--api", a, "--token", TOKEN, "--shadow", cand, "--requests", "40",
                     "--seconds", "600", "--sample-rate", "0.5"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"shadow of {cand} started beside {LIVE}: decided after 40 shadowed requests "
                              "(sample rate 0.5)"), out
        state = c.get("/models").json()["shadow"]
        assert (state["status"], state["requests"], state["sample_rate"]) == ("running", 40, 0.5)
        assert main(["models", "--api", a, "--token", TOKEN, "--shadow", cand]) == 1
        assert capsys.readouterr().err.startswith("shadow_running: ")
        assert main(["models", "--api", a]) == 0
        last = capsys.readouterr().out.splitlines()[-1]
        assert last.startswith(f"shadow: {cand} running since ") and " of 40 requests shadowed (sample rate 0.5" in last
        assert main(["models", "--api", a, "--token", TOKEN, "--shadow-stop", cand]) == 0
        capsys.readouterr()
        assert main(["models", "--api", a]) == 0
        assert capsys.readouterr().out.splitlines()[-1].startswith(f"shadow: {cand} stopped: ")


def test_a_request_queued_under_an_ended_run_counts_for_no_run():
    """A shadowed request still queued when its run ends (stopped, then another version shadowed)
    must neither load its old version as the new run's model nor add to the new run's counts."""
    from types import SimpleNamespace

    from fruitpipe.shadow import LiveAnswer, Shadow, plan

    class Pointer:
        def __init__(self) -> None:
            self.state, self.counts = None, {}

        def read(self):  # type: ignore[no-untyped-def]
            return self.state

        def write(self, state) -> None:  # type: ignore[no-untyped-def]
            self.state = dict(state)

        def write_counts(self, run, instance, counts) -> None:  # type: ignore[no-untyped-def]
            self.counts.setdefault(run, {})[instance] = counts

        def read_counts(self, run):  # type: ignore[no-untyped-def]
            return dict(self.counts.get(run, {}))

    registry = SimpleNamespace(live_version=lambda: "vL", versions=lambda: [], fetch=lambda v: v)
    loaded: list[str] = []
    pointer = Pointer()
    shadow = Shadow(pointer, registry, lambda v: loaded.append(v), in_thread=False, refresh_seconds=0)  # type: ignore[arg-type]
    now = datetime.now(timezone.utc)
    pointer.write(plan("vA", "vL", now, requests=100))
    queued_under_a = shadow.state()
    pointer.write(plan("vB", "vL", now, requests=100))
    shadow.state(force=True)
    answer = SimpleNamespace(predicted_class="freshapples", verdict="fresh", model_version="vL")
    shadow._run(queued_under_a, LiveAnswer(np.zeros((224, 224, 3), np.uint8), answer, 1.0, None, (None, None, None), 1.0))
    assert loaded == [] and shadow.state()["seen"]["n"] == 0 and pointer.counts == {}

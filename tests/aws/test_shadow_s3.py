"""Shadow evaluation on AWS against the moto server: the state lives in the models bucket
(``shadow.json`` beside ``live.json``) and the API Lambda handler runs the candidate beside the live
model; a candidate with shuffled classes is held, with its reason in ``GET /models``."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np

from fruitpipe import bundle
from fruitpipe.backends.aws import S3ModelRegistry
from fruitpipe.backends.shadow_pointers import S3ShadowPointer
from fruitpipe.shadow import Bounds
from tests.aws.conftest import FakeContext, http_api_event, jpeg, multipart, response_json
from tests.conftest import DEFAULT_MODEL, needs_shared

TOKEN = "s3cret-token"


def test_s3_shadow_pointer_round_trip(aws):
    pointer = S3ShadowPointer(aws["models"], s3=aws["s3"])
    assert pointer.read() is None
    pointer.write({"version": "v1", "status": "running"})
    assert pointer.read() == {"version": "v1", "status": "running"}
    aws["s3"].put_object(Bucket=aws["models"], Key="shadow.json", Body=b"not json")
    assert pointer.read() is None


def shuffled_bundle(tmp_path, version: str, shuffle: bool = True):  # type: ignore[no-untyped-def]
    """The shipped model as ``version``: with its classes permuted, or (``shuffle=False``) as it is."""
    dest = tmp_path / version
    shutil.copytree(DEFAULT_MODEL, dest)
    manifest = json.loads((dest / bundle.MANIFEST).read_text())
    manifest["version"] = version
    if shuffle:
        head = dict(np.load(dest / "head.npz"))
        order = [3, 4, 5, 0, 1, 2, *range(6, head["bias_1"].shape[0])]  # a 7th (not_fruit) output stays
        head["kernel_1"], head["bias_1"] = head["kernel_1"][:, order], head["bias_1"][order]
        out = io.BytesIO()
        np.savez(out, **head)
        (dest / "head.npz").write_bytes(out.getvalue())
        manifest["files"]["head.npz"] = bundle.sha256_bytes(out.getvalue())
    (dest / bundle.MANIFEST).write_text(json.dumps(manifest))
    bundle.verify(dest)
    return dest


def lambda_env(aws, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for k, v in aws["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("FRUITPIPE_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FRUITPIPE_MODEL_REFRESH_SECONDS", "0")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "fruitpipe-api")


@needs_shared
def test_shadow_through_the_lambda_handler(aws, monkeypatch, tmp_path):
    lambda_env(aws, monkeypatch, tmp_path)
    reg = S3ModelRegistry(aws["models"], tmp_path / "reg", s3=aws["s3"])
    bad = reg.publish(shuffled_bundle(tmp_path, "v20990101-000000-bbbbbb"))
    from functions.api import handler as module
    monkeypatch.setattr(module, "_app", None)

    def call(method, path, **kw):  # type: ignore[no-untyped-def]
        resp = module.handler(http_api_event(method, path, **kw), FakeContext())
        return resp["statusCode"], response_json(resp)

    admin = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}
    status, state = call("POST", f"/models/{bad}/shadow", body=json.dumps({"requests": 4}).encode(), headers=admin)
    assert status == 200 and state["status"] == "running", state
    assert json.loads(aws["s3"].get_object(Bucket=aws["models"], Key="shadow.json")["Body"].read())["version"] == bad
    live = call("GET", "/models")[1]["live"]
    for seed in range(4):
        body, ctype = multipart({}, [("file", "a.jpg", jpeg(seed=seed), "image/jpeg")])
        status, answer = call("POST", "/predict", body=body, headers={"content-type": ctype})
        assert status == 200 and answer["model_version"] == live  # never answered by the shadow
    status, models = call("GET", "/models")
    assert models["shadow"]["status"] == "held" and "agreement" in models["shadow"]["reason"], models["shadow"]
    assert models["live"] == live


def test_the_publish_step_can_start_a_shadow_instead_of_going_live(aws, tmp_path):
    """With ``shadowRequests`` (FRUITPIPE_SHADOW_REQUESTS) the pipeline's publish step uploads the
    candidate and writes shadow.json; live.json stays where it was."""
    from fruitpipe.pipeline import publish, s3util
    from tests.pipeline.conftest import archive, make_bundle
    s3, models = aws["s3"], aws["models"]

    def candidate(version: str) -> str:
        key = f"runs/{version}/output/model.tar.gz"
        s3.put_object(Bucket=models, Key=key, Body=archive(make_bundle(tmp_path, version)))
        return f"s3://{models}/{key}"

    live = publish.publish(s3, models_bucket=models, model_artifacts=candidate("v20260103-000000-cccccc"))["version"]
    out = publish.publish(s3, models_bucket=models, model_artifacts=candidate("v20260104-000000-dddddd"),
                          shadow_requests=50)
    assert out["shadow"] is True and out["pointer_moved"] is False
    assert s3util.live_version(s3, models) == live
    state = S3ShadowPointer(models, s3=s3).read()
    assert state["version"] == out["version"] and state["status"] == "running" and state["requests"] == 50
    assert state["live"] == live


class Instance:
    """One Lambda execution environment of the API function: its own build of the app."""

    def __init__(self) -> None:
        from functions.api import handler as module
        self.mangum = module.build()
        self.app = self.mangum.app

    def call(self, method: str, path: str, **kw):  # type: ignore[no-untyped-def]
        resp = self.mangum(http_api_event(method, path, **kw), FakeContext())
        return resp["statusCode"], response_json(resp)

    def predict(self, seed: int) -> dict:
        body, ctype = multipart({}, [("file", "a.jpg", jpeg(seed=seed), "image/jpeg")])
        status, answer = self.call("POST", "/predict", body=body, headers={"content-type": ctype})
        assert status == 200, answer
        return answer


ADMIN = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}


@needs_shared
def test_two_lambda_instances_pool_their_shadow_counts_in_s3(aws, monkeypatch, tmp_path):
    """A shadow of 6 requests: 3 reach one instance, 3 another; each instance's counts are an object
    under shadow-stats/ in the models bucket, and the instance that sees the sum reach 6 promotes."""
    lambda_env(aws, monkeypatch, tmp_path)
    reg = S3ModelRegistry(aws["models"], tmp_path / "reg", s3=aws["s3"])
    good = reg.publish(shuffled_bundle(tmp_path, "v20990101-000000-aaaaaa", shuffle=False))
    a, b = Instance(), Instance()
    for inst in (a, b):
        inst.app.state.fruitpipe.shadow.flush_seconds = 0.0  # share the counts after every request
        # what is pooled is under test here, not latency: a p95 of 6 on a busy machine is noise
        inst.app.state.fruitpipe.shadow.bounds = Bounds(max_latency_ratio=1e9)
    status, state = a.call("POST", f"/models/{good}/shadow", body=json.dumps({"requests": 6}).encode(), headers=ADMIN)
    assert status == 200, state
    live = a.call("GET", "/models")[1]["live"]
    for seed in range(3):
        assert a.predict(seed)["model_version"] == live
    keys = [o["Key"] for o in aws["s3"].list_objects_v2(Bucket=aws["models"], Prefix="shadow-stats/")["Contents"]]
    assert len(keys) == 1 and json.loads(aws["s3"].get_object(Bucket=aws["models"], Key=keys[0])["Body"].read())["n"] == 3
    for seed in range(3, 5):
        assert b.predict(seed)["model_version"] == live
    assert b.call("GET", "/models")[1]["shadow"]["status"] == "running"
    b.predict(5)
    shadow = json.loads(aws["s3"].get_object(Bucket=aws["models"], Key="shadow.json")["Body"].read())
    assert shadow["status"] == "promoted" and shadow["result"]["n"] == 6 and shadow["result"]["agreement"] == 1.0, (
        shadow["reason"], shadow["result"])
    assert a.call("GET", "/models")[1]["live"] == good


@needs_shared
def test_a_shadow_past_its_deadline_is_held_on_aws(aws, monkeypatch, tmp_path):
    """No request reaches the shadow; the first GET /models after its deadline holds it, in S3."""
    from datetime import datetime, timedelta, timezone
    lambda_env(aws, monkeypatch, tmp_path)
    reg = S3ModelRegistry(aws["models"], tmp_path / "reg", s3=aws["s3"])
    cand = reg.publish(shuffled_bundle(tmp_path, "v20990101-000000-cccccc", shuffle=False))
    inst = Instance()
    now = [datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)]
    inst.app.state.fruitpipe.shadow.clock = lambda: now[0]
    status, state = inst.call("POST", f"/models/{cand}/shadow", headers=ADMIN,
                              body=json.dumps({"requests": 100, "seconds": 300}).encode())
    assert status == 200 and state["deadline"] == "2026-11-30T12:05:00Z", state
    assert inst.call("GET", "/models")[1]["shadow"]["status"] == "running"
    now[0] += timedelta(seconds=300)
    shadow = inst.call("GET", "/models")[1]["shadow"]
    assert shadow["status"] == "held" and shadow["reason_code"] == "shadow_timeout", shadow
    stored = json.loads(aws["s3"].get_object(Bucket=aws["models"], Key="shadow.json")["Body"].read())
    assert stored["status"] == "held" and stored["reason"].startswith("shadow_timeout: 0 of 100")


@needs_shared
def test_an_operator_stops_a_shadow_on_aws(aws, monkeypatch, tmp_path, capsys):
    """Instance A shadows 2 requests; B stops the shadow (shadow.json in S3: ``stopped``, the pooled
    counts from shadow-stats/); A re-reads the pointer and shadows nothing more; nothing is promoted.
    Then ``fruitpipe models --aws --shadow-stop`` stops a second shadow straight in the bucket, and
    ``fruitpipe models --aws --shadow`` starts a third one there, which the table lists."""
    from datetime import datetime, timezone

    from fruitpipe.cli import main
    lambda_env(aws, monkeypatch, tmp_path)
    reg = S3ModelRegistry(aws["models"], tmp_path / "reg", s3=aws["s3"])
    cand = reg.publish(shuffled_bundle(tmp_path, "v20990101-000000-eeeeee", shuffle=False))
    a, b = Instance(), Instance()
    a.app.state.fruitpipe.shadow.flush_seconds = 0.0  # share the counts after every request
    start = datetime.now(timezone.utc)
    # both shadows below start in the same second: the second one must still count from zero
    a.app.state.fruitpipe.shadow.clock = lambda: start
    live = a.call("GET", "/models")[1]["live"]
    assert b.call("POST", f"/models/{cand}/shadow/stop", headers=ADMIN)[1]["error"] == "not_running"
    assert a.call("POST", f"/models/{cand}/shadow", body=json.dumps({"requests": 50}).encode(), headers=ADMIN)[0] == 200
    for seed in range(2):
        a.predict(seed)
    assert b.call("POST", f"/models/{cand}/shadow/stop")[0] == 401
    assert b.call("POST", "/models/v20990101-000000-ffffff/shadow/stop", headers=ADMIN)[0] == 404
    status, stopped = b.call("POST", f"/models/{cand}/shadow/stop", headers=ADMIN)
    assert status == 200 and stopped["status"] == "stopped" and stopped["reason_code"] == "stopped_by_operator", stopped
    assert stopped["result"]["n"] == 2  # A's counts, read from shadow-stats/ by B
    assert json.loads(aws["s3"].get_object(Bucket=aws["models"], Key="shadow.json")["Body"].read()) == stopped
    status, again = b.call("POST", f"/models/{cand}/shadow/stop", headers=ADMIN)
    assert status == 409 and again["error"] == "not_running", again
    for seed in range(2, 5):  # A re-reads shadow.json (FRUITPIPE_MODEL_REFRESH_SECONDS=0 here) and stops shadowing
        assert a.predict(seed)["model_version"] == live
    assert a.app.state.fruitpipe.shadow._stats.n == 2
    assert a.call("GET", "/models")[1]["shadow"] == stopped
    assert a.call("GET", "/models")[1]["live"] == live

    assert a.call("POST", f"/models/{cand}/shadow", body=json.dumps({"requests": 50}).encode(), headers=ADMIN)[0] == 200
    capsys.readouterr()
    assert main(["models", "--aws", "--bucket", aws["models"], "--shadow-stop", cand]) == 0
    assert capsys.readouterr().out == f"shadow of {cand} stopped after 0 of 50 requests; live model unchanged: {live}\n"
    assert main(["models", "--aws", "--bucket", aws["models"], "--shadow-stop", cand]) == 1
    assert main(["models", "--aws", "--bucket", aws["models"], "--shadow-stop", "v20990101-000000-ffffff"]) == 2
    assert a.call("GET", "/models")[1]["shadow"]["status"] == "stopped"
    assert a.call("GET", "/models")[1]["live"] == live

    # the CLI starts a shadow straight in the bucket too, and lists it
    capsys.readouterr()
    assert main(["models", "--aws", "--bucket", aws["models"], "--shadow", cand, "--requests", "30",
                 "--sample-rate", "0.5"]) == 0
    assert capsys.readouterr().out.startswith(f"shadow of {cand} started beside {live}: decided after 30 shadowed")
    running = a.call("GET", "/models")[1]["shadow"]
    assert running["status"] == "running" and running["requests"] == 30 and running["sample_rate"] == 0.5
    assert main(["models", "--aws", "--bucket", aws["models"], "--shadow", cand]) == 1
    assert capsys.readouterr().err.startswith("shadow_running: ")
    assert main(["models", "--aws", "--bucket", aws["models"]]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"shadow: {cand} running since ")
    assert main(["models", "--aws", "--bucket", aws["models"], "--shadow-stop", cand]) == 0


@needs_shared
def test_on_aws_an_instance_pairs_not_fruit_answers_but_never_rolls_back(aws, monkeypatch, tmp_path, capsys):
    """On AWS the rollback decision is the pooled alarms' (PostPromotion -> rollback Lambda): an
    instance never rolls back on its own share of the traffic. Within the window after a promotion it
    pairs each answer with the previous model's on the same image and emits NotFruitOnlyNew /
    NotFruitOnlyPrevious for the PostPromotionNotFruit alarm; an instance started after the promotion
    (a cold start) resumes that watch from live.json."""
    from tests.conftest import FRUITS
    from tests.pipeline.test_aws_metrics import emf_lines
    lambda_env(aws, monkeypatch, tmp_path)
    reg = S3ModelRegistry(aws["models"], tmp_path / "reg", s3=aws["s3"])
    broken = shuffled_bundle(tmp_path, "v20990101-000000-dddddd", shuffle=False)
    manifest = json.loads((broken / bundle.MANIFEST).read_text())
    manifest["rejection"]["max_not_fruit"] = 0.0  # it answers not_fruit to every photo
    (broken / bundle.MANIFEST).write_text(json.dumps(manifest))
    other = reg.publish(broken)
    inst = Instance()
    guard = inst.app.state.fruitpipe.rollback
    assert guard.bars.enabled is False and guard.bars.window_seconds == 7200
    live = inst.call("GET", "/models")[1]["live"]
    assert inst.call("POST", f"/models/{other}/activate", headers=ADMIN)[0] == 200
    photos = [sorted((FRUITS / "test" / label).glob("*.jpg"))[0].read_bytes() for label in ("freshapples", "rottenbanana")]

    def predict(instance: Instance, data: bytes) -> dict:
        body, ctype = multipart({}, [("file", "a.jpg", data, "image/jpeg")])
        status, answer = instance.call("POST", "/predict", body=body, headers={"content-type": ctype})
        assert status == 200, answer
        return answer

    capsys.readouterr()
    for data in photos:
        answer = predict(inst, data)
        assert answer["model_version"] == other and answer["verdict"] == "not_fruit"
    def values(out: str, name: str) -> list[float]:
        return [v for doc in emf_lines(out) if name in doc for v in np.atleast_1d(doc[name])]

    out = capsys.readouterr().out
    # the previous model took both photos as fruit
    assert values(out, "NotFruitOnlyNew") == [1.0, 1.0] and values(out, "NotFruitOnlyPrevious") == [0.0, 0.0]
    watch = guard.watching
    assert watch["version"] == other and watch["previous"] == live and watch["n"] == 0  # nothing judged here
    assert inst.call("GET", "/models")[1]["rollbacks"] == [] and inst.call("GET", "/models")[1]["live"] == other
    cold = Instance()  # started after the promotion: resumes the watch from live.json
    assert cold.app.state.fruitpipe.rollback.watching["previous"] == live
    capsys.readouterr()
    predict(cold, photos[0])
    assert values(capsys.readouterr().out, "NotFruitOnlyNew") == [1.0]

"""Benchmark the real local retrain loop through the server: upload -> retrain -> promoted -> served.

Starts ``fruitpipe serve`` (a real process) on a fresh store, lets its first-start warm-up build
the embedding cache (timed; with ``--cache`` pointing at an already-built cache it has nothing to
do), then, as a user would over HTTP:

1. uploads 12 new photos (2 per class: mirror images of ../shared/data/fruits_extra's train-split
   photos, since every shared photo is already in the shipped recipe) and retrains: the first
   retrain in a fresh store;
2. uploads 100 more and retrains again;
3. asks for a retrain with unchanged data (answered "nothing new"), then forces one.

``--labels N`` measures instead whether a retrain after N labels accepted in the review queue is
as fast as one after N plain uploads (issue 15): one server with every prediction captured
(``FRUITPIPE_CAPTURE_SAMPLE_RATE=1``); each round uploads N new photos and retrains, then sends
N other new photos to ``/predict``, accepts each capture with its folder's class through
``POST /review/{id}`` and retrains (the order alternates between rounds, after one retrain on 12
uploads that is not counted: a store's first retrain has no earlier candidate); medians over
``--repeat`` rounds go to results/bench_review_retrain.json.

Each retrain is timed from ``POST /retrain`` until ``/predict`` answers with the new live
version (or the run ends rejected/failed); the percent of every status poll is checked to never
go backwards. Writes results/bench_retrain.json and prints a table. The machine's load average is
recorded before each step: on a shared machine timings are noisy.

    python scripts/bench_retrain.py [--cache DIR] [--repeat N]
    python scripts/bench_retrain.py --labels 50 --repeat 4
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"
EXTRA = SHARED / "data" / "fruits_extra"
TEST_IMAGE = SHARED / "data" / "fruits" / "test" / "freshapples"
DEFAULT_JSON = REPO / "results" / "bench_retrain.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(base: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit("server did not answer /health")


NEW_PHOTOS = Path(tempfile.mkdtemp(prefix="fruitpipe-bench-new-"))


def train_photos() -> dict[str, list[Path]]:
    """fruits_extra's train-split photos per class (:mod:`fruitpipe.splits`)."""
    from fruitpipe import splits
    from fruitpipe.labels import LABELS
    where = splits.split_of(EXTRA)
    return {label: [EXTRA / rel for rel, s in sorted(where.items()) if s == "train" and rel.startswith(label + "/")]
            for label in LABELS}


def new_photo(path: Path) -> Path:
    """A new photo a user could upload: the mirror image of a seed photo. Every shared photo is
    already in the shipped recipe (seed training data, or the frozen evaluation set, which uploads
    may not enter), so an upload of one teaches nothing; its mirror is new bytes of a train photo."""
    from PIL import Image, ImageOps
    dest = NEW_PHOTOS / path.parent.name / path.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        ImageOps.mirror(Image.open(path).convert("RGB")).save(dest, quality=92)
    return dest


def pick(total: int, offset: int, pools: dict[str, list[Path]] | None = None) -> dict[str, list[Path]]:
    """``total`` new photos (:func:`new_photo` of fruits_extra's train split), round-robin over the
    classes, each class from its ``offset``-th photo on (rotten apples and oranges have few: the
    others fill in). With ``pools`` (class -> photos) the photos are taken out of it instead, so no
    two calls share one."""
    from fruitpipe.labels import LABELS
    if pools is None:
        pools = {label: photos[offset:] for label, photos in train_photos().items()}
    out: dict[str, list[Path]] = {label: [] for label in LABELS}
    while sum(map(len, out.values())) < total and any(pools.values()):
        for label in LABELS:
            if pools[label] and sum(map(len, out.values())) < total:
                out[label].append(new_photo(pools[label].pop(0)))
    return out


def timed_retrain(api: Any, force: bool = False) -> dict[str, Any]:
    """POST /retrain, poll until done, then until /predict serves the result; percent monotonic?"""
    t0 = time.monotonic()
    status = api.retrain(force=force)
    percents, etas, stages = [status["percent"]], [], []
    while status["state"] == "running":
        time.sleep(0.5)
        status = api.status()
        percents.append(status["percent"])
        if status.get("eta_seconds") is not None:
            etas.append((round(time.monotonic() - t0, 1), status["eta_seconds"]))
        if status.get("stage") and (not stages or stages[-1] != status["stage"]):
            stages.append(status["stage"])
    done_s = time.monotonic() - t0
    served_s = None
    version = status["result"].get("version")
    if status["state"] == "succeeded":
        while time.monotonic() - t0 < done_s + 30:
            if api.predict(TEST_IMAGE.iterdir().__next__())["model_version"] == version:
                served_s = time.monotonic() - t0
                break
            time.sleep(0.1)
    return {"state": status["state"], "seconds_to_done": round(done_s, 1),
            "seconds_to_served": round(served_s, 1) if served_s else None,
            "percent_monotonic": all(b >= a for a, b in zip(percents, percents[1:])),
            "polls": len(percents), "stages": stages, "eta_samples": etas[:: max(1, len(etas) // 8)],
            "reason": status["result"].get("reason") or status["result"].get("error"),
            "candidate": status["result"].get("candidate"), "live": status["result"].get("live"),
            "training_metrics": {k: v for k, v in status["result"].get("training_metrics", {}).items()
                                 if k in ("embedded_new", "cached", "train_seconds", "warm_start", "single_fit",
                                          "max_not_fruit_calibrated", "max_not_fruit_from_base_model")}}


def load() -> float:
    return round(os.getloadavg()[0], 2)


def start_server(store: Path, cache: Path, token: str, env_extra: dict[str, str] | None = None
                 ) -> tuple[subprocess.Popen, str]:
    """``fruitpipe serve`` on a free port of 127.0.0.1 as a process of its own; (process, base URL)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "FRUITPIPE_ADMIN_TOKEN": token, **(env_extra or {})}
    proc = subprocess.Popen([sys.executable, "-m", "fruitpipe", "serve", "--store", str(store), "--port",
                             str(port), "--cache", str(cache), "--log-level", "warning"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def wait_warm(api: Any) -> None:
    while (api.status().get("warmup") or {}).get("state") == "running":
        time.sleep(1)


def accept_reviewed(api: Any, by_label: dict[str, list[Path]]) -> dict[str, Any]:
    """Send each photo to ``/predict``, then accept its capture with its folder's class through
    ``POST /review/{id}`` (the review queue's one action). Counts of the dataset's answers."""
    wanted: dict[str, str] = {}
    for label, files in by_label.items():
        for f in files:
            wanted[api.predict(f)["prediction_id"]] = label
    deadline = time.monotonic() + 60
    while True:  # captures are written after the answer, on the writer thread
        queued = {it["prediction_id"] for it in api._ok("GET", "/review?limit=500")["items"]}
        if set(wanted) <= queued or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    counts: dict[str, int] = {"not_captured": len(set(wanted) - queued)}
    t0 = time.monotonic()
    for pid, label in wanted.items():
        if pid in queued:
            status = api._ok("POST", f"/review/{pid}", json={"label": label})["dataset"]["status"]
            counts[status] = counts.get(status, 0) + 1
    counts["accept_seconds"] = round(time.monotonic() - t0, 2)
    return counts


def review_vs_upload(args: argparse.Namespace, tmp: Path) -> int:
    """The ``--labels`` mode (see the module doc)."""
    from fruitpipe.client import Client
    from fruitpipe.labels import LABELS
    n, token = args.labels, "bench-token-review-0123456789abcdef"
    proc, base = start_server(tmp / "store", args.cache or tmp / "cache", token,
                              {"FRUITPIPE_CAPTURE_SAMPLE_RATE": "1", "FRUITPIPE_CAPTURE_MAX_ITEMS": "100000"})
    rounds: list[dict[str, Any]] = []
    try:
        wait_health(base, proc)
        api = Client(base, token)
        wait_warm(api)
        pools = train_photos()
        # not counted: a store's first retrain differs (no earlier candidate to warm-start from)
        api.upload_many(pick(12, 0, pools))
        priming = timed_retrain(api)
        print(f"priming retrain: {priming['state']} in {priming['seconds_to_done']} s", file=sys.stderr, flush=True)
        for rep in range(args.repeat):
            rnd: dict[str, Any] = {}
            for kind in (("upload", "review") if rep % 2 == 0 else ("review", "upload")):
                photos = pick(n, 0, pools)
                rnd[f"{kind}_added"] = api.upload_many(photos) if kind == "upload" else accept_reviewed(api, photos)
                rnd[f"{kind}_load_before"] = load()
                rnd[f"{kind}_retrain"] = timed_retrain(api)
            rounds.append(rnd)
            print(json.dumps(rnd, indent=1), file=sys.stderr, flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)

    def secs(kind: str) -> list[float]:
        return [r[f"{kind}_retrain"]["seconds_to_served"] or r[f"{kind}_retrain"]["seconds_to_done"] for r in rounds]
    up, rev = secs("upload"), secs("review")
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
              "command": f"python scripts/bench_retrain.py --labels {n} --repeat {args.repeat}", "labels": n,
              "upload_retrain_s": up, "review_retrain_s": rev,
              "upload_retrain_s_median": round(statistics.median(up), 1),
              "review_retrain_s_median": round(statistics.median(rev), 1),
              "ratio_of_medians": round(statistics.median(rev) / statistics.median(up), 3), "rounds": rounds}
    out = args.json if args.json != DEFAULT_JSON else REPO / "results" / "bench_review_retrain.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"retrain after {n} plain uploads: median {result['upload_retrain_s_median']} s {up}")
    print(f"retrain after {n} accepted labels: median {result['review_retrain_s_median']} s {rev} "
          f"({result['ratio_of_medians']}x)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=None,
                        help="embedding cache to use (default: a new, empty one: the warm-up builds it)")
    parser.add_argument("--repeat", type=int, default=1, help="fresh stores to run the first retrain in")
    parser.add_argument("--labels", type=int, default=0,
                        help="compare a retrain after this many accepted review labels with one after as many uploads")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    if not EXTRA.is_dir():
        print(f"error: {EXTRA} not found", file=sys.stderr)
        return 2
    if args.labels > 0:
        with tempfile.TemporaryDirectory(prefix="fruitpipe-bench-review-") as tmp_name:
            return review_vs_upload(args, Path(tmp_name))
    from fruitpipe.client import Client

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fruitpipe-bench-retrain-") as tmp_name:
        tmp = Path(tmp_name)
        cache = args.cache or tmp / "cache"
        for rep in range(args.repeat):
            store, token = tmp / f"store{rep}", f"bench-token-{rep}-0123456789abcdef"
            proc, base = start_server(store, cache, token)
            run: dict[str, Any] = {}
            try:
                t0 = time.monotonic()
                wait_health(base, proc)
                api = Client(base, token)
                run.update(load_at_start=load(), server_start_s=round(time.monotonic() - t0, 1))
                runs.append(run)
                wait_warm(api)
                warm = json.loads((store / "retrain" / "warmup.json").read_text())
                run["warm_up"] = {"seconds": warm.get("seconds"), "images": warm.get("images"),
                                  "state": warm.get("state")}
                run["upload_12"] = api.upload_many(pick(12, 0))
                run["load_before_first"] = load()
                run["first_retrain"] = timed_retrain(api)
                if rep == 0:
                    run["upload_100"] = api.upload_many(pick(100, 2))
                    run["load_before_second"] = load()
                    run["retrain_after_100"] = timed_retrain(api)
                    code, body = api.retrain_raw(force=False)
                    run["unchanged_data"] = {"status_code": code, "error": body.get("error"),
                                             "detail": body.get("detail")}
                    before = api.models()
                    run["forced_unchanged"] = timed_retrain(api, force=True)
                    after = api.models()
                    run["live_before_forced"], run["live_after_forced"] = before["live"], after["live"]
                    frozen = {v["version"]: v["metrics"] if v["metrics"].get("source") == "frozen" else {}
                              for v in after["versions"]}
                    run["live_frozen_before_after_forced"] = [
                        {k: frozen.get(v, {}).get(k) for k in ("accuracy", "macro_f1", "ood_rejected_rate")}
                        for v in (before["live"], after["live"])]
            finally:
                print(json.dumps(run, indent=1), file=sys.stderr, flush=True)
                args.json.parent.mkdir(exist_ok=True)
                args.json.write_text(json.dumps({"partial": True, "runs": runs}, indent=2) + "\n")
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
    firsts = [r["first_retrain"]["seconds_to_served"] or r["first_retrain"]["seconds_to_done"] for r in runs]
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
              "first_retrain_served_s_median": statistics.median(firsts), "first_retrain_served_s": firsts,
              "runs": runs}
    args.json.parent.mkdir(exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    r0 = runs[0]
    print("| step | result | seconds | load avg | percent monotonic |\n|---|---|---:|---:|---|")
    print(f"| first-start warm-up ({r0['warm_up']['images']} images into the cache) | {r0['warm_up']['state']} "
          f"| {r0['warm_up']['seconds']} | {r0['load_at_start']} | |")
    for key, label, load_key in (("first_retrain", "first retrain, 12 new photos", "load_before_first"),
                                 ("retrain_after_100", "retrain after 100 more photos", "load_before_second"),
                                 ("forced_unchanged", "forced retrain, unchanged data", None)):
        r = r0.get(key)
        if r:
            print(f"| {label} | {r['state']} | {r['seconds_to_served'] or r['seconds_to_done']} | "
                  f"{r0.get(load_key, '') if load_key else ''} | {r['percent_monotonic']} |")
    print(f"median first retrain over {len(firsts)} fresh store(s): {statistics.median(firsts)} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

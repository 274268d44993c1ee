#!/usr/bin/env python3
"""Do capture and a running shadow slow ``POST /predict``? Client-side latency over real HTTP,
same run, same images.

Five servers (uvicorn on 127.0.0.1, local backend, default model, fresh temporary stores, built as
``fruitpipe serve`` builds them) are measured in interleaved rounds, so machine load hits each
alike: capture off; capture on at the default sample rate (2 %); capture on for every request
(``sample_rate=1``: the worst case, each answer followed by an image shrink and two file writes);
and capture off with a shadow running (a second copy of the model as candidate) on 10 % of the
requests and on every request (each shadowed answer is followed by the candidate's part of an
inference on the shadow's worker, which reuses the answer's backbone outputs; the table counts
the requests the shadow saw and any it dropped).
One client, sequential requests, real 640x480 JPEG photos from ../shared.

    .venv/bin/python scripts/bench_capture.py            # 60 rounds x 10 requests per server
    .venv/bin/python scripts/bench_capture.py --rounds 5   # a quick look

Short turns (10 requests) spread a busy neighbour's bursts over all five servers alike; after each
turn the server's leftover capture writes and shadow work are waited for, untimed, so none of it
lands on the next server's requests (all five run in this one process).

Writes ``results/bench_capture.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
FRUITS = REPO.parent / "shared" / "data" / "fruits"
BACKBONE = REPO.parent / "shared" / "models" / "mobilenet_v2_1.0_224_int8"
if BACKBONE.is_dir():
    os.environ.setdefault("FRUITPIPE_BACKBONE", str(BACKBONE))


def photos(n: int) -> list[bytes]:
    """``n`` real test photos as 640x480 JPEGs (the size the predict benchmark uses)."""
    from PIL import Image
    paths = sorted(FRUITS.glob("test/*/*.jpg"))[::7][:n]
    out = []
    for p in paths:
        buf = io.BytesIO()
        Image.open(p).convert("RGB").resize((640, 480)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def start_shadow(app, store: Path, sample_rate: float) -> None:  # type: ignore[no-untyped-def]
    """Register a copy of the default model as a new version and shadow it on ``sample_rate`` of requests."""
    from fruitpipe import bundle
    from fruitpipe.models_path import default_model_dir
    src = default_model_dir()
    m = bundle.verify(src)
    raw = dict(m.to_dict(), version="v20990101-000000-shadow", created="2099-01-01T00:00:00Z")
    bundle.write(store / "models" / "versions" / raw["version"], bundle.Manifest.from_dict(raw),
                 {name: (src / name).read_bytes() for name in m.files})
    app.state.fruitpipe.shadow.start(raw["version"], requests=10**9, seconds=10**6, sample_rate=sample_rate)


@contextmanager
def server(store: Path, policy, shadow: float = 0.0) -> Iterator[tuple[str, object]]:  # type: ignore[no-untyped-def]
    from fruitpipe.api.app import create_app
    from fruitpipe.api.server import in_thread
    from fruitpipe.api.settings import Settings
    from fruitpipe.backends.local import create_local_backend
    app = create_app(create_local_backend(store), Settings(token_provider=lambda: "bench", capture=policy))
    if shadow:
        start_shadow(app, store, shadow)
    with in_thread(app) as url:
        yield url, app


def thread_cpu_seconds(thread) -> float | None:  # type: ignore[no-untyped-def]
    """CPU time (user + system) a thread of this process has used, from Linux's
    ``/proc/self/task/<tid>/stat`` (fields 14 and 15, in clock ticks); None elsewhere."""
    try:
        fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
    except (AttributeError, OSError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--per-round", type=int, default=10, help="requests to one server before the next one's turn")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "bench_capture.json")
    args = ap.parse_args()
    from fruitpipe.capture import CapturePolicy
    configs = {"capture off": CapturePolicy(enabled=False),
               "capture on, default 2% sample": CapturePolicy(),
               "capture on, every request (worst case)": CapturePolicy(sample_rate=1.0, max_items=100_000),
               "shadow running, 10% sample": CapturePolicy(enabled=False),
               "shadow running, every request": CapturePolicy(enabled=False)}
    shadow_rate = {"shadow running, 10% sample": 0.1, "shadow running, every request": 1.0}
    images = photos(50)
    lat: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        servers = {name: stack.enter_context(server(Path(tmp) / f"s{i}", policy, shadow_rate.get(name, 0.0)))
                   for i, (name, policy) in enumerate(configs.items())}
        clients = {name: stack.enter_context(httpx.Client(base_url=url, timeout=30))
                   for name, (url, _) in servers.items()}
        for name, c in clients.items():  # warm-up
            for img in images[:5]:
                c.post("/predict", files={"file": ("w.jpg", img, "image/jpeg")}).raise_for_status()
        for rnd in range(args.rounds):
            for name, c in clients.items():
                for img in images[(rnd * args.per_round) % len(images):][:args.per_round]:
                    t0 = time.perf_counter()
                    c.post("/predict", files={"file": ("p.jpg", img, "image/jpeg")}).raise_for_status()
                    lat[name].append((time.perf_counter() - t0) * 1000)
                # untimed: this server's leftover capture and shadow work ends before the next one's turn
                state = servers[name][1].state.fruitpipe  # type: ignore[attr-defined]
                state.capture.flush()
                state.shadow.flush()
        kept = {name: len(list((Path(tmp) / f"s{i}" / "capture").glob("*.json")))
                for i, name in enumerate(configs)}
        shadowed = {}
        for name, (_, app) in servers.items():
            shadow = app.state.fruitpipe.shadow  # type: ignore[attr-defined]
            shadow.flush()
            state = shadow.state(force=True)
            if state:
                cpu = thread_cpu_seconds(shadow._worker.thread)  # the shadow's worker thread
                shadowed[name] = {"shadowed": state["seen"]["n"], "dropped": shadow.dropped,
                                  "shadow_cpu_ms_per_request": round(1000 * cpu / max(1, state["seen"]["n"]), 2)
                                  if cpu is not None else None,
                                  "live_p95_inference_ms": state["seen"]["live_p95_ms"],
                                  "shadow_p95_inference_ms": state["seen"]["shadow_p95_ms"]}
    base = pct(lat["capture off"], 0.95)
    rows = {name: {"n": len(v), "p50_ms": pct(v, 0.5), "p95_ms": pct(v, 0.95), "mean_ms": round(statistics.mean(v), 2),
                   "p95_vs_off": round(pct(v, 0.95) / base, 3), "captures_kept": kept[name],
                   **shadowed.get(name, {})}
            for name, v in lat.items()}
    result = {"what": "client-side POST /predict latency over HTTP, 640x480 JPEG, sequential, interleaved rounds",
              "command": "python scripts/bench_capture.py" + ("" if (args.rounds, args.per_round) == (60, 10)
                                                             else f" --rounds {args.rounds} --per-round {args.per_round}"),
              "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
              "load_average_at_end": list(os.getloadavg()), "python": platform.python_version(), "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, r in rows.items():
        extra = (f"  shadowed {r['shadowed']} dropped {r['dropped']}, worker CPU "
                 f"{r['shadow_cpu_ms_per_request']} ms each" if "shadowed" in r else "")
        print(f"{name:42s} p50 {r['p50_ms']:7.2f} ms  p95 {r['p95_ms']:7.2f} ms  ({r['p95_vs_off']:.2f}x)  "
              f"kept {r['captures_kept']}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

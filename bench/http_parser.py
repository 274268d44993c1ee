"""Median latency of sequential ``GET /health`` and ``POST /predict`` under uvicorn with the
httptools parser vs the h11 configuration ``fruitpipe serve`` uses (fruitpipe/api/server.py).

    PYTHONPATH=. .venv/bin/python bench/http_parser.py [--rounds 2]

Needs ../shared (a real photo and the test store) and httptools (`pip install httptools`; not a
dependency any more). Run on an idle machine: the figures are a few
milliseconds and noise from other processes swamps them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from fruitpipe.api.server import uvicorn_config
from tests.service_support import free_port, fruit, make_app, make_backend


def run(parser: str) -> dict[str, float]:
    app = make_app(make_backend(Path(tempfile.mkdtemp()) / "store"))
    port = free_port()
    common = {"log_level": "warning", "access_log": False}
    config = (uvicorn_config(app, "127.0.0.1", port, **common) if parser == "h11"
              else uvicorn.Config(app, host="127.0.0.1", port=port, http="httptools", **common))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    image = fruit("freshapples")
    out = {}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        for path, n in (("/health", 300), ("/predict", 100)):
            latencies = []
            for i in range(n + 10):  # the first 10 warm up
                t0 = time.perf_counter()
                r = (c.post(path, files={"file": ("a.jpg", image, "image/jpeg")}) if path == "/predict"
                     else c.get(path))
                assert r.status_code == 200, r.text
                if i >= 10:
                    latencies.append((time.perf_counter() - t0) * 1000)
            out[path] = round(statistics.median(latencies), 2)
    server.should_exit = True
    thread.join(10)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    for _ in range(args.rounds):
        for parser in ("httptools", "h11"):
            print(parser, "median ms", run(parser), flush=True)


if __name__ == "__main__":
    main()

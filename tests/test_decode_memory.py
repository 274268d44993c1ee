"""Server memory under parallel worst-case decodes, through the real HTTP server.

``fruitpipe serve`` runs as its own process (uvicorn on 127.0.0.1); four clients at once send
each of the costliest images the intake accepts (a lossless WebP with alpha just under
``MAX_DECODE_BYTES``: about 300 MB to decode) to ``/predict`` and to ``/upload-training-data``,
plus the field case that is refused from its header. The server's RSS, sampled every 10 ms, must
stay under 1 GiB: the decode budget queues the costly decodes instead of running four at once.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from PIL import Image, ImageDraw

from fruitpipe import imaging

from .conftest import BACKBONE_DIR, REPO, needs_shared
from .intake_support import case, needs_cases
from .service_support import TOKEN, free_port

pytestmark = [pytest.mark.slow, needs_shared, needs_cases]
RSS_BOUND = 1024 * 1024 * 1024  # the target: 1 GiB with four parallel worst-case decodes
PARALLEL = 4


def worst_accepted_webp() -> bytes:
    """A lossless RGBA WebP whose estimated decode cost is just under the limit (about 20 MP)."""
    per_pixel = 4 * imaging.DECODER_COPIES["WEBP"] + 4
    pixels = (imaging.MAX_DECODE_BYTES - imaging.DECODER_FIXED_BYTES) // per_pixel
    width = int((pixels * 4 / 3) ** 0.5) // 16 * 16
    height = min(width * 3 // 4, pixels // width)
    img = Image.new("RGBA", (width, height), (240, 240, 240, 0))
    ImageDraw.Draw(img).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(200, 30, 30, 255))
    out = io.BytesIO()
    img.save(out, "WEBP", lossless=True, quality=0, method=0)
    data = out.getvalue()
    opened = imaging.open_image(data)
    assert imaging.MAX_DECODE_BYTES * 0.95 < imaging.decode_cost(opened) <= imaging.MAX_DECODE_BYTES
    return data


def serve(store) -> tuple[subprocess.Popen, str]:  # type: ignore[no-untyped-def]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "FRUITPIPE_ADMIN_TOKEN": TOKEN,
           "FRUITPIPE_BACKBONE": str(BACKBONE_DIR)}
    proc = subprocess.Popen([sys.executable, "-m", "fruitpipe", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--store", str(store), "--workers", "2", "--log-level", "warning"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("fruitpipe serve did not start: " + proc.stderr.read().decode()[-2000:])


def test_parallel_worst_case_decodes_stay_under_1_gib(tmp_path):
    big = worst_accepted_webp()
    costly = case("costly-decode-lossless-alpha.webp")
    proc, url = serve(tmp_path / "store")
    server = psutil.Process(proc.pid)
    peak, idle = [0], server.memory_info().rss
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], server.memory_info().rss)
            time.sleep(0.01)

    def predict(data: bytes) -> int:
        return httpx.post(url + "/predict", files={"file": ("x.webp", data, "image/webp")}, timeout=120).status_code

    def upload(data: bytes) -> int:
        return httpx.post(url + "/upload-training-data", data={"class_name": "freshapples"},
                          files={"files": ("x.webp", data, "image/webp")},
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120).status_code

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with ThreadPoolExecutor(PARALLEL * 2) as pool:
            statuses = list(pool.map(predict, [big] * PARALLEL + [costly] * PARALLEL))
            statuses += list(pool.map(upload, [big] * PARALLEL + [costly] * PARALLEL))
    finally:
        stop.set()
        sampler.join()
        proc.terminate()
        proc.wait(10)
    print(f"server RSS idle {idle / 2**20:.0f} MB, peak {peak[0] / 2**20:.0f} MB "
          f"({PARALLEL} parallel worst-case decodes, bound {RSS_BOUND / 2**20:.0f} MB)")
    assert statuses[:PARALLEL] == [200] * PARALLEL and statuses[PARALLEL:2 * PARALLEL] == [413] * PARALLEL
    assert statuses[2 * PARALLEL:3 * PARALLEL] == [200] * PARALLEL  # added (or a duplicate of the same picture)
    assert statuses[3 * PARALLEL:] == [400] * PARALLEL  # upload of only a refused file: all_rejected
    assert peak[0] <= RSS_BOUND, f"peak RSS {peak[0] / 2**20:.0f} MB"

"""Load-test scenarios (run headless by ``scripts/load_test.py``; also usable with ``locust -f``).

* ``ReferenceUser``: the reference project's scenario: each user waits 1-3 s between requests;
  ``/predict`` : ``/health`` : ``/model-info`` = 10 : 2 : 1; real fruit photos from ``../shared``
  resized to 640x480 JPEGs (a phone-ish upload).
* ``CapacityUser``: no wait, ``/predict`` only: the throughput ceiling.

The multipart bodies are built once at start so the load generator spends its CPU on sending.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

from locust import FastHttpUser, between, constant, task
from PIL import Image

SHARED = Path(os.environ.get("FRUITPIPE_SHARED", Path(__file__).resolve().parent.parent / "shared"))
BOUNDARY = "fruitpipeloadtest7e1d"


def _bodies(n: int = 24) -> list[bytes]:
    photos = sorted((SHARED / "data" / "fruits" / "test").glob("*/*.jpg"))
    if not photos:
        raise SystemExit(f"no fruit photos under {SHARED}/data/fruits/test")
    random.Random(0).shuffle(photos)
    out = []
    for path in photos[:n]:
        buf = io.BytesIO()
        Image.open(path).convert("RGB").resize((640, 480), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=90)
        out.append((f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
                    "Content-Type: image/jpeg\r\n\r\n").encode() + buf.getvalue() + f"\r\n--{BOUNDARY}--\r\n".encode())
    return out


BODIES = _bodies()
HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


class _Predicting(FastHttpUser):
    abstract = True

    def post_image(self) -> None:
        self.client.post("/predict", data=random.choice(BODIES), headers=HEADERS, name="/predict")


class ReferenceUser(_Predicting):
    wait_time = between(1, 3)

    @task(10)
    def predict(self) -> None:
        self.post_image()

    @task(2)
    def health(self) -> None:
        self.client.get("/health")

    @task(1)
    def model_info(self) -> None:
        self.client.get("/model-info")


class CapacityUser(_Predicting):
    wait_time = constant(0)

    @task
    def predict(self) -> None:
        self.post_image()

"""A server built the way the reference project served its model, for load-test comparison.

FastAPI with Keras' float MobileNetV2 and ``model.predict`` called inside an ``async def``
handler, exactly the pattern that serialises every request on the event loop. ``weights=None``
(no ImageNet download here; the weights do not change the speed). Same routes as ours for the
load-test scenario: ``POST /predict``, ``GET /health``, ``GET /model-info``.

    python bench/reference_server.py --port 8001
"""

from __future__ import annotations

import argparse
import io
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, File, UploadFile  # noqa: E402
from PIL import Image  # noqa: E402

LABELS = ["freshapples", "freshbanana", "freshoranges", "rottenapples", "rottenbanana", "rottenoranges"]

base = tf.keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False, weights=None, pooling="avg")
model = tf.keras.Sequential([base, tf.keras.layers.Dense(len(LABELS), activation="softmax")])
model.predict(np.zeros((1, 224, 224, 3), np.float32), verbose=0)  # build + warm up
app = FastAPI(title="reference-style server")
START = time.time()
COUNT = 0


@app.post("/predict")
async def predict(file: UploadFile = File(...)):  # noqa: B008
    global COUNT
    data = await file.read()
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224))
    x = tf.keras.applications.mobilenet_v2.preprocess_input(np.asarray(img, np.float32)[None])
    probs = model.predict(x, verbose=0)[0]  # blocks the event loop, as the reference did
    COUNT += 1
    i = int(np.argmax(probs))
    return {"predicted_class": LABELS[i], "confidence": float(probs[i]),
            "probabilities": {c: float(p) for c, p in zip(LABELS, probs)}}


@app.get("/health")
async def health():
    return {"status": "ok", "uptime_seconds": time.time() - START, "predictions": COUNT}


@app.get("/model-info")
async def model_info():
    return {"model": "MobileNetV2 float (Keras), weights=None", "labels": LABELS}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    a = p.parse_args()
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False)

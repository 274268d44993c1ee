#!/usr/bin/env python3
"""Benchmark the API Lambda handler as Lambda runs it (moto server on 127.0.0.1 for S3).

    python scripts/bench_lambda.py [--n 300] [--out results/bench_lambda.json]

* warm: the handler called with an API Gateway HTTP API (v2) and a REST (v1) event carrying a
  base64 multipart 640x480 JPEG, median over ``--n`` calls; baseline in the same process:
  ``Classifier.predict_bytes`` on the same bytes (the model alone), and the ratio.
* init: a fresh process importing the handler and building the app (backbone + live model load),
  median of ``--init-runs``: once with the venv, once with pyenv's CPython 3.12 and only the built
  Lambda assets on its path (as in Lambda), when they are built.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
FRUITS = REPO.parent / "shared" / "data" / "fruits"
os.environ.setdefault("FRUITPIPE_BACKBONE", str(REPO.parent / "shared" / "models" / "mobilenet_v2_1.0_224_int8"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_aws() -> tuple[object, dict[str, str]]:
    from moto.server import ThreadedMotoServer
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    import boto3
    s = uuid.uuid4().hex[:8]
    env = {"FRUITPIPE_DATA_BUCKET": f"data-{s}", "FRUITPIPE_MODELS_BUCKET": f"models-{s}",
           "FRUITPIPE_STATE_TABLE": f"state-{s}", "FRUITPIPE_MODEL_REFRESH_SECONDS": "60"}
    boto3.client("s3").create_bucket(Bucket=env["FRUITPIPE_DATA_BUCKET"])
    boto3.client("s3").create_bucket(Bucket=env["FRUITPIPE_MODELS_BUCKET"])
    boto3.client("dynamodb").create_table(
        TableName=env["FRUITPIPE_STATE_TABLE"], KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    os.environ.update(env)
    return server, env


def photo_640x480() -> bytes:
    from PIL import Image
    path = sorted((FRUITS / "test" / "freshapples").glob("*.jpg"))[0]
    out = io.BytesIO()
    Image.open(path).convert("RGB").resize((640, 480)).save(out, "JPEG", quality=90)
    return out.getvalue()


def multipart(data: bytes) -> tuple[bytes, str]:
    b = "bench-boundary-1234"
    body = (f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="photo.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def v2_event(body: bytes, ctype: str) -> dict:
    return {"version": "2.0", "routeKey": "$default", "rawPath": "/predict", "rawQueryString": "",
            "headers": {"content-type": ctype, "content-length": str(len(body)), "host": "x.execute-api.aws"},
            "requestContext": {"http": {"method": "POST", "path": "/predict", "protocol": "HTTP/1.1",
                                        "sourceIp": "1.2.3.4", "userAgent": "bench"},
                               "stage": "$default", "requestId": "r", "routeKey": "$default",
                               "accountId": "1", "apiId": "x", "domainName": "x.execute-api.aws",
                               "timeEpoch": 0},
            "body": base64.b64encode(body).decode(), "isBase64Encoded": True}


def v1_event(body: bytes, ctype: str) -> dict:
    headers = {"Content-Type": ctype, "Content-Length": str(len(body)), "Host": "x.execute-api.aws"}
    return {"resource": "/{proxy+}", "path": "/predict", "httpMethod": "POST", "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()}, "queryStringParameters": None,
            "multiValueQueryStringParameters": None, "pathParameters": {"proxy": "predict"},
            "stageVariables": None,
            "requestContext": {"resourcePath": "/{proxy+}", "httpMethod": "POST", "path": "/prod/predict",
                               "stage": "prod", "requestId": "r", "accountId": "1", "apiId": "x",
                               "identity": {"sourceIp": "1.2.3.4"}},
            "body": base64.b64encode(body).decode(), "isBase64Encoded": True}


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def summary(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"median_ms": round(statistics.median(ms), 2), "p90_ms": round(ms[int(len(ms) * 0.9)], 2),
            "min_ms": round(ms[0], 2), "n": len(ms)}


INIT_SNIPPET = ("import time,sys; t=time.perf_counter(); sys.path.insert(0, %r); "
                "from functions.api import handler as m; t1=time.perf_counter(); m._app=m.build(); "
                "t2=time.perf_counter(); print(t1-t, t2-t1)")


def init_venv(runs: int) -> dict[str, float]:
    imports, builds = [], []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", INIT_SNIPPET % str(REPO)], capture_output=True, text=True,
                             check=True, env=os.environ.copy())
        # the handler's EMF metrics (e.g. ColdStart) also go to stdout: the timings are the last line
        a, b = map(float, out.stdout.strip().splitlines()[-1].split())
        imports.append(a * 1000)
        builds.append(b * 1000)
    return {"import_ms": round(statistics.median(imports), 1), "build_ms": round(statistics.median(builds), 1),
            "total_ms": round(statistics.median([a + b for a, b in zip(imports, builds)]), 1), "runs": runs}


def init_lambda_assets(runs: int) -> dict[str, float] | None:
    build = REPO / "layers" / "build"
    layer, function, runtime = build / "x86_64" / "python", build / "function", build / "runtime-x86_64"
    if not (layer.is_dir() and function.is_dir() and runtime.is_dir()):
        return None
    image = sorted((FRUITS / "test" / "freshapples").glob("*.jpg"))[0]
    env = {**os.environ, "PYENV_VERSION": "3.12.1", "FRUITPIPE_BACKBONE": str(function / "backbone")}
    times = []
    for _ in range(runs):
        out = subprocess.run(["python3.12", "-I", "-S", str(REPO / "scripts" / "lambda_smoke.py"), str(function),
                              str(layer), str(runtime), str(image)], capture_output=True, text=True, env=env,
                             check=True)
        times.append(json.loads(out.stdout.strip().splitlines()[-1])["init_s"] * 1000)
    return {"total_ms": round(statistics.median(times), 1), "runs": runs, "python": "3.12.1 -I -S, layer + function only"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--init-runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "bench_lambda.json")
    args = ap.parse_args()
    server, _ = setup_aws()
    try:
        from fruitpipe.classifier import Classifier
        from fruitpipe.models_path import default_model_dir
        from functions.api import handler as module
        image = photo_640x480()
        body, ctype = multipart(image)
        module._app = module.build()
        ev2, ev1 = v2_event(body, ctype), v1_event(body, ctype)
        for ev in (ev2, ev1):
            resp = module.handler(ev, None)
            assert resp["statusCode"] == 200, resp
        clf = Classifier(default_model_dir(), num_threads=1)
        for _ in range(20):  # warm-up
            module.handler(ev2, None)
            clf.predict_bytes(image)
        # interleave rounds so machine noise hits all three alike
        v2, v1, base = [], [], []
        for _ in range(args.n // 10):
            v2 += timed(lambda: module.handler(ev2, None), 10)
            v1 += timed(lambda: module.handler(ev1, None), 10)
            base += timed(lambda: clf.predict_bytes(image), 10)
        warm = {"http_api_v2": summary(v2), "rest_v1": summary(v1), "baseline_predict_bytes": summary(base)}
        warm["ratio_v2_to_baseline"] = round(warm["http_api_v2"]["median_ms"] / warm["baseline_predict_bytes"]["median_ms"], 2)
        warm["handler_overhead_ms"] = round(warm["http_api_v2"]["median_ms"] - warm["baseline_predict_bytes"]["median_ms"], 2)
        init = {"venv": init_venv(args.init_runs), "lambda_assets_py312": init_lambda_assets(args.init_runs)}
    finally:
        server.stop()
    result = {"machine": f"{platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}",
              "load_average_1m_at_end": round(os.getloadavg()[0], 1),
              "image": "640x480 JPEG, base64 multipart", "request_bytes": len(body),
              "warm": warm, "init": init, "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

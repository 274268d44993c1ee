"""Run inside an isolated CPython 3.12 (``python3.12 -I -S``) with only the Lambda assets on
``sys.path``: import the API handler as Lambda would, classify one image, print one JSON line.

    python3.12 -I -S scripts/lambda_smoke.py FUNCTION_DIR LAYER_DIR RUNTIME_DIR IMAGE

``RUNTIME_DIR`` stands in for what the Lambda runtime itself provides (boto3). The environment
(buckets, AWS_ENDPOINT_URL, FRUITPIPE_BACKBONE) comes from the caller.
"""

import base64
import json
import sys
import time

function_dir, layer_dir, runtime_dir, image_path = sys.argv[1:5]
sys.path[:0] = [function_dir, layer_dir, runtime_dir]
t0 = time.perf_counter()
from functions.api import handler as module  # noqa: E402

module._app = module.build()
init_s = time.perf_counter() - t0

data = open(image_path, "rb").read()
boundary = "smoke-boundary"
body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
event = {
    "version": "2.0", "routeKey": "$default", "rawPath": "/predict", "rawQueryString": "",
    "headers": {"content-type": f"multipart/form-data; boundary={boundary}", "host": "x.execute-api.aws"},
    "requestContext": {"http": {"method": "POST", "path": "/predict", "protocol": "HTTP/1.1",
                                "sourceIp": "1.2.3.4"}, "stage": "$default", "requestId": "r",
                       "routeKey": "$default", "accountId": "1", "apiId": "x", "domainName": "x",
                       "timeEpoch": 0},
    "body": base64.b64encode(body).decode(), "isBase64Encoded": True,
}
resp = module.handler(event, None)
import numpy, PIL, ai_edge_litert, fastapi  # noqa: E401,E402

print(json.dumps({"status": resp["statusCode"], "body": json.loads(resp["body"]), "init_s": init_s,
                  "python": sys.version.split()[0], "paths": {
                      "numpy": numpy.__file__, "PIL": PIL.__file__, "litert": ai_edge_litert.__file__,
                      "fastapi": fastapi.__file__, "fruitpipe": sys.modules["fruitpipe"].__file__}}))

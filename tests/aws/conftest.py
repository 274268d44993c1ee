"""A moto server on 127.0.0.1 (random port) for boto3, with the stack's buckets and table."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*FAKE_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(FAKE_ENV)
    os.environ["AWS_ENDPOINT_URL"] = url
    try:
        yield url
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def aws(moto_server: str, tmp_path: Path) -> dict[str, Any]:
    """Fresh buckets, table and secret for one test (names are unique, the server is shared)."""
    import boto3
    suffix = uuid.uuid4().hex[:8]
    s3 = boto3.client("s3")
    names = {"data": f"data-{suffix}", "models": f"models-{suffix}", "table": f"state-{suffix}"}
    s3.create_bucket(Bucket=names["data"])
    s3.put_bucket_versioning(Bucket=names["data"], VersioningConfiguration={"Status": "Enabled"})  # as deployed
    s3.create_bucket(Bucket=names["models"])
    s3.put_bucket_versioning(Bucket=names["models"], VersioningConfiguration={"Status": "Enabled"})
    ddb = boto3.client("dynamodb")
    ddb.create_table(TableName=names["table"], KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                     BillingMode="PAY_PER_REQUEST")
    sm = boto3.client("secretsmanager")
    secret = sm.create_secret(Name=f"token-{suffix}", SecretString="s3cret-token")["ARN"]
    env = {"FRUITPIPE_DATA_BUCKET": names["data"], "FRUITPIPE_MODELS_BUCKET": names["models"],
           "FRUITPIPE_STATE_TABLE": names["table"], "FRUITPIPE_ADMIN_TOKEN_SECRET": secret}
    return {"s3": s3, "ddb": ddb, "sm": sm, "secret": secret, "env": env, "cache": tmp_path / "models", **names}


def counter(aws: dict[str, Any]) -> int:
    item = aws["ddb"].get_item(TableName=aws["table"], Key={"id": {"S": "new-images"}}).get("Item") or {}
    return int(item.get("count", {}).get("N", "0"))


def keys(aws: dict[str, Any], prefix: str = "") -> list[str]:
    resp = aws["s3"].list_objects_v2(Bucket=aws["data"], Prefix=prefix)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def object_created_event(bucket: str, key: str, size: int, *, encode: bool = False,
                         version_id: str | None = None, etag: str | None = None) -> dict[str, Any]:
    """An EventBridge ``Object Created`` event as S3 sends it: the key as stored (``encode=True``:
    form-encoded, as S3's own SNS/SQS/Lambda notifications carry it), ``version-id`` on a
    versioned bucket. Without ``version_id``/``etag`` the object's current ones are filled in
    when it exists (what S3 would have sent for it)."""
    from urllib.parse import quote_plus
    if version_id is None and etag is None:
        import boto3
        try:
            head = boto3.client("s3").head_object(Bucket=bucket, Key=key)
            version_id, etag = head.get("VersionId"), head["ETag"].strip('"')
        except Exception:  # noqa: BLE001 - no such object (yet): an event without them
            pass
    obj: dict[str, Any] = {"key": quote_plus(key, safe="/") if encode else key, "size": size,
                           "etag": etag or "d41d8cd98f00b204e9800998ecf8427e", "sequencer": "0062E99A88DC407460"}
    if version_id and version_id != "null":
        obj["version-id"] = version_id
    return {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "Object Created", "source": "aws.s3",
        "account": "123456789012", "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": "us-east-1", "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0", "bucket": {"name": bucket},
            "object": obj,
            "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012",
            "source-ip-address": "1.2.3.4", "reason": "PutObject",
        },
    }


class FakeContext:
    function_name = "fruitpipe-ingest"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:fruitpipe-ingest"
    memory_limit_in_mb = 1024
    aws_request_id = "req-1"
    log_group_name = "/aws/lambda/fruitpipe"
    log_stream_name = "stream"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def jpeg(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A real photo from ../shared resized to width x height (seed picks the photo)."""
    from PIL import Image
    from tests.conftest import fruit_images
    photos = fruit_images("test", per_class=3)
    _, path = photos[seed % len(photos)]
    img = Image.open(path).convert("RGB").resize((width, height))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


def multipart(fields: dict[str, str], files: list[tuple[str, str, bytes, str]]) -> tuple[bytes, str]:
    boundary = "----fruitpipe" + uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for field, filename, data, ctype in files:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                  f"Content-Type: {ctype}\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def http_api_event(method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None,
                   query: str = "") -> dict[str, Any]:
    """An API Gateway HTTP API (payload format 2.0) event, binary bodies base64-encoded."""
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    headers.setdefault("host", "abc123.execute-api.us-east-1.amazonaws.com")
    if body is not None:
        headers["content-length"] = str(len(body))
    now = datetime.now(timezone.utc)
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012", "apiId": "abc123", "domainName": headers["host"],
            "domainPrefix": "abc123", "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                                               "sourceIp": "1.2.3.4", "userAgent": "pytest"},
            "requestId": uuid.uuid4().hex, "routeKey": "$default", "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"), "timeEpoch": int(now.timestamp() * 1000),
        },
        "body": base64.b64encode(body).decode() if body is not None else None,
        "isBase64Encoded": body is not None,
    }


def response_json(resp: dict[str, Any]) -> Any:
    body = resp.get("body") or ""
    if resp.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return json.loads(body) if body else None

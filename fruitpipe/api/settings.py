"""Settings of the HTTP app: limits, model refresh interval, the admin token provider.

Kept as a plain dataclass (no environment magic) so the AWS entry point can build one from its
own configuration and plug in its own token provider (SSM / Secrets Manager).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import imaging
from ..capture import CapturePolicy
from ..rollback import RollbackBars
from ..shadow import Bounds

TOKEN_ENV = "FRUITPIPE_ADMIN_TOKEN"
TOKEN_FILE = "admin-token"

MULTIPART_OVERHEAD = 64 * 1024  # part headers and boundaries around the files of one request
MAX_JSON_BYTES = 64 * 1024  # every route without files (JSON or no body at all)

# What a request body can be when it travels API Gateway (HTTP API) -> Lambda:
# * Lambda's synchronous invoke payload is at most 6 MB = 6,291,456 bytes (Lambda Invoke API
#   reference; the error names "6291456 bytes"), and that payload is the whole event JSON;
# * API Gateway base64-encodes a binary body (multipart/form-data is one) into that event, so
#   every 3 body bytes take 4 (payload format 2.0, ``isBase64Encoded``);
# * the rest of the event is bounded by the HTTP API quota "total combined size of request line
#   and header values: 10240 bytes" plus the request context; 16 KiB covers both;
# * the HTTP API's own payload limit, 10 MB, is therefore never the binding one.
LAMBDA_PAYLOAD_BYTES = 6 * 1024 * 1024
LAMBDA_EVENT_OVERHEAD = 16 * 1024
LAMBDA_MAX_BODY_BYTES = (LAMBDA_PAYLOAD_BYTES - LAMBDA_EVENT_OVERHEAD) // 4 * 3  # 4,706,304 bytes


@dataclass
class Settings:
    # seconds between checks of the registry's live pointer (local: cheap stat; AWS: 60)
    model_refresh_seconds: float = 1.0
    # returns the admin token, or None when writes are disabled
    token_provider: Callable[[], str | None] = field(default=lambda: os.environ.get(TOKEN_ENV) or None)
    max_file_bytes: int = imaging.MAX_BYTES  # one image
    max_files: int = 64  # per upload / batch request
    max_batch_files: int = 32  # per /predict/batch request (one inference batch)
    # LiteRT interpreters in the shared pool: one per core serves that many predictions at once
    inference_workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    inference_threads: int = 1  # threads per interpreter
    backbone_path: Path | None = None
    latency_window: int = 2000  # recent /predict latencies kept for the dashboard's p50/p95
    title: str = "fruitpipe"
    # the most a request body can be on the way to this app (None: no cap beyond the routes' own);
    # on AWS it is LAMBDA_MAX_BODY_BYTES, and bigger files go through a presigned S3 upload
    max_request_bytes: int | None = None
    # where bigger files go instead (named in the 413 the transport cap causes), e.g. /upload-url
    large_upload_route: str | None = None
    # which predictions are kept for review, and for how long (FRUITPIPE_CAPTURE* variables)
    capture: CapturePolicy = field(default_factory=CapturePolicy.from_env)
    # POST /feedback: per client address, at most this many per minute (burst: the same number)
    feedback_per_minute: int = 20
    # label-based accuracy (GET /review/accuracy, metrics): reviews of the last this many days
    accuracy_window_days: float = 7.0
    # what a shadowed candidate must show before it is promoted (fruitpipe.shadow)
    shadow_bounds: Bounds = field(default_factory=Bounds)
    # when the model that became live last is rolled back automatically (fruitpipe.rollback)
    rollback_bars: RollbackBars = field(default_factory=RollbackBars)

    def files_per_request(self, route: str) -> int | None:
        """How many image files the route (a path template such as ``/predict``) takes at most;
        None for routes that take no files."""
        return {"/predict": 1, "/predict/batch": self.max_batch_files,
                "/upload-training-data": self.max_files}.get(route)

    def body_limit(self, route: str) -> int:
        """The largest request body in bytes the route accepts: its files at ``max_file_bytes``
        each plus multipart overhead, or :data:`MAX_JSON_BYTES` for routes without files;
        never more than ``max_request_bytes``."""
        files = self.files_per_request(route)
        limit = self.max_file_bytes * files + MULTIPART_OVERHEAD if files else MAX_JSON_BYTES
        return min(limit, self.max_request_bytes) if self.max_request_bytes else limit


def local_token(store: Path, *, announce: Callable[[str], None] | None = None) -> str:
    """``$FRUITPIPE_ADMIN_TOKEN``, else ``<store>/admin-token`` (created once, mode 0600).

    The token itself is never passed to ``announce``: only where it was written. A token file
    that others can read (e.g. restored from a backup as 0644) is set back to 0600.
    """
    env = os.environ.get(TOKEN_ENV)
    if env:
        return env
    path = Path(store) / TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if token:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
            if announce:
                announce(f"{path} was readable by others; set it to mode 0600")
        return token
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it a moment ago (or an empty file is there)
        existing = path.read_text(encoding="utf-8").strip()
        if existing:
            return existing
        path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    if announce:
        announce(f"generated an admin token in {path} (mode 0600)")
    return token

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

TOKEN_ENV = "FRUITPIPE_ADMIN_TOKEN"
TOKEN_FILE = "admin-token"


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

    @property
    def max_single_request_bytes(self) -> int:
        return self.max_file_bytes + 64 * 1024  # one file plus multipart overhead

    @property
    def max_multi_request_bytes(self) -> int:
        return self.max_file_bytes * self.max_files + 64 * 1024


def local_token(store: Path, *, announce: Callable[[str], None] | None = None) -> str:
    """``$FRUITPIPE_ADMIN_TOKEN``, else ``<store>/admin-token`` (created once, mode 0600)."""
    env = os.environ.get(TOKEN_ENV)
    if env:
        return env
    path = Path(store) / TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it a moment ago
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    if announce:
        announce(f"generated an admin token in {path}")
    return token

"""The HTTP client of a fruitpipe server (local ``fruitpipe serve`` or the AWS API alike).

Used by ``fruitpipe upload|retrain|models --api URL`` and the benchmarks. Only the public API:
``/upload-training-data``, ``/retrain``, ``/retraining-status``, ``/models``,
``/models/{version}/activate``, ``/models/{version}/shadow[/stop]``, ``/predict``. HTTP and
multipart encoding are urllib3's.
"""

from __future__ import annotations

import json
import mimetypes
import os
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

import urllib3

TOKEN_ENVS = ("FRUITPIPE_TOKEN", "FRUITPIPE_ADMIN_TOKEN")
DEFAULT_API = "http://127.0.0.1:8000"
MAX_FILES = 64  # per upload request: the server's Settings.max_files
# Per upload request: API Gateway + Lambda take ~6 MB of base64-encoded body, so 4 MB of files.
MAX_REQUEST_BYTES = 4 * 1024 * 1024


class ClientError(RuntimeError):
    """An answer other than 2xx (``status`` 0: no answer at all), with the server's error code."""

    def __init__(self, status: int, code: str, detail: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"HTTP {status} {code}: {detail}" if status else detail)
        self.status, self.code, self.detail, self.body = status, code, detail, body or {}


def find_token(token: str | None = None, token_file: Path | None = None) -> str | None:
    """``token``, else ``$FRUITPIPE_TOKEN`` / ``$FRUITPIPE_ADMIN_TOKEN``, else the first line of
    ``token_file`` (e.g. ``var/admin-token``, written by ``fruitpipe serve``), else None."""
    if token:
        return token
    for name in TOKEN_ENVS:
        if os.environ.get(name):
            return os.environ[name]
    if token_file is not None and Path(token_file).is_file():
        return Path(token_file).read_text(encoding="utf-8").strip() or None
    return None


class Client:
    """One fruitpipe server at ``base`` (e.g. ``http://127.0.0.1:8000``), admin ``token`` for writes."""

    def __init__(self, base: str, token: str | None = None, timeout: float = 120.0) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=10, read=timeout),
                                        retries=urllib3.Retry(total=2, connect=2, read=0, status=0))

    def _call(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        headers = dict(kw.pop("headers", {}))
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            r = self.http.request(method, self.base + path, headers=headers, **kw)
        except urllib3.exceptions.HTTPError as exc:
            cause = getattr(exc, "reason", None) or exc  # MaxRetryError wraps the last attempt's error
            if isinstance(cause, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)):
                raise ClientError(0, "unreachable", f"cannot reach {self.base}: is the server running?") from None
            # connected, but no (whole) answer: e.g. a read timeout
            raise ClientError(0, "no_answer", f"{self.base}{path}: no answer ({type(cause).__name__})") from None
        try:
            body = json.loads(r.data) if r.data else {}
        except ValueError:
            body = {"error": "not_json", "detail": r.data[:200].decode("utf-8", "replace")}
        return r.status, body if isinstance(body, dict) else {"value": body}

    def _ok(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        status, body = self._call(method, path, **kw)
        if not 200 <= status < 300:
            raise ClientError(status, str(body.get("error", "error")), str(body.get("detail", "")), body)
        return body

    # -- reads -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """``GET /retraining-status``."""
        return self._ok("GET", "/retraining-status")

    def models(self) -> dict[str, Any]:
        """``GET /models``: ``{"live", "versions": [...]}``."""
        return self._ok("GET", "/models")

    def predict(self, path: Path) -> dict[str, Any]:
        """``POST /predict`` of one image file."""
        return self._ok("POST", "/predict", fields={"file": _field(Path(path))})

    # -- writes (admin token) ---------------------------------------------------------------
    def retrain_raw(self, force: bool = False) -> tuple[int, dict[str, Any]]:
        """``POST /retrain[?force=true]`` as (status code, body), whatever the answer."""
        return self._call("POST", "/retrain" + ("?force=true" if force else ""))

    def retrain(self, force: bool = False) -> dict[str, Any]:
        """Start a retrain; :class:`ClientError` 409 ``retrain_running`` / ``nothing_new``."""
        status, body = self.retrain_raw(force)
        if status != 202:
            raise ClientError(status, str(body.get("error", "error")), str(body.get("detail", "")), body)
        return body

    def cancel(self) -> dict[str, Any]:
        """``POST /retrain/cancel``: the cancelled run's status; :class:`ClientError` 409 ``not_running``."""
        return self._ok("POST", "/retrain/cancel")

    def activate(self, version: str) -> dict[str, Any]:
        return self._ok("POST", f"/models/{quote(version, safe='')}/activate")

    def start_shadow(self, version: str, requests: int | None = None, seconds: float | None = None,
                     sample_rate: float | None = None) -> dict[str, Any]:
        """``POST /models/{version}/shadow`` (the options left out take the server's defaults): the
        shadow's state; :class:`ClientError` 409 ``shadow_running`` / ``version_rejected``, 404
        ``not_found``, 422 for bad numbers or the live version."""
        body = {k: v for k, v in (("requests", requests), ("seconds", seconds), ("sample_rate", sample_rate))
                if v is not None}
        return self._ok("POST", f"/models/{quote(version, safe='')}/shadow", json=body)

    def stop_shadow(self, version: str) -> dict[str, Any]:
        """``POST /models/{version}/shadow/stop``: the stopped shadow's final state;
        :class:`ClientError` 409 ``not_running``, 404 ``not_found``."""
        return self._ok("POST", f"/models/{quote(version, safe='')}/shadow/stop")

    def upload(self, label: str, files: Iterable[Path]) -> list[dict[str, Any]]:
        """``POST /upload-training-data`` in batches (<= 64 files, <= 4 MB each); the per-file
        results in order (``added``/``duplicate``/``rejected`` with the reason). A batch the
        server refuses as a whole (400 ``all_rejected``) still gives its per-file results."""
        results: list[dict[str, Any]] = []
        for batch in _batches([Path(f) for f in files]):
            fields = [("class_name", label)] + [("files", _field(f)) for f in batch]
            status, body = self._call("POST", "/upload-training-data", fields=fields)
            if 200 <= status < 300 or (status == 400 and isinstance(body.get("results"), list)):
                results += body.get("results", [])
            else:
                raise ClientError(status, str(body.get("error", "error")), str(body.get("detail", "")), body)
        return results

    def upload_many(self, by_label: dict[str, list[Path]]) -> dict[str, int]:
        """Upload several classes; counts of each per-file status."""
        counts: dict[str, int] = {}
        for label, files in by_label.items():
            for r in self.upload(label, files):
                counts[r["status"]] = counts.get(r["status"], 0) + 1
        return counts


def _field(path: Path) -> tuple[str, bytes, str]:
    return (path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream")


def _batches(files: list[Path]) -> Iterable[list[Path]]:
    batch: list[Path] = []
    size = 0
    for f in files:
        n = f.stat().st_size
        if batch and (len(batch) >= MAX_FILES or size + n > MAX_REQUEST_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(f)
        size += n
    if batch:
        yield batch

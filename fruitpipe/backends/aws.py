"""The AWS backend: S3 data store and model registry, Step Functions trainer, admin token in
Secrets Manager. Also the S3 drop-folder ingest used by ``functions/ingest``.

Layout (DESIGN §4): data bucket ``incoming/<class>/<name>`` → ``dataset/<class>/<sha256>.jpg`` or
``quarantine/<original key>`` + ``.reason.json``; models bucket ``versions/<v>/…`` (with
``manifest.sha256``, the manifest's checksum at publication), ``rejected/<v>/…`` (+ ``rejection.json``),
``live.json`` = ``{"version", "manifest_sha256", "updated", ...}``. The DynamoDB state table holds
``id="new-images"`` with a numeric ``count`` that ingest and uploads ``ADD`` to, in the same
transaction as the image's record ``id="image#<sha256>"`` (so each image counts exactly once).

boto3 honours ``AWS_ENDPOINT_URL`` (tests point it at a moto server on 127.0.0.1).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal
from urllib.parse import unquote_plus

from .. import bundle, dataset, imaging
from ..dataset import UnknownClass
from ..labels import LABELS
from .base import (Backend, DataStore, ModelRegistry, ModelVersion, NotFound, RetrainRunning,
                   RetrainStatus, Trainer, UploadResult)

try:  # added to base by the service branch; keep this module importable either way
    from .base import VersionRejected
except ImportError:  # pragma: no cover
    class VersionRejected(ValueError):  # type: ignore[no-redef]
        """Activating a version the gate rejected (HTTP 409)."""

LIVE_KEY = "live.json"
VERSIONS = "versions"
REJECTED = "rejected"
COUNTER_ID = "new-images"
IMAGE_RECORD = "image#"  # + sha256: one state-table item per filed image (counted once)
PRESIGN_SECONDS = 300  # a presigned upload is for now, not for later (S3 checks it when a POST arrives)
UPLOAD_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                ".heic": "image/heic", ".heif": "image/heif", ".avif": "image/avif"}
log = logging.getLogger("fruitpipe.aws")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class TrainerUnavailable(NotImplementedError):
    """This deployment has no retrain state machine (HTTP 501)."""


@dataclass(frozen=True)
class AwsConfig:
    data_bucket: str
    models_bucket: str
    state_table: str | None = None
    state_machine_arn: str | None = None
    admin_token_secret: str | None = None
    model_cache: Path = Path(tempfile.gettempdir()) / "fruitpipe-models"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "AwsConfig":
        env = dict(os.environ if env is None else env)
        missing = [k for k in ("FRUITPIPE_DATA_BUCKET", "FRUITPIPE_MODELS_BUCKET") if not env.get(k)]
        if missing:
            raise RuntimeError(f"missing environment: {', '.join(missing)}")
        return cls(data_bucket=env["FRUITPIPE_DATA_BUCKET"], models_bucket=env["FRUITPIPE_MODELS_BUCKET"],
                   state_table=env.get("FRUITPIPE_STATE_TABLE") or None,
                   state_machine_arn=env.get("FRUITPIPE_STATE_MACHINE_ARN") or None,
                   admin_token_secret=env.get("FRUITPIPE_ADMIN_TOKEN_SECRET") or None,
                   model_cache=Path(env.get("FRUITPIPE_MODEL_CACHE") or cls.model_cache))


def _client(service: str) -> Any:
    import boto3
    from botocore.config import Config
    cfg = Config(retries={"max_attempts": 3, "mode": "standard"},
                 signature_version="s3v4" if service == "s3" else None)
    return boto3.client(service, config=cfg)


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _missing(exc: Exception) -> bool:
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound")


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def safe_name(filename: str | None) -> str:
    """A display/key-safe version of a client file name (never used for dataset keys)."""
    name = unicodedata.normalize("NFC", Path(filename or "upload").name)
    name = re.sub(r"[^\w.\-]+", "_", name, flags=re.UNICODE).strip("._") or "upload"
    return name[:100]


def upload_content_type(filename: str | None) -> str:
    """The ``Content-Type`` a presigned upload of ``filename`` is signed for (by its extension;
    ``application/octet-stream`` for others: the ingest decides by content, not by type)."""
    return UPLOAD_TYPES.get(Path(filename or "").suffix.lower(), "application/octet-stream")


class NewImageCounter:
    """The ``new-images`` counter in the state table, counted once per image.

    Each filed image has a record ``id="image#<sha256>"``; :meth:`record` writes it (only if it
    is not there) and ``ADD``s 1 to the counter in one DynamoDB transaction, so the count moves
    exactly when a record appears: a retry after a crash counts an image that was stored but not
    yet counted, and never counts one twice.
    """

    def __init__(self, table: str | None, client: Any = None) -> None:
        self.table = table
        self._ddb = client

    @property
    def ddb(self) -> Any:
        if self._ddb is None:
            self._ddb = _client("dynamodb")
        return self._ddb

    def record(self, sha256: str, key: str) -> bool:
        """Count the image ``sha256`` (stored at ``key``) unless it was counted before.

        True when this call counted it. Raises botocore ``ClientError`` for any other failure.
        """
        if not self.table:
            raise RuntimeError("no state table to count images in")
        try:
            self.ddb.transact_write_items(TransactItems=[
                {"Put": {"TableName": self.table, "ConditionExpression": "attribute_not_exists(id)",
                         "Item": {"id": {"S": f"{IMAGE_RECORD}{sha256}"}, "key": {"S": key},
                                  "filed": {"S": now_iso()}}}},
                {"Update": {"TableName": self.table, "Key": {"id": {"S": COUNTER_ID}},
                            "UpdateExpression": "ADD #c :one", "ExpressionAttributeNames": {"#c": "count"},
                            "ExpressionAttributeValues": {":one": {"N": "1"}}}},
            ])
        except Exception as exc:
            reasons = getattr(exc, "response", {}).get("CancellationReasons") or []
            if (_error_code(exc) == "TransactionCanceledException" and reasons
                    and reasons[0].get("Code") == "ConditionalCheckFailed"):
                return False
            raise
        return True

    def get(self) -> int:
        if not self.table:
            return 0
        item = self.ddb.get_item(TableName=self.table, Key={"id": {"S": COUNTER_ID}}).get("Item") or {}
        return int(item.get("count", {}).get("N", "0"))


# --- data ----------------------------------------------------------------------------------------

IngestStatus = Literal["added", "duplicate", "quarantined", "gone", "skipped"]


@dataclass
class IngestOutcome:
    key: str
    status: IngestStatus
    label: str | None = None
    dataset_key: str | None = None
    error: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class DropObject:
    """One object in the drop folder as an event names it: key, version id (versioned bucket),
    ETag (to tell it from a later upload under the same key when there is no version id)."""

    key: str
    version_id: str | None = None
    etag: str | None = None


class _S3Bound:
    """An S3 client made on first use (Lambda init stays fast; tests pass a moto-bound one)."""

    _s3: Any = None

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = _client("s3")
        return self._s3


class S3DataStore(_S3Bound, DataStore):
    """Training images in the data bucket, filed by content hash (so a file is stored once)."""

    def __init__(self, bucket: str, counter: NewImageCounter | None = None, s3: Any = None) -> None:
        self.bucket = bucket
        self.counter = counter or NewImageCounter(None)
        self._s3 = s3

    def _exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
            return True
        except Exception as exc:  # botocore ClientError
            if _missing(exc):
                return False
            raise

    def _file(self, filed: dataset.FiledImage, source: str) -> bool:
        """Store ``filed`` unless its content is there, then count it. True when newly filed.

        The S3 write is conditional (``If-None-Match: *``), so two racing copies store one
        object; the count is the idempotent record of :meth:`NewImageCounter.record`, taken
        after the write whether or not this call wrote it, so a retry after a crash between
        the two completes the count instead of skipping it.
        """
        stored = False
        if not self._exists(filed.key):
            try:
                self.s3.put_object(Bucket=self.bucket, Key=filed.key, Body=filed.data, ContentType="image/jpeg",
                                   IfNoneMatch="*", Metadata={"source": source})
                stored = True
            except Exception as exc:
                if _error_code(exc) not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                    raise
        if self.counter.table:
            return self.counter.record(filed.sha256, filed.key)
        return stored

    def add(self, label: str, data: bytes, filename: str, *, origin: str = "upload") -> UploadResult:
        shown = safe_name(filename)
        try:
            filed = dataset.prepare(label, data)
        except UnknownClass as exc:
            return UploadResult(shown, "rejected", label=None, error=exc.code, detail=str(exc))
        except imaging.InvalidImage as exc:
            return UploadResult(shown, "rejected", label=label, error=exc.code, detail=exc.detail)
        added = self._file(filed, "api" if origin == "upload" else origin)  # the object's "source" metadata
        return UploadResult(shown, "added" if added else "duplicate", label=label, sha256=filed.sha256,
                            key=filed.key, detail=None if added else dataset.duplicate_detail(filed.key))

    def counts(self) -> dict[str, int]:
        out = {label: 0 for label in LABELS}
        pages = self.s3.get_paginator("list_objects_v2")
        for label in LABELS:
            for page in pages.paginate(Bucket=self.bucket, Prefix=f"{dataset.DATASET_PREFIX}/{label}/"):
                out[label] += int(page.get("KeyCount", 0))
        return out

    def presign_upload(self, label: str, filename: str, expires: int = PRESIGN_SECONDS) -> dict[str, Any]:
        """A presigned POST (browser-form upload) of one file into ``incoming/<label>/``.

        The signed policy pins the exact key (a fresh one under ``incoming/<label>/``), the
        ``Content-Type`` (from the file name's extension) and a ``content-length-range`` of 1 to
        :data:`fruitpipe.imaging.MAX_BYTES` bytes, and expires after ``expires`` seconds; S3
        refuses any request outside it. Returns ``url`` and the form ``fields`` to send before
        the ``file`` field. Raises ``UnknownClass``.
        """
        dataset.check_label(label)
        key = f"{dataset.INCOMING_PREFIX}/{label}/{uuid.uuid4().hex[:12]}-{safe_name(filename)}"
        ctype = upload_content_type(filename)
        post = self.s3.generate_presigned_post(
            Bucket=self.bucket, Key=key, Fields={"Content-Type": ctype},
            Conditions=[{"Content-Type": ctype}, ["content-length-range", 1, imaging.MAX_BYTES]],
            ExpiresIn=expires)
        return {"url": post["url"], "fields": post["fields"], "method": "POST", "key": key,
                "content_type": ctype, "expires_in": expires, "label": label, "max_bytes": imaging.MAX_BYTES}

    # -- the drop folder --------------------------------------------------------------------------

    def _head(self, key: str, version_id: str | None) -> dict[str, Any] | None:
        """HEAD of ``key`` (that version when given); None when there is no such object/version."""
        extra = {"VersionId": version_id} if version_id else {}
        try:
            return self.s3.head_object(Bucket=self.bucket, Key=key, **extra)
        except Exception as exc:  # botocore ClientError
            if _missing(exc) or (version_id and _error_code(exc) in ("400", "NoSuchVersion")):
                return None
            raise

    def _locate(self, obj: DropObject) -> tuple[DropObject, dict[str, Any]] | None:
        """The one object an event names, with its HEAD; None when it is gone.

        EventBridge carries the key as stored, S3's own notifications (SNS/SQS/Lambda) carry it
        form-encoded (``a b.jpg`` as ``a+b.jpg``): the key is tried as given, then decoded. The
        version id (versioned bucket) or else the ETag must match, so ``a+b.jpg`` never stands
        for ``a b.jpg`` or for a newer upload under the same name.
        """
        for key in dict.fromkeys([obj.key, unquote_plus(obj.key)]):
            head = self._head(key, obj.version_id)
            if head is None:
                continue
            if not obj.version_id and obj.etag and head.get("ETag", "").strip('"') != obj.etag.strip('"'):
                continue  # replaced since the event: the newer object has its own event
            return DropObject(key, obj.version_id or head.get("VersionId"), head.get("ETag")), head
        return None

    def _take(self, obj: DropObject) -> None:
        """Delete exactly the ingested object: by version id (leaves no delete marker and never
        touches a newer upload under the same key), else only while its ETag still matches."""
        if obj.version_id and obj.version_id != "null":
            self.s3.delete_object(Bucket=self.bucket, Key=obj.key, VersionId=obj.version_id)
            return
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=obj.key, **({"IfMatch": obj.etag} if obj.etag else {}))
        except Exception as exc:
            if not (_missing(exc) or _error_code(exc) in ("PreconditionFailed", "412")):
                raise

    def _quarantine(self, obj: DropObject, error: str, detail: str, label: str | None,
                    data: bytes | None) -> IngestOutcome:
        """Keep ``data`` (the bytes that were validated) under ``quarantine/<key>`` with a
        ``.reason.json``, then delete the incoming object. ``data=None`` (too large to keep):
        the reason file only."""
        target = f"{dataset.QUARANTINE_PREFIX}/{obj.key}"
        if data is not None:
            self.s3.put_object(Bucket=self.bucket, Key=target, Body=data,
                               Metadata={"source-version-id": obj.version_id or ""})
        reason = {"key": obj.key, "version_id": obj.version_id, "error": error, "detail": detail,
                  "label": label, "kept": data is not None, "quarantined": now_iso()}
        self.s3.put_object(Bucket=self.bucket, Key=target + ".reason.json", ContentType="application/json",
                           Body=json.dumps(reason, indent=2, ensure_ascii=False).encode())
        self._take(obj)
        return IngestOutcome(obj.key, "quarantined", label=label, error=error, detail=detail)

    def ingest(self, event_key: str, size: int | None = None, *, version_id: str | None = None,
               etag: str | None = None) -> IngestOutcome:
        """File one ``incoming/<class>/<name>`` object: validate, de-duplicate, count, delete.

        Acts only on the object the event names (``version_id``/``etag`` from the event): a
        second photo uploaded under the same key meanwhile is left for its own event. Idempotent:
        a second delivery finds that version gone (``gone``); the same picture dropped twice is
        filed once (``duplicate``). Nothing is deleted before it is either filed or kept in
        quarantine with its reason (an object over :data:`imaging.MAX_BYTES` is not kept: its
        reason file records the size).
        """
        if event_key.endswith("/"):  # a "folder" the S3 console creates: nothing to file
            return IngestOutcome(event_key, "skipped", detail="folder marker")
        found = self._locate(DropObject(event_key, version_id or None, etag or None))
        if found is None:
            return IngestOutcome(event_key, "gone", detail="already processed (or deleted, or replaced)")
        obj, head = found
        parts = obj.key.split("/")
        label = parts[1] if len(parts) >= 3 and parts[0] == dataset.INCOMING_PREFIX and parts[1] else None
        length = int(head.get("ContentLength", size or 0))
        if length > imaging.MAX_BYTES:
            return self._quarantine(obj, "too_large", f"{length} bytes; the limit is {imaging.MAX_BYTES} bytes",
                                    label if label in LABELS else None, None)
        extra = {"VersionId": obj.version_id} if obj.version_id else {"IfMatch": head["ETag"]}
        data = self.s3.get_object(Bucket=self.bucket, Key=obj.key, **extra)["Body"].read()
        if label is None:
            return self._quarantine(obj, "missing_class", "drop files into incoming/<class>/<file>; "
                                    f"classes: {', '.join(LABELS)}", None, data)
        if label not in LABELS:
            return self._quarantine(obj, "unknown_class", str(UnknownClass(label)), None, data)
        try:
            filed = dataset.prepare(label, data)
        except imaging.InvalidImage as exc:
            return self._quarantine(obj, exc.code, exc.detail, label, data)
        added = self._file(filed, "drop-folder")
        self._take(obj)
        return IngestOutcome(obj.key, "added" if added else "duplicate", label=label, dataset_key=filed.key)


# --- models --------------------------------------------------------------------------------------

class S3ModelRegistry(_S3Bound, ModelRegistry):
    """Immutable versions under ``versions/<v>/``, the live pointer in ``live.json``.

    ``seed_bundle`` (the default model shipped in the function asset) is served while the bucket
    has no pointer yet, so a fresh deployment answers predictions before its first retrain.
    """

    def __init__(self, bucket: str, cache_dir: Path, seed_bundle: Path | None = None, s3: Any = None) -> None:
        self.bucket = bucket
        self.cache_dir = Path(cache_dir)
        self.seed_bundle = Path(seed_bundle) if seed_bundle else None
        self._seed_version = bundle.read_manifest(self.seed_bundle).version if self.seed_bundle else None
        self._s3 = s3

    def _get_json(self, key: str) -> Any:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            if _missing(exc):
                return None
            raise
        try:
            return json.loads(body)
        except ValueError:
            return None

    def pointer_signature(self) -> str | None:
        """The pointer object's ETag: one HEAD per refresh interval, no body read."""
        try:
            return str(self.s3.head_object(Bucket=self.bucket, Key=LIVE_KEY)["ETag"])
        except Exception as exc:
            if _missing(exc):
                return None
            raise

    def live_version(self) -> str | None:
        pointer = self._get_json(LIVE_KEY)
        if isinstance(pointer, dict) and isinstance(pointer.get("version"), str):
            return pointer["version"]
        return self._seed_version

    def _prefixes(self, parent: str) -> list[str]:
        out: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=parent + "/", Delimiter="/"):
            out += [p["Prefix"][len(parent) + 1:].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return out

    def versions(self) -> list[ModelVersion]:
        live = self.live_version()
        found: list[ModelVersion] = []
        for parent, status in ((VERSIONS, "available"), (REJECTED, "rejected")):
            for version in self._prefixes(parent):
                manifest = self._get_json(f"{parent}/{version}/{bundle.MANIFEST}") or {}
                reason = None
                if status == "rejected":
                    reason = str((self._get_json(f"{parent}/{version}/rejection.json") or {}).get(
                        "reason", "rejected by the gate"))
                shown = "live" if status == "available" and version == live else status
                found.append(ModelVersion(version=version, created=str(manifest.get("created", "")),
                                          status=shown, metrics=dict(manifest.get("metrics", {})),  # type: ignore[arg-type]
                                          reason=reason))
        if self._seed_version and not any(v.version == self._seed_version for v in found):
            manifest = bundle.read_manifest(self.seed_bundle)  # type: ignore[arg-type]
            found.append(ModelVersion(version=manifest.version, created=manifest.created,
                                      status="live" if live == manifest.version else "available",
                                      metrics=manifest.metrics))
        return sorted(found, key=lambda v: (v.created, v.version), reverse=True)

    def _where(self, version: str) -> str | None:
        for parent in (VERSIONS, REJECTED):
            try:
                self.s3.head_object(Bucket=self.bucket, Key=f"{parent}/{version}/{bundle.MANIFEST}")
                return parent
            except Exception as exc:
                if not _missing(exc):
                    raise
        return None

    def pinned_manifest_sha(self, version: str, folder: Path) -> str | None:
        """The manifest sha256 recorded for ``version``: ``manifest.sha256`` (downloaded into
        ``folder`` with the bundle), else the live pointer's when it names this version; None
        (with a warning) for a version published before either existed."""
        try:
            return bundle.parse_manifest_record((folder / bundle.MANIFEST_SHA).read_bytes())
        except FileNotFoundError:
            pass
        pointer = self._get_json(LIVE_KEY)
        if isinstance(pointer, dict) and pointer.get("version") == version and pointer.get("manifest_sha256"):
            return str(pointer["manifest_sha256"])
        log.warning("model version %s has no recorded manifest checksum (published before they were kept); "
                    "accepting its manifest as it is", version)
        return None

    def fetch(self, version: str) -> Path:
        """Download ``version`` to the local cache (once) and verify every checksum, the
        manifest's against the registry's record (:mod:`fruitpipe.bundle`)."""
        if not _VERSION_RE.match(version):
            raise NotFound(f"no model version {version!r}")
        if version == self._seed_version and self._where(version) is None:
            return self.seed_bundle  # type: ignore[return-value]
        dest = self.cache_dir / version
        if (dest / bundle.MANIFEST).is_file():
            bundle.verify(dest, self.pinned_manifest_sha(version, dest))
            return dest
        parent = self._where(version)
        if parent is None:
            raise NotFound(f"no model version {version!r}")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.cache_dir, prefix=f".{version}-"))
        try:
            prefix = f"{parent}/{version}/"
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(prefix):]
                    if not name or "/" in name:
                        continue
                    self.s3.download_file(self.bucket, obj["Key"], str(tmp / name))
            bundle.verify(tmp, self.pinned_manifest_sha(version, tmp))  # raises BundleError: never serve a modified bundle
            try:
                tmp.rename(dest)
            except OSError:  # another thread won the race; its copy is verified too
                shutil.rmtree(tmp, ignore_errors=True)
            return dest
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def live_record(self) -> dict[str, Any] | None:
        data = self._get_json(LIVE_KEY)
        return data if isinstance(data, dict) else None

    def activate(self, version: str, *, reason: str = "") -> None:
        if not _VERSION_RE.match(version):
            raise NotFound(f"no model version {version!r}")
        where = self._where(version)
        if where == REJECTED:
            reason = (self._get_json(f"{REJECTED}/{version}/rejection.json") or {}).get("reason", "")
            raise VersionRejected(f"version {version} was rejected by the gate: {reason}")
        if where is None and version != self._seed_version:
            raise NotFound(f"no model version {version!r}")
        folder = self.fetch(version)  # verify before anyone is pointed at it
        pointer = self._get_json(LIVE_KEY)
        if isinstance(pointer, dict) and pointer.get("version") == version:
            return  # already live: the pointer (and its "previous", the rollback target) stays as it is
        # Keep the drift baseline recorded when the version was published (fruitpipe.pipeline.publish).
        baseline = self._get_json(f"{VERSIONS}/{version}/baseline.json") if where == VERSIONS else None
        body = json.dumps({"version": version, "manifest_sha256": bundle.check_manifest(folder, None),
                           "updated": now_iso(), "previous": self.live_version(), "baseline": baseline,
                           "reason": reason}).encode()
        self.s3.put_object(Bucket=self.bucket, Key=LIVE_KEY, Body=body, ContentType="application/json")

    def publish(self, bundle_dir: Path, version: str | None = None) -> str:
        """Upload a verified bundle as ``versions/<v>/`` (tests, bootstrap; the pipeline has its own)."""
        manifest = bundle.verify(bundle_dir)
        version = version or manifest.version
        for name in manifest.files:
            self.s3.upload_file(str(Path(bundle_dir) / name), self.bucket, f"{VERSIONS}/{version}/{name}")
        self.s3.put_object(Bucket=self.bucket, Key=f"{VERSIONS}/{version}/{bundle.MANIFEST_SHA}",
                           Body=bundle.manifest_record(bundle.check_manifest(bundle_dir, None)))
        self.s3.upload_file(str(Path(bundle_dir) / bundle.MANIFEST), self.bucket, f"{VERSIONS}/{version}/{bundle.MANIFEST}")
        return version


# --- training ------------------------------------------------------------------------------------

class NoStateMachineTrainer(Trainer):
    """A deployment without the retrain state machine: retraining answers 501, status is idle.
    (With one, :class:`fruitpipe.pipeline.trainer.StepFunctionsTrainer` runs and reports it.)"""

    MESSAGE = ("retraining on AWS runs in the retrain state machine, and this deployment has none "
               "(FRUITPIPE_STATE_MACHINE_ARN is not set)")

    def start(self, trigger: str = "manual", force: bool = False) -> RetrainStatus:
        raise TrainerUnavailable(self.MESSAGE)

    def cancel(self) -> RetrainStatus:
        raise TrainerUnavailable(self.MESSAGE)

    def status(self) -> RetrainStatus:
        return RetrainStatus(state="idle", stage="unavailable", log_tail=["no retrain state machine in this deployment"])


# --- admin token ---------------------------------------------------------------------------------

class SecretsManagerToken:
    """Token provider: the secret's value, cached ``ttl`` seconds (rotation lands within a minute).

    Fails closed: when the secret cannot be read (Secrets Manager down, the secret deleted or
    denied) it returns None, which the API answers with 503 for every write, instead of going on
    accepting a token that may have been rotated away. The next request tries again.
    """

    def __init__(self, secret_id: str | None, ttl: float = 60.0, client: Any = None) -> None:
        self.secret_id = secret_id
        self.ttl = ttl
        self._client = client
        self._value: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> str | None:
        if not self.secret_id:
            return None
        with self._lock:
            if time.monotonic() < self._expires:
                return self._value
            try:
                if self._client is None:
                    self._client = _client("secretsmanager")
                value = self._client.get_secret_value(SecretId=self.secret_id).get("SecretString")
            except Exception as exc:  # botocore ClientError / connection errors: deny, do not cache
                log.warning("admin token unreadable, writes refused: %s", _error_code(exc) or type(exc).__name__)
                self._value, self._expires = None, 0.0
                return None
            self._value = (value or "").strip() or None
            self._expires = time.monotonic() + self.ttl
            return self._value


def create_aws_backend(config: AwsConfig | None = None, *, seed_bundle: Path | None = None) -> Backend:
    config = config or AwsConfig.from_env()
    from .aws_capture import S3CaptureStore
    from .shadow_pointers import S3ShadowPointer
    counter = NewImageCounter(config.state_table)
    return Backend(
        name="aws",
        store=S3DataStore(config.data_bucket, counter),
        registry=S3ModelRegistry(config.models_bucket, config.model_cache, seed_bundle=seed_bundle),
        trainer=_trainer(config.state_machine_arn),
        capture=S3CaptureStore(config.data_bucket),
        shadow=S3ShadowPointer(config.models_bucket),
    )


def _trainer(state_machine_arn: str | None) -> Trainer:
    """The retrain pipeline's trainer (status from execution history + DescribeTrainingJob) when a
    state machine is deployed; otherwise the stub that answers 501."""
    if not state_machine_arn:
        return NoStateMachineTrainer()
    from ..pipeline.trainer import StepFunctionsTrainer
    return StepFunctionsTrainer(_client("stepfunctions"), _client("sagemaker"), state_machine_arn)


TokenProvider = Callable[[], "str | None"]

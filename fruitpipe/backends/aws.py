"""The AWS backend: S3 data store and model registry, Step Functions trainer, admin token in
Secrets Manager. Also the S3 drop-folder ingest used by ``functions/ingest``.

Layout (DESIGN §4): data bucket ``incoming/<class>/<name>`` → ``dataset/<class>/<sha256>.jpg`` or
``quarantine/<original key>`` + ``.reason.json``; models bucket ``versions/<v>/…``, ``rejected/<v>/…``
(+ ``rejection.json``), ``live.json`` = ``{"version", "updated"}``. The DynamoDB state table holds
``id="new-images"`` with a numeric ``count`` that ingest and uploads ``ADD`` to.

boto3 honours ``AWS_ENDPOINT_URL`` (tests point it at a moto server on 127.0.0.1).
"""

from __future__ import annotations

import json
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
PRESIGN_SECONDS = 900
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


class NewImageCounter:
    """The ``new-images`` counter in the state table: atomic ADD, read for the dashboard."""

    def __init__(self, table: str | None, client: Any = None) -> None:
        self.table = table
        self._ddb = client

    @property
    def ddb(self) -> Any:
        if self._ddb is None:
            self._ddb = _client("dynamodb")
        return self._ddb

    def add(self, n: int = 1) -> None:
        if not self.table or n == 0:
            return
        self.ddb.update_item(TableName=self.table, Key={"id": {"S": COUNTER_ID}},
                             UpdateExpression="ADD #c :n", ExpressionAttributeNames={"#c": "count"},
                             ExpressionAttributeValues={":n": {"N": str(n)}})

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
        """Store ``filed`` unless its content is already there. True when newly stored."""
        if self._exists(filed.key):
            return False
        try:
            # If-None-Match makes the write itself the de-duplication when two copies race.
            self.s3.put_object(Bucket=self.bucket, Key=filed.key, Body=filed.data, ContentType="image/jpeg",
                               IfNoneMatch="*", Metadata={"source": source})
        except Exception as exc:
            if _error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise
        self.counter.add(1)
        return True

    def add(self, label: str, data: bytes, filename: str) -> UploadResult:
        shown = safe_name(filename)
        try:
            filed = dataset.prepare(label, data)
        except UnknownClass as exc:
            return UploadResult(shown, "rejected", label=None, error=exc.code, detail=str(exc))
        except imaging.InvalidImage as exc:
            return UploadResult(shown, "rejected", label=label, error=exc.code, detail=exc.detail)
        added = self._file(filed, "api")
        return UploadResult(shown, "added" if added else "duplicate", label=label, sha256=filed.sha256,
                            key=filed.key)

    def counts(self) -> dict[str, int]:
        out = {label: 0 for label in LABELS}
        pages = self.s3.get_paginator("list_objects_v2")
        for label in LABELS:
            for page in pages.paginate(Bucket=self.bucket, Prefix=f"{dataset.DATASET_PREFIX}/{label}/"):
                out[label] += int(page.get("KeyCount", 0))
        return out

    def presign_upload(self, label: str, filename: str, expires: int = PRESIGN_SECONDS) -> dict[str, Any]:
        """A presigned PUT into ``incoming/<label>/`` for uploads too big for the API (ingest files it)."""
        dataset.check_label(label)
        key = f"{dataset.INCOMING_PREFIX}/{label}/{uuid.uuid4().hex[:12]}-{safe_name(filename)}"
        url = self.s3.generate_presigned_url("put_object", Params={"Bucket": self.bucket, "Key": key},
                                             ExpiresIn=expires, HttpMethod="PUT")
        return {"url": url, "method": "PUT", "key": key, "expires_in": expires, "label": label,
                "max_bytes": imaging.MAX_BYTES}

    # -- the drop folder --------------------------------------------------------------------------

    def _locate(self, key: str) -> str | None:
        """The incoming object's real key: event keys may arrive URL-encoded (spaces as '+')."""
        for candidate in dict.fromkeys([unquote_plus(key), key]):
            if self._exists(candidate):
                return candidate
        return None

    def _quarantine(self, key: str, error: str, detail: str, label: str | None) -> IngestOutcome:
        target = f"{dataset.QUARANTINE_PREFIX}/{key}"
        self.s3.copy_object(Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": key})
        reason = {"key": key, "error": error, "detail": detail, "label": label, "quarantined": now_iso()}
        self.s3.put_object(Bucket=self.bucket, Key=target + ".reason.json", ContentType="application/json",
                           Body=json.dumps(reason, indent=2, ensure_ascii=False).encode())
        self.s3.delete_object(Bucket=self.bucket, Key=key)
        return IngestOutcome(key, "quarantined", label=label, error=error, detail=detail)

    def ingest(self, event_key: str, size: int | None = None) -> IngestOutcome:
        """File one ``incoming/<class>/<name>`` object: validate, de-duplicate, count, delete.

        Idempotent: a second delivery of the same event finds the object gone (``gone``); the
        same picture dropped twice is filed once (``duplicate``). Nothing is deleted before it
        is either filed or copied to quarantine with its reason.
        """
        if event_key.endswith("/"):  # a "folder" the S3 console creates: nothing to file
            return IngestOutcome(event_key, "skipped", detail="folder marker")
        key = self._locate(event_key)
        if key is None:
            return IngestOutcome(event_key, "gone", detail="already processed (or deleted)")
        parts = key.split("/")
        if len(parts) < 3 or parts[0] != dataset.INCOMING_PREFIX or not parts[1]:
            return self._quarantine(key, "missing_class", "drop files into incoming/<class>/<file>; "
                                    f"classes: {', '.join(LABELS)}", None)
        label = parts[1]
        if label not in LABELS:
            return self._quarantine(key, "unknown_class", str(UnknownClass(label)), None)
        head = self.s3.head_object(Bucket=self.bucket, Key=key)
        length = int(head.get("ContentLength", size or 0))
        if length > imaging.MAX_BYTES:
            return self._quarantine(key, "too_large",
                                    f"{length} bytes; the limit is {imaging.MAX_BYTES} bytes", label)
        data = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        try:
            filed = dataset.prepare(label, data)
        except imaging.InvalidImage as exc:
            return self._quarantine(key, exc.code, exc.detail, label)
        added = self._file(filed, "drop-folder")
        self.s3.delete_object(Bucket=self.bucket, Key=key)
        return IngestOutcome(key, "added" if added else "duplicate", label=label, dataset_key=filed.key)


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

    def fetch(self, version: str) -> Path:
        """Download ``version`` to the local cache (once) and verify every checksum."""
        if not _VERSION_RE.match(version):
            raise NotFound(f"no model version {version!r}")
        if version == self._seed_version and self._where(version) is None:
            return self.seed_bundle  # type: ignore[return-value]
        dest = self.cache_dir / version
        if (dest / bundle.MANIFEST).is_file():
            bundle.verify(dest)
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
            bundle.verify(tmp)  # raises BundleError: never serve a modified bundle
            try:
                tmp.rename(dest)
            except OSError:  # another thread won the race; its copy is verified too
                shutil.rmtree(tmp, ignore_errors=True)
            return dest
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def activate(self, version: str) -> None:
        if not _VERSION_RE.match(version):
            raise NotFound(f"no model version {version!r}")
        where = self._where(version)
        if where == REJECTED:
            reason = (self._get_json(f"{REJECTED}/{version}/rejection.json") or {}).get("reason", "")
            raise VersionRejected(f"version {version} was rejected by the gate: {reason}")
        if where is None and version != self._seed_version:
            raise NotFound(f"no model version {version!r}")
        self.fetch(version)  # verify before anyone is pointed at it
        # Keep the drift baseline recorded when the version was published (fruitpipe.pipeline.publish).
        baseline = self._get_json(f"{VERSIONS}/{version}/baseline.json") if where == VERSIONS else None
        body = json.dumps({"version": version, "updated": now_iso(), "previous": self.live_version(),
                           "baseline": baseline}).encode()
        self.s3.put_object(Bucket=self.bucket, Key=LIVE_KEY, Body=body, ContentType="application/json")

    def publish(self, bundle_dir: Path, version: str | None = None) -> str:
        """Upload a verified bundle as ``versions/<v>/`` (tests, bootstrap; the pipeline has its own)."""
        manifest = bundle.verify(bundle_dir)
        version = version or manifest.version
        for name in [bundle.MANIFEST, *manifest.files]:
            self.s3.upload_file(str(Path(bundle_dir) / name), self.bucket, f"{VERSIONS}/{version}/{name}")
        return version


# --- training ------------------------------------------------------------------------------------

_SFN_STATE = {"RUNNING": "running", "SUCCEEDED": "succeeded", "FAILED": "failed", "TIMED_OUT": "failed",
              "ABORTED": "failed", "PENDING_REDRIVE": "failed"}


class StepFunctionsTrainer(Trainer):
    """Starts the retrain state machine (AWS part 2) and reports its latest execution."""

    def __init__(self, state_machine_arn: str | None, sfn: Any = None) -> None:
        self.arn = state_machine_arn
        self._sfn = sfn

    @property
    def sfn(self) -> Any:
        if self._sfn is None:
            self._sfn = _client("stepfunctions")
        return self._sfn

    def _require(self) -> str:
        if not self.arn:
            raise TrainerUnavailable("retraining on AWS runs in the retrain state machine, and this "
                                     "deployment has none (FRUITPIPE_STATE_MACHINE_ARN is not set)")
        return self.arn

    def start(self, trigger: str = "manual", force: bool = False) -> RetrainStatus:
        # force: the state machine has no "nothing new" check of its own (it always trains)
        arn = self._require()
        if self.sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING", maxResults=1)["executions"]:
            raise RetrainRunning("a retrain is already running")
        name = f"{trigger}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        self.sfn.start_execution(stateMachineArn=arn, name=name, input=json.dumps({"trigger": trigger}))
        return RetrainStatus(state="running", run_id=name, trigger=trigger, stage="starting", started=now_iso())

    def status(self) -> RetrainStatus:
        if not self.arn:
            return RetrainStatus(state="idle", stage="unavailable",
                                 log_tail=["no retrain state machine in this deployment"])
        runs = self.sfn.list_executions(stateMachineArn=self.arn, maxResults=1)["executions"]
        if not runs:
            return RetrainStatus()
        run = self.sfn.describe_execution(executionArn=runs[0]["executionArn"])
        state = _SFN_STATE.get(run["status"], "failed")
        result: dict[str, Any] = {}
        if run.get("output"):
            try:
                result = json.loads(run["output"])
            except ValueError:
                result = {}
        if state == "succeeded" and result.get("promote") is False:
            state = "rejected"
        trigger = json.loads(run.get("input") or "{}").get("trigger")
        stamp = lambda t: t.isoformat() if hasattr(t, "isoformat") else t  # noqa: E731
        return RetrainStatus(state=state, run_id=run["name"], trigger=trigger, stage=run["status"].lower(),
                             percent=100.0 if state != "running" else 0.0, started=stamp(run.get("startDate")),
                             finished=stamp(run.get("stopDate")), result=result)  # type: ignore[arg-type]


# --- admin token ---------------------------------------------------------------------------------

class SecretsManagerToken:
    """Token provider: the secret's value, cached ``ttl`` seconds (rotation lands within a minute)."""

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
                self._value = (value or "").strip() or None
            except Exception:  # keep the last good value through a transient failure
                if self._value is None:
                    return None
            self._expires = time.monotonic() + self.ttl
            return self._value


def create_aws_backend(config: AwsConfig | None = None, *, seed_bundle: Path | None = None) -> Backend:
    config = config or AwsConfig.from_env()
    counter = NewImageCounter(config.state_table)
    return Backend(
        name="aws",
        store=S3DataStore(config.data_bucket, counter),
        registry=S3ModelRegistry(config.models_bucket, config.model_cache, seed_bundle=seed_bundle),
        trainer=_trainer(config.state_machine_arn),
    )


def _trainer(state_machine_arn: str | None) -> Trainer:
    """The retrain pipeline's trainer (status from execution history + DescribeTrainingJob) when a
    state machine is deployed; otherwise the stub that answers 501."""
    if not state_machine_arn:
        return StepFunctionsTrainer(None)
    from ..pipeline.trainer import StepFunctionsTrainer as PipelineTrainer
    return PipelineTrainer(_client("stepfunctions"), _client("sagemaker"), state_machine_arn)


TokenProvider = Callable[[], "str | None"]

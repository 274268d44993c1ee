"""Step 4: publish a promoted candidate, or keep a rejected one with its reason; move pointers.

Publishing is idempotent and ordered so that the live pointer only ever names a complete,
verified version: verify the archive's checksums → upload the files → ``baseline.json`` →
``manifest.sha256`` (the manifest's checksum) → ``manifest.json`` last → read every object back
and re-check its sha256, the manifest's against its record → only then rewrite ``live.json``,
which repeats the manifest's checksum. Re-running after a crash at any point finishes the job; a version already in S3
with different content is refused (versions are immutable). Any failure leaves ``live.json``
exactly as it was.
"""

from __future__ import annotations

import json
import logging
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import bundle
from ..shadow import plan
from . import s3util

log = logging.getLogger("fruitpipe.pipeline")


SHADOW_POINTER = "shadow.json"  # fruitpipe.backends.shadow_pointers.SHADOW_KEY


class PublishError(RuntimeError):
    """The candidate cannot be published; the live pointer was not touched."""


def _verified_candidate(s3: Any, model_artifacts: str, dest: Path) -> tuple[Path, bundle.Manifest]:
    bucket, key = s3util.split_uri(model_artifacts)
    try:
        s3util.safe_extract(s3.get_object(Bucket=bucket, Key=key)["Body"].read(), dest)
        bdir = s3util.find_bundle(dest)
        return bdir, bundle.verify(bdir)
    except (bundle.BundleError, ValueError, FileNotFoundError) as exc:
        raise PublishError(f"candidate refused: {exc}") from None


def _check_remote(s3: Any, bucket: str, prefix: str, manifest: bundle.Manifest) -> None:
    for name, sha in manifest.files.items():
        data = s3.get_object(Bucket=bucket, Key=prefix + name)["Body"].read()
        if bundle.sha256_bytes(data) != sha:
            raise PublishError(f"{prefix}{name} in S3 does not match its manifest checksum")


def _remote_manifest(s3: Any, bucket: str, version: str) -> tuple[bundle.Manifest, str]:
    """The manifest of ``versions/<version>/`` and its sha256, checked against the version's
    ``manifest.sha256`` record. A version published before records were kept has none: its
    manifest is accepted as it is (logged) and pinned by the pointer from then on."""
    prefix = f"{s3util.VERSIONS_PREFIX}/{version}/"
    data = s3util.get_bytes(s3, bucket, prefix + bundle.MANIFEST)
    if data is None:
        raise PublishError(f"version {version} does not exist")
    digest = bundle.sha256_bytes(data)
    record = s3util.get_bytes(s3, bucket, prefix + bundle.MANIFEST_SHA)
    try:
        if record is None:
            log.warning("version %s has no %s; accepting its manifest as it is", version, bundle.MANIFEST_SHA)
        elif bundle.parse_manifest_record(record) != digest:
            raise bundle.BundleError(f"{prefix}{bundle.MANIFEST} has sha256 {digest[:12]}…, but "
                                     f"{bundle.MANIFEST_SHA} recorded another when it was published: "
                                     "the manifest was edited")
        return bundle.Manifest.from_dict(json.loads(data)), digest
    except (bundle.BundleError, ValueError) as exc:
        raise PublishError(f"version {version} has a bad manifest: {exc}") from None


def move_pointer(s3: Any, bucket: str, version: str, *, baseline: dict[str, Any] | None = None,
                 reason: str = "") -> dict[str, Any]:
    """Point ``live.json`` at an existing, verified version (publish, rollback, roll forward)."""
    prefix = f"{s3util.VERSIONS_PREFIX}/{version}/"
    manifest, digest = _remote_manifest(s3, bucket, version)
    _check_remote(s3, bucket, prefix, manifest)
    current = s3util.get_json(s3, bucket, s3util.LIVE_POINTER) or {}
    if current.get("version") == version:
        return {"version": version, "moved": False, "previous": current.get("previous")}
    if baseline is None:
        baseline = s3util.get_json(s3, bucket, prefix + "baseline.json")
    pointer = {"version": version, "manifest_sha256": digest, "updated": bundle.now_iso(), "previous": current.get("version"),
               "baseline": baseline, "reason": reason}
    s3util.put_json(s3, bucket, s3util.LIVE_POINTER, pointer)
    return {"version": version, "moved": True, "previous": current.get("version")}


def publish(s3: Any, *, models_bucket: str, model_artifacts: str, expected_version: str | None = None,
            baseline: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
            reason: str = "", workdir: Path | None = None,
            lineage: dict[str, Any] | None = None, shadow_requests: int = 0) -> dict[str, Any]:
    """Publish the verified candidate in ``model_artifacts`` and move ``live.json`` to it.

    ``shadow_requests`` > 0: leave ``live.json`` alone and start a shadow evaluation of the
    candidate instead (``shadow.json``, :mod:`fruitpipe.shadow`); the API promotes it or holds it.

    ``lineage`` (training job name, execution ARN, data snapshot key, base model) is recorded in
    the published ``manifest.json`` under ``lineage``; the files and their checksums are the job's.
    Raises :class:`PublishError` (the live pointer untouched) for any refused candidate.
    """
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        bdir, manifest = _verified_candidate(s3, model_artifacts, Path(tmp))
        version = manifest.version
        if expected_version and version != expected_version:
            raise PublishError(f"archive holds version {version}, expected {expected_version}")
        prefix = f"{s3util.VERSIONS_PREFIX}/{version}/"
        existing = s3util.get_json(s3, models_bucket, prefix + "manifest.json")
        if existing is not None and existing.get("files") != manifest.files:
            raise PublishError(f"version {version} already exists with different content")
        uploaded = 0
        if existing is None:
            for name in manifest.files:
                s3.put_object(Bucket=models_bucket, Key=prefix + name, Body=(bdir / name).read_bytes())
                uploaded += 1
            s3util.put_json(s3, models_bucket, prefix + "baseline.json", baseline or {})
            s3util.put_json(s3, models_bucket, prefix + "evaluation.json",
                            {"gate_reason": reason, "metrics": metrics or {}})
            published = _with_lineage(bdir / "manifest.json", lineage)  # the bytes the checksum pins
            s3.put_object(Bucket=models_bucket, Key=prefix + bundle.MANIFEST_SHA,
                          Body=bundle.manifest_record(bundle.sha256_bytes(published)))
            s3.put_object(Bucket=models_bucket, Key=prefix + "manifest.json",
                          Body=published, ContentType="application/json")
        _check_remote(s3, models_bucket, prefix, manifest)
        if shadow_requests > 0:
            live = s3util.live_version(s3, models_bucket)
            s3util.put_json(s3, models_bucket, SHADOW_POINTER,
                            plan(version, live, datetime.now(timezone.utc), shadow_requests))
            return {"version": version, "uploaded_files": uploaded, "already_published": existing is not None,
                    "pointer_moved": False, "previous": live, "shadow": True}
        moved = move_pointer(s3, models_bucket, version, baseline=baseline, reason=reason)
        return {"version": version, "uploaded_files": uploaded, "already_published": existing is not None,
                "pointer_moved": moved["moved"], "previous": moved["previous"]}


def _with_lineage(manifest_path: Path, lineage: dict[str, Any] | None) -> bytes:
    """The manifest's bytes, with ``lineage`` added when given (nothing else changes)."""
    raw = manifest_path.read_bytes()
    if not lineage:
        return raw
    data = json.loads(raw)
    data["lineage"] = lineage
    return (json.dumps(data, indent=2) + "\n").encode()


def reject(s3: Any, *, models_bucket: str, model_artifacts: str, version: str | None, reason: str,
           evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keep a rejected candidate under ``rejected/<version>/`` (its archive, and its manifest when
    readable, so ``GET /models`` can list it) with ``rejection.json``; the live pointer is untouched."""
    version = version or model_artifacts.rstrip("/").split("/")[-3]
    prefix = f"{s3util.REJECTED_PREFIX}/{version}/"
    bucket, key = s3util.split_uri(model_artifacts)
    if s3util.exists(s3, bucket, key):
        s3.copy_object(Bucket=models_bucket, Key=prefix + "model.tar.gz",
                       CopySource={"Bucket": bucket, "Key": key})
    manifest = _archive_manifest(s3, bucket, key)
    if manifest is not None:
        s3.put_object(Bucket=models_bucket, Key=prefix + "manifest.json", Body=manifest,
                      ContentType="application/json")
    s3util.put_json(s3, models_bucket, prefix + "rejection.json",
                    {"version": version, "reason": reason, "rejected": bundle.now_iso(),
                     "evaluation": evaluation or {}})
    return {"version": version, "rejected": True, "reason": reason}


def _archive_manifest(s3: Any, bucket: str, key: str) -> bytes | None:
    """The ``manifest.json`` bytes inside a model archive, or None (missing or unreadable archive)."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            s3util.safe_extract(s3.get_object(Bucket=bucket, Key=key)["Body"].read(), Path(tmp))
            return (s3util.find_bundle(Path(tmp)) / "manifest.json").read_bytes()
    except Exception:  # noqa: BLE001 - a corrupt candidate is still kept, just without its manifest
        return None

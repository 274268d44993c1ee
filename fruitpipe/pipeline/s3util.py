"""Small S3 helpers shared by the pipeline steps (bundle download, safe tar extraction)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any, Iterator

from botocore.exceptions import ClientError

from .. import bundle

LIVE_POINTER = "live.json"
VERSIONS_PREFIX = "versions"
REJECTED_PREFIX = "rejected"
RUNS_PREFIX = "runs"
CACHE_PREFIX = "cache/embeddings"


def split_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def get_bytes(s3: Any, bucket: str, key: str) -> bytes | None:
    """The object at ``key``, or None when it does not exist."""
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def get_json(s3: Any, bucket: str, key: str) -> Any | None:
    """The parsed JSON object at ``key``, or None when it does not exist."""
    body = get_bytes(s3, bucket, key)
    return None if body is None else json.loads(body)


def put_json(s3: Any, bucket: str, key: str, data: Any) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=(json.dumps(data, indent=2) + "\n").encode(),
                  ContentType="application/json")


def list_keys(s3: Any, bucket: str, prefix: str) -> Iterator[str]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"]


def live_version(s3: Any, bucket: str) -> str | None:
    pointer = get_json(s3, bucket, LIVE_POINTER)
    return pointer.get("version") if isinstance(pointer, dict) else None


def tar_gz(folder: Path) -> bytes:
    """Every file under ``folder`` as a ``.tar.gz`` (paths relative to it, sorted), as SageMaker
    packs ``/opt/ml/model`` into ``model.tar.gz`` and ``/opt/ml/output/data`` into ``output.tar.gz``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=str(p.relative_to(folder)))
    return buf.getvalue()


def safe_extract(data: bytes, dest: Path) -> list[str]:
    """Extract a tar(.gz) refusing absolute paths, ``..``, links and devices; returns file names.

    Raises ValueError for an unsafe member or bytes that are not a readable archive (a garbage
    candidate is a bad candidate, which the caller rejects, not a crash)."""
    dest.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except (tarfile.TarError, EOFError) as exc:
        raise ValueError(f"not a readable tar archive: {exc}") from None
    with tar:
        for member in tar.getmembers():
            name = member.name.lstrip("./") if member.name.startswith("./") else member.name
            if member.isdir():
                continue
            if not member.isfile() or name.startswith("/") or ".." in Path(name).parts:
                raise ValueError(f"refusing unsafe archive member {member.name!r}")
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            fh = tar.extractfile(member)
            assert fh is not None
            target.write_bytes(fh.read())
            names.append(name)
    return names


def find_bundle(root: Path) -> Path:
    """The folder holding ``manifest.json`` inside an extracted model archive."""
    if (root / "manifest.json").is_file():
        return root
    found = sorted(p.parent for p in root.rglob("manifest.json"))
    if not found:
        raise FileNotFoundError("no manifest.json in the model archive")
    return found[0]


def download_bundle(s3: Any, bucket: str, version: str, dest: Path) -> Path:
    """Copy ``versions/<version>/`` (manifest + listed files) into ``dest``; the manifest is
    checked against the version's ``manifest.sha256`` when it has one (raises
    :class:`~fruitpipe.bundle.BundleError` for an edited manifest)."""
    prefix = f"{VERSIONS_PREFIX}/{version}/"
    manifest = s3.get_object(Bucket=bucket, Key=prefix + "manifest.json")["Body"].read()
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "manifest.json").write_bytes(manifest)
    record = get_bytes(s3, bucket, prefix + bundle.MANIFEST_SHA)
    bundle.check_manifest(dest, bundle.parse_manifest_record(record) if record is not None else None)
    for name in json.loads(manifest).get("files", {}):
        (dest / name).write_bytes(s3.get_object(Bucket=bucket, Key=prefix + name)["Body"].read())
    return dest

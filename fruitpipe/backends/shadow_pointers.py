"""The shadow evaluation's pointer: ``models/shadow.json`` in the local store, ``shadow.json`` in
the models bucket on AWS (beside ``live.json``), each replaced in one step; and the running counts
of each API process (Lambda instance) under ``shadow-stats/<run>/<instance>.json`` beside it, one
object per process, so no two processes ever write the same object and a reader sums them
(:mod:`fruitpipe.shadow`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .aws import _missing, _S3Bound
from .base import ShadowPointer
from .local import atomic_write_json, read_json

SHADOW_KEY = "shadow.json"
STATS_PREFIX = "shadow-stats/"


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class LocalShadowPointer(ShadowPointer):
    def __init__(self, root: Path) -> None:
        self.path = Path(root) / "models" / SHADOW_KEY

    def read(self) -> dict[str, Any] | None:
        data = read_json(self.path)
        return data if isinstance(data, dict) else None

    def write(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.path, state)

    def write_counts(self, run: str, instance: str, counts: dict[str, Any]) -> None:
        atomic_write_json(self.path.parent / STATS_PREFIX / run / f"{instance}.json", counts)

    def read_counts(self, run: str) -> dict[str, dict[str, Any]]:
        out = {}
        for path in sorted((self.path.parent / STATS_PREFIX / run).glob("*.json")):
            data = read_json(path)
            if isinstance(data, dict):
                out[path.stem] = data
        return out


class S3ShadowPointer(_S3Bound, ShadowPointer):
    def __init__(self, bucket: str, s3: Any = None) -> None:
        self.bucket = bucket
        self._s3 = s3

    def read(self) -> dict[str, Any] | None:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=SHADOW_KEY)["Body"].read()
        except Exception as exc:  # botocore ClientError
            if _missing(exc):
                return None
            raise
        return _json_object(body)

    def write(self, state: dict[str, Any]) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=SHADOW_KEY, Body=json.dumps(state).encode(),
                           ContentType="application/json")

    def write_counts(self, run: str, instance: str, counts: dict[str, Any]) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=f"{STATS_PREFIX}{run}/{instance}.json",
                           Body=json.dumps(counts).encode(), ContentType="application/json")

    def read_counts(self, run: str) -> dict[str, dict[str, Any]]:
        out = {}
        prefix = f"{STATS_PREFIX}{run}/"
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                try:
                    body = self.s3.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                except Exception as exc:  # botocore ClientError: deleted since the listing
                    if _missing(exc):
                        continue
                    raise
                data = _json_object(body)
                if data is not None:
                    out[obj["Key"][len(prefix):].removesuffix(".json")] = data
        return out

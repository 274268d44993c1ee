"""The shadow evaluation's pointer: ``models/shadow.json`` in the local store, ``shadow.json`` in
the models bucket on AWS (beside ``live.json``), each replaced in one step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .aws import _missing, _S3Bound
from .base import ShadowPointer
from .local import atomic_write_json, read_json

SHADOW_KEY = "shadow.json"


class LocalShadowPointer(ShadowPointer):
    def __init__(self, root: Path) -> None:
        self.path = Path(root) / "models" / SHADOW_KEY

    def read(self) -> dict[str, Any] | None:
        data = read_json(self.path)
        return data if isinstance(data, dict) else None

    def write(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.path, state)


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
        try:
            data = json.loads(body)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def write(self, state: dict[str, Any]) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=SHADOW_KEY, Body=json.dumps(state).encode(),
                           ContentType="application/json")

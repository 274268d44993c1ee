"""Captured predictions in the data bucket: ``capture/<prediction id>.jpg`` and ``.json``.

Same contract as the local store (:class:`~fruitpipe.backends.base.CaptureStore`): image first,
record second, so a record never names a missing image. The bucket is versioned, so a plain
delete would only hide an image behind a delete marker; :meth:`S3CaptureStore.prune` deletes
every *version* of what it removes, so a pruned capture is gone for good. Behind it, the bucket's
lifecycle rule for ``capture/`` (``infra/constructs/storage.py``) expires objects after the same
number of days and removes noncurrent versions a day later, whatever the app does.

Listing reads every record (one GET each, in parallel): the review queue of a deployment is
bounded by ``FRUITPIPE_CAPTURE_MAX_ITEMS`` (1,000 on AWS), which keeps that to about a second.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .aws import _missing, _S3Bound
from .base import CaptureStore, NotFound

PREFIX = "capture/"
READERS = 16  # parallel GETs when listing records


class S3CaptureStore(_S3Bound, CaptureStore):
    def __init__(self, bucket: str, s3: Any = None) -> None:
        self.bucket = bucket
        self._s3 = s3

    @staticmethod
    def _key(pid: str, suffix: str) -> str:
        if not pid or "/" in pid or pid.startswith("."):
            raise NotFound(f"no capture {pid!r}")
        return f"{PREFIX}{pid}{suffix}"

    def _read(self, key: str) -> bytes:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:  # botocore ClientError
            if _missing(exc):
                raise NotFound(f"no capture object {key}") from None
            raise

    def put(self, prediction_id: str, record: dict[str, Any], image: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self._key(prediction_id, ".jpg"), Body=image,
                           ContentType="image/jpeg")
        self.s3.put_object(Bucket=self.bucket, Key=self._key(prediction_id, ".json"),
                           Body=json.dumps(record).encode(), ContentType="application/json")

    def update(self, prediction_id: str, record: dict[str, Any]) -> None:
        self.get(prediction_id)  # NotFound when it is not kept
        self.s3.put_object(Bucket=self.bucket, Key=self._key(prediction_id, ".json"),
                           Body=json.dumps(record).encode(), ContentType="application/json")

    def get(self, prediction_id: str) -> dict[str, Any]:
        try:
            data = json.loads(self._read(self._key(prediction_id, ".json")))
        except ValueError:
            raise NotFound(f"unreadable capture record {prediction_id!r}") from None
        if not isinstance(data, dict):
            raise NotFound(f"unreadable capture record {prediction_id!r}")
        return data

    def image(self, prediction_id: str) -> bytes:
        return self._read(self._key(prediction_id, ".jpg"))

    def _keys(self) -> list[str]:
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=PREFIX):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return sorted(keys)

    def records(self) -> list[dict[str, Any]]:
        ids = [k[len(PREFIX):-len(".json")] for k in self._keys() if k.endswith(".json")]

        def one(pid: str) -> dict[str, Any] | None:
            try:
                return self.get(pid)
            except NotFound:  # pruned meanwhile
                return None

        with ThreadPoolExecutor(READERS) as pool:
            return [r for r in pool.map(one, ids) if r is not None]

    def prune(self, older_than: str, max_items: int) -> int:
        versions: dict[str, list[dict[str, str]]] = {}
        for page in self.s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=PREFIX):
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                versions.setdefault(v["Key"], []).append({"Key": v["Key"], "VersionId": v["VersionId"]})
        current = self._keys()
        ids = [k[len(PREFIX):-len(".json")] for k in current if k.endswith(".json")]
        doomed = {i for i in ids if i < older_than} | set(ids[:max(0, len(ids) - max_items)])
        kept = set(ids) - doomed
        targets: list[dict[str, str]] = []
        for key, vs in versions.items():
            pid = key[len(PREFIX):].rsplit(".", 1)[0]
            # what is pruned, what is older than the limit whatever it is (an orphan image, an
            # old version left behind), and every version of a key that no longer exists
            if pid in doomed or pid < older_than or (pid not in kept and key not in current):
                targets += vs
        for start in range(0, len(targets), 1000):  # DeleteObjects takes at most 1,000 keys
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": targets[start:start + 1000], "Quiet": True})
        return len(doomed)

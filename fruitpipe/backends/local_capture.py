"""Captured predictions in the local store: ``<store>/capture/<prediction id>.jpg`` and ``.json``.

The image is written first and the record second, each atomically (temporary file +
``os.replace``), so a record is never visible without its image and a crash leaves at most an
orphan image, which the next :meth:`LocalCaptureStore.prune` removes. Deleting is the reverse
(record first). Ids are time-sortable, so sorting file names sorts by age.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .base import CaptureStore, NotFound
from .local import atomic_write, atomic_write_json, read_json, remove_stale_temps

CAPTURE_DIR = "capture"
ORPHAN_SECONDS = 60  # an image without a record this old was left by a crash, not a write in progress


class LocalCaptureStore(CaptureStore):
    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / CAPTURE_DIR
        remove_stale_temps(self.dir)

    def _path(self, pid: str, suffix: str) -> Path:
        if not pid or "/" in pid or pid.startswith("."):
            raise NotFound(f"no capture {pid!r}")
        return self.dir / f"{pid}{suffix}"

    def put(self, prediction_id: str, record: dict[str, Any], image: bytes) -> None:
        atomic_write(self._path(prediction_id, ".jpg"), image, 0o600)
        atomic_write(self._path(prediction_id, ".json"), (json.dumps(record) + "\n").encode(), 0o600)

    def update(self, prediction_id: str, record: dict[str, Any]) -> None:
        path = self._path(prediction_id, ".json")
        if not path.is_file():
            raise NotFound(f"no capture {prediction_id!r}")
        atomic_write_json(path, record)

    def get(self, prediction_id: str) -> dict[str, Any]:
        data = read_json(self._path(prediction_id, ".json"))
        if not isinstance(data, dict):
            raise NotFound(f"no capture {prediction_id!r}")
        return data

    def image(self, prediction_id: str) -> bytes:
        try:
            return self._path(prediction_id, ".jpg").read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no capture image {prediction_id!r}") from None

    def _ids(self, suffix: str) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name[:-len(suffix)] for p in self.dir.iterdir()
                      if p.name.endswith(suffix) and not p.name.startswith("."))

    def records(self) -> list[dict[str, Any]]:
        out = []
        for pid in self._ids(".json"):
            data = read_json(self.dir / f"{pid}.json")
            if isinstance(data, dict):
                out.append(data)
        return out

    def prune(self, older_than: str, max_items: int) -> int:
        ids = self._ids(".json")
        doomed = set(i for i in ids if i < older_than) | set(ids[:max(0, len(ids) - max_items)])
        kept = set(ids) - doomed
        orphans = [i for i in self._ids(".jpg") if i not in kept and i not in doomed]
        for pid in sorted(doomed):
            (self.dir / f"{pid}.json").unlink(missing_ok=True)
            (self.dir / f"{pid}.jpg").unlink(missing_ok=True)
        for pid in orphans:  # an image whose record was never written (a crash between the two),
            path = self.dir / f"{pid}.jpg"  # not one whose record is being written right now
            try:
                settled = time.time() - path.stat().st_mtime > ORPHAN_SECONDS
            except FileNotFoundError:
                continue
            if pid < older_than or (settled and not (self.dir / f"{pid}.json").exists()):
                path.unlink(missing_ok=True)
        return len(doomed)

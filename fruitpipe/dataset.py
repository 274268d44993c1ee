"""Filing training images: validate, de-duplicate by content, name safely.

Shared by the local store and the S3 ingest function, so an image is filed the same way whichever
door it came through: ``dataset/<class>/<sha256>.jpg``, where the sha256 is of the stored bytes.
The client's filename is never used in a path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from . import imaging
from .labels import LABELS

DATASET_PREFIX: Final[str] = "dataset"
INCOMING_PREFIX: Final[str] = "incoming"
QUARANTINE_PREFIX: Final[str] = "quarantine"
UNTAGGED: Final[str] = "untagged"  # the origin of an image that carries no tag
# {sha256: origin} of filed images, beside an embedding cache (the AWS prepare step writes it)
ORIGINS_FILE: Final[str] = "origins.json"
ORIGIN_SUFFIX: Final[str] = ".origin"  # dataset/<class>/<sha256>.origin: how a non-upload image came


class UnknownClass(ValueError):
    """A class name that is not one of the six labels."""

    code = "unknown_class"

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown class {name!r}; expected one of {', '.join(LABELS)}")
        self.name = name


def check_label(name: str) -> str:
    if name not in LABELS:
        raise UnknownClass(name)
    return name


@dataclass(frozen=True)
class FiledImage:
    label: str
    sha256: str
    key: str  # relative key / path: dataset/<class>/<sha256>.jpg
    data: bytes  # the bytes to store (JPEG)


def prepare(label: str, data: bytes) -> FiledImage:
    """Validate ``data`` and return what to store and where. Raises ``InvalidImage``/``UnknownClass``."""
    check_label(label)
    stored = imaging.to_jpeg(data)
    digest = hashlib.sha256(stored).hexdigest()
    return FiledImage(label=label, sha256=digest, key=f"{DATASET_PREFIX}/{label}/{digest}.jpg", data=stored)


def duplicate_detail(image_key: str) -> str:
    """The ``detail`` of an upload whose content an earlier upload already filed as ``image_key``
    (as a seed-data duplicate says where its twin is)."""
    return f"already uploaded: the same image is in the dataset as {image_key}"


def origin_key(image_key: str) -> str:
    """The origin tag beside a filed image: ``dataset/<class>/<sha256>.origin`` (one line of text,
    e.g. ``review``). Uploads have none. Not an image suffix, so no image listing picks it up."""
    return image_key.rsplit(".", 1)[0] + ORIGIN_SUFFIX


def origins_beside(cache_dir: Path | None) -> dict[str, str]:
    """The ``{sha256: origin}`` map in an embedding cache folder (:data:`ORIGINS_FILE`), or {}."""
    try:
        data = json.loads((Path(cache_dir) / ORIGINS_FILE).read_text(encoding="utf-8")) if cache_dir else {}
    except (OSError, ValueError):
        return {}
    return {str(k): str(v)[:40] for k, v in data.items()} if isinstance(data, dict) else {}


def origin_of(path: Path) -> str | None:
    """The origin tag of the image file ``path`` (symlinks followed to the filed image), or None."""
    try:
        tag = Path(path).resolve().with_suffix(ORIGIN_SUFFIX).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return tag[:40] or None

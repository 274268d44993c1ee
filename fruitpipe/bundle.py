"""Model bundles: one immutable folder per version, verified by checksum before use.

A bundle is ``manifest.json`` plus the files it lists (the head, and anything else the rejection
rule needs). The manifest pins the files; a registry pins the manifest: when a version is
published it records the manifest's sha256 in ``manifest.sha256`` beside it (``sha256sum``
format), and the live pointer repeats it, so an edited manifest (a changed threshold) is refused
like a changed head. The backbone is not inside: the manifest names it (``backbone``: registry name,
file, sha256, input size, quantization, embedding tensor) and :mod:`fruitpipe.backbone` provisions
it; a manifest without ``backbone.name`` was built on MobileNetV2 (bundles before the registry). Loading refuses a bundle whose manifest is malformed,
whose labels differ from :data:`fruitpipe.labels.LABELS`, or whose files do not match their sha256.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from . import backbone
from .labels import LABELS

FORMAT: Final[int] = 1
MANIFEST: Final[str] = "manifest.json"
MANIFEST_SHA: Final[str] = "manifest.sha256"  # the registry's record of the manifest, `sha256sum -c` checks it


class BundleError(ValueError):
    """A bundle that must not be served; the message says which check failed."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_version(now: datetime | None = None, salt: str = "") -> str:
    """Sortable, unique-enough version id, e.g. ``v20261126-113000-1a2b3c``."""
    now = now or datetime.now(timezone.utc)
    return f"v{now:%Y%m%d-%H%M%S}-{sha256_bytes((now.isoformat() + salt).encode())[:6]}"


@dataclass
class Manifest:
    """The parsed ``manifest.json``. ``raw`` keeps every field, including ones added later."""

    version: str
    created: str
    labels: tuple[str, ...]
    files: dict[str, str]
    head: dict[str, Any]
    preprocessing: dict[str, Any]
    rejection: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    backbone_name: str = backbone.DEFAULT_NAME  # a key of fruitpipe.backbone.SPECS

    @property
    def backbone(self) -> backbone.Spec:
        """The :class:`~fruitpipe.backbone.Spec` this bundle was trained on."""
        return backbone.get(self.backbone_name)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        try:
            if data.get("format") != FORMAT:
                raise BundleError(f"unsupported bundle format {data.get('format')!r}")
            labels = tuple(data["labels"])
            if labels != LABELS:
                raise BundleError(f"bundle labels {list(labels)} differ from {list(LABELS)}")
            bb = data["backbone"]
            name = bb.get("name", backbone.DEFAULT_NAME)
            try:
                spec = backbone.get(name)
            except backbone.BackboneError as exc:
                raise BundleError(f"bundle names {exc}") from None
            if bb.get("sha256") != spec.sha256:
                raise BundleError(f"bundle was trained on a different backbone {name} "
                                  f"(sha256 {bb.get('sha256')}, this build has {spec.sha256})")
            files = {str(k): str(v) for k, v in data["files"].items()}
            for name in files:
                if "/" in name or "\\" in name or name.startswith("."):
                    raise BundleError(f"bundle file name {name!r} is not a plain file name")
            return cls(version=str(data["version"]), created=str(data["created"]), labels=labels,
                       files=files, head=dict(data["head"]), preprocessing=dict(data["preprocessing"]),
                       rejection=dict(data.get("rejection", {})), metrics=dict(data.get("metrics", {})),
                       training_data=dict(data.get("training_data", {})), raw=data, backbone_name=spec.name)
        except (KeyError, TypeError, AttributeError) as exc:
            raise BundleError(f"manifest is missing or has a malformed field: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.raw)
        out.update({
            "format": FORMAT, "version": self.version, "created": self.created,
            "labels": list(self.labels),
            "backbone": self.backbone.manifest_entry(),
            "files": self.files, "head": self.head, "preprocessing": self.preprocessing,
            "rejection": self.rejection, "metrics": self.metrics, "training_data": self.training_data,
        })
        return out


def read_manifest(bundle_dir: Path) -> Manifest:
    path = Path(bundle_dir) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"no {MANIFEST} in {bundle_dir}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path} is not a JSON object")
    return Manifest.from_dict(data)


def manifest_record(digest: str) -> bytes:
    """The content of ``manifest.sha256`` for a manifest with sha256 ``digest`` (hex)."""
    return f"{digest}  {MANIFEST}\n".encode()


def parse_manifest_record(data: bytes) -> str:
    """The sha256 (hex) in a ``manifest.sha256`` record. Raises :class:`BundleError` if malformed."""
    digest, _, name = data.decode("ascii", "replace").strip().partition("  ")
    if name != MANIFEST or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise BundleError(f"{MANIFEST_SHA} is not a sha256 record of {MANIFEST}")
    return digest


def check_manifest(bundle_dir: Path, expected: str | None) -> str:
    """The sha256 of ``manifest.json`` in ``bundle_dir``; with ``expected`` (what the registry
    recorded when the version was published) a different one raises :class:`BundleError`."""
    try:
        actual = sha256_bytes((Path(bundle_dir) / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise BundleError(f"no {MANIFEST} in {bundle_dir}") from None
    if expected is not None and actual != expected:
        raise BundleError(f"{MANIFEST} of {Path(bundle_dir).name} has sha256 {actual[:12]}…, the registry recorded "
                          f"{expected[:12]}… when the version was published: the manifest was edited; "
                          "publish the change as a new version instead")
    return actual


def verify(bundle_dir: Path, manifest_sha256: str | None = None) -> Manifest:
    """Check the manifest against ``manifest_sha256`` (when given), parse it and check every listed
    file's sha256. Raises :class:`BundleError`."""
    bundle_dir = Path(bundle_dir)
    check_manifest(bundle_dir, manifest_sha256)
    manifest = read_manifest(bundle_dir)
    for name, expected in manifest.files.items():
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(f"bundle {manifest.version}: file {name} is missing")
        actual = sha256_bytes(path.read_bytes())
        if actual != expected:
            raise BundleError(f"bundle {manifest.version}: {name} has sha256 {actual[:12]}…, "
                              f"manifest says {expected[:12]}…; the bundle was modified")
    return manifest


def write(bundle_dir: Path, manifest: Manifest, files: dict[str, bytes]) -> Manifest:
    """Write ``files`` and a manifest that pins them. ``bundle_dir`` must not exist yet."""
    bundle_dir = Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=False)
    manifest.files = {}
    for name, data in files.items():
        (bundle_dir / name).write_bytes(data)
        manifest.files[name] = sha256_bytes(data)
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n",
                                       encoding="utf-8")
    return manifest


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")

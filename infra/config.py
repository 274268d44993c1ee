"""Stack parameters, read from CDK context (``cdk.json`` or ``-c key=value``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

ARCHITECTURES = ("x86_64", "arm64")


class ConfigError(ValueError):
    """A context value that cannot be used; the message names the key."""


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "retain"):
        return True
    if text in ("false", "0", "no", "destroy"):
        return False
    raise ConfigError(f"context {key}={value!r}: expected true/false")


def _origins(value: Any, key: str) -> tuple[str, ...]:
    """A list (or comma-separated string) of exact origins, ``https://host[:port]``; no wildcard."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        parsed = urlsplit(item)
        if (parsed.scheme not in ("https", "http") or not parsed.hostname or "*" in item
                or parsed.path not in ("", "/") or parsed.query or parsed.fragment
                or (parsed.scheme == "http" and parsed.hostname not in ("localhost", "127.0.0.1"))):
            raise ConfigError(f"context {key}: {item!r} is not an exact origin such as https://app.example.com "
                              "(http only for localhost; no wildcards)")
        out.append(item.rstrip("/"))
    return tuple(dict.fromkeys(out))


def _backbones(value: Any, key: str) -> tuple[str, ...]:
    """A list (or comma-separated string) of registered backbone names; MobileNetV2 always first."""
    from fruitpipe.backbone import DEFAULT, SPECS
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    names = [str(i).strip() for i in items if str(i).strip()]
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise ConfigError(f"context {key}: unknown backbone {', '.join(unknown)}; known: {', '.join(SPECS)}")
    return tuple(dict.fromkeys([DEFAULT.name, *names]))


def _int(value: Any, key: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"context {key}={value!r}: expected an integer") from None
    if not low <= number <= high:
        raise ConfigError(f"context {key}={number}: expected {low}..{high}")
    return number


@dataclass(frozen=True)
class StackConfig:
    stage: str = "dev"
    architecture: str = "x86_64"
    memory_mb: int = 1024
    # None: no reservation. A new account has 10 concurrent executions in all and Lambda keeps 10
    # unreserved, so any reservation fails the first deploy there; set one with -c
    # reservedConcurrency=N / ingestConcurrency=N once the account's quota allows it.
    reserved_concurrency: int | None = None
    ingest_concurrency: int | None = None
    throttle_rate: float = 50.0
    throttle_burst: int = 100
    # The write routes have their own budget, so anonymous traffic that uses up the public
    # routes' throttle cannot lock the operators out.
    admin_throttle_rate: float = 5.0
    admin_throttle_burst: int = 10
    # Browser origins allowed to POST presigned uploads to the data bucket (CORS). None by
    # default: the CLI and curl need no CORS, and no page of ours uploads to S3 directly.
    upload_origins: tuple[str, ...] = ()
    retain: bool = True
    # Backbones packaged in the API and pipeline functions (MobileNetV2 always). Each other one
    # adds its file (2.6-6.2 MB: `du -b ../shared/models/*/*.tflite`) to every function; a live bundle on a backbone not packaged fails
    # to load and the previous model stays live (docs/deploy.md).
    backbones: tuple[str, ...] = ("mobilenet_v2",)

    @property
    def stack_name(self) -> str:
        return f"fruitpipe-{self.stage}"

    @classmethod
    def from_context(cls, get: Any) -> "StackConfig":
        """``get(key)`` returns a context value or None (``app.node.try_get_context``)."""
        d = cls()

        def opt(key: str, default: Any) -> Any:
            value = get(key)
            return default if value is None else value

        stage = str(opt("stage", d.stage))
        if not stage.replace("-", "").isalnum() or len(stage) > 20:
            raise ConfigError(f"context stage={stage!r}: letters, digits and '-' (at most 20)")
        arch = str(opt("architecture", d.architecture))
        if arch not in ARCHITECTURES:
            raise ConfigError(f"context architecture={arch!r}: expected one of {', '.join(ARCHITECTURES)}")

        def concurrency(key: str, default: int | None) -> int | None:
            value = opt(key, default)
            if value is None or str(value).lower() in ("none", "0", ""):
                return None
            return _int(value, key, 1, 1000)

        return cls(
            stage=stage,
            architecture=arch,
            memory_mb=_int(opt("memory", d.memory_mb), "memory", 128, 10240),
            reserved_concurrency=concurrency("reservedConcurrency", d.reserved_concurrency),
            ingest_concurrency=concurrency("ingestConcurrency", d.ingest_concurrency),
            throttle_rate=float(opt("throttleRate", d.throttle_rate)),
            throttle_burst=_int(opt("throttleBurst", d.throttle_burst), "throttleBurst", 1, 5000),
            admin_throttle_rate=float(opt("adminThrottleRate", d.admin_throttle_rate)),
            admin_throttle_burst=_int(opt("adminThrottleBurst", d.admin_throttle_burst), "adminThrottleBurst", 1, 5000),
            upload_origins=_origins(opt("uploadOrigins", d.upload_origins), "uploadOrigins"),
            retain=_bool(opt("retain", d.retain), "retain"),
            backbones=_backbones(opt("backbones", d.backbones), "backbones"),
        )

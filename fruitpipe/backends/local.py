"""The local backend: a store folder instead of S3, a child process instead of SageMaker.

Layout of the store (default ``./var``)::

    dataset/<class>/<sha256>.jpg        uploaded training images (content-addressed, de-duplicated)
    models/versions/<version>/          immutable bundles (manifest.json + files, evaluation.json,
                                        manifest.sha256: the manifest's checksum when it was added)
    models/rejected/<version>/          candidates the gate refused, with rejection.json (the reason)
    models/live.json                    the live pointer {"version", "manifest_sha256", "updated"},
                                        replaced atomically
    retrain/status.json                 the current/last run (survives a server restart)
    retrain/runs/<run_id>/              a run's data snapshot (symlinks), candidate bundle, log
    cache/embeddings/                   the training job's persistent embedding cache
    capture/<prediction id>.jpg|.json   captured predictions (fruitpipe.capture; bounded, opt-out)
    admin-token                         the generated admin token (mode 0600)

Every write is a temporary file + ``os.replace`` (or a temporary folder + ``os.rename``), so a
crash never leaves a half-written image, bundle or pointer behind. Dataset images are published
with ``os.link`` instead, which never replaces: of any number of parallel uploads of one picture
exactly one creates the file (``added``), the others see it exists (``duplicate``). Temporary
names carry the writer's process id; a store opened after a crash removes those of dead processes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import bundle, dataset, imaging
from ..labels import LABELS
from .base import (Backend, DataStore, ModelRegistry, ModelVersion, NotFound, RetrainRunning,
                   RetrainStatus, Trainer, UploadResult, VersionRejected)

log = logging.getLogger("fruitpipe.registry")
REPO = Path(__file__).resolve().parent.parent.parent
SHARED_FRUITS = REPO.parent / "shared" / "data" / "fruits"


# ".<target name>.<pid>-<random>.tmp": the pid tells a crashed writer's leftovers from a live one's.
_TEMP_RE = re.compile(r"^\..+\.(\d+)-[^./]+\.tmp$")
STALE_TEMP_SECONDS = 24 * 3600  # a temporary file this old is stale whoever wrote it (pids are reused)


def _write_temp(path: Path, data: bytes, mode: int) -> str:
    """``data`` in a new, fsynced temporary file beside ``path``; returns its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    tmp = _write_temp(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_once(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Create ``path`` with ``data`` unless it exists: True when this call created it.

    Written to a temporary file first and published with ``os.link`` (which fails with EEXIST
    rather than replace), so readers never see a partial file and of many concurrent callers
    exactly one gets True. Raises ``OSError`` for anything but "already there".
    """
    tmp = _write_temp(path, data, mode)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete temporary files in ``folder`` (not recursive) left by writers that are gone.

    A temporary file is stale when the process named in it is no longer running (a crash, a
    ``kill -9``) or it is older than :data:`STALE_TEMP_SECONDS`. Returns what was removed.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if not match or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match.group(1))
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS
        except FileNotFoundError:
            continue
        if old or not pid_alive(pid):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def safe_version(version: str) -> str:
    """A version id is used as a folder name: refuse anything that is not a plain name."""
    if (not version or len(version) > 100 or version.startswith(".")
            or any(c not in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_." for c in version)):
        raise NotFound(f"no model version {version!r}")
    return version


# --------------------------------------------------------------------------------------------
# data store


class LocalDataStore(DataStore):
    """``<root>/dataset/<class>/<sha256>.jpg``; the client's filename is never part of a path."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.dataset_dir = self.root / dataset.DATASET_PREFIX
        for label in LABELS:  # leftovers of a writer killed mid-upload
            remove_stale_temps(self.dataset_dir / label)

    def add(self, label: str, data: bytes, filename: str, *, origin: str = "upload") -> UploadResult:
        shown = _display_name(filename)
        try:
            filed = dataset.prepare(label, data)
        except dataset.UnknownClass as exc:
            return UploadResult(shown, "rejected", label=None, error=exc.code, detail=str(exc))
        except imaging.InvalidImage as exc:
            return UploadResult(shown, "rejected", label=label, error=exc.code, detail=exc.detail)
        path = self.root / filed.key
        if origin != "upload" and not path.exists():  # before the image: never filed without it
            create_once(self.root / dataset.origin_key(filed.key), (origin + "\n").encode())
        added = not path.exists() and create_once(path, filed.data)
        return UploadResult(shown, "added" if added else "duplicate", label=label, sha256=filed.sha256,
                            key=filed.key)

    def counts(self) -> dict[str, int]:
        out = {}
        for label in LABELS:
            folder = self.dataset_dir / label
            out[label] = sum(1 for _ in folder.glob("*.jpg")) if folder.is_dir() else 0
        return out


def _display_name(filename: str | None) -> str:
    """The client's filename, only for echoing back (never used in a path): printable, bounded."""
    name = "".join(c for c in (filename or "") if c.isprintable())
    return name[:200] or "(unnamed)"


# --------------------------------------------------------------------------------------------
# model registry


class LocalRegistry(ModelRegistry):
    """Immutable bundle folders plus a pointer file; publish and rollback only move the pointer.

    Every version's ``manifest.json`` is pinned by the ``manifest.sha256`` written when it was
    added, and the pointer repeats the live one's; fetching or activating a version whose manifest
    no longer matches raises :class:`~fruitpipe.bundle.BundleError`. Versions added before that
    record existed are accepted with a warning, and pinned by the pointer once activated.
    """

    def __init__(self, root: Path, seed_bundle: Path | None = None) -> None:
        self.root = Path(root) / "models"
        self.versions_dir = self.root / "versions"
        self.rejected_dir = self.root / "rejected"
        self.pointer = self.root / "live.json"
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.root)  # a pointer write cut short
        if seed_bundle is not None and self.live_version() is None:
            self.seed(Path(seed_bundle))

    def seed(self, bundle_dir: Path) -> str:
        """First start: copy the shipped bundle in and make it live."""
        manifest = bundle.verify(bundle_dir)
        self.add(bundle_dir, manifest.version)
        self.activate(manifest.version)
        return manifest.version

    def add(self, bundle_dir: Path, version: str, *, rejected_reason: str | None = None,
            evaluation: dict[str, Any] | None = None) -> Path:
        """Copy a verified bundle into the registry (tmp folder + rename: all or nothing)."""
        safe_version(version)
        parent = self.rejected_dir if rejected_reason is not None else self.versions_dir
        dest = parent / version
        if dest.exists():
            return dest
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{version}."))
        try:
            for item in Path(bundle_dir).iterdir():
                if item.is_file():
                    shutil.copy2(item, tmp / item.name)
            if evaluation is not None:
                (tmp / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
            if rejected_reason is not None:
                (tmp / "rejection.json").write_text(
                    json.dumps({"reason": rejected_reason, "rejected": bundle.now_iso()}, indent=2) + "\n")
            bundle.verify(tmp)
            (tmp / bundle.MANIFEST_SHA).write_bytes(bundle.manifest_record(bundle.check_manifest(tmp, None)))
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    def live_version(self) -> str | None:
        data = read_json(self.pointer)
        if isinstance(data, dict) and isinstance(data.get("version"), str):
            return data["version"]
        return None

    def pinned_manifest_sha(self, version: str, path: Path) -> str | None:
        """The manifest sha256 recorded for ``version`` (folder ``path``): its ``manifest.sha256``,
        else the live pointer's when it names this version; None (with a warning) for a version
        added before either existed."""
        try:
            return bundle.parse_manifest_record((path / bundle.MANIFEST_SHA).read_bytes())
        except FileNotFoundError:
            pass
        pointer = read_json(self.pointer)
        if isinstance(pointer, dict) and pointer.get("version") == version and pointer.get("manifest_sha256"):
            return str(pointer["manifest_sha256"])
        log.warning("model version %s has no recorded manifest checksum (added before they were kept); "
                    "accepting its manifest as it is", version)
        return None

    def pointer_signature(self) -> tuple[int, int] | None:
        """Cheap change detector for the model holder (mtime_ns, inode)."""
        try:
            st = self.pointer.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def _version(self, path: Path, status: str, live: str | None) -> ModelVersion | None:
        try:
            manifest = bundle.read_manifest(path)
        except bundle.BundleError:
            return None
        metrics = dict(manifest.metrics)
        evaluation = read_json(path / "evaluation.json")
        if isinstance(evaluation, dict):
            metrics["evaluation"] = evaluation
        reason = None
        if status == "rejected":
            info = read_json(path / "rejection.json") or {}
            reason = str(info.get("reason", "rejected by the gate"))
        elif path.name == live:
            status = "live"
        return ModelVersion(version=manifest.version, created=manifest.created,
                            status=status, metrics=metrics, reason=reason)  # type: ignore[arg-type]

    def versions(self) -> list[ModelVersion]:
        live = self.live_version()
        out: list[ModelVersion] = []
        for parent, status in ((self.versions_dir, "available"), (self.rejected_dir, "rejected")):
            for path in parent.iterdir():
                if path.is_dir() and not path.name.startswith("."):
                    v = self._version(path, status, live)
                    if v is not None:
                        out.append(v)
        out.sort(key=lambda v: (v.created, v.version), reverse=True)
        return out

    def fetch(self, version: str) -> Path:
        path = self.versions_dir / safe_version(version)
        if not (path / bundle.MANIFEST).is_file():
            path = self.rejected_dir / version
            if not (path / bundle.MANIFEST).is_file():
                raise NotFound(f"no model version {version!r}")
        bundle.check_manifest(path, self.pinned_manifest_sha(version, path))
        return path

    def activate(self, version: str) -> None:
        path = self.versions_dir / safe_version(version)
        if not (path / bundle.MANIFEST).is_file():
            if (self.rejected_dir / version).is_dir():
                reason = (read_json(self.rejected_dir / version / "rejection.json") or {}).get("reason", "")
                raise VersionRejected(f"version {version} was rejected by the gate: {reason}")
            raise NotFound(f"no model version {version!r}")
        digest = bundle.check_manifest(path, self.pinned_manifest_sha(version, path))
        bundle.verify(path, digest)
        atomic_write_json(self.pointer, {"version": version, "manifest_sha256": digest, "updated": bundle.now_iso()})


# --------------------------------------------------------------------------------------------
# trainer


def default_seed_dirs() -> list[Path]:
    """Shared training photos beside the checkout, when present."""
    train = SHARED_FRUITS / "train"
    return [train] if train.is_dir() else []


def default_validation_dir() -> Path | None:
    """Calibration photos for the training job (it then refits on train + validation, as the
    shipped model was made); a separate split, because near-copies inside one split would make the
    not-fruit thresholds too strict."""
    val = SHARED_FRUITS / "val"
    return val if val.is_dir() else None


def default_eval_dir() -> Path | None:
    """The gate's images: the shared test split, which neither the shipped model nor a retrain
    trains on, so candidate and live are compared on images both have never seen."""
    test = SHARED_FRUITS / "test"
    return test if test.is_dir() else None


def default_train_command() -> list[str]:
    """The training job (contract: ``--data --out --cache [--validation]`` are appended).

    ``$FRUITPIPE_TRAIN_COMMAND`` (shell words) overrides it, e.g. ``fruitpipe train``.
    """
    env = os.environ.get("FRUITPIPE_TRAIN_COMMAND")
    if env:
        return shlex.split(env)
    return [sys.executable, "-m", "training_job"]


@dataclass
class TrainerConfig:
    train_command: list[str] = field(default_factory=default_train_command)
    seed_dirs: list[Path] = field(default_factory=default_seed_dirs)
    eval_dir: Path | None = field(default_factory=default_eval_dir)
    validation_dir: Path | None = field(default_factory=default_validation_dir)
    # Python callable "module:function" used by the run process to evaluate a classifier on a folder.
    evaluate: str = "fruitpipe.backends.local_run:evaluate"
    gate_tolerance: float = 0.0
    nice: int = 10  # the run and the training job yield the CPU to the server's predictions
    extra_env: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # absolute paths: the run process does not share the server's working directory
        return {"train_command": list(self.train_command),
                "seed_dirs": [str(Path(p).resolve()) for p in self.seed_dirs],
                "eval_dir": str(Path(self.eval_dir).resolve()) if self.eval_dir else None,
                "validation_dir": str(Path(self.validation_dir).resolve()) if self.validation_dir else None,
                "evaluate": self.evaluate,
                "gate_tolerance": self.gate_tolerance, "nice": self.nice}


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped) counts as dead
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


class LocalTrainer(Trainer):
    """Starts ``python -m fruitpipe.backends.local_run`` as a separate process and reads its status.

    The run process (not the server) snapshots the data, runs the training job, evaluates
    candidate and live on the same images, applies :func:`fruitpipe.gate.decide` and publishes.
    A lock file makes sure only one run exists at a time, across threads and processes.
    """

    def __init__(self, root: Path, registry: LocalRegistry, config: TrainerConfig | None = None) -> None:
        self.root = Path(root).resolve()
        self.registry = registry
        self.config = config or TrainerConfig()
        self.dir = self.root / "retrain"
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.dir)  # a status write cut short
        self.status_path = self.dir / "status.json"
        self.lock_path = self.dir / "lock"
        self._thread_lock = threading.Lock()
        self._procs: dict[int, subprocess.Popen] = {}

    def _read(self) -> dict[str, Any]:
        data = read_json(self.status_path)
        return data if isinstance(data, dict) else {}

    def _settle(self, data: dict[str, Any]) -> dict[str, Any]:
        """A 'running' status whose process is gone becomes 'failed' (crash or server restart)."""
        if data.get("state") != "running":
            return data
        pid = data.get("pid")
        proc = self._procs.get(pid) if isinstance(pid, int) else None
        if proc is not None and proc.poll() is None:
            return data
        if proc is None and pid_alive(pid):
            return data
        fresh = self._read()  # the run may have written its final status just now
        if fresh.get("state") != "running" or fresh.get("run_id") != data.get("run_id"):
            return fresh
        fresh.update(state="failed", finished=bundle.now_iso(), stage=fresh.get("stage") or "failed")
        fresh.setdefault("result", {})["error"] = "the training run process exited without finishing"
        atomic_write_json(self.status_path, fresh)
        return fresh

    def status(self) -> RetrainStatus:
        with self._thread_lock:
            data = self._settle(self._read())
        return to_status(data)

    def start(self, trigger: str = "manual") -> RetrainStatus:
        with self._thread_lock:
            with open(self.lock_path, "a+") as lockf:
                fcntl.flock(lockf, fcntl.LOCK_EX)
                try:
                    current = self._settle(self._read())
                    if current.get("state") == "running":
                        raise RetrainRunning(f"run {current.get('run_id')} is running "
                                             f"(stage {current.get('stage')}, {current.get('percent', 0):.0f}%)")
                    run_id = bundle.new_version(salt=str(os.getpid())).replace("v", "run-", 1)
                    run_dir = self.dir / "runs" / run_id
                    run_dir.mkdir(parents=True)
                    (run_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
                    status = {"state": "running", "run_id": run_id, "trigger": trigger, "stage": "starting",
                              "percent": 0.0, "started": bundle.now_iso(), "finished": None,
                              "log_tail": [], "result": {}, "pid": None}
                    atomic_write_json(self.status_path, status)
                    env = dict(os.environ, **self.config.extra_env)
                    env.setdefault("PYTHONUNBUFFERED", "1")
                    log = open(run_dir / "run.log", "ab")
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "fruitpipe.backends.local_run", "--store", str(self.root),
                         "--run-id", run_id],
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                        start_new_session=True,
                        # in a checkout, run from its top so `python -m training_job` is found
                        cwd=str(REPO) if (REPO / "pyproject.toml").is_file() else None)
                    log.close()
                    self._procs[proc.pid] = proc
                    status["pid"] = proc.pid
                    # the run may already have written progress; only fill in the pid
                    latest = self._read()
                    if latest.get("run_id") == run_id:
                        latest["pid"] = proc.pid
                        status = latest
                    atomic_write_json(self.status_path, status)
                    return to_status(status)
                finally:
                    fcntl.flock(lockf, fcntl.LOCK_UN)

    def wait(self, timeout: float | None = None) -> RetrainStatus:
        """Wait for the current run's process (tests and the CLI)."""
        for proc in list(self._procs.values()):
            proc.wait(timeout=timeout)
        return self.status()


def to_status(data: dict[str, Any]) -> RetrainStatus:
    if not data:
        return RetrainStatus()
    return RetrainStatus(
        state=data.get("state", "idle"), run_id=data.get("run_id"), trigger=data.get("trigger"),
        stage=data.get("stage"), percent=float(data.get("percent") or 0.0), started=data.get("started"),
        finished=data.get("finished"), log_tail=list(data.get("log_tail") or [])[-40:],
        result=dict(data.get("result") or {}))


# --------------------------------------------------------------------------------------------


def create_local_backend(store: Path | str = "var", *, seed_bundle: Path | None = None,
                         trainer_config: TrainerConfig | None = None) -> Backend:
    """The backend ``fruitpipe serve`` uses: everything under one folder."""
    from ..models_path import default_model_dir
    root = Path(store).resolve()
    root.mkdir(parents=True, exist_ok=True)
    registry = LocalRegistry(root, seed_bundle if seed_bundle is not None else default_model_dir())
    from .local_capture import LocalCaptureStore
    from .shadow_pointers import LocalShadowPointer
    return Backend(name="local", store=LocalDataStore(root), registry=registry,
                   trainer=LocalTrainer(root, registry, trainer_config), capture=LocalCaptureStore(root),
                   shadow=LocalShadowPointer(root))

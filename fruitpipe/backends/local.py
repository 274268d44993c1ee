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
    retrain/trained-on.json             version -> fingerprint of the uploads it was trained on
    retrain/stage-seconds.json          measured stage durations of the last run (progress weights)
    retrain/warmup.json                 the background warm-up at first start (cache, indexes)
    recipe/                             generated not-fruit sets, upload-guard indexes
    evaluations/<version>.json          each version's metrics on the frozen evaluation set
    capture/<prediction id>.jpg|.json   captured predictions (fruitpipe.capture; bounded, opt-out)
    models/shadow.json                  the shadow evaluation's state (fruitpipe.shadow)
    admin-token                         the generated admin token (mode 0600)

The embedding cache is shared by every store of the machine (``<fruitpipe cache>/embeddings``,
see :func:`default_cache_dir`).

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
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .. import bundle, dataset, imaging, version_metrics
from .. import recipe as rc
from ..evalset import UploadGuard
from ..labels import LABELS
from .base import (Backend, DataStore, ModelRegistry, ModelVersion, NothingToLearn, NotFound, NotRunning,
                   RetrainRunning, RetrainStatus, Trainer, UploadResult, VersionRejected)

log = logging.getLogger("fruitpipe.registry")
REPO = Path(__file__).resolve().parent.parent.parent


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

    def __init__(self, root: Path, guard: "UploadGuard | None" = None) -> None:
        self.root = Path(root)
        self.dataset_dir = self.root / dataset.DATASET_PREFIX
        for label in LABELS:  # leftovers of a writer killed mid-upload
            remove_stale_temps(self.dataset_dir / label)
        self.guard = guard  # refuses evaluation-set images, flags seed images (fruitpipe.evalset)

    def add(self, label: str, data: bytes, filename: str, *, origin: str = "upload") -> UploadResult:
        shown = _display_name(filename)
        try:
            filed = dataset.prepare(label, data)
        except dataset.UnknownClass as exc:
            return UploadResult(shown, "rejected", label=None, error=exc.code, detail=str(exc))
        except imaging.InvalidImage as exc:
            return UploadResult(shown, "rejected", label=label, error=exc.code, detail=exc.detail)
        path = self.root / filed.key
        result = UploadResult(shown, "added", label=label, sha256=filed.sha256, key=filed.key)
        if self.guard is not None and (found := self.guard.check(data, filed.sha256)) is not None:
            status, code, detail = found
            if status == "rejected":
                return UploadResult(shown, "rejected", label=label, sha256=filed.sha256, error=code, detail=detail)
            result.status, result.detail, result.key = "duplicate", detail, None  # not filed: already seed data
            return result
        if origin != "upload" and not path.exists():  # before the image: never filed without it
            create_once(self.root / dataset.origin_key(filed.key), (origin + "\n").encode())
        if path.exists() or not create_once(path, filed.data):
            result.status, result.detail = "duplicate", dataset.duplicate_detail(filed.key)
        return result

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
        frozen = self.frozen_metrics(path.name)
        if frozen is not None:  # the frozen evaluation set: the same images for every version, so rows compare
            metrics["frozen"] = frozen
        reason = None
        if status == "rejected":
            info = read_json(path / "rejection.json") or {}
            reason = str(info.get("reason", "rejected by the gate"))
        elif path.name == live:
            status = "live"
        return ModelVersion(version=manifest.version, created=manifest.created,
                            status=status, metrics=metrics, reason=reason)  # type: ignore[arg-type]

    def frozen_metrics(self, version: str) -> dict[str, Any] | None:
        """``evaluations/<version>.json`` of the store (written by the retrain's gate and the
        first-start warm-up): ``eval_set`` and the figures of :data:`version_metrics.FIGURES`."""
        try:
            frozen = read_json(self.root.parent / "evaluations" / f"{safe_version(version)}.json")
        except NotFound:
            return None
        if not (isinstance(frozen, dict) and isinstance(frozen.get("metrics"), dict)):
            return None
        return {"eval_set": frozen.get("eval_set"), **{k: frozen["metrics"].get(k) for k in version_metrics.FIGURES}}

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

    def live_record(self) -> dict[str, Any] | None:
        data = read_json(self.pointer)
        return data if isinstance(data, dict) else None

    def activate(self, version: str, *, reason: str = "") -> None:
        path = self.versions_dir / safe_version(version)
        if not (path / bundle.MANIFEST).is_file():
            if (self.rejected_dir / version).is_dir():
                reason = (read_json(self.rejected_dir / version / "rejection.json") or {}).get("reason", "")
                raise VersionRejected(f"version {version} was rejected by the gate: {reason}")
            raise NotFound(f"no model version {version!r}")
        digest = bundle.check_manifest(path, self.pinned_manifest_sha(version, path))
        bundle.verify(path, digest)
        current = self.live_record() or {}
        if current.get("version") == version:
            if current.get("manifest_sha256") == digest:
                return  # already live: the pointer (its "previous", "updated": the rollback watch) stays
            previous = current.get("previous")  # a pointer written before the pin: pin it, keep the rest
        else:
            previous = current.get("version")
        atomic_write_json(self.pointer, {"version": version, "manifest_sha256": digest, "updated": bundle.now_iso(),
                                         "previous": previous, "reason": reason})


# --------------------------------------------------------------------------------------------
# trainer


def default_train_command() -> list[str]:
    """The training job (contract: ``--data --out --cache [--validation] [--base-model]
    [--hyperparameters]`` are appended).

    ``$FRUITPIPE_TRAIN_COMMAND`` (shell words) overrides it, e.g. ``fruitpipe train``.
    """
    env = os.environ.get("FRUITPIPE_TRAIN_COMMAND")
    if env:
        return shlex.split(env)
    return [sys.executable, "-m", "training_job"]


def default_cache_dir() -> Path:
    """The embedding cache shared by every store on this machine (``<fruitpipe cache>/embeddings``):
    entries are keyed by image sha256, backbone and preprocessing, so sharing is safe, and the
    seed data is embedded once per machine, not once per store."""
    from ..backbone import cache_dir
    return cache_dir() / "embeddings"


@dataclass
class TrainerConfig:
    """How local retrains run. ``recipe`` None: the shipped recipe (:func:`fruitpipe.recipe.shipped`)
    on ``fruits`` (default ``../shared/data/fruits``), its generated sets under ``<store>/recipe``."""

    recipe: rc.Recipe | None = None
    fruits: Path | None = None
    train_command: list[str] = field(default_factory=default_train_command)
    cache_dir: Path | None = None  # None: default_cache_dir()
    # Python callable "module:function" used by the run process to evaluate a classifier on a folder
    # (None: the cached-embedding evaluation in local_run).
    evaluate: str | None = None
    gate_tolerance: float = 0.0
    # shadowed /predict requests a candidate the gate passed must go through before it goes live
    # (fruitpipe.shadow); 0: the gate's yes activates it at once. $FRUITPIPE_SHADOW_REQUESTS.
    shadow_requests: int = field(default_factory=lambda: int(os.environ.get("FRUITPIPE_SHADOW_REQUESTS") or 0))
    nice: int = 10  # the run and the training job yield the CPU to the server's predictions
    extra_env: dict[str, str] = field(default_factory=dict)


def proc_start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, ``/proc/<pid>/stat`` field 22), or None."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int | None, start_time: int | None = None) -> bool:
    """True while ``pid`` runs and (when given) is still the process that started at ``start_time``
    (a recycled pid is another process)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    if stat[0] == "Z":  # exited, not yet reaped
        return False
    return start_time is None or int(stat[19]) == int(start_time)


def kill_group(pgid: int | None) -> bool:
    """SIGKILL every process of the group ``pgid`` (a run and its training job); True if any was."""
    if not pgid:
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False


@contextmanager
def decision_lock(store: Path) -> Iterator[None]:
    """Held by a run from its gate to its final status, and by a cancel while it kills the run:
    a run is either stopped before its gate or finishes its decision and publication whole."""
    path = Path(store) / "retrain" / "decision.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def uploads_fingerprint(store: Path) -> str:
    """The uploads' identity: sha256 over the sorted ``<class>/<sha256>.jpg`` names of the store's
    dataset (names are content hashes, so no file is read)."""
    import hashlib
    root = Path(store) / dataset.DATASET_PREFIX
    names = sorted(f"{p.parent.name}/{p.name}" for p in root.glob("*/*.jpg")) if root.is_dir() else []
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


class LocalTrainer(Trainer):
    """Starts ``python -m fruitpipe.backends.local_run`` as a separate process and reads its status.

    The run process (not the server) snapshots the data, runs the training job, evaluates
    candidate and live on the frozen evaluation set, applies :func:`fruitpipe.gate.decide` and
    publishes. A lock file makes sure only one run exists at a time, across threads and processes.
    The run is the leader of its own process group, which holds its training job too: when the
    run process is found dead (pid + start time), the whole group is killed and the run marked
    failed, so no orphan training job keeps running.
    """

    def __init__(self, root: Path, registry: LocalRegistry, config: TrainerConfig | None = None) -> None:
        self.root = Path(root).resolve()
        self.registry = registry
        self.config = config or TrainerConfig()
        self.recipe = self.config.recipe or rc.shipped(self.root / "recipe", self.config.fruits)
        self.cache_dir = Path(self.config.cache_dir or default_cache_dir()).resolve()
        self.dir = self.root / "retrain"
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.dir)  # a status write cut short
        self.status_path = self.dir / "status.json"
        self.lock_path = self.dir / "lock"
        self.trained_on_path = self.dir / "trained-on.json"
        self.warmup_path = self.dir / "warmup.json"
        self.guard = UploadGuard(self.recipe.evaluation, self.recipe.train + self.recipe.validation,
                                 self.root / "recipe")
        self._thread_lock = threading.Lock()
        self._procs: dict[int, subprocess.Popen] = {}

    def _read(self) -> dict[str, Any]:
        data = read_json(self.status_path)
        return data if isinstance(data, dict) else {}

    def _settle(self, data: dict[str, Any]) -> dict[str, Any]:
        """A 'running' status whose process is gone becomes 'failed' (crash, kill -9, server
        restart); whatever is left of its process group (the training job) is killed."""
        if data.get("state") != "running":
            return data
        pid = data.get("pid")
        proc = self._procs.get(pid) if isinstance(pid, int) else None
        if proc is not None and proc.poll() is None:
            return data
        if proc is None and (pid is None or pid_alive(pid, data.get("pid_start"))):
            return data  # pid None: the server is between Popen and writing the pid
        fresh = self._read()  # the run may have written its final status just now
        if fresh.get("state") != "running" or fresh.get("run_id") != data.get("run_id"):
            return fresh
        killed = kill_group(pid)
        code = proc.returncode if proc is not None else None
        how = f"exit status {code}" if code is not None and code >= 0 else (
            f"signal {-code}" if code is not None else "it is gone")
        fresh.update(state="failed", finished=bundle.now_iso(), stage=fresh.get("stage") or "failed", eta_seconds=None)
        fresh.setdefault("result", {})["error"] = (
            f"the training run process (pid {pid}) died without finishing ({how})"
            + ("; its training job was stopped" if killed else "") + ". The live model is unchanged.")
        atomic_write_json(self.status_path, fresh)
        return fresh

    def cancel(self) -> RetrainStatus:
        """Kill the running retrain's process group (the run and its training job) before its gate.

        Holding :func:`decision_lock` while it kills, a cancel can never interrupt a gate or a
        publication: a run that got there first finishes, and the cancel answers ``not_running``.
        What the run leaves (its snapshot of symlinks, a candidate bundle in its run folder) was
        never registered; embedding-cache shards are written whole or not at all.

        Raises:
            NotRunning: no retrain is running, or it has reached its gate.
        """
        with self._thread_lock, decision_lock(self.root):
            data = self._settle(self._read())
            if data.get("state") != "running":
                raise NotRunning("no retrain is running" + (
                    f" (the last run, {data.get('run_id')}, ended {data.get('state')})" if data.get("run_id") else ""))
            if data.get("stage") in ("gate", "publishing", "done"):  # local_run.STAGE_LABELS
                raise NotRunning(f"run {data.get('run_id')} has reached its gate; it can no longer be cancelled")
            pid = data.get("pid")
            kill_group(pid if isinstance(pid, int) else None)
            proc = self._procs.pop(pid, None) if isinstance(pid, int) else None
            if proc is not None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:  # SIGKILL was sent to the group; the runner reaps it
                    log.warning("cancelled run %s has not exited after 30 s", data.get("run_id"))
            fresh = self._read()
            if fresh.get("run_id") == data.get("run_id") and fresh.get("state") != "running":
                return to_status(fresh)  # it ended on its own just before the kill
            stage = data.get("stage") or "starting"
            fresh = {**data, **{k: v for k, v in fresh.items() if fresh.get("run_id") == data.get("run_id")}}
            fresh.update(state="cancelled", finished=bundle.now_iso(), eta_seconds=None)
            fresh.setdefault("result", {})["error"] = (f"cancelled at stage {stage}; the live model and the data "
                                                       "are unchanged")
            atomic_write_json(self.status_path, fresh)
            run_dir = self.dir / "runs" / str(data.get("run_id"))
            for name in ("data", "validation", "evaluation"):  # the snapshot: symlinks only
                shutil.rmtree(run_dir / name, ignore_errors=True)
            return to_status(fresh)

    def seed_counts(self) -> dict[str, int]:
        """Images per class in the recipe's training roots (what a retrain trains on besides the uploads)."""
        counts = dict.fromkeys(LABELS, 0)
        for label, _ in rc.images(self.recipe.train):
            if label in counts:
                counts[label] += 1
        return counts

    def status(self) -> RetrainStatus:
        with self._thread_lock:
            data = self._settle(self._read())
        status = to_status(data)
        warm = read_json(self.warmup_path)
        if isinstance(warm, dict) and warm.get("state") == "running" and status.state != "running":
            if pid_alive(warm.get("pid"), warm.get("pid_start")) or warm.get("pid") is None:
                status.warmup = {k: warm.get(k) for k in ("state", "stage", "percent", "started")}
        elif isinstance(warm, dict) and warm.get("state") == "failed" and status.state == "idle":
            # said until the first run: that run then does the preparation itself (slower)
            status.warmup = {k: warm.get(k) for k in ("state", "stage", "started", "finished", "error")}
        return status

    def trained_on(self) -> dict[str, dict[str, Any]]:
        """version → ``{"uploads": fingerprint of the uploads it was trained on, "base": the live
        version it started from}`` (written by each run, promoted or rejected)."""
        data = read_json(self.trained_on_path)
        return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}

    def nothing_new(self) -> str | None:
        """Why a retrain would learn nothing, else None: no upload since the live model was trained
        (a live version without a record, the shipped model, was trained on no uploads), or a
        candidate trained on exactly these images from this live model was already rejected."""
        live = self.registry.live_version()
        if live is None:
            return None
        current = uploads_fingerprint(self.root)
        records = self.trained_on()
        if records.get(live, {"uploads": uploads_fingerprint(self.root / ".none")}).get("uploads") == current:
            return (f"nothing new to learn: no image was added since the live model {live} was trained; "
                    "retrain with force=true to run anyway (the gate still protects the live model)")
        for version, rec in records.items():
            if (rec.get("uploads") == current and rec.get("base") == live
                    and (self.registry.rejected_dir / version).is_dir()):
                return (f"nothing new to learn: candidate {version}, trained on exactly these images from the "
                        f"live model {live}, was rejected by the gate; upload more images, or retrain with "
                        "force=true to run anyway")
        return None

    def start(self, trigger: str = "manual", force: bool = False) -> RetrainStatus:
        with self._thread_lock:
            with open(self.lock_path, "a+") as lockf:
                fcntl.flock(lockf, fcntl.LOCK_EX)
                try:
                    current = self._settle(self._read())
                    if current.get("state") == "running":
                        raise RetrainRunning(f"run {current.get('run_id')} is running "
                                             f"(stage {current.get('stage')}, {current.get('percent', 0):.0f}%)")
                    reason = self.nothing_new()
                    if reason and not force:
                        raise NothingToLearn(reason)
                    run_id = bundle.new_version(salt=str(os.getpid())).replace("v", "run-", 1)
                    run_dir = self.dir / "runs" / run_id
                    run_dir.mkdir(parents=True)
                    config = {"train_command": list(self.config.train_command), "recipe": self.recipe.to_dict(),
                              "cache_dir": str(self.cache_dir), "evaluate": self.config.evaluate,
                              "gate_tolerance": self.config.gate_tolerance, "nice": self.config.nice,
                              "force": bool(force), "shadow_requests": self.config.shadow_requests,
                              # nothing new to learn: only a candidate no worse on every metric may replace
                              # the live model (the paired test is for retrains that learned new images)
                              "strict_gate": bool(reason)}
                    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
                    status = {"state": "running", "run_id": run_id, "trigger": trigger, "stage": "starting",
                              "percent": 0.0, "eta_seconds": None, "started": bundle.now_iso(), "finished": None,
                              "log_tail": [], "result": {}, "pid": None, "force": bool(force)}
                    atomic_write_json(self.status_path, status)
                    proc = self._spawn(["--run-id", run_id], run_dir / "run.log")
                    status["pid"], status["pid_start"] = proc.pid, proc_start_time(proc.pid)
                    # the run may already have written progress; only fill in the pid
                    latest = self._read()
                    if latest.get("run_id") == run_id:
                        latest["pid"], latest["pid_start"] = status["pid"], status["pid_start"]
                        status = latest
                    atomic_write_json(self.status_path, status)
                    return to_status(status)
                finally:
                    fcntl.flock(lockf, fcntl.LOCK_UN)

    def _spawn(self, args: list[str], log_path: Path) -> subprocess.Popen:
        """``python -m fruitpipe.backends.local_run --store ROOT ARGS`` in a new session (its own
        process group), output appended to ``log_path``."""
        env = dict(os.environ, **self.config.extra_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fruitpipe.backends.local_run", "--store", str(self.root), *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
                # in a checkout, run from its top so `python -m training_job` is found
                cwd=str(REPO) if (REPO / "pyproject.toml").is_file() else None)
        self._procs[proc.pid] = proc
        return proc

    def warm_up(self) -> bool:
        """At server start: in the background, make the recipe's generated sets, the upload guard's
        indexes and the embedding cache of the recipe's images (seed train, validation, evaluation),
        so the first retrain only embeds uploads. Skipped (False) when a previous warm-up of the same
        recipe and cache finished or one is running."""
        warm = read_json(self.warmup_path)
        key = {"recipe": self.recipe.to_dict(), "cache_dir": str(self.cache_dir)}
        if isinstance(warm, dict):
            if warm.get("state") == "done" and warm.get("key") == key:
                return False
            if warm.get("state") == "running" and pid_alive(warm.get("pid"), warm.get("pid_start")):
                return False
        atomic_write_json(self.warmup_path, {"state": "running", "key": key, "percent": 0.0,
                                             "started": bundle.now_iso()})
        proc = self._spawn(["--warm-up"], self.dir / "warmup.log")
        warm = read_json(self.warmup_path) or {}
        warm.update(pid=proc.pid, pid_start=proc_start_time(proc.pid))
        atomic_write_json(self.warmup_path, warm)
        return True

    def stop_warm_up(self) -> bool:
        """Stop a running warm-up (the server is shutting down); the next start resumes it, with
        what it had already embedded. True if one was stopped. A retrain is never stopped."""
        warm = read_json(self.warmup_path)
        if not (isinstance(warm, dict) and warm.get("state") == "running"
                and pid_alive(warm.get("pid"), warm.get("pid_start"))):
            return False
        try:
            os.killpg(int(warm["pid"]), signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return False
        proc = self._procs.get(int(warm["pid"]))
        if proc is not None:
            proc.wait(10)
        warm.update(state="stopped", finished=bundle.now_iso())
        atomic_write_json(self.warmup_path, warm)
        return True

    def wait(self, timeout: float | None = None) -> RetrainStatus:
        """Wait for the started processes (tests and the CLI)."""
        for proc in list(self._procs.values()):
            proc.wait(timeout=timeout)
        return self.status()


def to_status(data: dict[str, Any]) -> RetrainStatus:
    if not data:
        return RetrainStatus()
    eta = data.get("eta_seconds")
    return RetrainStatus(
        state=data.get("state", "idle"), run_id=data.get("run_id"), trigger=data.get("trigger"),
        stage=data.get("stage"), percent=float(data.get("percent") or 0.0),
        eta_seconds=float(eta) if isinstance(eta, (int, float)) else None, started=data.get("started"),
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
    trainer = LocalTrainer(root, registry, trainer_config)
    return Backend(name="local", store=LocalDataStore(root, guard=trainer.guard), registry=registry,
                   trainer=trainer, capture=LocalCaptureStore(root), shadow=LocalShadowPointer(root))

"""Helpers for the service tests: a store with the default model, real images, a live server."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from PIL import Image

from .conftest import DEFAULT_MODEL, FRUITS

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TINY_JOB = Path(__file__).resolve().parent / "helpers" / "tiny_training_job.py"


def fruit(label: str = "freshapples", index: int = 0, split: str = "test") -> bytes:
    return sorted((FRUITS / split / label).glob("*.jpg"))[index].read_bytes()


def jpeg(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "JPEG")
    return out.getvalue()


def tree_hash(root: Path, ignore: tuple[str, ...] = ()) -> str:
    """sha256 over every file's relative path and content (the 'store unchanged' check)."""
    h = hashlib.sha256()
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root).as_posix()
        if any(rel.startswith(i) for i in ignore):
            continue
        h.update(rel.encode() + b"\0")
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def small_dataset(dest: Path, split: str, per_class: int, offset: int = 0) -> Path:
    """A folder of ``per_class`` real photos per class copied from ../shared."""
    from fruitpipe.labels import LABELS
    for label in LABELS:
        (dest / label).mkdir(parents=True, exist_ok=True)
        for p in sorted((FRUITS / split / label).glob("*.jpg"))[offset:offset + per_class]:
            shutil.copy(p, dest / label / p.name)
    return dest


def make_backend(store: Path, *, mode: str = "good", seed: Path | None = None, eval_dir: Path | None = None,
                 sleep: float = 0.0, train_command: list[str] | None = None,
                 cache_dir: Path | None = None):  # type: ignore[no-untyped-def]
    """A local backend whose training job is the tiny test job (``mode``) on a small recipe:
    ``seed`` trains, ``eval_dir`` is the evaluation set, no validation set, no hyperparameters."""
    from fruitpipe.backends.local import TrainerConfig, create_local_backend
    from fruitpipe.recipe import Recipe
    cmd = train_command or [sys.executable, str(TINY_JOB), "--init", str(DEFAULT_MODEL), "--mode", mode,
                            "--sleep", str(sleep)]
    recipe = Recipe(train=(seed,) if seed else (), evaluation=(eval_dir,) if eval_dir else ())
    config = TrainerConfig(recipe=recipe, train_command=cmd, nice=0,
                           cache_dir=cache_dir or Path(store) / "cache" / "embeddings",
                           extra_env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    return create_local_backend(store, seed_bundle=DEFAULT_MODEL, trainer_config=config)


def make_app(backend, **settings_kw):  # type: ignore[no-untyped-def]
    from fruitpipe.api.app import create_app
    from fruitpipe.api.settings import Settings
    from fruitpipe.capture import CapturePolicy
    settings_kw.setdefault("capture", CapturePolicy(enabled=False))  # deterministic stores; tests/test_feedback.py
    settings = Settings(token_provider=lambda: TOKEN, inference_workers=2, model_refresh_seconds=0.2,
                        **settings_kw)
    return create_app(backend, settings)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(app, **config) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Run ``app`` under real uvicorn (configured as ``fruitpipe serve`` runs it) on 127.0.0.1 and a
    free port; yields the base URL."""
    from fruitpipe.api.server import in_thread
    with in_thread(app, **config) as url:
        yield url


def wait_for_run(client, timeout: float = 120.0) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get("/retraining-status").json()
        if status["state"] != "running":
            return status
        time.sleep(0.2)
    raise AssertionError(f"retrain did not finish in {timeout}s: {status}")


os.environ.setdefault("PYTHONUNBUFFERED", "1")

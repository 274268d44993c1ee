"""Local uploads are atomic and idempotent: parallel uploads of one picture over real HTTP store one
file and answer ``added`` once; a writer killed with SIGKILL mid-write leaves nothing after a restart."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx

from .conftest import needs_shared
from .service_support import AUTH, fruit, live_server, make_app, make_backend

pytestmark = needs_shared
REPO = Path(__file__).resolve().parent.parent


def stored_files(store: Path) -> list[Path]:
    return sorted(p for p in (store / "dataset").rglob("*") if p.is_file())


def test_parallel_uploads_of_one_picture_store_one_file_and_add_once(tmp_path):
    store = tmp_path / "store"
    image = fruit("rottenbanana", 3)
    with live_server(make_app(make_backend(store))) as url:
        def upload(i: int) -> tuple[int, str]:
            with httpx.Client(base_url=url, timeout=60) as c:
                r = c.post("/upload-training-data", headers=AUTH, data={"class_name": "rottenbanana"},
                           files=[("files", (f"copy{i}.jpg", image, "image/jpeg"))])
            (item,) = r.json()["results"]
            return r.status_code, item["status"]

        with cf.ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(upload, range(20)))
    statuses = sorted(s for _, s in answers)
    assert statuses.count("added") == 1 and statuses.count("duplicate") == 19, answers
    assert all(code < 300 for code, _ in answers), answers
    files = stored_files(store)
    assert len(files) == 1 and files[0].parent.name == "rottenbanana", files  # no temporary file either
    assert files[0].read_bytes() == image  # a JPEG is stored as it came


_WRITER = textwrap.dedent("""
    import os, sys, time
    from fruitpipe.backends import local
    real_fsync = os.fsync

    def stall(fd):  # the image is in the temporary file, not yet published: stop here
        real_fsync(fd)
        print("writing", flush=True)
        time.sleep(600)

    local.os.fsync = stall
    store = local.LocalDataStore(sys.argv[1])
    store.add("freshapples", open(sys.argv[2], "rb").read(), "a.jpg")
""")


def test_kill_9_mid_upload_leaves_no_temporary_file_after_restart(tmp_path):
    from fruitpipe.backends.local import LocalDataStore
    store, image = tmp_path / "store", tmp_path / "a.jpg"
    image.write_bytes(fruit("freshapples", 2))
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(store), str(image)], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        temps = stored_files(store)
        assert len(temps) == 1 and temps[0].name.startswith(".") and temps[0].name.endswith(".tmp"), temps
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert stored_files(store) == temps  # the crash left it behind ...
    live = _other_writers_temp(store)  # ... beside a live writer's, which a restart must not touch
    restarted = LocalDataStore(store)  # the server starting again
    assert stored_files(store) == [live]
    live.unlink()
    result = restarted.add("freshapples", image.read_bytes(), "a.jpg")
    assert result.status == "added"
    assert [p.name for p in stored_files(store)] == [f"{result.sha256}.jpg"]


def _other_writers_temp(store: Path) -> Path:
    """A temporary file named for this (running) test process, as a concurrent writer's would be."""
    path = store / "dataset" / "freshapples" / f".x.jpg.{os.getpid()}-abc123.tmp"
    path.write_bytes(b"partial")
    return path

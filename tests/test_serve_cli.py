"""`fruitpipe serve` as a user starts it: a busy port fails at once, before the banner; requests
are logged on stdout unless --no-access-log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from .conftest import REPO
from .service_support import free_port


def test_serve_on_a_busy_port_fails_before_its_banner(tmp_path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "fruitpipe", "serve", "--port", str(port),
                               "--store", str(tmp_path / "store"), "--no-warm-up"],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "--port" in proc.stderr
    assert "admin token" not in proc.stderr and "dashboard" not in proc.stderr
    assert not (tmp_path / "store").exists()  # nothing was set up for a server that cannot start


def test_serve_logs_requests_unless_no_access_log(tmp_path) -> None:
    """A person running the server sees each request (uvicorn's access log, on stdout);
    --no-access-log turns it off."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "FRUITPIPE_ADMIN_TOKEN": "serve-cli-token-0123456789"}
    for flags, logged in (((), True), (("--no-access-log",), False)):
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "fruitpipe", "serve", "--port", str(port), "--store",
                                 str(tmp_path / "store"), "--no-warm-up", *flags],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, flags
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            assert httpx.get(f"http://127.0.0.1:{port}/nope", timeout=5).status_code == 404
        finally:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        if logged:
            assert '"GET /health HTTP/1.1" 200' in out and '"GET /nope HTTP/1.1" 404' in out, out
        else:
            assert "HTTP/1.1" not in out, out

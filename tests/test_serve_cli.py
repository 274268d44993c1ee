"""`fruitpipe serve` as a user starts it: a busy port fails at once, before the banner."""

from __future__ import annotations

import socket
import subprocess
import sys

from .conftest import REPO


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

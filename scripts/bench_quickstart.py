"""Time the quick start as a new user meets it: fresh clone -> ``make run`` -> ``/health`` answers 200.

Clones the committed ``HEAD`` into a temporary folder (with ``../shared`` linked beside it, as on
this machine), runs ``make run`` on a free port and polls ``/health``. pip's own cache is used as it
is: run once to warm it, then again to measure (the target, <= 90 s, is for a warm cache). Writes
``results/quickstart.json``.

    python scripts/bench_quickstart.py [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_exit(folder: Path, timeout: float = 60.0) -> None:
    """Wait until no process runs from ``folder`` (its command line names it), then kill leftovers."""
    def running() -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if str(folder).encode() in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids
    deadline = time.monotonic() + timeout
    while running() and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in running():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def one_run(timeout: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="fruitpipe-quickstart-") as tmp_name:
        tmp = Path(tmp_name)
        subprocess.run(["git", "clone", "-q", str(REPO), str(tmp / "fruitpipe")], check=True)
        (tmp / "shared").symlink_to(REPO.parent / "shared", target_is_directory=True)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "FRUITPIPE_"))}
        env["FRUITPIPE_CACHE"] = str(tmp / "cache")  # the backbone is provisioned anew, as on a new machine
        started = time.monotonic()
        proc = subprocess.Popen(["make", "run", f"PORT={port}"], cwd=tmp / "fruitpipe", env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        seconds = None
        try:
            while time.monotonic() - started < timeout and proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                        if resp.status == 200:
                            seconds = time.monotonic() - started
                            break
                except OSError:
                    time.sleep(0.5)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            out = proc.communicate(timeout=30)[0].decode(errors="replace")
            _wait_for_exit(tmp)  # the server's graceful stop (and its warm-up's) outlives make's
        if seconds is None:
            sys.stderr.write(out[-3000:])
        return {"seconds_to_health": None if seconds is None else round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    runs = [one_run(args.timeout) for _ in range(args.runs)]
    times = [r["seconds_to_health"] for r in runs if r["seconds_to_health"] is not None]
    result = {"what": "fresh clone -> make run -> /health 200 (warm pip cache)", "runs": runs,
              "median_seconds": statistics.median(times) if times else None,
              "load_average_at_end": os.getloadavg()[0]}
    (REPO / "results").mkdir(exist_ok=True)
    (REPO / "results" / "quickstart.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if len(times) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())

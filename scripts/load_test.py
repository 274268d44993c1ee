#!/usr/bin/env python3
"""Headless load tests: our server vs a reference-style server, in the same run, on 127.0.0.1.

Starts ``fruitpipe serve`` (fresh temporary store) and ``bench/reference_server.py``, drives them
with locust (``locustfile.py``) and writes ``results/load_test.md`` + ``results/load_test.json``:

1. the reference scenario (1-3 s wait, predict:health:model-info = 10:2:1) at 100 users, both servers;
2. capacity (no wait, /predict only), both servers, and the ratio;
3. /predict latency under the reference scenario while idle vs while a retrain runs.

    .venv/bin/python scripts/load_test.py            # about 6 minutes
    .venv/bin/python scripts/load_test.py --quick    # shorter windows, for a smoke run

Everything listens on 127.0.0.1 only. The load generator shares the machine with the servers,
as the targets require; the report records the core count and load average at the start.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
TOKEN = "load-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not come up in {timeout}s")


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def locust(url: str, user: str, users: int, seconds: int, out: Path, label: str,
           server_pid: int | None = None) -> dict[str, dict[str, float]]:
    """Run locust headless; return per-request-name stats from its CSV (+ CPU per request)."""
    prefix = out / label
    cmd = [PY, "-m", "locust", "-f", str(REPO / "locustfile.py"), "--headless", "-u", str(users),
           "-r", str(max(1, users // 5)), "-t", f"{seconds}s", "--host", url, "--csv", str(prefix),
           "--only-summary", "--stop-timeout", "5", "--loglevel", "WARNING", user]
    print(f"  locust {label}: {user} x{users} for {seconds}s against {url}", flush=True)
    server_cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
    gen0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, cwd=REPO, check=False, stdout=subprocess.DEVNULL, stderr=open(out / f"{label}.log", "wb"),
                   timeout=seconds + 120)
    rows: dict[str, dict[str, float]] = {}
    with open(f"{prefix}_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            def num(k: str) -> float:
                try:
                    return float(row[k])
                except (KeyError, ValueError):
                    return float("nan")
            rows[row["Name"]] = {"requests": num("Request Count"), "failures": num("Failure Count"),
                                 "rps": num("Requests/s"), "median_ms": num("50%"), "p95_ms": num("95%"),
                                 "p99_ms": num("99%"), "mean_ms": num("Average Response Time"),
                                 "max_ms": num("Max Response Time")}
    gen1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = rows.get("Aggregated", {}).get("requests", 0) or float("nan")
    rows["cpu"] = {"load_generator_ms_per_request": 1000 * ((gen1.ru_utime + gen1.ru_stime)
                                                             - (gen0.ru_utime + gen0.ru_stime)) / total}
    if server_pid:
        rows["cpu"]["server_ms_per_request"] = 1000 * (cpu_seconds(server_pid) - server_cpu0) / total
    return rows


def fmt(x: float, nd: int = 0) -> str:
    return "n/a" if x != x else f"{x:,.{nd}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short windows (smoke run, numbers not for the README)")
    ap.add_argument("--users", type=int, default=100, help="users in the reference scenario (default 100)")
    ap.add_argument("--capacity-users", type=int, default=16, help="no-wait users in the capacity scenario")
    ap.add_argument("--workers", type=int, default=None, help="our server's --workers (default: cores)")
    ap.add_argument("--skip-reference", action="store_true", help="do not start the Keras reference server")
    ap.add_argument("--out", type=Path, default=REPO / "results")
    args = ap.parse_args()
    t_ref, t_cap, t_rt = (20, 15, 20) if args.quick else (60, 30, 40)

    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / "tmp" / "load_test"
    raw.mkdir(parents=True, exist_ok=True)
    store = Path(tempfile.mkdtemp(prefix="fruitpipe-load-"))
    env = dict(os.environ, FRUITPIPE_ADMIN_TOKEN=TOKEN, PYTHONUNBUFFERED="1")
    shared_backbone = REPO.parent / "shared" / "models" / "mobilenet_v2_1.0_224_int8"
    if shared_backbone.is_dir():
        env.setdefault("FRUITPIPE_BACKBONE", str(shared_backbone))
    # the retrain scenario runs the real training job (repository root on the path)
    train_cmd = [PY, "-m", "training_job"]
    env["PYTHONPATH"] = str(REPO)
    env["FRUITPIPE_TRAIN_COMMAND"] = shlex.join(train_cmd)

    ours_port, ref_port = free_port(), free_port()
    ours_url, ref_url = f"http://127.0.0.1:{ours_port}", f"http://127.0.0.1:{ref_port}"
    serve = [PY, "-m", "fruitpipe", "serve", "--host", "127.0.0.1", "--port", str(ours_port),
             "--store", str(store), "--log-level", "warning", "--no-access-log", "--no-warm-up"]
    if args.workers:
        serve += ["--workers", str(args.workers)]
    conditions = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "train_command": shlex.join(train_cmd),
        "windows_s": {"reference": t_ref, "capacity": t_cap, "retrain": t_rt},
    }
    print(f"conditions: {conditions}", flush=True)
    ours = start(serve, env, raw / "ours.log")
    ref = None if args.skip_reference else start([PY, str(REPO / "bench" / "reference_server.py"), "--port",
                                                  str(ref_port)], env, raw / "reference.log")
    results: dict[str, object] = {"conditions": conditions}
    try:
        wait_up(ours_url, ours)
        # a few warm-up requests (first-call allocations)
        locust(ours_url, "CapacityUser", 2, 3, raw, "warmup")
        print("1. reference scenario", flush=True)
        results["reference_scenario_ours"] = locust(ours_url, "ReferenceUser", args.users, t_ref, raw, "ref_ours", ours.pid)
        print("2. capacity", flush=True)
        results["capacity_ours"] = locust(ours_url, "CapacityUser", args.capacity_users, t_cap, raw, "cap_ours", ours.pid)

        print("3. /predict during a retrain vs idle", flush=True)
        idle = locust(ours_url, "ReferenceUser", args.users, t_rt, raw, "rt_idle")
        # force: the store has no uploads, and this scenario is about serving while a job trains
        r = httpx.post(ours_url + "/retrain?force=true", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        r.raise_for_status()
        t0 = time.monotonic()
        busy = locust(ours_url, "ReferenceUser", args.users, t_rt, raw, "rt_busy")
        window_end = time.monotonic() - t0
        status = httpx.get(ours_url + "/retraining-status", timeout=10).json()
        while status["state"] == "running":
            time.sleep(2)
            status = httpx.get(ours_url + "/retraining-status", timeout=10).json()
        run_s = time.monotonic() - t0
        results["retrain"] = {"idle": idle, "during": busy, "window_s": round(window_end, 1),
                              "retrain_wall_s_approx": round(run_s, 1), "retrain_state": status["state"],
                              "retrain_result": {k: status["result"].get(k) for k in ("reason", "images", "version")}}

        if ref is not None:
            wait_up(ref_url, ref, timeout=240)
            locust(ref_url, "CapacityUser", 1, 3, raw, "warmup_ref")
            print("4. reference-style server: same scenarios", flush=True)
            results["capacity_reference"] = locust(ref_url, "CapacityUser", args.capacity_users, t_cap, raw, "cap_ref", ref.pid)
            results["reference_scenario_reference"] = locust(ref_url, "ReferenceUser", args.users, t_ref, raw, "ref_ref")
    finally:
        stop(ours)
        if ref is not None:
            stop(ref)

    (args.out / "load_test.json").write_text(json.dumps(results, indent=2) + "\n")
    md = report(results, args)
    (args.out / "load_test.md").write_text(md)
    print(md)
    return 0


def report(res: dict, args: argparse.Namespace) -> str:
    c = res["conditions"]
    ro = res["reference_scenario_ours"]
    co = res["capacity_ours"]["/predict"]
    cr = res.get("capacity_reference", {}).get("/predict")
    rr = res.get("reference_scenario_reference")
    rt = res["retrain"]
    idle95, busy95 = rt["idle"]["/predict"]["p95_ms"], rt["during"]["/predict"]["p95_ms"]
    lines = [
        "# Load test results", "",
        f"Run `{' '.join(['.venv/bin/python', 'scripts/load_test.py'] + (['--quick'] if args.quick else []))}` "
        f"on {c['date']} ({c['machine']}; load average at start {c['load_average_at_start']}; "
        "locust on the same machine; 127.0.0.1).", "",
        f"## Reference scenario ({args.users} users, 1-3 s wait, predict:health:model-info = 10:2:1)", "",
        "| server | endpoint | requests | failures | req/s | median ms | p95 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in (("fruitpipe", ro), ("reference-style", rr)):
        if not rows:
            continue
        for ep in ("/predict", "/health", "/model-info", "Aggregated"):
            if ep in rows:
                s = rows[ep]
                lines.append(f"| {name} | {ep} | {fmt(s['requests'])} | {fmt(s['failures'])} | {fmt(s['rps'], 1)} | "
                             f"{fmt(s['median_ms'])} | {fmt(s['p95_ms'])} | {fmt(s['p99_ms'])} |")
    lines += ["", f"## Capacity (no wait, /predict only, {args.capacity_users} users)", "",
              "| server | requests | failures | /predict req/s | median ms | p95 ms |", "|---|---:|---:|---:|---:|---:|",
              f"| fruitpipe | {fmt(co['requests'])} | {fmt(co['failures'])} | {fmt(co['rps'], 1)} | {fmt(co['median_ms'])} | {fmt(co['p95_ms'])} |"]
    if cr:
        lines.append(f"| reference-style (Keras float, async handler) | {fmt(cr['requests'])} | {fmt(cr['failures'])} | "
                     f"{fmt(cr['rps'], 1)} | {fmt(cr['median_ms'])} | {fmt(cr['p95_ms'])} |")
        lines += ["", f"Throughput ratio fruitpipe / reference-style: **{co['rps'] / cr['rps']:.1f}x**."]
    cpu = res["capacity_ours"]["cpu"]
    lines += ["", f"CPU per /predict in the capacity run: server {cpu.get('server_ms_per_request', float('nan')):.1f} ms, "
              f"load generator {cpu['load_generator_ms_per_request']:.1f} ms. With both on {os.cpu_count()} cores "
              f"the ceiling is about {1000 * (os.cpu_count() or 1) / (cpu.get('server_ms_per_request', 0) + cpu['load_generator_ms_per_request']):.0f} req/s "
              "when nothing else runs; other processes on the machine lower the measured req/s.", ""]
    lines += ["", f"## /predict while a retrain runs ({args.users} users, reference scenario, {c['windows_s']['retrain']} s each)", "",
              "| window | /predict requests | failures | median ms | p95 ms |", "|---|---:|---:|---:|---:|"]
    for name, rows in (("idle", rt["idle"]), ("during retrain", rt["during"])):
        s = rows["/predict"]
        lines.append(f"| {name} | {fmt(s['requests'])} | {fmt(s['failures'])} | {fmt(s['median_ms'])} | {fmt(s['p95_ms'])} |")
    lines += ["", f"p95 during retrain / idle: **{busy95 / idle95:.2f}x**. Training command: `{c['train_command']}`; "
              f"the retrain ended `{rt['retrain_state']}` about {rt['retrain_wall_s_approx']} s after it started "
              f"(load window {rt['window_s']} s).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

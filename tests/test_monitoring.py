"""monitoring/: a real Prometheus (Debian's package) scrapes a real fruitpipe server with our config.

The alert rules must load (``promtool check rules``), Prometheus must load them and return the
predictions the server made, and every query of the Grafana dashboard must be valid PromQL over
metric names the service really exports (Grafana itself is not packaged here).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest

from .conftest import REPO, needs_shared
from .service_support import fruit, free_port, live_server, make_app, make_backend

MONITORING = REPO / "monitoring"
pytestmark = [needs_shared, pytest.mark.skipif(shutil.which("prometheus") is None,
                                               reason="prometheus is not installed (make test installs it)")]


def test_rules_and_config_pass_promtool() -> None:
    for args in (["check", "rules", str(MONITORING / "rules.yml")],
                 ["check", "config", str(MONITORING / "prometheus.yml")]):
        proc = subprocess.run(["promtool", *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def _query(base: str, expr: str) -> dict:
    r = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10)
    return r.json()


def _dashboard_exprs() -> list[str]:
    dash = json.loads((MONITORING / "grafana" / "fruitpipe.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


@pytest.mark.slow
def test_prometheus_scrapes_the_service_and_loads_the_rules(tmp_path: Path) -> None:
    with live_server(make_app(make_backend(tmp_path / "store"))) as url:
        for label in ("freshapples", "rottenbanana", "freshoranges"):
            r = httpx.post(f"{url}/predict", files={"file": ("a.jpg", fruit(label), "image/jpeg")})
            assert r.status_code == 200
        exported = httpx.get(f"{url}/metrics").text
        target = url.removeprefix("http://")
        config = (MONITORING / "prometheus.yml").read_text()
        config = config.replace('"127.0.0.1:8000"', f'"{target}"')
        config = re.sub(r"(scrape|evaluation)_interval: 15s", r"\1_interval: 1s", config)
        config = config.replace("- rules.yml", f"- {MONITORING / 'rules.yml'}")
        (tmp_path / "prometheus.yml").write_text(config)
        port = free_port()
        prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"
        try:
            value = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and value != 3.0:
                time.sleep(0.5)
                try:
                    data = _query(base, "sum(fruitpipe_predictions_total)")
                except httpx.HTTPError:
                    continue
                result = data.get("data", {}).get("result", [])
                value = float(result[0]["value"][1]) if result else None
            assert value == 3.0, f"Prometheus never saw the 3 predictions (last: {value})"
            rules = httpx.get(f"{base}/api/v1/rules", timeout=10).json()["data"]["groups"]
            names = {r["name"] for g in rules for r in g["rules"]}
            assert {"FruitpipeErrorRate", "FruitpipePredictLatencyHigh", "FruitpipeNotFruitRateHigh",
                    "FruitpipeRetrainFailed"} <= names
            assert all(r["health"] in ("ok", "unknown") for g in rules for r in g["rules"])
            # Every dashboard query parses in Prometheus and names only exported metric families.
            families = set(re.findall(r"^# TYPE (\w+) ", exported, flags=re.M))
            for expr in _dashboard_exprs():
                assert _query(base, expr)["status"] == "success", expr
                for name in re.findall(r"\bfruitpipe_\w+", expr):
                    family = re.sub(r"_(bucket|sum|count|total|created)$", "", name)
                    assert name in families or family in families, f"{name} is not exported ({expr})"
            retrain = _query(base, 'fruitpipe_retrain_state{state="idle"}')["data"]["result"]
            assert retrain and float(retrain[0]["value"][1]) == 1.0
        finally:
            prom.terminate()
            prom.wait(10)

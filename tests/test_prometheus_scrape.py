"""A real Prometheus (Debian package ``prometheus``) scrapes a real demo run served with
``--metrics-port``, loads the alert rules, and answers every dashboard panel's query."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring.dashboards import dashboards
from omnicanal.runner import free_port
from tests.conftest import port_pair

ROOT = Path(__file__).resolve().parents[1]


def _get(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, int]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: ./quickstart test installs the Debian package")
    target = port_pair()  # the worker's metrics, and the offer decider's after them
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "monitoring" / "rules.yml")],
        "scrape_configs": [{"job_name": "omnicanal",
                            "static_configs": [{"targets": [f"127.0.0.1:{target}"]}]},
                           {"job_name": "omnicanal-decider",
                            "static_configs": [{"targets": [f"127.0.0.1:{target + 1}"]}]}],
    }))  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/-/ready", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "prometheus did not start"
                time.sleep(0.2)
        yield base, target
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_scraped_demo_answers_every_dashboard_panel(prometheus: tuple[str, int]) -> None:
    base, target = prometheus
    res = subprocess.run(
        [sys.executable, "-m", "omnicanal", "demo", "--events", "120000", "--json",
         "--metrics-port", str(target), "--metrics-linger", "3"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]

    # the run as scraped, from the first scrape of any job to the last: the worker's metrics
    # are served until the demo ends, the offer decider's from its start (a few seconds
    # after the worker's) to the end of the run; a panel answers if it shows something at
    # some moment of it, as a dashboard over the run would
    def when(agg: str, fn: str) -> str:
        q = f"{agg}({fn}(timestamp(up == 1)[10m:1s]))"
        (sample,) = _get(base, "/api/v1/query", query=q)["data"]["result"]
        return str(sample["value"][1])

    start, end = when("min", "min_over_time"), when("max", "max_over_time")
    jobs = _get(base, "/api/v1/query", query="max by (job) (max_over_time(up[10m]))")
    assert {r["metric"]["job"]: r["value"][1] for r in jobs["data"]["result"]} == {
        "omnicanal": "1",
        "omnicanal-decider": "1",
    }
    rules = _get(base, "/api/v1/rules")["data"]["groups"]
    assert {g["name"] for g in rules} == {"omnicanal-channels", "omnicanal-pipeline"}
    assert all(r["health"] == "ok" for g in rules for r in g["rules"])
    empty = []
    for board in dashboards().values():
        for panel in board["panels"]:
            answers = [
                _get(base, "/api/v1/query_range", query=t["expr"], start=start, end=end,
                     step="1")["data"]["result"]
                for t in panel["targets"]
            ]  # fmt: skip
            if not any(answers):
                empty.append(f"{board['uid']}: {panel['title']}")
    assert empty == []

    # the final counts were scraped (the demo served them --metrics-linger seconds after its
    # end), and counted from 0 (a series that appears with its first count shows no increase)
    summary = json.loads(res.stdout)
    assert summary["offers"] > 0

    def value(q: str) -> float:
        (sample,) = _get(base, "/api/v1/query", query=q, time=end)["data"]["result"]
        return float(sample["value"][1])

    assert value("sum(max_over_time(omnicanal_offers_total[10m]))") == summary["offers"]
    assert value("max_over_time(sum(increase(omnicanal_offers_total[5m]))[10m:1s])") > 0

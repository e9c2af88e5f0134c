"""Smoke run of `omnicanal bench --quick`: it works and its numbers are coherent.
Speed is never asserted here (a timed test on a shared machine is noise); the targets are
checked by reading the benchmark's own report, see README "Performance"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.services


def test_quick_bench_reports_pipeline_bare_latency_memory_and_stages(tmp_path: Path) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    res = subprocess.run(
        [sys.executable, "-m", "omnicanal.cli", "bench", "--quick", "--processes", "1",
         "--rates", "2000", "--rate-seconds", "3", "--json", str(out), "--chart", str(png)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    (row,) = r["throughput"]
    assert row["events"] == r["plan"]["events"] and row["processes"] == 1
    assert row["events_per_s"] > 0 and row["peak_rss_mb"] > 20
    assert 0 < row["redis"]["used_memory_per_customer_bytes"] < 100_000
    assert r["bare_loop"]["events"] == r["plan"]["events"]
    assert r["ratio"] == pytest.approx(
        row["events_per_s"] / r["bare_loop"]["events_per_s"], rel=1e-2
    )
    (lat,) = r["latency"]
    assert lat["samples"] == 2000 * 3
    assert 0 < lat["pipeline_ms"]["p50"] <= lat["pipeline_ms"]["p99"]
    assert lat["pipeline_ms"]["p50"] <= lat["end_to_end_ms"]["p50"]
    stages = r["profile"]["us_per_event"]
    assert stages["validate (decode, contract, HMAC)"] > 0 and stages["Redis batch apply (Lua)"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

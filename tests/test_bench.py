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
        [sys.executable, "-m", "omnicanal", "bench", "--quick", "--processes", "1",
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
    (pair,) = r["ratio_rounds"]
    assert pair["pipeline_per_s"] == row["events_per_s"]
    assert r["ratio"] == pytest.approx(
        row["events_per_s"] / r["bare_loop"]["events_per_s"], rel=1e-2
    )
    (lat,) = r["latency"]
    assert lat["samples"] == 2000 * 3
    assert 0 < lat["pipeline_ms"]["p50"] <= lat["pipeline_ms"]["p99"]
    assert lat["pipeline_ms"]["p50"] <= lat["end_to_end_ms"]["p50"]
    stages = r["profile"]["us_per_event"]
    assert (
        stages["validate (decode, contract, HMAC)"] > 0
        and stages["Redis batch apply (Lua, waited for)"] > 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = r["dedupe"]
    assert d["events"] > 15_000 and d["sets"] > 0 and 4 <= d["redis_bytes_per_event"] < 200
    assert d["us_per_event"] == pytest.approx(
        d["apply_us_per_event_with"] - d["apply_us_per_event_without"], abs=0.02
    )
    o = r["offer_decisions"]
    assert 0 < o["offers"] < o["decisions"]  # some carts are bought, some people unreachable
    assert 0 < o["us_per_decision_p50"] <= o["us_per_decision_p99"]
    # the fastest of a batch's timings is never slower than its first
    assert o["us_per_decision_p50"] <= o["us_per_decision_p50_once"]
    assert o["us_per_decision_p99"] <= o["us_per_decision_p99_once"]
    assert 0 < o["us_per_model_update_p50"] <= o["us_per_model_update_p99"]
    xs = o["cross_sell"]
    assert 0 < xs["us_per_ranking_p50"] <= xs["us_per_ranking_p99"]
    assert 0 < xs["us_per_ranker_update_p50"] <= xs["us_per_ranker_update_p99"]
    nb = o["next_basket"]
    assert 0 < nb["us_per_basket_learnt_p50"] <= nb["us_per_basket_learnt_p99"]
    assert nb["us_per_sale"] == pytest.approx(nb["us_per_basket_learnt_p50"] * 0.1, abs=0.01)
    assert 0 < nb["us_per_ranking_p50"] <= nb["us_per_ranking_p99"]


def test_bench_on_the_configured_services_needs_a_confirmation() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "omnicanal", "bench", "--quick", "--external"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2 and "--confirm-external" in res.stderr


def test_bench_scenarios_touch_only_their_own_topics_and_keys(
    kafka: object, redis_server: object
) -> None:
    from omnicanal.config import Settings
    from omnicanal.tools.bench_measures import forget, scenario_settings
    from state.profiles import connect

    base = Settings(kafka_bootstrap=kafka.bootstrap, redis_url=redis_server.url)  # type: ignore[attr-defined]
    s = scenario_settings(base, 1)
    ours = [s.group_id, s.redis_prefix, *s.all_topics()]
    theirs = [base.group_id, base.redis_prefix, *base.all_topics()]
    assert not set(ours) & set(theirs)
    r = connect(base.redis_url)
    r.set(base.redis_prefix + "precious", "1")
    r.set(s.redis_prefix + "scratch", "1")
    assert forget(s) == 1
    assert r.get(base.redis_prefix + "precious") == b"1"

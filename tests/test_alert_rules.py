"""The Prometheus rules (``monitoring/rules.yml``) checked and unit-tested by the real
``promtool`` (Debian package ``prometheus``, installed by the quick start), on three weeks
of synthetic traffic with a daily shape: an overnight lull raises nothing, a store channel
that collapses raises its alert and clears when it recovers, a partial drop in the app is a
drop (not a collapse) and halves its conversion, the web never alerts."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

RULES = Path(__file__).resolve().parents[1] / "monitoring" / "rules.yml"
STEP_MIN = 5
PER_DAY = 24 * 60 // STEP_MIN
DAYS = 22
#: the day of the incidents: a Thursday, like days 0, 7 and 14 (the epoch was a Thursday)
D = 21


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: ./quickstart test installs the Debian package prometheus")
    return path


def counter(per_step: Callable[[int, int], float], days: int = DAYS) -> str:
    """A counter's samples every 5 minutes: ``per_step(day, minute of day)`` is what it
    counted in the 5 minutes up to that sample."""
    total, out = 0.0, []
    for k in range(days * PER_DAY):
        total += per_step(k // PER_DAY, k % PER_DAY * STEP_MIN)
        out.append(f"{total:g}")
    return " ".join(out)


def open_hours(rate_per_s: float) -> Callable[[int, int], float]:
    """Trading from 08:00 to 20:00, closed at night."""
    return lambda day, minute: rate_per_s * 300 if 8 * 60 < minute <= 20 * 60 else 0.0


def store_sales(day: int, minute: int) -> float:
    if day == D and 10 * 60 < minute <= 11 * 60:
        return 0.0  # 10:00-11:00: the tills stop sending
    return open_hours(1.0)(day, minute)


def app_sales(day: int, minute: int) -> float:
    if day == D and minute > 10 * 60:
        return 0.4 * open_hours(1.0)(day, minute)  # from 10:00: 60% of sales fail
    return open_hours(1.0)(day, minute)


def events(channel: str, event_type: str) -> str:
    topic = "omnicanal.clickstream" if event_type == "add_to_cart" else "omnicanal.transactions"
    return (
        f'omnicanal_events_total{{topic="{topic}",channel="{channel}",event_type="{event_type}"}}'
    )


def alert(name: str, at: str, *alerts: dict[str, Any]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": list(alerts)}


def run_tests(tmp_path: Path, tests: list[dict[str, Any]]) -> None:
    f = tmp_path / "rules_test.yml"
    f.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m",
                                 "tests": tests}, width=10**9))  # fmt: skip
    res = subprocess.run([promtool(), "test", "rules", str(f)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


def test_rules_pass_promtool_check() -> None:
    res = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    runbook = (RULES.parents[1] / "docs" / "runbook.md").read_text()
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 8
    for a in alerts:
        assert a["labels"]["severity"] in {"critical", "warning"}, a["alert"]
        ann = a["annotations"]
        assert ann["summary"] and ann["description"], a["alert"]
        assert ann["runbook"] == f"docs/runbook.md#{a['alert'].lower()}"
        assert f"## {a['alert']}\n" in runbook, a["alert"]


def test_collapse_recovery_partial_drop_and_overnight_lull(tmp_path: Path) -> None:
    series = [
        {"series": events("store", "sale"), "values": counter(store_sales)},
        {"series": events("app", "sale"), "values": counter(app_sales)},
        {"series": events("web", "sale"), "values": counter(open_hours(1.0))},
        {"series": events("app", "add_to_cart"), "values": counter(open_hours(2.5))},
        {"series": events("web", "add_to_cart"), "values": counter(open_hours(2.5))},
        {"series": 'up{job="omnicanal",instance="a"}', "values": f"1+0x{DAYS * PER_DAY}"},
    ]
    night, collapse, recovered = f"{D}d2h", f"{D}d10h20m", f"{D}d11h30m"
    stopped = {"exp_labels": {"severity": "critical", "channel": "store"},
               "exp_annotations": {
                   "summary": "No store sales for 15 minutes at a busy time",
                   "description": "The store channel has recorded no sale for the last 10 "
                   "minutes (and 5 more), while the same time in the previous weeks had 1 "
                   "sales/s (median of 1, 2 and 3 weeks ago). Tills, checkout or the app may "
                   "be down, or their events no longer reach Kafka.",
                   "runbook": "docs/runbook.md#omnicanalchannelsalesstopped"}}  # fmt: skip

    def only_labels(name: str, at: str, *labels: dict[str, str]) -> dict[str, Any]:
        return alert(name, at, *({"exp_labels": lab} for lab in labels))

    tests = [
        {"interval": f"{STEP_MIN}m", "input_series": series, "alert_rule_test": [
            # the night before: every channel closed, as in past weeks: nothing
            alert("OmnicanalChannelSalesStopped", night),
            alert("OmnicanalChannelSalesDrop", night),
            alert("OmnicanalNoEvents", night),
            # 10:20, 20 minutes into the store outage: paged; the app's drop is too young
            alert("OmnicanalChannelSalesStopped", collapse, stopped),
            alert("OmnicanalChannelSalesDrop", collapse),
            # 11:30: the store is back (cleared); the app, at 40% for 90 minutes, is a drop
            # and its conversion halved; the web never alerts
            alert("OmnicanalChannelSalesStopped", recovered),
            only_labels("OmnicanalChannelSalesDrop", recovered,
                        {"severity": "warning", "channel": "app"}),
            only_labels("OmnicanalConversionDrop", recovered,
                        {"severity": "warning", "channel": "app"}),
            alert("OmnicanalNoEvents", recovered),
            alert("OmnicanalDown", recovered),
        ]},
    ]  # fmt: skip
    # promtool compares annotations too: fill in the ones only_labels left out
    for case in tests[0]["alert_rule_test"]:
        for exp in case["exp_alerts"]:
            exp.setdefault("exp_annotations", _annotations(case["alertname"], exp["exp_labels"]))
    run_tests(tmp_path, tests)


def test_silence_everywhere_and_a_dead_process_are_paged(tmp_path: Path) -> None:
    """Day 7 from 10:00 nothing at all is applied, where day 0 was busy; the scrape of the
    process fails from 12:00."""

    def until_day7_10h(day: int, minute: int) -> float:
        return 0.0 if day == 7 and minute > 10 * 60 else open_hours(1.0)(day, minute)

    steps = 8 * PER_DAY
    up = " ".join("0" if k >= 7 * PER_DAY + 12 * 12 else "1" for k in range(steps))
    series = [
        {"series": events("web", "sale"), "values": counter(until_day7_10h, days=8)},
        {"series": 'up{job="omnicanal",instance="a"}', "values": up},
    ]
    tests = [
        {"interval": f"{STEP_MIN}m", "input_series": series, "alert_rule_test": [
            alert("OmnicanalNoEvents", "7d10h15m"),  # 15 minutes: not yet
            {**alert("OmnicanalNoEvents", "7d10h40m"), "exp_alerts": [{
                "exp_labels": {"severity": "critical"},
                "exp_annotations": _annotations("OmnicanalNoEvents", {}, value="1")}]},
            alert("OmnicanalDown", "7d12h01m"),
            {**alert("OmnicanalDown", "7d12h05m"), "exp_alerts": [{
                "exp_labels": {"severity": "critical", "job": "omnicanal", "instance": "a"},
                "exp_annotations": _annotations("OmnicanalDown", {"instance": "a"})}]},
        ]},
    ]  # fmt: skip
    run_tests(tmp_path, tests)


def test_the_next_basket_model_falling_behind_is_a_warning(tmp_path: Path) -> None:
    """Worker 0's backlog of customers to learn from: a peak of 3,000 that drains is not an
    alert; 500 that grow is not either (small); a backlog past 1,000 that keeps growing for
    30 minutes is."""
    per_min = 12 * 60  # one sample a minute for 12 hours

    def gauge(f: Callable[[int], float]) -> str:
        return " ".join(f"{f(k):g}" for k in range(per_min))

    peak = gauge(lambda k: 3000 - 20 * (k - 60) if 60 <= k < 210 else 0)  # drains in 2.5 h
    small = gauge(lambda k: min(500, k))
    behind = gauge(lambda k: 0 if k < 240 else 10 * (k - 240))  # from 04:00, +10 a minute
    series = [{"series": f'omnicanal_next_basket_pending{{instance="{i}"}}', "values": v}
              for i, v in (("a", peak), ("b", small))]  # fmt: skip
    tests = [
        {"interval": "1m", "input_series": series, "alert_rule_test": [
            alert("OmnicanalNextBasketBehind", at) for at in ("1h30m", "2h", "3h", "8h")]},
        {"interval": "1m", "input_series": [
            {"series": 'omnicanal_next_basket_pending{instance="a"}', "values": behind}],
         "alert_rule_test": [
            alert("OmnicanalNextBasketBehind", "6h"),  # past 1,000 at 5h40m: 20 minutes
            {**alert("OmnicanalNextBasketBehind", "6h30m"), "exp_alerts": [{
                "exp_labels": {"severity": "warning", "instance": "a"},
                "exp_annotations": _annotations("OmnicanalNextBasketBehind", {},
                                                value="1.5k")}]},
        ]},
    ]  # fmt: skip
    run_tests(tmp_path, tests)


def _annotations(name: str, labels: dict[str, str], value: str | None = None) -> dict[str, str]:
    """An alert's annotations with its labels filled in; ``$value`` as promtool renders the
    values these scenarios produce."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    (rule,) = [r for g in groups for r in g["rules"] if r.get("alert") == name]
    values = {
        "OmnicanalChannelSalesDrop": "400m",  # 0.4 sales/s
        "OmnicanalConversionDrop": "160m",  # 0.4 sales / 2.5 carts
    }
    out = {}
    for k, text in rule["annotations"].items():
        for lab, v in labels.items():
            text = text.replace("{{ $labels." + lab + " }}", v)
        v = value or values.get(name, "")
        text = text.replace("{{ $value | humanize }}", v)
        out[k] = text
    return out


def amtool() -> str:
    path = shutil.which("amtool")
    if path is None:
        pytest.fail(
            "amtool is missing: ./quickstart test installs the Debian package "
            "prometheus-alertmanager"
        )
    return path


AM_CONFIG = RULES.parents[1] / "docker" / "alertmanager.yml"


def test_alertmanager_config_is_valid_and_routes_pages_and_warnings() -> None:
    res = subprocess.run([amtool(), "check-config", str(AM_CONFIG)], capture_output=True, text=True)
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr

    def route(*labels: str) -> str:
        r = subprocess.run(
            [amtool(), "config", "routes", "test", f"--config.file={AM_CONFIG}", *labels],
            capture_output=True, text=True,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"] if "alert" in r):
        sev = rule["labels"]["severity"]
        expected = "pager" if sev == "critical" else "ops"
        if rule["alert"] == "OmnicanalChannelSalesStopped":  # acts on the pipeline, too
            expected = "omnicanal," + expected
        assert route(f"alertname={rule['alert']}", f"severity={sev}") == expected, rule["alert"]


def test_offers_decided_behind_after_the_longest_wait_is_a_warning(tmp_path: Path) -> None:
    """The decider's gauges, one sample a minute: a catch-up that ends within the longest
    wait raises nothing; one that outlasts it (the timers decided from a partial history)
    is a warning 5 minutes later, with the backlog, and clears once the workers catch up."""
    minutes = 120

    def gauge(f: Callable[[int], float]) -> str:
        return " ".join(f"{f(k):g}" for k in range(minutes))

    # behind from minute 10; caught up at 20 (short) or at 60 (long; the wait ends at 25)
    short = (gauge(lambda k: 200_000 if 10 <= k < 20 else 0), gauge(lambda k: 0))
    long = (gauge(lambda k: 200_000 if 10 <= k < 60 else 0),
            gauge(lambda k: 1 if 25 <= k < 60 else 0))  # fmt: skip

    def series(backlog: str, expired: str) -> list[dict[str, str]]:
        return [
            {"series": 'omnicanal_offer_backlog_events{instance="d"}', "values": backlog},
            {"series": 'omnicanal_offers_hold_expired{instance="d"}', "values": expired},
        ]

    tests = [
        {"interval": "1m", "input_series": series(*short), "alert_rule_test": [
            alert("OmnicanalOffersDecidedBehind", at) for at in ("15m", "25m", "35m")]},
        {"interval": "1m", "input_series": series(*long), "alert_rule_test": [
            alert("OmnicanalOffersDecidedBehind", "28m"),  # 3 minutes: not yet
            {**alert("OmnicanalOffersDecidedBehind", "31m"), "exp_alerts": [{
                "exp_labels": {"severity": "warning"},
                "exp_annotations": _annotations("OmnicanalOffersDecidedBehind", {},
                                                value="200k")}]},
            alert("OmnicanalOffersDecidedBehind", "65m"),  # caught up: cleared
        ]},
    ]  # fmt: skip
    run_tests(tmp_path, tests)

"""The stock-out evaluation: its simulation on synthetic demand, and the real replay."""

from __future__ import annotations

from omnicanal.tools import stockout_eval as ev
from operators.stock import HOUR_MS, WEEK_HOURS, StockRules

DAY = 24 * HOUR_MS
MONDAY = 1_704_067_200_000  # 2024-01-01 00:00 UTC, a Monday


def replay(sales: list[tuple[int, int]], cover: float) -> ev.Score:
    rules = StockRules(low_stock=0, horizon_hours=48, min_confidence=0.7)
    shelf = ev.Shelf(ev.Pair("s", "p", sales), rules, cover)
    flat = [1.0] * WEEK_HOURS
    for ts, q in sales:
        shelf.deliver_until(ts, flat)
        shelf.sale(ts, q, flat)
    return shelf.finish()


def test_steady_demand_with_short_cover_is_caught_every_week() -> None:
    """Four units a day, every six hours; deliveries bring five days' worth: the shelf
    empties every Saturday, and a steady rate makes every stock-out predictable."""
    sales = [(MONDAY + h * 6 * HOUR_MS + 3 * HOUR_MS, 1) for h in range(4 * 7 * 4 * 3)]  # 12 weeks
    s = replay(sales, cover=5.0)
    assert s.stockouts == 8  # weeks 5-12 (the first four only teach)
    assert s.caught == s.stockouts == s.came_true
    assert min(s.lead_hours) >= 12 and max(s.expected_error_hours) <= 6
    # Two days a week with nothing on the shelf: 8 units lost, 7 in the first scored week
    # (its Monday 03:00 sale comes before the first delivery, at 06:00).
    assert s.lost_units == 7 * 8 + 7
    assert s.false_alarms == 0 and s.pre_empted == 0


def test_enough_cover_means_no_stockout_and_no_alert() -> None:
    sales = [(MONDAY + h * 6 * HOUR_MS + 3 * HOUR_MS, 1) for h in range(4 * 7 * 8)]
    s = replay(sales, cover=14.0)
    assert (s.stockouts, s.alerts, s.lost_units) == (0, 0, 0)


def test_complete_journey_replay_is_consistent() -> None:
    res = ev.run(top=10, horizon_hours=72)
    for name in ("seasonal", "flat"):
        r = res[name]
        assert 0 < r["caught"] <= r["stockouts"]
        assert r["came_true"] == r["caught"]  # an alert ends with the stock-out it caught
        assert r["alerts_ended"] + r["still_open_at_end"] == r["alerts"]
        assert r["precision"] <= r["precision_if_pre_empted_were_right"] <= 1
    assert res["pairs"] == 10 and res["sales"] > 1000

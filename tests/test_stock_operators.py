"""Stock operators without services: movements, availability, prediction, alert lifecycle."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from operators.privacy import PiiHasher
from operators.stock import (
    HOUR_MS,
    SkuState,
    StockRules,
    Velocity,
    parse_thresholds,
    plan_stock,
    seasonal_index,
)
from operators.stock_alerts import evaluate, findings, predict_stockout
from operators.validate import Validator
from schemas.envelope import Accepted
from schemas.events import CONTRACTS

T0 = datetime(2024, 3, 4, 9, tzinfo=UTC)  # a Monday
T0_MS = int(T0.timestamp() * 1000)
VALIDATOR = Validator(
    {c.default_topic: name for name, c in CONTRACTS.items()}, PiiHasher(b"k" * 16)
)
TOPIC = {name: c.default_topic for name, c in CONTRACTS.items()}


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def accepted(contract: str, ev: dict[str, Any], offset: int = 0) -> Accepted:
    r = VALIDATOR.decode(TOPIC[contract], 0, offset, None, orjson.dumps(ev), 2e12)
    assert isinstance(r, Accepted), r
    return r


def sale(minute: float, lines: list[dict[str, Any]], **kw: Any) -> Accepted:
    ev = {
        "event_type": "sale",
        "event_id": f"s{minute}",
        "event_time": at(minute),
        "channel": "store",
        "currency": "EUR",
        "location_id": "s1",
        "lines": lines,
    } | kw
    return accepted("transaction", {k: v for k, v in ev.items() if v is not None})


def line(sku: str, q: int, **kw: Any) -> dict[str, Any]:
    return {"sku": sku, "quantity": q, "unit_price_minor": 100} | kw


def inv(kind: str, minute: float, **kw: Any) -> Accepted:
    return accepted(
        "inventory", {"event_type": kind, "event_id": f"i{minute}", "event_time": at(minute)} | kw
    )


def test_movements_by_location_kind_and_channel() -> None:
    rules = StockRules(online_locations=frozenset({"wh"}), online_fulfilment="wh")
    events = [
        sale(0, [line("A", 2, category="mugs"), line("SHIP", 1, kind="shipping")]),
        sale(1, [line("A", 1)], channel="web", location_id=None),  # from the fulfilment site
        sale(2, [line("A", 1)], location_id=None),  # a store sale with no store: unknown
        accepted(
            "transaction",
            {
                "event_type": "return",
                "event_id": "r",
                "event_time": at(3),
                "channel": "store",
                "currency": "EUR",
                "location_id": "s1",
                "lines": [line("A", 1)],
            },
        ),
        inv("stock_adjustment", 4, sku="A", location_id="s1", delta=24, reason="delivery"),
        inv("stock_snapshot", 5, sku="A", location_id="wh", on_hand=7),
        inv("stock_snapshot", 4, sku="A", location_id="wh", on_hand=9),  # older: Redis decides
        inv(
            "price_update",
            6,
            sku="A",
            channel="store",
            location_id="s1",
            price_minor=5,
            currency="EUR",
        ),
    ]
    plan = plan_stock(events, rules)
    moves = {(s, loc): d for (s, loc, _), d in plan.moves.items() if d}
    # SHIP is a shipping line: no stock moves for it.
    assert plan.moves == {
        ("A", "s1", T0_MS): -2,
        ("A", "wh", T0_MS + 60_000): -1,
        ("A", "s1", T0_MS + 180_000): 1,
        ("A", "s1", T0_MS + 240_000): 24,
    }
    assert set(moves) == {("A", "s1"), ("A", "wh")}
    assert plan.unlocated == 1
    # Every count goes to Redis in arrival order (each closes a shrinkage interval).
    assert plan.snaps == [("A", "wh", T0_MS + 300_000, 7), ("A", "wh", T0_MS + 240_000, 9)]
    assert plan.prices == {("A", "store@s1"): (T0_MS + 360_000, 5, "EUR")}
    assert plan.categories == {"A": "mugs"}
    assert plan.touched == {"A": T0_MS + 360_000}
    # Velocity counts sales only (not returns), per location.
    assert set(plan.velocity) == {("A", "s1"), ("A", "wh")}
    assert plan.velocity[("A", "s1")].units == pytest.approx(2.0)
    assert plan.counts == {
        "sale": 2,
        "return": 1,
        "stock_adjustment": 1,
        "stock_snapshot": 2,
        "price_update": 1,
    }


def test_velocity_fold_does_not_depend_on_order() -> None:
    rules = StockRules()
    rng = random.Random(3)
    evs = [sale(rng.uniform(0, 5000), [line("A", rng.randint(1, 3))]) for _ in range(50)]
    a = plan_stock(evs, rules).velocity[("A", "s1")]
    rng.shuffle(evs)
    b = plan_stock(evs, rules).velocity[("A", "s1")]
    assert a.ref_ms == b.ref_ms and a.first_ms == b.first_ms
    assert a.units == pytest.approx(b.units) and a.sales == pytest.approx(b.sales)


def test_thresholds_per_sku_then_category_then_default() -> None:
    skus, cats = parse_thresholds({"sku:A": 9, "category:shoes": 2})
    rules = StockRules(low_stock=4, low_stock_sku=skus, low_stock_category=cats)
    assert rules.threshold("A", "shoes") == 9
    assert rules.threshold("B", "shoes") == 2
    assert rules.threshold("B", None) == 4
    with pytest.raises(ValueError, match="expected 'sku:<id>'"):
        parse_thresholds({"brand:x": 1})
    with pytest.raises(ValueError, match="integer >= 0"):
        parse_thresholds({"sku:x": -1})


def state(levels: dict[str, int], minute: float = 0, **kw: Any) -> SkuState:
    """A SKU whose locations have all been counted (at T0)."""
    counted = {loc: T0_MS for loc in levels}
    kw.setdefault("version", 1)
    return SkuState(
        "A",
        ts_ms=T0_MS + int(minute * 60_000),
        levels=levels,
        snapshot_ms=counted,
        **kw,
    )


def run(levels_seq: list[dict[str, int]], rules: StockRules, **kw: Any) -> list[tuple[Any, ...]]:
    """Evaluate a sequence of states, carrying the open alerts; return the messages."""
    open_: dict[str, dict[str, Any]] = {}
    out = []
    for i, levels in enumerate(levels_seq):
        ev = evaluate(state(levels, i, **kw), open_, rules)
        for k in ev.delete:
            del open_[k]
        open_.update(ev.set)
        out += [
            (m["type"], m["status"], m.get("location_id") or m.get("channel")) for m in ev.messages
        ]
    return out


def test_low_stock_has_hysteresis_and_out_of_stock_brings_back_in_stock() -> None:
    rules = StockRules(low_stock=5)  # band: 1 unit
    seq = [{"s1": q} for q in (8, 5, 6, 5, 6, 7, 0, 1, 2)]
    assert run(seq, rules) == [
        ("low_stock", "raised", "s1"),  # 5 <= 5
        # 6, 5, 6: inside the band, no flapping
        ("low_stock", "resolved", "s1"),  # 7 > 5 + 1
        ("out_of_stock", "raised", "s1"),
        ("low_stock", "raised", "s1"),
        ("out_of_stock", "resolved", "s1"),
        ("back_in_stock", "raised", "s1"),
    ]


def test_locations_never_counted_raise_nothing() -> None:
    """Web sales from a shop that sends no stock data: a change, not a level."""
    rules = StockRules(low_stock=5)
    s = SkuState(
        "A",
        version=1,
        ts_ms=T0_MS,
        levels={"online": -40, "s1": 2},
        snapshot_ms={"s1": T0_MS},
        prices={"web": (1, 100, "EUR")},
    )
    got = {
        (m["type"], m.get("location_id") or m.get("channel"))
        for m in evaluate(s, {}, rules).messages
    }
    # The web lists it with no counted online stock behind it: out of stock online; the
    # store has it with no store price: not listed there. Nothing about "online" itself.
    assert got == {
        ("low_stock", "s1"),
        ("channel_inconsistency", "s1"),
        ("out_of_stock", "online"),
        ("low_stock", "online"),
    }


def test_store_out_of_stock_while_online_is_fine() -> None:
    rules = StockRules(online_locations=frozenset({"wh"}), low_stock=2)
    msgs = run([{"s1": 4, "wh": 50}, {"s1": 0, "wh": 49}], rules)
    assert ("out_of_stock", "raised", "s1") in msgs
    assert not [x for x in msgs if x[2] in ("online", "wh")]
    # Online availability counts a share of store stock when the rules say so.
    shared = StockRules(online_locations=frozenset({"wh"}), online_store_share=0.5, low_stock=2)
    assert run([{"s1": 4, "wh": 0}], shared) == [
        ("out_of_stock", "raised", "wh"),
        ("low_stock", "raised", "wh"),
        ("low_stock", "raised", "online"),  # 0 + 50% of 4 = 2
    ]


def test_channel_inconsistencies() -> None:
    rules = StockRules(online_locations=frozenset({"wh"}), low_stock=0)
    web_only = {"web": (1, 1000, "EUR")}
    # Stock in a store whose channel has no price while the SKU is priced elsewhere, and a
    # location that sold more than it had.
    f = findings(state({"s1": 3, "s2": -2, "wh": 0}, prices=web_only), {}, rules, {})
    reasons = {(x.reason, x.location_id or x.channel) for x in f.values() if x.reason}
    assert reasons == {("not_listed", "s1"), ("no_stock_behind", "s2")}
    # Online stock but only a store price.
    f = findings(state({"wh": 3}, prices={"store": (1, 1000, "EUR")}), {}, rules, {})
    assert {(x.reason, x.channel) for x in f.values() if x.reason} == {("not_listed", "online")}
    # No prices at all: nothing to compare, no inconsistency claimed.
    assert not [x for x in findings(state({"s1": 3}), {}, rules, {}).values() if x.reason]


def test_price_mismatch_tolerance_and_hysteresis() -> None:
    rules = StockRules(price_tolerance=0.05, low_stock=0)

    def prices(web: int, store: int, cur: str = "EUR") -> dict[str, tuple[int, int, str]]:
        return {"web": (1, web, "EUR"), "store": (1, store, cur), "store@s9": (1, 1, "EUR")}

    open_: dict[str, dict[str, Any]] = {}
    seen = []
    for web, store in ((1000, 1040), (1000, 1060), (1000, 1030), (1000, 1020), (1000, 1000)):
        ev = evaluate(state({"s1": 9}, prices=prices(web, store)), open_, rules)
        for k in ev.delete:
            del open_[k]
        open_.update(ev.set)
        seen += [
            (m["status"], m["prices"]["store"])
            for m in ev.messages
            if m.get("reason") == "price_mismatch"
        ]
    # 4% ok; 6% raised; 3% above half the tolerance: still open; 2%: resolved. The regional
    # store price (store@s9) is never compared.
    assert seen == [("raised", 1060), ("updated", 1030), ("resolved", 1030)]
    # Different currencies are not compared.
    f = findings(state({"s1": 9}, prices=prices(1000, 2000, "USD")), {}, rules, {})
    assert not [x for x in f.values() if x.reason == "price_mismatch"]


def test_alert_ids_are_deterministic_and_messages_numbered() -> None:
    rules = StockRules(low_stock=5)
    a = evaluate(state({"s1": 0}), {}, rules)
    b = evaluate(state({"s1": 0}), {}, rules)
    assert [m["message_id"] for m in a.messages] == [m["message_id"] for m in b.messages]
    oos = next(m for m in a.messages if m["type"] == "out_of_stock")
    assert oos["message_id"] == oos["alert_id"] + "-1" and oos["severity"] == "critical"
    later = evaluate(state({"s1": 9}, minute=5), a.set, rules)
    resolved = next(m for m in later.messages if m["type"] == "out_of_stock")
    assert (resolved["alert_id"], resolved["seq"], resolved["status"]) == (
        oos["alert_id"],
        2,
        "resolved",
    )
    assert later.opened == {"out_of_stock": -1, "low_stock": -1} and not later.at_risk


def steady_velocity(rate: float, hours: int, now_ms: int) -> Velocity:
    units = sum(rate * 2 ** (-h / 168) for h in range(hours))
    return Velocity(units, units, now_ms, now_ms - hours * HOUR_MS)


def test_prediction_expected_time_and_confidence() -> None:
    v = steady_velocity(2.0, 200, T0_MS)
    p = predict_stockout(20, v, [1.0] * 168, T0_MS, 24)
    assert p.expected_ms is not None
    assert (p.expected_ms - T0_MS) / HOUR_MS == pytest.approx(10, rel=0.02)
    assert p.confidence > 0.99
    # More stock, lower confidence; beyond the horizon on the mean path: no time.
    confs = [predict_stockout(s, v, [1.0] * 168, T0_MS, 24).confidence for s in (30, 45, 60)]
    assert confs == sorted(confs, reverse=True) and confs[-1] < 0.1
    assert predict_stockout(60, v, [1.0] * 168, T0_MS, 24).expected_ms is None
    # Little evidence, same mean rate: less sure.
    thin = steady_velocity(2.0, 3, T0_MS)
    assert (
        predict_stockout(40, thin, [1.0] * 168, T0_MS, 24).confidence
        < predict_stockout(40, v, [1.0] * 168, T0_MS, 24).confidence
    )


def test_seasonality_moves_the_expected_time() -> None:
    """A store that sells only 9:00-21:00: stock left at 20:00 lasts through the night."""
    counts = [10.0 if 9 <= h % 24 < 21 else 0.0 for h in range(168)]
    season = seasonal_index(counts, 28 * 24 * HOUR_MS)
    assert sum(season) / 168 == pytest.approx(1.0)
    evening = T0_MS + 11 * HOUR_MS  # Monday 20:00
    v = steady_velocity(1.0, 300, evening)
    flat = predict_stockout(3, v, [1.0] * 168, evening, 48)
    shaped = predict_stockout(3, v, season, evening, 48)
    assert flat.expected_ms is not None and shaped.expected_ms is not None
    assert (flat.expected_ms - evening) / HOUR_MS == pytest.approx(3, rel=0.05)
    # 1 h left of Monday's opening hours, then nothing until 9:00 on Tuesday.
    assert shaped.expected_ms > T0_MS + 24 * HOUR_MS
    assert seasonal_index([1.0] * 168, 28 * 24 * HOUR_MS) == [1.0] * 168  # too few units: flat
    # An hour of history, however busy, says nothing about the time of day.
    assert seasonal_index([1000.0 if h == 50 else 0.0 for h in range(168)], HOUR_MS) == [1.0] * 168
    # Three days say something about the hours of a day, nothing yet about the days.
    three_days = seasonal_index(
        [(10.0 if h % 24 == 12 else 1.0) * (1 + h // 24) for h in range(168)], 3 * 24 * HOUR_MS
    )
    assert three_days[12] == three_days[24 + 12] > 5 and three_days[0] == three_days[24]


def test_predicted_stockout_alert_lifecycle() -> None:
    rules = StockRules(low_stock=0, horizon_hours=24, min_confidence=0.7)
    v = steady_velocity(2.0, 200, T0_MS)
    s = state({"s1": 100}, velocity={"s1": v})
    assert not evaluate(s, {}, rules).messages  # 50 h of stock
    s = state({"s1": 30}, velocity={"s1": v})
    ev = evaluate(s, {}, rules)
    (msg,) = ev.messages
    assert (msg["type"], msg["severity"], msg["location_id"]) == (
        "predicted_stockout",
        "warning",
        "s1",
    )
    assert msg["confidence"] >= 0.7 and msg["expected_stockout_at"] > msg["as_of"]
    assert ev.at_risk
    # Closer: critical (within a quarter of the horizon), an update.
    s = state({"s1": 8}, velocity={"s1": v})
    ev2 = evaluate(s, ev.set, rules)
    assert [(m["status"], m["severity"]) for m in ev2.messages] == [("updated", "critical")]


def test_an_alert_raised_again_at_the_same_event_time_gets_a_new_id() -> None:
    """Late events (older than the newest) change stock without moving the SKU's event
    time: out of stock, back (a late delivery), out again, all at the same newest time.
    Every message must still have its own id (consumers deduplicate on it)."""
    rules = StockRules(low_stock=5)
    open_: dict[str, dict[str, Any]] = {}
    ids: list[str] = []
    for version, q in enumerate((0, 9, 0, 9, 0), start=1):
        ev = evaluate(state({"s1": q}, 0, version=version), open_, rules)
        for k in ev.delete:
            del open_[k]
        open_.update(ev.set)
        ids += [m["message_id"] for m in ev.messages]
    assert len(ids) >= 10 and len(ids) == len(set(ids)), sorted(ids)

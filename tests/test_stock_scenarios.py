"""Stock scenarios with the real broker and Redis: levels, alerts on the alerts topic, replays
and crashes. Scenarios that depend on batch boundaries feed the state sink batch by batch
(items decoded exactly as the flow decodes them); the others run the whole pipeline."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import orjson
import pytest

from flows import pipeline
from flows.kafka import CheckedProducer, read_topic
from monitoring import metrics as m
from omnicanal import runner
from omnicanal.config import Settings
from omnicanal.tools.services import LocalKafka, LocalRedis
from omnicanal.wiring import pipeline_setup, stock_rules
from operators.identity import IdentityRules
from operators.privacy import PiiHasher
from operators.stock import plan_stock
from operators.stock_alerts import evaluate
from operators.validate import Validator
from schemas.alerts import StockAlert
from schemas.envelope import Accepted
from state.profiles import connect
from state.stock import StockStore
from tests.conftest import TEST_PII_KEY, Settled, make_settings
from tests.test_identity_scenarios import send
from tests.test_pipeline_e2e import redis_dump, run_to_end, store_of

pytestmark = pytest.mark.services
T0 = datetime(2024, 6, 3, 8, tzinfo=UTC)  # a Monday


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def snapshot(minute: float, sku: str, loc: str, on_hand: int) -> dict[str, Any]:
    return {
        "event_type": "stock_snapshot",
        "event_id": f"n-{sku}-{loc}-{minute}",
        "event_time": at(minute),
        "sku": sku,
        "location_id": loc,
        "on_hand": on_hand,
    }


def adjust(minute: float, sku: str, loc: str, delta: int) -> dict[str, Any]:
    return {
        "event_type": "stock_adjustment",
        "event_id": f"a-{sku}-{minute}",
        "event_time": at(minute),
        "sku": sku,
        "location_id": loc,
        "delta": delta,
        "reason": "damage" if delta < 0 else "delivery",
    }


def price(minute: float, sku: str, channel: str, minor: int) -> dict[str, Any]:
    return {
        "event_type": "price_update",
        "event_id": f"p-{sku}-{channel}-{minute}",
        "event_time": at(minute),
        "sku": sku,
        "channel": channel,
        "price_minor": minor,
        "currency": "EUR",
    }


def sale(
    minute: float,
    sku: str,
    q: int,
    loc: str | None = "store-1",
    kind: str = "sale",
    channel: str = "store",
) -> dict[str, Any]:
    ev = {
        "event_type": kind,
        "event_id": f"{kind}-{sku}-{minute}",
        "event_time": at(minute),
        "channel": channel,
        "currency": "EUR",
        "lines": [{"sku": sku, "quantity": q, "unit_price_minor": 1000, "category": "mugs"}],
    }
    if loc:
        ev["location_id"] = loc
    return ev


def alerts(settings: Settings) -> list[StockAlert]:
    """Every message on the alerts topic, decoded with the published contract."""
    rows = read_topic(settings.kafka_config(), settings.topic_stock_alerts, idle_timeout=2.0)
    out = [msgspec.json.decode(v or b"", type=StockAlert) for _, _, _, v in rows]
    return sorted(out, key=lambda a: (a.as_of, a.message_id))


def brief(msgs: list[StockAlert]) -> list[tuple[str, str, str]]:
    return [(a.type, a.status, a.location_id or a.channel or a.reason or "") for a in msgs]


def stock_settings(
    kafka: LocalKafka, redis_server: LocalRedis, partitions: int = 3, **kw: Any
) -> Settings:
    kw = {"stock_online_locations": ["wh-1"], "stock_low_threshold": 3} | kw
    return make_settings(kafka, redis_server.url, partitions, **kw)


def test_store_runs_low_then_out_while_online_sells_and_a_return_brings_it_back(
    kafka: LocalKafka, redis_server: LocalRedis
) -> None:
    s = stock_settings(kafka, redis_server, partitions=1)
    phases = [
        [
            snapshot(0, "MUG", "store-1", 5),
            snapshot(0, "MUG", "wh-1", 50),
            price(0, "MUG", "web", 1000),
            price(0, "MUG", "store", 1000),
        ],
        [sale(10, "MUG", 2)],  # 3 left in the store: low
        [sale(20, "MUG", 3), sale(21, "MUG", 1, loc=None, channel="web")],  # 0: out; web: 49
        [sale(30, "MUG", 1, kind="return")],  # 1 back on the shelf
        [price(40, "MUG", "store", 1200)],  # 20% dearer in the store than online
    ]
    seen: list[list[tuple[str, str, str]]] = []
    for events in phases:
        before = len(alerts(s))
        send(s, events)
        run_to_end(s)
        seen.append(sorted(brief(alerts(s)[before:])))  # (one evaluation's: any order)
    assert seen == [
        [],
        [("low_stock", "raised", "store-1")],
        [("out_of_stock", "raised", "store-1")],
        [("back_in_stock", "raised", "store-1"), ("out_of_stock", "resolved", "store-1")],
        [("channel_inconsistency", "raised", "price_mismatch")],
    ]
    stock = StockStore(connect(s.redis_url), s.redis_prefix)
    sku = stock.sku("MUG")
    assert sku is not None and sku.levels == {"store-1": 1, "wh-1": 49}
    opened = {(a["type"], a.get("location_id") or a.get("reason")) for a in stock.open_alerts()}
    assert opened == {("low_stock", "store-1"), ("channel_inconsistency", "price_mismatch")}
    mismatch = next(a for a in alerts(s) if a.reason == "price_mismatch")
    assert mismatch.prices == {"web": 1000, "store": 1200}

    # A replay of every topic sends nothing again and changes nothing in Redis.
    sent, dump = alerts(s), redis_dump(s, wall_clock=False)
    run_to_end(s, resume_from="earliest")
    assert alerts(s) == sent and redis_dump(s, wall_clock=False) == dump
    assert len({a.message_id for a in sent}) == len(sent)


def decoder(settings: Settings) -> Any:
    """Decodes events as the flow does into the next batch (increasing offsets per topic)."""
    v = Validator(settings.topic_contracts(), PiiHasher(TEST_PII_KEY.encode()))
    topics = {"inventory": settings.topic_inventory, "transaction": settings.topic_transactions}
    offsets: Counter[str] = Counter()

    def items(events: list[dict[str, Any]]) -> list[Any]:
        out = []
        for ev in events:
            inventory = ev["event_type"].startswith(("stock", "price"))
            topic = topics["inventory" if inventory else "transaction"]
            out.append(v.decode(topic, 0, offsets[topic], None, orjson.dumps(ev), 2e12))
            offsets[topic] += 1
        assert all(isinstance(i, Accepted) for i in out), out
        return out

    return items


def sink_part(settings: Settings) -> Any:
    """One worker's state sink, as the flow builds it (a restart builds a new one)."""
    sink = pipeline.state_sink(pipeline_setup(settings, identity=IdentityRules()))
    return Settled(sink.build("state", 0, 1))


def feed(settings: Settings) -> tuple[Any, Any]:
    return sink_part(settings), decoder(settings)


def test_counts_reconcile_drift_in_event_time_order(
    kafka: LocalKafka, redis_server: LocalRedis
) -> None:
    s = stock_settings(kafka, redis_server)
    part, items = feed(s)
    stock = StockStore(connect(s.redis_url), s.redis_prefix)
    shrink0 = m.counter_total(m.STOCK_SHRINKAGE_UNITS)
    try:
        part.write_batch(
            items(
                [snapshot(0, "A", "store-1", 10), adjust(5, "A", "store-1", -2), sale(10, "A", 3)]
            )
        )
        assert stock.sku("A").levels == {"store-1": 5}  # type: ignore[union-attr]
        # The count at minute 20 finds 4: one unit went missing (shrinkage).
        part.write_batch(items([snapshot(20, "A", "store-1", 4)]))
        a = stock.sku("A")
        assert a is not None and (a.levels, a.shrinkage) == ({"store-1": 4}, {"store-1": 1})
        assert m.counter_total(m.STOCK_SHRINKAGE_UNITS) - shrink0 == 1
        # Sales at 40 and 50 are consumed before the count taken at 45 (another topic,
        # another lag): the count includes the first sale, not the second.
        part.write_batch(items([sale(40, "A", 1), sale(50, "A", 2)]))
        part.write_batch(items([snapshot(45, "A", "store-1", 10)]))
        assert stock.sku("A").levels == {"store-1": 8}  # type: ignore[union-attr]
        # A delivery recorded late, with a time before the count, is already in it.
        part.write_batch(items([adjust(44, "A", "store-1", 24)]))
        assert stock.sku("A").levels == {"store-1": 8}  # type: ignore[union-attr]
        # An older count than the one applied changes nothing.
        part.write_batch(items([snapshot(30, "A", "store-1", 99)]))
        a = stock.sku("A")
        assert (
            a is not None
            and a.levels == {"store-1": 8}
            and a.snapshot_ms["store-1"] == int((T0 + timedelta(minutes=45)).timestamp() * 1000)
        )
    finally:
        part.close()


def test_predicted_stockout_fires_before_the_actual_one_on_a_steady_rate(
    kafka: LocalKafka, redis_server: LocalRedis
) -> None:
    """3 units an hour from 90 units: the shelf is empty after 30 hours. Batches of one
    hour, as a live pipeline would see them."""
    s = stock_settings(
        kafka,
        redis_server,
        stock_low_threshold=0,
        stock_horizon_hours=12,
        stock_alert_interval_ms=0,  # evaluate every batch: each is an hour of sales
    )
    part, items = feed(s)
    try:
        # Two weeks of history at another store teach the rate pattern of the SKU there;
        # here the SKU's own history starts with the count.
        part.write_batch(items([snapshot(0, "B", "store-2", 90)]))
        for hour in range(34):
            part.write_batch(
                items([sale(hour * 60 + k * 20 + 1, "B", 1, "store-2") for k in range(3)])
            )
    finally:
        part.close()
    msgs = [a for a in alerts(s) if a.location_id == "store-2"]
    first: dict[tuple[str, str], StockAlert] = {}
    for a in msgs:
        first.setdefault((a.type, a.status), a)
    predicted, out = first[("predicted_stockout", "raised")], first[("out_of_stock", "raised")]
    lead = datetime.fromisoformat(out.as_of) - datetime.fromisoformat(predicted.as_of)
    assert lead >= timedelta(hours=4), (predicted, out)
    # The predicted time was close to the real one.
    assert isinstance(predicted.expected_stockout_at, str)
    error = datetime.fromisoformat(predicted.expected_stockout_at) - datetime.fromisoformat(
        out.as_of
    )
    assert abs(error) <= timedelta(hours=3), (predicted, out)
    confidence = predicted.confidence
    assert isinstance(confidence, float) and confidence >= s.stock_min_confidence
    # Once out of stock, the prediction is resolved (out-of-stock says it all).
    assert ("predicted_stockout", "resolved") in first


def test_a_crash_loses_no_alert_and_sends_none_twice(
    kafka: LocalKafka, redis_server: LocalRedis
) -> None:
    s = stock_settings(kafka, redis_server)
    rules = stock_rules(s)
    profiles = store_of(s)
    stock = StockStore(connect(s.redis_url), s.redis_prefix)
    items = decoder(s)
    # Crash 1: the batch was applied (stock moved, offsets stored), the process died before
    # evaluating its SKUs.
    batch = items([snapshot(0, "C", "store-1", 0), snapshot(0, "D", "store-1", 2)])
    plan = plan_stock(batch, rules)
    parts = [(f"{i.topic}:{i.partition}", -1, i.offset) for i in batch[-1:]]
    assert profiles.apply(parts, [], stock=plan.to_payload()).ok
    # Crash 2: SKU E was evaluated and its decisions written, the process died before
    # the broker confirmed its messages.
    batch = items([snapshot(1, "E", "store-1", 0)])
    parts = [(f"{i.topic}:{i.partition}", batch[0].offset - 1, i.offset) for i in batch]
    assert profiles.apply(parts, [], stock=plan_stock(batch, rules).to_payload()).ok
    ((state, open_),) = stock.read(["E"])
    stock.reconcile([evaluate(state, open_, rules)])
    # Crash 3: SKU F's messages reached the broker, the process died before removing them
    # from the outbox.
    batch = items([snapshot(2, "F", "store-1", 1)])
    parts = [(f"{i.topic}:{i.partition}", batch[0].offset - 1, i.offset) for i in batch]
    assert profiles.apply(parts, [], stock=plan_stock(batch, rules).to_payload()).ok
    ((state, open_),) = stock.read(["F"])
    _, f_ids = stock.reconcile([evaluate(state, open_, rules)])
    outbox = [e for page in stock.outbox() for e in page]
    producer = CheckedProducer(s.kafka_config())
    for i, msg in outbox:
        if i in f_ids:
            producer.produce(s.topic_stock_alerts, msg, b"F")
    producer.flush()
    assert [x for page in stock.dirty() for x in page] == ["C", "D"] and len(outbox) == 3
    assert [a.sku for a in alerts(s)] == ["F"]

    # The restart: the outbox is sent except what the broker has, dirty SKUs evaluated.
    assert runner.recover_alerts(s) == (2, 1, 2)
    got = Counter((a.sku, a.type) for a in alerts(s))
    assert got == Counter(
        {
            ("C", "out_of_stock"): 1,
            ("C", "low_stock"): 1,
            ("D", "low_stock"): 1,
            ("E", "out_of_stock"): 1,
            ("E", "low_stock"): 1,
            ("F", "low_stock"): 1,
        }
    )
    assert len({a.message_id for a in alerts(s)}) == 6
    assert list(stock.dirty()) == [] and list(stock.outbox()) == []
    assert runner.recover_alerts(s) == (0, 0, 0)  # another restart: nothing left to send
    assert len(alerts(s)) == 6


def test_thousands_of_skus_across_dozens_of_locations(
    kafka: LocalKafka, redis_server: LocalRedis
) -> None:
    skus, locations = 2000, 30
    s = stock_settings(kafka, redis_server, partitions=4)
    events = [
        snapshot(0, f"S{i:04d}", f"store-{j:02d}", (i * 7 + j * 3) % 12)
        for i in range(skus)
        for j in range(locations)
    ]
    send(s, events)
    run_to_end(s)
    # then every SKU sells one unit in store-00
    send(s, [sale(10, f"S{i:04d}", 1, "store-00") for i in range(skus)])
    run_to_end(s)
    level = {
        (i, j): (i * 7 + j * 3) % 12 - (1 if j == 0 else 0)
        for i in range(skus)
        for j in range(locations)
    }
    want: Counter[str] = Counter()
    for q in level.values():
        if q <= 0:
            want["out_of_stock"] += 1
        if q < 0:
            want["channel_inconsistency"] += 1  # sold with no stock behind it
        if q <= 3:
            want["low_stock"] += 1
    stock = StockStore(connect(s.redis_url), s.redis_prefix)
    assert Counter(a["type"] for a in stock.open_alerts()) == want
    assert stock.alert_stats()["open"] == dict(want)
    sent = alerts(s)
    assert len(sent) == len({a.message_id for a in sent}) >= sum(want.values())
    assert {(a.sku, a.location_id) for a in sent if a.status == "raised"} >= {
        (f"S{i:04d}", f"store-{j:02d}") for (i, j), q in level.items() if q <= 0
    }
    probe = stock.sku("S0001")
    assert probe is not None and probe.levels["store-00"] == level[(1, 0)]
    # what offers read (levels only, one script call per 5,000 SKUs) is what the alerts read
    names = [f"S{i:04d}" for i in range(skus)]
    asked = [*names, "NEVER-SEEN", *names, *names]  # past one call's 5,000 keys
    got = stock.levels(asked)
    assert [g.sku for g in got] == asked and got[skus].levels == {} == got[skus].snapshot_ms
    full = dict(zip(names, (st for st, _ in stock.read(names)), strict=True))
    for g in got[:skus] + got[-skus:]:
        assert g.levels == full[g.sku].levels and g.snapshot_ms == full[g.sku].snapshot_ms
        i = int(g.sku[1:])
        assert g.levels == {f"store-{j:02d}": level[(i, j)] for j in range(locations)}


def test_a_hot_sku_is_evaluated_once_per_interval_and_when_input_goes_idle(
    kafka: LocalKafka, redis_server: LocalRedis
) -> None:
    from flows.source import IdleWork

    interval = 5.0
    s = stock_settings(kafka, redis_server, stock_alert_interval_ms=int(interval * 1000))
    part, items = feed(s)
    try:
        part.write_batch(items([snapshot(0, "H", "store-1", 3)]))  # first: evaluated now
        first = time.monotonic()
        part.write_batch(items([sale(1, "H", 3)]))  # within the interval: pending
        part.write_batch(items([sale(2, "H", 1, kind="return")]))
        IdleWork.run()  # idle input, but the interval has not passed
        assert time.monotonic() - first < interval, "the machine is too slow for this test"
        assert brief(alerts(s)) == [("low_stock", "raised", "store-1")]
        time.sleep(max(0.0, interval + 0.1 - (time.monotonic() - first)))
        IdleWork.run()  # what an idle source does: the pending SKU is evaluated now
        # It sees the state after the return (1 unit): the 0 in between raised nothing.
        part.write_batch(items([sale(3, "H", 1)]))  # 0 left, within the interval again
        assert len(alerts(s)) == 1
    finally:
        part.close()  # a clean stop evaluates what is pending
    assert brief(alerts(s))[1:] == [("out_of_stock", "raised", "store-1")]


def test_movement_records_stay_bounded_between_counts(
    kafka: LocalKafka, redis_server: LocalRedis
) -> None:
    """A best-seller sold 5,000 times with no count: at most 4,096 movement records are
    kept, a count that falls before them is refused as too late, a later one applies
    exactly."""
    s = stock_settings(kafka, redis_server)
    part, items = feed(s)
    r = connect(s.redis_url)
    late0 = m.counter_total(m.STOCK_LATE_COUNTS)
    records = f"{s.redis_prefix}mv:HOT|store-1"
    try:
        part.write_batch(items([snapshot(0, "HOT", "store-1", 6000)]))
        for k in range(10):
            part.write_batch(items([sale(1 + k * 500 + i, "HOT", 1) for i in range(500)]))
        assert r.hlen(records) <= 4097  # records + "floor"
        floor_minute = (int(r.hget(records, "floor") or 0) - int(T0.timestamp() * 1000)) / 60_000
        assert 100 < floor_minute < 4950
        # Counted at minute 100: sales after it were pruned, so it cannot be applied.
        part.write_batch(items([snapshot(100, "HOT", "store-1", 5800)]))
        assert m.counter_total(m.STOCK_LATE_COUNTS) - late0 == 1
        assert StockStore(r, s.redis_prefix).sku("HOT").levels == {"store-1": 1000}  # type: ignore[union-attr]
        # Counted at minute 4950.5 (sales 1..4950 before it): the 50 after it are kept.
        part.write_batch(items([snapshot(4950.5, "HOT", "store-1", 1040)]))
        a = StockStore(r, s.redis_prefix).sku("HOT")
        assert a is not None and a.levels == {"store-1": 990}
        assert a.shrinkage == {"store-1": 10}  # 1,050 expected at the count, 1,040 counted
    finally:
        part.close()


def test_two_workers_evaluating_the_same_state_write_it_once(
    kafka: LocalKafka, redis_server: LocalRedis
) -> None:
    s = stock_settings(kafka, redis_server)
    rules = stock_rules(s)
    items = decoder(s)
    batch = items([snapshot(0, "W", "store-1", 0)])
    parts = [(f"{i.topic}:{i.partition}", -1, i.offset) for i in batch]
    assert store_of(s).apply(parts, [], stock=plan_stock(batch, rules).to_payload()).ok
    a = StockStore(connect(s.redis_url), s.redis_prefix)
    b = StockStore(connect(s.redis_url), s.redis_prefix)
    ((state_a, open_a),), ((state_b, open_b),) = a.read(["W"]), b.read(["W"])
    first = a.reconcile([evaluate(state_a, open_a, rules)])
    second = b.reconcile([evaluate(state_b, open_b, rules)])
    assert first == ([], first[1]) and len(first[1]) == 2  # out of stock, low stock
    assert second == (["W"], [])
    assert a.alert_stats()["open"] == {"low_stock": 1, "out_of_stock": 1}
    assert len([e for page in a.outbox() for e in page]) == 2


def test_open_alert_gauges_return_to_zero_and_only_worker_0_exports_them(
    kafka: LocalKafka, redis_server: LocalRedis
) -> None:
    s = stock_settings(kafka, redis_server, stock_alert_interval_ms=0)
    items = decoder(s)
    gauge = m.OPEN_STOCK_ALERTS.labels("out_of_stock")
    setup = pipeline_setup(s, identity=IdentityRules())
    other = Settled(pipeline.state_sink(setup).build("state", 1, 2))  # worker 1 of 2
    gauge.set(-1)  # a value no evaluation gives
    try:
        other.write_batch(items([snapshot(0, "Z", "store-1", 0)]))  # out of stock: raised
    finally:
        other.close()
    assert gauge._value.get() == -1  # worker 1 leaves the Redis-wide gauges alone
    part = Settled(pipeline.state_sink(setup).build("state", 0, 2))
    try:
        part.write_batch(items([snapshot(1, "Z", "store-1", 0)]))
        assert gauge._value.get() == 1
        part.write_batch(items([snapshot(2, "Z", "store-1", 50)]))  # back: resolved
        assert gauge._value.get() == 0  # and the gauge says so
    finally:
        part.close()

"""Each stage of ``flows/stages.py`` on its own, against the real broker and Redis, and the
order ``flows/pipeline.py`` runs them in: no offset moves before its dead letters are
confirmed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from flows import pipeline
from flows.kafka import CheckedProducer, DeliveryError, GroupOffsets, read_topic
from flows.source import STOP
from flows.stages import DeadLetters, Fence, RedisWait, WitnessCommit, count_applied
from monitoring import metrics as m
from omnicanal.config import Settings
from omnicanal.tools.services import LocalKafka
from omnicanal.wiring import pipeline_setup
from operators.identity import IdentityRules
from operators.privacy import PiiHasher
from operators.validate import Validator
from schemas.envelope import Accepted, Rejected
from state.profiles import ProfileStore, connect
from tests.conftest import TEST_PII_KEY, Settled, make_settings

pytestmark = pytest.mark.services
HASH = PiiHasher(TEST_PII_KEY.encode())


def _items(
    settings: Settings, n: int, *, bad: frozenset[int] = frozenset()
) -> list[Accepted | Rejected]:
    v = Validator(settings.topic_contracts(), HASH)
    out = []
    for i in range(n):
        ev = {"event_type": "login", "event_id": f"e{i}", "event_time": "2024-05-01T10:00:00Z",
              "channel": "web", "session_id": "s", "customer": {"loyalty_id": f"L{i}"}}  # fmt: skip
        raw = b"{not json" if i in bad else orjson.dumps(ev)
        out.append(v.decode(settings.topic_clickstream, 0, i, None, raw, 2e12))
    return out


def test_fence_drops_what_redis_applied_and_loads_unknown_floors(settings: Settings) -> None:
    store = ProfileStore(connect(settings.redis_url), settings.redis_prefix)
    part = f"{settings.topic_clickstream}:0"
    store.r.hset(f"{settings.redis_prefix}offsets", part, 4)  # as if 0..4 were applied
    fence = Fence(store, RedisWait(5, "test"), floors={})
    before = m.counter_total(m.REPLAYED, topic=settings.topic_clickstream)
    fresh = fence.fresh(_items(settings, 8))
    assert [i.offset for i in fresh] == [5, 6, 7]
    assert fence.floors == {part: 4}
    assert m.counter_total(m.REPLAYED, topic=settings.topic_clickstream) - before == 5
    # A floor from the plan wins over Redis (Redis going back in time is caught later)
    planned = Fence(store, RedisWait(5, "test"), floors={part: 6})
    assert [i.offset for i in planned.fresh(_items(settings, 8))] == [7]


def test_fence_reads_every_floor_the_plan_left_to_redis_with_the_first_batch(
    settings: Settings,
) -> None:
    """A partition first seen a few batches in would wait for the batch script sent ahead:
    the plan's partitions without a floor are all read with the first one needed."""
    store = ProfileStore(connect(settings.redis_url), settings.redis_prefix)
    first, other = f"{settings.topic_clickstream}:0", f"{settings.topic_clickstream}:1"
    store.r.hset(f"{settings.redis_prefix}offsets", mapping={first: 2, other: 9})
    fence = Fence(store, RedisWait(5, "test"), floors={}, later=[first, other])
    assert [i.offset for i in fence.fresh(_items(settings, 4))] == [3]
    assert fence.floors == {first: 2, other: 9}
    store.r.hset(f"{settings.redis_prefix}offsets", other, 12)  # read once, not again
    assert fence.fresh(_items(settings, 4)) and fence.floors[other] == 9


def test_dead_letters_are_confirmed_with_their_source_key(settings: Settings) -> None:
    items = _items(settings, 6, bad=frozenset({1, 4}))
    rejected = [i for i in items if isinstance(i, Rejected)]
    producer = CheckedProducer(settings.kafka_config(), what="test")
    DeadLetters(producer, settings.topic_dead_letters).send(rejected)
    got = read_topic(settings.kafka_config(), settings.topic_dead_letters)
    keys = sorted(k for _, _, k, _ in got)
    assert keys == sorted(r.dlq_key for r in rejected)
    assert {orjson.loads(v or b"")["reason"] for *_, v in got} == {"malformed_json"}


def test_witness_commit_copies_offsets_at_most_once_per_interval(settings: Settings) -> None:
    part = f"{settings.topic_clickstream}:0"
    group = GroupOffsets(settings.kafka_config(), settings.group_id)
    commit = WitnessCommit(group, interval=3600)
    commit.after({part: 10})  # the first: committed at once
    commit.after({part: 20})  # within the interval: kept for later
    reader = GroupOffsets(settings.kafka_config(), settings.group_id)
    try:
        deadline = time.monotonic() + 15  # the interval's commits are asynchronous
        while reader.committed([part]) != {part: 10} and time.monotonic() < deadline:
            time.sleep(0.2)
        assert reader.committed([part]) == {part: 10}
        commit.close()  # a clean stop commits what is pending
        assert reader.committed([part]) == {part: 20}
    finally:
        reader.close()


def test_count_applied_counts_events_and_dead_letters(settings: Settings) -> None:
    items = _items(settings, 5, bad=frozenset({2}))
    topic = settings.topic_clickstream
    ev0 = m.counter_total(m.EVENTS, topic=topic)
    dl0 = m.counter_total(m.DEAD_LETTERS, topic=topic, reason="malformed_json")
    count_applied(items)
    assert m.counter_total(m.EVENTS, topic=topic) - ev0 == 4
    assert m.counter_total(m.DEAD_LETTERS, topic=topic, reason="malformed_json") - dl0 == 1


def test_count_applied_counts_orders_revenue_and_units_per_channel(settings: Settings) -> None:
    v = Validator(settings.topic_contracts(), HASH)
    lines = [
        {"sku": "A", "quantity": 2, "unit_price_minor": 350},
        {"sku": "B", "quantity": 1, "unit_price_minor": 1000, "discount_minor": 100},
        {"kind": "shipping", "sku": "SHIP", "quantity": 1, "unit_price_minor": 499},
    ]
    sales = [v.decode(settings.topic_transactions, 0, i, None, orjson.dumps(
        {"event_type": "sale", "event_id": f"s{i}", "event_time": "2024-05-01T10:00:00Z",
         "channel": "app", "currency": "EUR", "customer": {"loyalty_id": "L1"},
         "lines": lines}), 2e12) for i in range(3)]  # fmt: skip
    assert all(type(x) is Accepted for x in sales), sales
    o0 = m.counter_total(m.ORDERS, channel="app")
    r0 = m.counter_total(m.REVENUE, channel="app", currency="EUR")
    u0 = m.counter_total(m.ITEMS_SOLD, channel="app")
    count_applied(sales)
    assert m.counter_total(m.ORDERS, channel="app") - o0 == 3
    # per sale: 2 x 350 + 1000 - 100 + 499 shipping = 2,099 cents; units: products only
    assert m.counter_total(m.REVENUE, channel="app", currency="EUR") - r0 == 3 * 2099
    assert m.counter_total(m.ITEMS_SOLD, channel="app") - u0 == 3 * 3


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalKafka]:
    k = LocalKafka(tmp_path / "kafka").start()
    yield k
    k.resume()
    k.stop()


def test_no_offset_moves_before_its_dead_letters_are_confirmed(
    own_broker: LocalKafka, redis_server: object
) -> None:
    url = redis_server.url  # type: ignore[attr-defined]
    s = make_settings(own_broker, url, kafka_options={"message.timeout.ms": "1500"})
    worker = Settled(
        pipeline.worker_pipeline(
            pipeline_setup(s, identity=IdentityRules(), hasher=HASH), starts={}
        )
    )
    store = ProfileStore(connect(url), s.redis_prefix)
    try:
        worker.write(_items(s, 3))  # all good: applied
        assert store.load_offsets() == {f"{s.topic_clickstream}:0": 2}
        own_broker.pause()  # the dead letters of the next batch cannot be confirmed
        STOP.set()  # (a stopping run gives up instead of retrying forever)
        batch = _items(s, 6, bad=frozenset({4}))[3:]
        with pytest.raises(DeliveryError, match="dead letter"):
            worker.write(batch)
        # Nothing of that batch reached Redis: it is read again at the next start.
        assert store.load_offsets() == {f"{s.topic_clickstream}:0": 2}
        assert store.stats()["customers"] == 3
    finally:
        STOP.clear()
        own_broker.resume()
        worker.close()


def test_observe_many_equals_one_observe_per_value() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    reg = CollectorRegistry()
    bounds = (0.05, 1.0, 5.0)
    one = Histogram("one", "d", buckets=bounds, registry=reg)
    many = Histogram("many", "d", buckets=bounds, registry=reg)
    values = [0.0, 0.05, 0.0500001, 1.0, 3.0, 5.0, 9.0, 1e9, 0.2]  # bounds included
    for v in values:
        one.observe(v)
    m.observe_many(many, values)

    def samples(h: Histogram) -> list[tuple[str, float]]:
        return [(s.name.split("_", 1)[1], s.value) for s in h.collect()[0].samples
                if not s.name.endswith("_created")]  # fmt: skip

    assert samples(one) == samples(many)


def test_count_applied_observes_each_events_latency(settings: Settings) -> None:
    v = Validator(settings.topic_contracts(), HASH)
    now = time.time()

    def at(i: int, seconds_ago: float) -> Accepted | Rejected:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - seconds_ago))
        ms = f"{(now - seconds_ago) % 1:.3f}"[1:]
        ev = {"event_type": "login", "event_id": f"lat{i}", "event_time": t + ms + "Z",
              "channel": "web", "session_id": "s", "customer": {"loyalty_id": "L1"}}  # fmt: skip
        return v.decode(settings.topic_clickstream, 0, i, None, orjson.dumps(ev), 2e12)

    topic = settings.topic_clickstream

    def buckets() -> dict[str, float]:
        return {s.labels["le"]: s.value for s in m.EVENT_LATENCY.collect()[0].samples
                if s.name.endswith("_bucket") and s.labels["topic"] == topic}  # fmt: skip

    b0 = buckets()
    # 3 fresh (within 1 s, one from the future), 2 of 2 minutes ago
    count_applied([at(0, 0.2), at(1, 0.4), at(2, -30), at(3, 120), at(4, 125)])
    b1 = buckets()
    assert b1["1.0"] - b0.get("1.0", 0) == 3
    assert b1["60.0"] - b0.get("60.0", 0) == 3
    assert b1["300.0"] - b0.get("300.0", 0) == 5


def test_redis_round_trips_and_errors_are_measured(settings: Settings) -> None:
    import redis

    r = connect(settings.redis_url)

    def calls(op: str) -> float:
        return sum(s.value for s in m.REDIS_SECONDS.collect()[0].samples
                   if s.name.endswith("_count") and s.labels["op"] == op)  # fmt: skip

    c0 = {op: calls(op) for op in ("hgetall", "pipeline", "transaction", "evalsha")}
    e0 = m.counter_total(m.REDIS_ERRORS, op="evalsha", cause="error")
    e1 = m.counter_total(m.REDIS_ERRORS, op="eval", cause="error")
    r.hgetall("oc-test:none")
    pipe = r.pipeline(transaction=False)
    for i in range(50):  # one round trip, one observation
        pipe.get(f"oc-test:{i}")
    pipe.execute()
    with r.pipeline() as tx:
        tx.get("oc-test:x").execute()
    with pytest.raises(redis.exceptions.NoScriptError):  # how a script is loaded: no error
        r.evalsha("0" * 40, 0)
    with pytest.raises(redis.ResponseError):
        r.eval("return redis.call('incr', KEYS[1], 'x')", 1, "oc-test:bad")
    assert {op: calls(op) - c0[op] for op in c0} == {
        "hgetall": 1, "pipeline": 1, "transaction": 1, "evalsha": 1}  # fmt: skip
    assert m.counter_total(m.REDIS_ERRORS, op="evalsha", cause="error") == e0
    assert m.counter_total(m.REDIS_ERRORS, op="eval", cause="error") - e1 == 1

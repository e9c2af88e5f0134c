"""End-to-end on the real broker (Tansu) and redis-server: good and bad events in, the
Redis profiles must equal a plain-Python reference, every bad event must be in the
dead-letter topic with its reason, and replays and restarts must change nothing."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import orjson
import pytest

from flows import pipeline
from flows.kafka import read_topic
from flows.sink import StagesSink
from monitoring import metrics as m
from omnicanal import runner
from omnicanal.config import Settings
from omnicanal.tools.datagen import Generator, Message
from omnicanal.tools.demo import produce
from omnicanal.tools.services import LocalKafka, LocalRedis
from omnicanal.wiring import pipeline_setup
from operators.identity import IdentityRules
from operators.privacy import PiiHasher
from operators.validate import Validator
from state.profiles import ProfileStore, StateRegressedError, connect
from tests import reference
from tests.conftest import TEST_PII_KEY, Settled, make_settings

pytestmark = pytest.mark.services


def generate(n: int, seed: int, bad_share: float) -> list[Message]:
    return list(Generator(seed=seed, customers=400, bad_share=bad_share).messages(n))


def run_to_end(settings: Settings, resume_from: runner.ResumeFrom = "auto") -> None:
    plan = runner.plan(settings, resume_from)
    runner.run(settings, plan.starts, until_eof=True, serve_metrics=False)


def store_of(settings: Settings) -> ProfileStore:
    return ProfileStore(connect(settings.redis_url), settings.redis_prefix)


def profiles(settings: Settings) -> dict[reference.Key, dict[str, Any]]:
    """Stored profiles keyed by their identifiers (see tests/reference.py)."""
    store = store_of(settings)
    out = [store.read_profile(cid, reference.AS_OF_MS) for cid in store.customer_ids()]
    return reference.by_identifiers(p for p in out if p is not None)


#: channel-health bookkeeping follows the wall clock, not the events (``state/health.py``):
#: a replay that crosses a minute boundary moves it, whatever the events
WALL_CLOCK_KEYS = re.compile(rb"^[^:]*:(health:(state|minute)|ch:min:\d+)$")


def redis_dump(settings: Settings, *, wall_clock: bool = True) -> dict[bytes, Any]:
    """Every key and value; ``wall_clock=False`` leaves out the keys that follow the
    clock rather than the events (to compare the state a replay leaves)."""
    r = connect(settings.redis_url)
    out: dict[bytes, Any] = {}
    for k in r.scan_iter(count=1000):
        if not wall_clock and WALL_CLOCK_KEYS.match(k):
            continue
        t = r.type(k)
        if t == b"hash":
            out[k] = r.hgetall(k)
        elif t == b"zset":
            out[k] = r.zrange(k, 0, -1, withscores=True)
        elif t == b"set":
            out[k] = r.smembers(k)
        elif t == b"list":
            out[k] = r.lrange(k, 0, -1)
        elif t == b"stream":
            out[k] = r.xrange(k)
        else:
            out[k] = r.get(k)
    return out


def expected_profiles(msgs: list[Message]) -> dict[reference.Key, dict[str, Any]]:
    good = [orjson.loads(x.value) for x in msgs if x.expected_reason is None]
    return reference.build(good, TEST_PII_KEY.encode())


def input_positions(settings: Settings) -> dict[tuple[str, int, int], bytes | None]:
    out = {}
    for topic in settings.topic_contracts():
        for p, off, _, value in read_topic(settings.kafka_config(), topic):
            out[(topic, p, off)] = value
    return out


def test_profiles_match_reference_and_bad_events_are_dead_lettered(settings: Settings) -> None:
    msgs = generate(6000, seed=11, bad_share=0.06)
    bad = {x.value: x.expected_reason for x in msgs if x.expected_reason}
    assert len(bad) > 200
    events_before = m.counter_total(m.EVENTS)
    n, _, _ = produce(settings, msgs)
    assert n == len(msgs)

    run_to_end(settings)

    # Customers and profiles: exactly what the reference computes from the good events.
    got = profiles(settings)
    want = expected_profiles(msgs)
    assert reference.mismatches(got, want) == []
    stats = store_of(settings).stats()
    assert stats["customers"] == len(want)
    assert stats["identifiers"] == sum(len(k) for k in want)
    # Merges happen when linked events fall in different batches (the scenario tests force
    # them); the reference comparison above holds either way.
    assert stats["refused"] == 0

    # Dead letters: every bad input, once, with its reason and exact source position.
    positions = input_positions(settings)
    assert len(positions) == len(msgs)
    dlq = read_topic(settings.kafka_config(), settings.topic_dead_letters)
    records = [orjson.loads(v or b"") for _, _, _, v in dlq]
    by_pos = {
        (r["source"]["topic"], r["source"]["partition"], r["source"]["offset"]): r for r in records
    }
    assert len(by_pos) == len(records) == len(bad)
    for (_, _, key, _), r in zip(dlq, records, strict=True):
        src = r["source"]
        assert key == f"{src['topic']}:{src['partition']}:{src['offset']}".encode()
    for pos, r in by_pos.items():
        original = positions[pos]
        assert original in bad, pos
        assert r["reason"] == bad[original]
        kept = base64.b64decode(r["payload_b64"])
        if not r["payload_scrubbed"]:  # the original, cut at the configured size
            assert kept == original[: settings.dead_letter_max_payload_bytes]
            assert r.get("payload_truncated", False) == (len(original) > len(kept))
            assert r["payload_sha256"] == hashlib.sha256(original).hexdigest()
        assert b"@example.com" not in kept and b"@example.com" not in orjson.dumps(r)

    # Counting: processed + dead-lettered = produced.
    processed = m.counter_total(m.EVENTS) - events_before
    assert processed + len(records) == len(msgs)

    # Privacy: none of the emails or phone numbers produced is anywhere in Redis.
    dump = repr(redis_dump(settings)).encode().lower()
    pii = pii_values(msgs)
    assert len(pii) > 100
    assert not [v for v in pii if v in dump]


def pii_values(msgs: list[Message]) -> set[bytes]:
    out = set()
    for x in msgs:
        try:
            cust = orjson.loads(x.value).get("customer") or {}
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if "email" in cust:
            out.add(cust["email"].lower().encode())
        if "phone" in cust:
            out.add(cust["phone"].encode())
            out.add("".join(ch for ch in cust["phone"] if ch.isdigit()).encode())
    return out


def test_replay_from_the_beginning_changes_nothing(settings: Settings) -> None:
    msgs = generate(3000, seed=5, bad_share=0.03)
    produce(settings, msgs)
    run_to_end(settings)
    before = redis_dump(settings, wall_clock=False)
    dlq_before = len(read_topic(settings.kafka_config(), settings.topic_dead_letters))
    replayed_before = m.counter_total(m.REPLAYED)

    run_to_end(settings, resume_from="earliest")

    assert redis_dump(settings, wall_clock=False) == before
    assert len(read_topic(settings.kafka_config(), settings.topic_dead_letters)) == dlq_before
    assert m.counter_total(m.REPLAYED) - replayed_before == len(msgs)


def test_restart_continues_where_redis_left_off(settings: Settings) -> None:
    all_msgs = generate(4000, seed=9, bad_share=0.02)
    first, second = all_msgs[:2500], all_msgs[2500:]
    produce(settings, first)
    run_to_end(settings)
    produce(settings, second)
    plan = runner.plan(settings)
    stored = store_of(settings).load_offsets()
    assert plan.starts == {p: o + 1 for p, o in stored.items()} | {
        p: o for p, o in plan.starts.items() if p not in stored
    }
    runner.run(settings, plan.starts, until_eof=True, serve_metrics=False)
    assert reference.mismatches(profiles(settings), expected_profiles(all_msgs)) == []


def test_redis_that_lost_its_data_stops_the_pipeline(
    kafka: LocalKafka, redis_server: LocalRedis
) -> None:
    settings = make_settings(kafka, redis_server.url)
    msgs = generate(2000, seed=3, bad_share=0.0)
    produce(settings, msgs)
    run_to_end(settings)
    want = profiles(settings)
    assert reference.mismatches(want, expected_profiles(msgs)) == []

    # Redis comes back empty (as a Redis without persistence does after a restart).
    redis_server.stop()
    redis_server.wipe()
    redis_server.start()
    assert profiles(settings) == {}
    with pytest.raises(runner.StateBehindStreamError, match="Redis state is behind the stream"):
        runner.plan(settings)

    # The operator's documented way out: rebuild from Redis's own position.
    run_to_end(settings, resume_from="redis")
    assert profiles(settings) == want


def test_redis_with_aof_survives_a_restart(kafka: LocalKafka, redis_server: LocalRedis) -> None:
    settings = make_settings(kafka, redis_server.url)
    msgs = generate(1500, seed=4, bad_share=0.0)
    produce(settings, msgs)
    run_to_end(settings)
    before = redis_dump(settings, wall_clock=False)
    redis_server.kill()  # crash, no clean shutdown
    redis_server.start()
    assert redis_dump(settings, wall_clock=False) == before
    assert runner.plan(settings).behind == {}


def clickstream_items(settings: Settings, n: int, seed: int) -> tuple[list[Message], list[Any]]:
    """Decoded clickstream events on partition 0, and a state sink for the settings."""
    v = Validator(settings.topic_contracts(), PiiHasher(TEST_PII_KEY.encode()))
    topic = settings.topic_clickstream
    raw = [x for x in generate(n, seed=seed, bad_share=0.0) if x.contract == "clickstream"]
    items = [v.decode(topic, 0, i, x.key, x.value, 2_000_000_000_000) for i, x in enumerate(raw)]
    return raw, items


def state_sink(settings: Settings) -> StagesSink:
    return pipeline.state_sink(pipeline_setup(settings, identity=IdentityRules()))


def test_sink_detects_redis_losing_state_mid_run(settings: Settings) -> None:
    _, items = clickstream_items(settings, 200, seed=1)
    part = Settled(state_sink(settings).build("state", 0, 1))
    try:
        part.write_batch(items[:50])
        connect(settings.redis_url).flushall()
        with pytest.raises(StateRegressedError, match="went back in time"):
            part.write_batch(items[50:])
    finally:
        part.close()


def test_a_batch_planned_while_redis_had_the_previous_one_is_fenced_again(
    settings: Settings,
) -> None:
    """The pipeline plans a batch while Redis still runs the previous one. When that reply
    says Redis was ahead (another writer got there first), the batch planned meanwhile is
    fenced again and planned anew: what the other writer applied is not applied twice
    (the event-id dedupe is off, so that the fence alone must keep them out)."""
    settings = settings.model_copy(update={"dedupe_window_hours": 0})
    raw, items = clickstream_items(settings, 600, seed=3)
    topic = settings.topic_clickstream
    sink = state_sink(settings)
    a, b = sink.build("state", 0, 1), Settled(sink.build("state", 0, 1))
    try:
        a.write_batch(items[:10])
        a.flush()  # a's floor: 9
        b.write_batch(items[:10])
        b.write_batch(items[10:300])  # Redis at 299; a does not know
        a.write_batch(items[10:100])  # sent to Redis, not finished: the reply is "stale"
        a.write_batch(items[100:400])  # planned with floor 9: 100..299 are not fresh
        a.flush()
    finally:
        a.close()
        b.close()
    want = reference.build([orjson.loads(x.value) for x in raw[:400]], TEST_PII_KEY.encode())
    assert reference.mismatches(profiles(settings), want) == []
    assert store_of(settings).load_offsets([f"{topic}:0"]) == {f"{topic}:0": 399}


def test_two_writers_on_the_same_partition_never_double_apply(settings: Settings) -> None:
    """A zombie worker (or a retried script call) sees Redis ahead and drops what is done."""
    raw, items = clickstream_items(settings, 600, seed=2)
    topic = settings.topic_clickstream
    sink = state_sink(settings)
    a, b = Settled(sink.build("state", 0, 1)), Settled(sink.build("state", 0, 1))
    try:
        a.write_batch(items[:10])
        b.write_batch(items[:10])  # b loads its floor now: 9
        a.write_batch(items[10:200])  # Redis moves ahead of b
        b.write_batch(items[10:300])  # overlap 10..199 must be dropped, 200..299 applied
    finally:
        a.close()
        b.close()
    a_replayed = m.counter_total(m.REPLAYED, topic=topic)
    assert a_replayed >= 190
    want = reference.build([orjson.loads(x.value) for x in raw[:300]], TEST_PII_KEY.encode())
    assert reference.mismatches(profiles(settings), want) == []
    assert store_of(settings).load_offsets([f"{topic}:0"]) == {f"{topic}:0": 299}

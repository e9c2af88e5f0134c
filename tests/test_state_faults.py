"""What the state sink does when Redis refuses part of a batch, against a real Redis: an
event Redis cannot take is found and dead-lettered while the rest is applied; a script that
dies half-way through its writes stops everything rather than counting anything twice."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from flows import pipeline
from flows.kafka import read_topic
from omnicanal.config import Settings
from omnicanal.wiring import pipeline_setup
from operators.identity import IdentityRules
from operators.privacy import PiiHasher
from operators.validate import Validator
from schemas.envelope import Accepted
from state.profiles import ProfileStore, TornBatchError, connect, id_bucket
from tests.conftest import TEST_PII_KEY, Settled

pytestmark = pytest.mark.services
HASH = PiiHasher(TEST_PII_KEY.encode())


def login(n: int, loyalty: str, email: str | None = None) -> dict[str, Any]:
    customer = {"loyalty_id": loyalty} | ({"email": email} if email else {})
    return {"event_type": "login", "event_id": f"e{n}", "event_time": "2024-05-01T10:00:00Z",
            "channel": "web", "session_id": f"s{n}", "customer": customer}  # fmt: skip


def decoded(settings: Settings, events: list[dict[str, Any]]) -> list[Accepted]:
    v = Validator(settings.topic_contracts(), HASH)
    out = []
    for i, ev in enumerate(events):
        a = v.decode(settings.topic_clickstream, 0, i, None, orjson.dumps(ev), 2e12, 1)
        assert isinstance(a, Accepted)
        out.append(a)
    return out


def sink(settings: Settings) -> Any:
    s = pipeline.state_sink(pipeline_setup(settings, identity=IdentityRules(), hasher=HASH))
    return Settled(s.build("state", 0, 1))


def test_an_event_redis_refuses_is_dead_lettered_and_the_rest_applied(settings: Settings) -> None:
    store = ProfileStore(connect(settings.redis_url), settings.redis_prefix)
    bad_bucket = id_bucket("loyalty:L7", store.buckets())
    people = [
        f"L{i}" for i in range(40) if i == 7 or id_bucket(f"loyalty:L{i}", 4096) != bad_bucket
    ]
    events = [
        login(n, p, email="l7@example.com" if p == "L7" else None) for n, p in enumerate(people)
    ]
    # Something else wrote a string where an identity bucket lives: looking L7 up fails.
    store.r.set(f"{settings.redis_prefix}ids:{bad_bucket}", "not a hash")
    part = sink(settings)
    try:
        part.write_batch(decoded(settings, events))
    finally:
        part.close()
    assert store.load_offsets() == {f"{settings.topic_clickstream}:0": len(events) - 1}
    assert store.stats()["customers"] == len(people) - 1  # everyone but L7
    assert all(store.resolve(f"loyalty:{p}") for p in people if p != "L7")
    (row,) = read_topic(settings.kafka_config(), settings.topic_dead_letters)
    rec = orjson.loads(row[3] or b"")
    assert rec["reason"] == "state_rejected" and rec["source"]["offset"] == people.index("L7")
    assert "WRONGTYPE" in rec["message"]
    payload = base64.b64decode(rec["payload_b64"])
    assert b"L7" in payload and b"l7@example.com" not in payload and b"hmac:" in payload


def test_more_than_a_few_refused_events_stop_the_run(settings: Settings) -> None:
    """Redis refusing every event is not a bad event: after three, the run stops rather than
    dead-letter good events by the thousand (the three are in the dead-letter topic)."""
    store = ProfileStore(connect(settings.redis_url), settings.redis_prefix)
    for b in range(store.buckets()):
        store.r.set(f"{settings.redis_prefix}ids:{b:x}", "x")
    part = sink(settings)
    try:
        with pytest.raises(Exception, match="not a bad event"):
            part.write_batch(decoded(settings, [login(n, f"L{n}") for n in range(10)]))
    finally:
        part.close()
    assert store.load_offsets() == {f"{settings.topic_clickstream}:0": 2}
    dead = read_topic(settings.kafka_config(), settings.topic_dead_letters)
    # (keyed by source position: spread over the topic's partitions, in no global order)
    assert sorted(orjson.loads(v or b"")["source"]["offset"] for *_, v in dead) == [0, 1, 2]


def test_a_script_that_dies_half_way_stops_everything(settings: Settings) -> None:
    store = ProfileStore(connect(settings.redis_url), settings.redis_prefix)
    part = sink(settings)
    try:
        part.write_batch(decoded(settings, [login(0, "L1")]))
        cid = store.resolve("loyalty:L1")
        assert cid is not None
        before = store.read_profile(cid)
        # A key of the wrong type touched only by the writes (the profile hash itself).
        store.r.delete(f"{settings.redis_prefix}p:{cid}")
        store.r.set(f"{settings.redis_prefix}p:{cid}", "not a hash")
        events = [login(1, "L2"), login(2, "L1")]
        items = decoded(settings, [login(0, "L1"), *events])[1:]
        with pytest.raises(TornBatchError, match="half-way"):
            part.write_batch(items)
        # The marker stays: nothing more is written until an operator decides.
        store.r.delete(f"{settings.redis_prefix}p:{cid}")
        with pytest.raises(TornBatchError):
            part.write_batch(items)
        assert store.load_offsets() == {f"{settings.topic_clickstream}:0": 0}
        assert store.r.get(f"{settings.redis_prefix}applying") is not None
    finally:
        part.close()
    assert before is not None

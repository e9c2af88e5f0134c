"""Every profile field is declared once (``operators/profile_fields.py``): the Python fold
groups its fields by the registered rules, and the Lua merge in the real Redis combines two
customers' stored fields exactly as the registry says."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from flows import pipeline
from omnicanal.config import Settings
from omnicanal.tools.datagen import Generator
from omnicanal.wiring import pipeline_setup
from operators.identity import IdentityRules
from operators.privacy import PiiHasher
from operators.profile import fold
from operators.profile_fields import PROFILE_FIELDS, combine, rule_of
from operators.validate import Validator
from schemas.envelope import Accepted
from state.profiles import ProfileStore, connect
from tests.conftest import TEST_PII_KEY

HASH = PiiHasher(TEST_PII_KEY.encode())
NOW_MS = 2e12
GROUPS = {"sums": "sum", "mins": "min", "maxs": "max", "logs": "log_add", "lww": "latest"}


def _events(n: int, seed: int) -> list[dict[str, Any]]:
    """Valid events of every type from the generator, plus a chosen home store."""
    start = datetime(2024, 5, 1, tzinfo=UTC)
    gen = Generator(seed=seed, customers=3, skus=30, bad_share=0.0, start=start)
    events = [orjson.loads(m.value) for m in gen.messages(n)]
    events.append(
        {
            "event_type": "home_store_chosen",
            "event_id": f"hs-{seed}",
            "channel": "app",
            "event_time": "2024-05-02T10:00:00+00:00",
            "location_id": "store-3",
            "customer": {"account_id": "x"},
        }
    )
    return [e for e in events if "customer" in e or e["event_type"] == "home_store_chosen"]


def _decode(
    settings: Settings, events: list[dict[str, Any]], first_offset: int = 0
) -> list[Accepted]:
    v = Validator(settings.topic_contracts(), HASH)
    topics = {c: t for t, c in settings.topic_contracts().items()}
    from schemas.events import CONTRACT_OF_TYPE

    out = []
    for i, e in enumerate(events):
        topic = topics[CONTRACT_OF_TYPE[e["event_type"]]]
        a = v.decode(topic, 0, first_offset + i, None, orjson.dumps(e), NOW_MS)
        assert isinstance(a, Accepted), a
        out.append(a)
    return out


def test_the_fold_groups_every_field_by_its_registered_rule() -> None:
    s = Settings(pii_key=TEST_PII_KEY)
    d = fold(_decode(s, _events(6000, seed=5)))
    seen = set()
    for group, how in GROUPS.items():
        for f in getattr(d, group):
            rule = rule_of(f)
            assert rule.combine == how, (f, group, rule)
            seen.add(rule.pattern)
    # every registered field is one the fold writes: none is declared and never used
    assert seen == {r.pattern for r in PROFILE_FIELDS}


def test_an_unregistered_field_has_no_rule() -> None:
    with pytest.raises(KeyError, match="web:zz"):
        rule_of("web:zz")


def _apply(
    settings: Settings, prefix: str, *batches: list[dict[str, Any]], first_offset: int = 0
) -> ProfileStore:
    s = settings.model_copy(update={"redis_prefix": prefix})
    part = pipeline.state_sink(pipeline_setup(s, identity=IdentityRules(), hasher=HASH)).build(
        "state", 0, 1
    )
    try:
        items = _decode(s, [e for b in batches for e in b], first_offset)
        for b in batches:  # each its own batch: customers merge in Redis, not in the fold
            part.write_batch(items[: len(b)])
            items = items[len(b) :]
    finally:
        part.close()
    return ProfileStore(connect(s.redis_url), prefix)


def _hash(store: ProfileStore, identifier: str) -> dict[str, str]:
    cid = store.resolve(identifier)
    assert cid is not None, identifier
    raw = store.r.hgetall(f"{store.prefix}p:{cid}")
    return {k.decode(): v.decode() for k, v in raw.items()}


def _number(v: str) -> float:
    return float(v)


@pytest.mark.services
def test_every_registered_field_merges_in_redis_as_the_registry_combines_it(
    settings: Settings,
) -> None:
    a_ids, b_ids = {"loyalty_id": "LA"}, {"email": "b@example.com"}
    # (without the generator's device ids, which would link the two at once)
    a = [
        {k: v for k, v in e.items() if k != "device_id"} | {"customer": a_ids}
        for e in _events(1500, seed=1)
    ]
    b = [
        {k: v for k, v in e.items() if k != "device_id"} | {"customer": b_ids}
        for e in _events(1500, seed=2)
    ]
    for i, e in enumerate(b):
        e["event_id"] = f"b-{i}"
    link = [
        {
            "event_type": "login",
            "event_id": "link",
            "event_time": "2024-05-03T10:00:00+00:00",
            "channel": "web",
            "session_id": "s",
            "customer": a_ids | b_ids,
        }
    ]
    merged = _apply(settings, "m:", a + b, link)
    assert merged.stats()["merges"] == 1  # in Redis, by the batch script
    alone = [_apply(settings, p, evs) for p, evs in (("a:", a), ("b:", b), ("l:", link))]
    parts = [
        _hash(alone[0], "loyalty:LA"),
        _hash(alone[1], "email:" + HASH.email("b@example.com")),
        _hash(alone[2], "loyalty:LA"),
    ]
    want: dict[str, Any] = {}
    for h in parts:
        for f, v in h.items():
            how = rule_of(f).combine
            x: Any = v if how == "latest" else _number(v)
            want[f] = x if f not in want else combine(how, want[f], x)
    got = _hash(merged, "loyalty:LA")
    assert merged.resolve("email:" + HASH.email("b@example.com")) == merged.resolve("loyalty:LA")
    assert set(got) == set(want)
    for f, v in got.items():
        if rule_of(f).combine == "latest":
            assert v == want[f], f
        else:
            assert math.isclose(_number(v), want[f], rel_tol=1e-12), (f, v, want[f])
    # every family of fields took part: a new field cannot dodge this test
    assert {rule_of(f).pattern for f in got} == {r.pattern for r in PROFILE_FIELDS}


@pytest.mark.services
def test_a_merge_with_an_unregistered_field_is_refused_before_any_write(
    settings: Settings,
) -> None:
    """A field no rule covers (written by another version) is never combined by a guess:
    the event that would merge is dead-lettered, nothing is half-written, the run goes on."""
    from flows.kafka import read_topic

    a_ids, b_ids = {"loyalty_id": "LA"}, {"email": "b@example.com"}
    store = _apply(settings, "m:", [_login(1, a_ids)], [_login(2, b_ids)])
    b = store.resolve("email:" + HASH.email("b@example.com"))
    store.r.hset(f"m:p:{b}", "web:zz", 1)  # unknown to operators/profile_fields.py
    _apply(settings, "m:", [_login(3, a_ids | b_ids)], first_offset=2)
    assert store.stats()["merges"] == 0
    assert store.r.get("m:applying") is None  # no torn write
    assert store.load_offsets() == {f"{settings.topic_clickstream}:0": 2}  # the run went on
    (dead,) = read_topic(settings.kafka_config(), settings.topic_dead_letters)
    rec = orjson.loads(dead[3] or b"")
    assert rec["reason"] == "state_rejected" and "web:zz without a rule" in rec["message"]


def _login(n: int, customer: dict[str, str]) -> dict[str, Any]:
    return {"event_type": "login", "event_id": f"link-{n}", "channel": "web",
            "event_time": "2024-05-03T10:00:00+00:00", "session_id": "s",
            "customer": customer}  # fmt: skip

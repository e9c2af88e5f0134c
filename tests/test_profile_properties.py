"""Property: whatever the partitioning, interleaving and batch boundaries, the customers
and profiles in Redis equal the one-event-at-a-time reference (identity links and merges
across batches included; effects are commutative and fenced)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnicanal.tools.services import LocalRedis
from operators.batch import plan_batch
from operators.identity import IdentityRules
from operators.privacy import PiiHasher
from operators.validate import Validator
from schemas.envelope import Accepted
from state.profiles import ProfileStore, connect
from tests import reference

pytestmark = pytest.mark.services
KEY = b"property-test-key-0123"
V = Validator(
    {"tx": "transaction", "click": "clickstream", "cust": "customer", "ofb": "offer_feedback"},
    PiiHasher(KEY),
)
RULES = IdentityRules()
T0 = datetime(2024, 3, 1, tzinfo=UTC)
TOPIC = {
    "sale": "tx",
    "return": "tx",
    "consent_changed": "cust",
    "home_store_chosen": "cust",
    "offer_clicked": "ofb",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProfileStore]:
    srv = LocalRedis(Path(tmp_path_factory.mktemp("redis-prop"))).start(persistence=False)
    yield ProfileStore(connect(srv.url))
    srv.stop()


# Identifier sets that link across events: cookie c3 logs in as A2, whose email is also on
# L1's store receipt, so customers merge when (and only when) the linking events arrive.
customers = st.sampled_from(
    [
        {"loyalty_id": "L1"},
        {"account_id": "A2", "email": "a@b.co"},
        {"cookie_id": "c3"},
        {"cookie_id": "c3", "account_id": "A2"},
        {"email": "A@B.co", "loyalty_id": "L1"},
        {"cookie_id": "c9"},
        {"phone": "+44 1234"},
    ]
)
categories = st.sampled_from(["toys", "home"])
skus = st.sampled_from(["S1", "S2", "S3"])
minutes = st.integers(0, 6)  # few distinct times: ties between events are common


@st.composite
def event(draw: st.DrawFn) -> dict[str, object]:
    t = (T0 + timedelta(minutes=draw(minutes))).isoformat()
    kind = draw(
        st.sampled_from(
            [
                "sale",
                "return",
                "product_view",
                "add_to_cart",
                "remove_from_cart",
                "login",
                "consent_changed",
                "offer_clicked",
                "home_store_chosen",
            ]
        )
    )
    cust = draw(customers)
    if kind == "consent_changed":
        purposes = draw(st.sets(st.sampled_from(["email", "sms"]), min_size=1))
        return {
            "event_type": kind,
            "event_id": "e",
            "event_time": t,
            "channel": "web",
            "customer": cust,
            "consents": {p: draw(st.booleans()) for p in purposes},
        }
    if kind == "offer_clicked":
        return {
            "event_type": kind,
            "event_id": "e",
            "event_time": t,
            "offer_id": "o",
            "channel": draw(st.sampled_from(["email", "app"])),
            "customer": cust,
        }
    if kind == "home_store_chosen":
        return {
            "event_type": kind,
            "event_id": "e",
            "event_time": t,
            "channel": "app",
            "customer": cust,
            "location_id": draw(st.sampled_from(["S1", "S2"])),
        }
    if kind in ("sale", "return"):
        lines = draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "sku": skus,
                        "quantity": st.integers(1, 5),
                        "unit_price_minor": st.integers(0, 5000),
                        "category": categories,
                    }
                ),
                min_size=1,
                max_size=3,
            )
        )
        sale: dict[str, object] = {
            "event_type": kind,
            "event_id": "e",
            "event_time": t,
            "currency": "EUR",
            "channel": draw(st.sampled_from(["store", "web", "app"])),
            "lines": lines,
            "customer": cust,
        }
        if sale["channel"] == "store":
            sale["location_id"] = draw(st.sampled_from(["S1", "S2"]))
        return sale
    ev: dict[str, object] = {
        "event_type": kind,
        "event_id": "e",
        "event_time": t,
        "channel": draw(st.sampled_from(["web", "app"])),
        "session_id": "s",
        "customer": cust,
    }
    if kind != "login":
        ev["sku"] = draw(skus)
    if kind in ("product_view", "add_to_cart"):
        ev["category"] = draw(categories)
    if kind in ("add_to_cart", "remove_from_cart"):
        ev["quantity"] = draw(st.integers(1, 3))
    return ev


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.large_base_example],
)
@given(
    events=st.lists(event(), min_size=10, max_size=60),
    partitions=st.data(),
)
def test_profiles_do_not_depend_on_order_or_batches(
    store: ProfileStore, events: list[dict[str, object]], partitions: st.DataObject
) -> None:
    store.r.flushdb()
    # Spread events over 3 partitions, then interleave partition segments in random batches.
    queues: dict[int, list[dict[str, object]]] = {0: [], 1: [], 2: []}
    for ev in events:
        queues[partitions.draw(st.integers(0, 2))].append(ev)
    next_offset = dict.fromkeys(queues, 0)
    floors = dict.fromkeys(queues, -1)
    while any(next_offset[p] < len(q) for p, q in queues.items()):
        batch: list[Accepted] = []
        first = next(p for p, q in queues.items() if next_offset[p] < len(q))
        for p, q in queues.items():
            left = len(q) - next_offset[p]
            take = partitions.draw(st.integers(1 if p == first else 0, left)) if left else 0
            for ev in q[next_offset[p] : next_offset[p] + take]:
                topic = TOPIC.get(str(ev["event_type"]), "click")
                r = V.decode(topic, p, next_offset[p], None, orjson.dumps(ev), 2_000_000_000_000)
                assert isinstance(r, Accepted), r
                batch.append(r)
                next_offset[p] += 1
        parts = [
            (f"p:{p}", floors[p], next_offset[p] - 1)
            for p in queues
            if any(a.partition == p for a in batch)
        ]
        plan = plan_batch(batch, RULES)
        assert store.apply(parts, plan.rows).ok
        for name, _, hi in parts:
            floors[int(name[2:])] = hi
        # Replaying the same batch is a no-op.
        again = store.apply([(n, -1, hi) for n, _, hi in parts], plan.rows)
        assert not again.ok and again.stale

    got = [store.read_profile(cid, reference.AS_OF_MS) for cid in store.customer_ids()]
    want = reference.build(events, KEY)
    assert reference.mismatches(reference.by_identifiers(p for p in got if p), want) == []
    assert store.customer_count() == len(want)
    # Every identifier resolves to the customer holding it.
    for idents in want:
        (cid,) = {store.resolve(i) for i in idents}
        assert cid is not None and store.members(cid) == set(idents)

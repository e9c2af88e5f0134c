"""The identity graph on real Redis, through the batch script the pipeline uses: canonical
ids are exactly the connected components of a plain graph search whatever the batch
boundaries; merges combine every kind of profile field, deterministically, and are
recorded; guard rails refuse runaway and over-limit links but still count the events;
erasure removes every trace and survives replays."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnicanal.tools.services import LocalRedis
from operators.batch import plan_batch, suppress
from operators.identity import IdentityRules, components_of
from operators.privacy import PiiHasher
from operators.validate import Validator
from schemas.envelope import Accepted
from state.profiles import ProfileStore, connect
from tests import reference

pytestmark = pytest.mark.services
KEY = b"identity-test-key-0123"
V = Validator({"tx": "transaction", "click": "clickstream", "cust": "customer"}, PiiHasher(KEY))
T0 = datetime(2024, 3, 1, tzinfo=UTC)
NO_LIMITS = IdentityRules(
    limits=dict.fromkeys(["loyalty", "account", "email", "device", "cookie"], 99),
    max_component=10**6,
)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    srv = LocalRedis(Path(tmp_path_factory.mktemp("redis-id"))).start(persistence=False)
    yield srv.url
    srv.stop()


def fresh_store(url: str, rules: IdentityRules | None = None) -> ProfileStore:
    r = connect(url)
    r.flushdb()
    return ProfileStore(r, rules=rules)


class Feed:
    """Turns event dicts into decoded events at increasing offsets of one partition and
    applies them in batches, as the sink does (refusals retried unlinked)."""

    def __init__(self, store: ProfileStore, part: str = "p:0") -> None:
        self.store = store
        self.part = part
        self.offset = -1
        self.floor = -1
        self.log: list[dict[str, Any]] = []

    def apply(self, events: list[dict[str, Any]]) -> None:
        batch = []
        for ev in events:
            self.offset += 1
            self.log.append(ev)
            topic = {"sale": "tx", "consent_changed": "cust"}.get(ev["event_type"], "click")
            a = V.decode(topic, 0, self.offset, None, orjson.dumps(ev), 2_000_000_000_000)
            assert isinstance(a, Accepted), a
            batch.append(a)
        split: dict[str, str] = {}
        version, erased = self.store.erased()
        kept, suppressed = suppress(batch, erased)
        for _ in range(3):
            plan = plan_batch(kept, self.store.rules, split)
            res = self.store.apply(
                [(self.part, self.floor, self.offset)],
                plan.rows,
                refusals=plan.refusals,
                erasures=version,
                suppressed=suppressed,
            )
            if res.ok:
                self.floor = self.offset
                return
            assert res.refused, res
            split |= {plan.keys[i]: reason for i, reason in res.refused.items()}
        raise AssertionError("refusals did not settle")


def ev(kind: str, minute: int, customer: dict[str, str], **fields: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "event_type": kind,
        "event_id": f"{kind}-{minute}",
        "event_time": (T0 + timedelta(minutes=minute)).isoformat(),
        "customer": customer,
    }
    if kind == "sale":
        e |= {"channel": "store", "currency": "EUR", "location_id": "S1"}
        e["lines"] = fields.pop("lines", [{"sku": "A", "quantity": 1, "unit_price_minor": 500}])
    elif kind == "consent_changed":
        e["channel"] = "web"
    else:
        e |= {"channel": "web", "session_id": "s"}
    return e | fields


kinds = st.sampled_from(["loyalty", "account", "email", "device", "cookie"])
id_sets = st.dictionaries(kinds, st.sampled_from("123456"), min_size=1, max_size=3)
_FIELD = {
    "loyalty": "loyalty_id",
    "account": "account_id",
    "email": "email",
    "device": "device_id",
    "cookie": "cookie_id",
}


def _customer(ids: dict[str, str]) -> dict[str, str]:
    return {_FIELD[k]: (f"u{v}@x.io" if k == "email" else v) for k, v in ids.items()}


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(id_sets, max_size=40),
    st.lists(st.integers(1, 10), min_size=1, max_size=10),
    st.sets(st.sampled_from(["cookie:2", "device:3"])),
)
def test_canonical_ids_are_the_graph_components_whatever_the_batches(
    redis_url: str, id_sets_: list[dict[str, str]], cuts: list[int], blocked: set[str]
) -> None:
    rules = IdentityRules(blocked=frozenset(blocked), limits=NO_LIMITS.limits, max_component=10**6)
    store = fresh_store(redis_url, rules)
    feed = Feed(store)
    events = [ev("login", i % 50, _customer(ids)) for i, ids in enumerate(id_sets_)]
    i = 0
    for size in [*cuts, len(events)]:  # random batch boundaries
        if events[i : i + size]:
            feed.apply(events[i : i + size])
        i += size
    hasher = PiiHasher(KEY)
    groups = [
        [
            f"email:{hasher.email(f'u{v}@x.io')}" if k == "email" else f"{k}:{v}"
            for k, v in ids.items()
            if f"{k}:{v}" not in blocked
        ]
        for ids in id_sets_
    ]
    want = sorted(map(sorted, components_of(g for g in groups if g)))
    got: dict[str, set[str]] = {}
    for comp in want:
        for ident in comp:
            got.setdefault(store.resolve(ident) or "?", set()).add(ident)
    assert sorted(map(sorted, got.values())) == want
    for cid, idents in got.items():
        assert store.members(cid) == idents
    assert store.stats()["customers"] == len(want)
    for b in blocked:
        assert store.resolve(b) is None


def test_merge_combines_every_field_and_keeps_the_oldest_customer(redis_url: str) -> None:
    store = fresh_store(redis_url)
    feed = Feed(store)
    store_side = {"loyalty_id": "L1"}
    web_side = {"cookie_id": "c1"}
    history = [
        ev(
            "sale",
            1,
            store_side,
            lines=[{"sku": "A", "quantity": 2, "unit_price_minor": 700, "category": "toys"}],
        ),
        ev("product_view", 2, store_side, sku="V", category="toys"),
        ev("consent_changed", 3, store_side, consents={"email": False}),
        ev("add_to_cart", 4, store_side, sku="K", quantity=1),
        ev("product_view", 5, web_side, sku="V", category="home"),  # same SKU, later
        ev("product_view", 6, web_side, sku="W"),
        ev("consent_changed", 3, web_side, consents={"email": True, "sms": True}),
        ev("add_to_cart", 8, web_side, sku="K", quantity=2),
        ev(
            "sale",
            9,
            web_side,
            channel="web",
            lines=[{"sku": "B", "quantity": 1, "unit_price_minor": 300}],
        ),
        ev("add_to_cart", 10, web_side, sku="Z", quantity=1),
    ]
    feed.apply(history[:4])
    feed.apply(history[4:])
    (older,) = {store.resolve("loyalty:L1")}
    (newer,) = {store.resolve("cookie:c1")}
    assert older is not None and newer is not None and older < newer
    # The login links them: one customer, the older id survives, the newer is gone.
    link = ev("login", 11, {"loyalty_id": "L1", "cookie_id": "c1"})
    feed.apply([link])
    assert store.resolve("cookie:c1") == older
    assert store.read_profile(newer) is None and store.members(newer) == set()
    got = reference.by_identifiers([store.read_profile(older, reference.AS_OF_MS) or {}])
    want = reference.build(feed.log, KEY)
    assert reference.mismatches(got, want) == []
    p = store.read_profile(older, reference.AS_OF_MS) or {}
    assert [v["sku"] for v in p["recently_viewed"]] == ["W", "V"]  # V at its later view
    assert p["consents"]["email"]["granted"] is False  # a tie: the withdrawal wins
    assert p["consents"]["sms"]["granted"] is True
    assert p["cart"] == {"Z": 1}  # the web purchase at minute 9 closed the older lines
    (record,) = store.merges(older)
    assert record["survivor"] == older and record["merged"] == newer
    assert record["why"] == "click:0:10 login-11"
    assert store.stats() | {"erased": 0} == {
        "customers": 1,
        "identifiers": 2,
        "merges": 1,
        "refused": 0,
        "suppressed": 0,
        "erased": 0,
    }


def test_same_inputs_same_survivor(redis_url: str) -> None:
    outcomes = []
    for _ in range(2):
        store = fresh_store(redis_url)
        feed = Feed(store)
        feed.apply(
            [
                ev("login", 1, {"cookie_id": "x"}),
                ev("login", 2, {"account_id": "B"}),
                ev("login", 3, {"loyalty_id": "Z"}),
            ]
        )
        feed.apply([ev("login", 4, {"loyalty_id": "Z", "account_id": "B", "cookie_id": "x"})])
        outcomes.append((store.resolve("loyalty:Z"), store.merges(store.resolve("cookie:x") or "")))
    assert outcomes[0][0] == outcomes[1][0] == "C000000000001"
    assert [r["merged"] for r in outcomes[0][1]] == ["C000000000002", "C000000000003"]


def test_blocked_identifier_links_nobody(redis_url: str) -> None:
    store = fresh_store(redis_url, IdentityRules(blocked=frozenset({"card:0000"})))
    feed = Feed(store)
    generic = {"card_token": "0000"}
    feed.apply([ev("sale", 1, {"loyalty_id": "L1"} | generic)])
    feed.apply([ev("sale", 2, {"loyalty_id": "L2"} | generic), ev("sale", 3, generic)])
    a, b = store.resolve("loyalty:L1"), store.resolve("loyalty:L2")
    assert a and b and a != b
    assert store.resolve("card:0000") is None
    assert store.stats()["customers"] == 2  # the card-only sale is anonymous


def test_runaway_and_over_limit_links_are_refused_and_events_still_count(
    redis_url: str,
) -> None:
    store = fresh_store(redis_url, IdentityRules(max_component=4))
    feed = Feed(store)
    # A shared kiosk device seen with five accounts in one batch: a runaway component.
    kiosk = [
        ev("product_view", i, {"account_id": f"A{i}", "device_id": "kiosk"}, sku="S")
        for i in range(5)
    ]
    feed.apply(kiosk)
    owners = {store.resolve(f"account:A{i}") for i in range(5)}
    assert len(owners) == 5 and None not in owners
    assert store.resolve("device:kiosk") is None
    for cid in owners:
        p = store.read_profile(cid or "") or {}
        assert p["channels"]["web"]["events"] == 1  # each account still got its view
    # Redis-side: the second loyalty card of an existing customer would break the limit.
    feed.apply([ev("sale", 10, {"loyalty_id": "L1", "account_id": "A0"})])
    feed.apply([ev("sale", 11, {"loyalty_id": "L2", "account_id": "A0"})])
    first = store.resolve("account:A0")
    assert store.resolve("loyalty:L1") == first
    second = store.resolve("loyalty:L2")
    assert second and second != first
    assert (store.read_profile(second) or {})["orders"] == 1  # counted, unlinked
    # Redis-side runaway: a stored customer with 3 identifiers would reach 5 (> 4).
    feed.apply([ev("login", 20, {"account_id": "R", "cookie_id": "r1", "device_id": "d1"})])
    feed.apply([ev("login", 21, {"account_id": "R", "cookie_id": "r2", "device_id": "d2"})])
    r = store.resolve("account:R")
    assert r and store.members(r) == {"account:R", "cookie:r1", "device:d1"}
    assert (store.read_profile(r) or {})["channels"]["web"]["events"] == 2
    reasons = sorted(r["reason"] for r in store.refusals())
    assert reasons == ["limit:loyalty", "runaway", "runaway"]
    assert store.stats()["refused"] == 3


def test_erasure_removes_every_trace_and_survives_a_replay(redis_url: str) -> None:
    store = fresh_store(redis_url)
    feed = Feed(store)
    ana = {"loyalty_id": "L7", "email": "ana@example.com"}
    history = [
        ev("product_view", 1, {"cookie_id": "c7"}, sku="S", category="toys"),
        ev("login", 2, {"cookie_id": "c7", "account_id": "A7"}),
        ev("sale", 3, ana),
        ev("sale", 4, ana | {"account_id": "A7"}),  # merges the web and store customers
        ev("sale", 5, {"loyalty_id": "L8"}),  # somebody else
    ]
    feed.apply(history[:3])
    feed.apply(history[3:])
    cid = store.resolve("loyalty:L7")
    assert cid and store.merges(cid)
    assert store.erase(cid, now_ms=int((T0 + timedelta(minutes=20)).timestamp() * 1000)) == 4

    left = {k.decode() if isinstance(k, bytes) else k for k in store.r.keys("*")}
    assert not [k for k in left if cid in k]
    assert store.resolve("cookie:c7") is None and store.resolve("account:A7") is None
    ana_hash = PiiHasher(KEY).email("ana@example.com")
    assert set(store.erased()[1]) == {"loyalty:L7", "account:A7", "cookie:c7", f"email:{ana_hash}"}
    other = store.resolve("loyalty:L8")
    assert other and (store.read_profile(other) or {})["orders"] == 1

    # The same events again at new offsets (a channel re-sending its history, state
    # rebuilt from the topics) bring nobody back.
    replay = Feed(store, part="p:1")
    replay.apply(history[:4])
    assert store.resolve("loyalty:L7") is None and store.resolve("cookie:c7") is None
    assert store.stats()["suppressed"] == 4
    assert store.stats()["customers"] == 1
    # An event after the erasure is a new customer with nothing of the old one.
    replay.apply([ev("sale", 30, {"loyalty_id": "L7"})])
    back = store.resolve("loyalty:L7")
    assert back and back != cid
    assert (store.read_profile(back) or {})["orders"] == 1


def test_late_events_count_as_if_they_had_arrived_in_order(redis_url: str) -> None:
    who = {"loyalty_id": "L5"}
    in_order = [
        ev("consent_changed", 1, who, consents={"sms": True}),
        ev("sale", 2, who),
        ev("add_to_cart", 3, who, channel="web", sku="K", quantity=1),
        ev("consent_changed", 4, who, consents={"sms": False}),
        ev("sale", 5, who, channel="web"),  # closes the cart
        ev("product_view", 6, who, sku="V"),
    ]
    outcomes = []
    for order in (in_order, in_order[::-1]):  # everything late, one batch each
        store = fresh_store(redis_url)
        feed = Feed(store)
        for e in order:
            feed.apply([e])
        outcomes.append(store.read_profile(store.resolve("loyalty:L5") or "", reference.AS_OF_MS))
    assert outcomes[0] == outcomes[1]
    p = outcomes[0] or {}
    assert p["consents"]["sms"]["granted"] is False and p["cart"] == {}
    assert p["first_seen"] == (T0 + timedelta(minutes=1)).isoformat()
    assert p["channels"]["web"]["last_order"] == (T0 + timedelta(minutes=5)).isoformat()

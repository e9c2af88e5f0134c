"""Identity scenarios end to end: events produced to the real broker, the pipeline run to the
end of its input, the customers read back from the real Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from monitoring import metrics as m
from omnicanal.config import Settings
from omnicanal.tools.demo import events_from_jsonl, produce
from omnicanal.tools.services import LocalKafka, LocalRedis
from operators.preferences import learns
from operators.privacy import PiiHasher
from state.profiles import ProfileStore
from tests import reference
from tests.conftest import TEST_PII_KEY, make_settings
from tests.test_pipeline_e2e import profiles, redis_dump, run_to_end, store_of

pytestmark = pytest.mark.services
T0 = datetime(2024, 6, 1, 9, tzinfo=UTC)
HASH_KEY = TEST_PII_KEY.encode()
HASH = PiiHasher(HASH_KEY)


def at(minute: int) -> str:
    return (T0 + timedelta(minutes=minute)).isoformat()


def _ms(minute: int) -> int:
    return int((T0 + timedelta(minutes=minute)).timestamp() * 1000)


def click(kind: str, minute: int, customer: dict[str, str], **fields: Any) -> dict[str, Any]:
    return {"event_type": kind, "event_id": f"c{minute}-{kind}", "event_time": at(minute),
            "channel": "web", "session_id": "s1", "customer": customer} | fields  # fmt: skip


def sale(
    minute: int, customer: dict[str, str], channel: str = "store", **fields: Any
) -> dict[str, Any]:
    return {
        "event_type": "sale",
        "event_id": f"t{minute}",
        "event_time": at(minute),
        "channel": channel,
        "currency": "EUR",
        "location_id": "store-7",
        "customer": customer,
        "lines": [{"sku": "MUG", "quantity": 1, "unit_price_minor": 800, "category": "home"}],
    } | fields


def send(settings: Settings, events: list[dict[str, Any]]) -> None:
    n, _, _ = produce(settings, events_from_jsonl(orjson.dumps(e) for e in events))
    assert n == len(events)


def customer(store: ProfileStore, identifier: str) -> dict[str, Any]:
    cid = store.resolve(identifier)
    assert cid is not None, identifier
    p = store.read_profile(cid, reference.AS_OF_MS)
    assert p is not None
    return p


def test_anonymous_browsing_then_login_then_store_purchase_is_one_customer(
    settings: Settings,
) -> None:
    cookie = {"cookie_id": "ck-1"}
    events = [
        click("product_view", 0, cookie, sku="LAMP", category="home"),
        click("add_to_cart", 1, cookie, sku="LAMP", quantity=1),
        click("login", 2, cookie | {"account_id": "A1", "email": "Ana@Example.com"}),
        click("product_view", 3, {"account_id": "A1"}, sku="RUG"),
        sale(30, {"loyalty_id": "L1", "email": "ana@example.com"}),  # receipt by email
    ]
    send(settings, events)
    run_to_end(settings)
    store = store_of(settings)
    p = customer(store, "loyalty:L1")
    email = "email:" + HASH.email("ana@example.com")
    assert p["identifiers"] == sorted(["account:A1", "cookie:ck-1", email, "loyalty:L1"])
    for ident in ("cookie:ck-1", "account:A1", email):
        assert store.resolve(ident) == p["customer_id"]
    assert [v["sku"] for v in p["recently_viewed"]] == ["RUG", "LAMP"]
    assert p["cart"] == {"LAMP": 1}  # a store purchase does not close the web cart
    assert p["channels"]["store"]["orders"] == 1 and p["home_store"] == "store-7"
    assert set(p["channels"]) == {"web", "store"}
    assert store.stats()["customers"] == 1
    assert reference.mismatches(profiles(settings), reference.build(events, HASH_KEY)) == []


def test_two_known_customers_merge_and_a_replay_changes_nothing(
    kafka: LocalKafka, redis_server: LocalRedis, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = make_settings(kafka, redis_server.url)
    store_history = [sale(i, {"loyalty_id": "L2"}) for i in range(3)]
    # a web basket the next-basket model learns from (a stable share of them is)
    cup = next(f"CUP{i}" for i in range(1000) if learns((_ms(6), [f"CUP{i}"])))
    # each returns something: what both returned is the merged customer's (never suggested)
    store_history.append(sale(3, {"loyalty_id": "L2"}, event_type="return"))
    web_history = [
        click("login", 5, {"account_id": "A2", "cookie_id": "ck-2"}),
        sale(6, {"account_id": "A2"}, channel="web",
             lines=[{"sku": cup, "quantity": 1, "unit_price_minor": 900}]),
        sale(8, {"account_id": "A2"}, channel="web", event_type="return",
             lines=[{"sku": "LAMP", "quantity": 1, "unit_price_minor": 2000}]),
        {"event_type": "consent_changed", "event_id": "k1", "event_time": at(7),
         "channel": "web", "customer": {"account_id": "A2"}, "consents": {"sms": True}},
    ]  # fmt: skip
    send(settings, store_history + web_history)
    run_to_end(settings)
    store = store_of(settings)
    assert store.stats()["customers"] == 2
    older, newer = sorted({store.resolve("loyalty:L2"), store.resolve("account:A2")})  # type: ignore[type-var]
    merges_before = m.counter_total(m.IDENTITY_MERGES)

    # The customer shows the loyalty card at a web checkout: the same person.
    link = sale(60, {"loyalty_id": "L2", "account_id": "A2"}, channel="web")
    send(settings, [link])
    run_to_end(settings)
    p = customer(store, "cookie:ck-2")
    assert p["customer_id"] == older and store.read_profile(newer or "") is None
    assert p["orders"] == 5 and p["channels"]["store"]["orders"] == 3
    assert p["consents"]["sms"]["granted"] is True
    assert store.returned(older or "") == {"MUG": _ms(3), "LAMP": _ms(8)}
    assert store.returned(newer or "") == {}
    # every sale's basket, from both sides, is the survivor's history, and the baskets it has
    # to learn from count for it (the loser had some of them)
    kept = store.baskets(older or "")
    assert len(kept) == 5  # three in the store, one online, the linking one
    assert store.baskets(newer or "") == []
    due = store.r.zscore(settings.redis_prefix + "pf:due", older or "") or 0
    assert due == sum(b["to_learn"] for b in kept) == 1  # the web basket
    assert store.r.zscore(settings.redis_prefix + "pf:due", newer or "") is None
    (record,) = store.merges(older or "")
    assert record["merged"] == newer and record["why"].endswith(" t60")
    assert m.counter_total(m.IDENTITY_MERGES) - merges_before == 1
    everything = store_history + web_history + [link]
    assert reference.mismatches(profiles(settings), reference.build(everything, HASH_KEY)) == []

    # Replaying the whole topics changes nothing (offsets fence the merge too) ...
    before = redis_dump(settings, wall_clock=False)
    run_to_end(settings, resume_from="earliest")
    assert redis_dump(settings, wall_clock=False) == before
    # ... and rebuilding from nothing, where the merge happens inside one replayed batch,
    # gives the same customers and profiles as the incremental run.
    incremental = profiles(settings)
    fresh = LocalRedis(tmp_path_factory.mktemp("redis-rebuild")).start(persistence=False)
    try:
        rebuilt = settings.model_copy(update={"redis_url": fresh.url, "group_id": "rebuild"})
        run_to_end(rebuilt)
        assert profiles(rebuilt) == incremental
    finally:
        fresh.stop()


def test_blocked_identifiers_and_runaway_components_link_nobody(
    kafka: LocalKafka, redis_server: LocalRedis
) -> None:
    settings = make_settings(
        kafka,
        redis_server.url,
        identity_blocked=["card:0000", "email:test@shop.com"],
        identity_max_component=6,
    )
    generic = {"card_token": "0000", "email": "TEST@shop.com"}
    shared_tablet = {"device_id": "store-tablet"}
    events = [sale(i, {"loyalty_id": f"L{i}"} | generic) for i in range(3)]
    events += [click("login", 10 + i, {"account_id": f"A{i}"} | shared_tablet) for i in range(8)]
    refusals_before = m.counter_total(m.IDENTITY_REFUSALS)
    send(settings, events)
    run_to_end(settings)
    store = store_of(settings)
    ids = [store.resolve(f"loyalty:L{i}") for i in range(3)]
    assert None not in ids and len(set(ids)) == 3  # the generic card and email link nobody
    assert store.resolve("card:0000") is None
    assert store.resolve("email:" + HASH.email("test@shop.com")) is None
    accounts = {store.resolve(f"account:A{i}") for i in range(8)}
    assert len(accounts) == 8 and None not in accounts  # the tablet did not merge them
    for a in range(8):
        assert customer(store, f"account:A{a}")["channels"]["web"]["events"] == 1
    # Whatever the batch boundaries: the tablet joins at most the one account it was first
    # seen alone with; the rest is refused as a runaway component (all in one batch) or as
    # over the one-account limit (against a customer stored by an earlier batch).
    tablet_owner = store.resolve("device:store-tablet")
    if tablet_owner is not None:
        assert len([i for i in store.members(tablet_owner) if i.startswith("account:")]) == 1
    refused = store.stats()["refused"]
    assert refused >= 1
    assert {r["reason"] for r in store.refusals()} <= {"runaway", "limit:account"}
    assert m.counter_total(m.IDENTITY_REFUSALS) - refusals_before == refused


def test_erasure_then_replay_of_old_events_leaves_no_trace(settings: Settings) -> None:
    ana = {"loyalty_id": "L9", "email": "ana9@example.com"}
    events = [
        click("product_view", 0, {"cookie_id": "ck-9"}, sku="LAMP"),
        click("login", 1, {"cookie_id": "ck-9", "account_id": "A9", "email": "ana9@example.com"}),
        sale(2, ana),
        sale(3, {"loyalty_id": "L10"}),  # somebody else
    ]
    send(settings, events)
    run_to_end(settings)
    store = store_of(settings)
    cid = store.resolve("loyalty:L9")
    assert cid is not None
    assert store.erase(cid) == 4
    suppressed_before = m.counter_total(m.SUPPRESSED_EVENTS)

    # A channel re-exports its history (the same events with new ids, at new offsets: the
    # same ids would simply be dropped as duplicates).
    send(settings, [e | {"event_id": e["event_id"] + "-again"} for e in events[:3]])
    run_to_end(settings)
    dump = redis_dump(settings)
    tombstones = dump.pop(b"oc:erased")
    assert dump.pop(b"oc:erasures")  # the record of the erasure: customer id and time
    email = HASH.email("ana9@example.com")
    assert {k.decode() for k in tombstones} == {
        "loyalty:L9", "account:A9", "cookie:ck-9", f"email:{email}"
    }  # fmt: skip
    everything_else = repr(dump)
    for trace in ("L9", "A9", "ck-9", email, cid):
        assert trace not in everything_else, trace
    assert store.resolve("loyalty:L9") is None and store.resolve("cookie:ck-9") is None
    assert m.counter_total(m.SUPPRESSED_EVENTS) - suppressed_before == 3
    assert store.stats()["customers"] == 1
    assert customer(store, "loyalty:L10")["orders"] == 1

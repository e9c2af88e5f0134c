"""Edge validation: every reason code, hostile inputs, and PII never kept in clear."""

from __future__ import annotations

import base64
import time
from typing import Any

import msgspec
import orjson
import pytest

from operators.privacy import PiiHasher
from operators.validate import Accepted, Rejected, Validator
from schemas.deadletter import REASONS, DeadLetter

TOPICS = {
    "tx": "transaction",
    "click": "clickstream",
    "inv": "inventory",
    "ofb": "offer_feedback",
    "cust": "customer",
}
NOW = int(time.time() * 1000)
HASHER = PiiHasher(b"unit-test-key-0123456789")
V = Validator(TOPICS, HASHER)


def sale(**kw: object) -> dict[str, object]:
    ev: dict[str, object] = {
        "event_type": "sale",
        "event_id": "e-1",
        "event_time": "2024-05-01T10:00:00+02:00",
        "channel": "store",
        "currency": "EUR",
        "customer": {
            "loyalty_id": "L1",
            "email": "Ana.Lopez@Example.com",
            "phone": "+34 600 123 456",
        },
        "lines": [{"sku": "A1", "quantity": 2, "unit_price_minor": 1999}],
    }
    ev.update(kw)
    return ev


def decode(raw: bytes, topic: str = "tx") -> Accepted | Rejected:
    return V.decode(topic, 2, 41, b"k", raw, NOW, 1714550400000)


def reason(raw: bytes, topic: str = "tx") -> str | None:
    r = decode(raw, topic)
    return r.reason if isinstance(r, Rejected) else None


def test_valid_sale_is_accepted_with_hashed_identifiers() -> None:
    r = decode(orjson.dumps(sale()))
    assert isinstance(r, Accepted)
    assert (r.event_type, r.channel, r.customer, r.partition, r.offset) == (
        "sale",
        "store",
        "loyalty:L1",
        2,
        41,
    )
    assert r.ts_ms == 1714550400000
    assert r.ids["email"] == HASHER.email("ana.lopez@example.com")
    assert r.ids["phone"] == HASHER.phone("+34600123456")
    assert "Ana" not in repr(r.ids) and "600" not in repr(r.ids)


def test_email_is_the_key_when_no_loyalty_or_account() -> None:
    ev = sale(customer={"email": "x@y.org", "cookie_id": "c1"})
    r = decode(orjson.dumps(ev))
    assert isinstance(r, Accepted) and r.customer == "email:" + HASHER.email("x@y.org")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", "malformed_json"),
        (b'{"event_type":"sale",', "malformed_json"),
        (orjson.dumps(sale())[:-1] + b',"x":NaN}', "malformed_json"),
        (orjson.dumps(sale()).replace(b'"quantity":2', b'"quantity":NaN'), "malformed_json"),
        (orjson.dumps(sale()).replace(b'"quantity":2', b'"quantity":Infinity'), "malformed_json"),
        (orjson.dumps(sale()).replace(b'"e-1"', b'"e-\xff"'), "invalid_utf8"),
        (b"\xc3\x28" + orjson.dumps(sale()), "invalid_utf8"),
        (orjson.dumps(sale()).replace(b'"quantity":2', b'"quantity":' + b"9" * 5000), "wrong_type"),
        (orjson.dumps(sale()).replace(b'"quantity":2', b'"quantity":1e400'), "wrong_type"),
        (orjson.dumps(sale()).replace(b'"quantity":2', b'"quantity":"2"'), "wrong_type"),
        (orjson.dumps(sale()).replace(b'"quantity":2', b'"quantity":2.5'), "wrong_type"),
        (orjson.dumps(sale()).replace(b'"quantity":2', b'"quantity":true'), "wrong_type"),
        (orjson.dumps(sale(order_id=None)), "wrong_type"),
        (orjson.dumps(sale(lines=[[[[[[]]]]]])), "wrong_type"),
        (
            orjson.dumps(sale())[:-1] + b',"coupon_codes":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
            "too_large",
        ),
        (
            orjson.dumps(sale())[:-1] + b',"coupon_codes":' + b"[" * 10_000 + b"]" * 10_000 + b"}",
            "wrong_type",
        ),
        (b"[" * 30_000 + b"]" * 30_000, "not_an_object"),
        (orjson.dumps(sale())[:-1] + b',"event_id":"e-2"}', "duplicate_key"),
        (orjson.dumps(sale()).replace(b'"sku":"A1"', b'"sku":"A1","sku":"B2"'), "duplicate_key"),
        (orjson.dumps(sale())[:-1] + b',"event_id":"e\\u0032"}', "duplicate_key"),
        (orjson.dumps({k: v for k, v in sale().items() if k != "currency"}), "missing_field"),
        (orjson.dumps(sale(colour="red")), "unknown_field"),
        (orjson.dumps(sale(event_type="teleport")), "unknown_event_type"),
        (
            orjson.dumps({k: v for k, v in sale().items() if k != "event_type"}),
            "unknown_event_type",
        ),
        (orjson.dumps(sale(currency="eur")), "invalid_value"),
        (orjson.dumps(sale(channel="fax")), "invalid_value"),
        (orjson.dumps(sale(lines=[])), "invalid_value"),
        (
            orjson.dumps(sale(lines=[{"sku": "A", "quantity": 0, "unit_price_minor": 1}])),
            "invalid_value",
        ),
        (
            orjson.dumps(sale(lines=[{"sku": "A", "quantity": 1, "unit_price_minor": -5}])),
            "invalid_value",
        ),
        (
            orjson.dumps(
                sale(
                    lines=[{"sku": "A", "quantity": 1, "unit_price_minor": 5, "discount_minor": 6}]
                )
            ),
            "invalid_value",
        ),
        (orjson.dumps(sale(customer={"email": "not-an-email"})), "invalid_value"),
        (
            orjson.dumps(
                sale(lines=[{"sku": "S", "quantity": 100_000, "unit_price_minor": 10**10}])
            ),
            "invalid_value",
        ),
        (orjson.dumps(sale(event_time="2024-05-01T10:00:00")), "invalid_value"),
        (orjson.dumps(sale(event_time="1999-12-31T23:59:59Z")), "timestamp_out_of_range"),
        (orjson.dumps(sale(event_time="2999-01-01T00:00:00Z")), "timestamp_out_of_range"),
        (b"[1,2,3]", "not_an_object"),
        (b'"just a string"', "not_an_object"),
        (b"x" * 70_000, "too_large"),
    ],
)
def test_bad_input_gets_its_reason(raw: bytes, expected: str) -> None:
    assert expected in REASONS
    assert reason(raw) == expected


def test_valid_event_of_another_contract_is_wrong_topic() -> None:
    assert reason(orjson.dumps(sale()), topic="click") == "wrong_topic"


def test_escaped_strings_without_duplicates_are_accepted() -> None:
    ev = sale(order_id='say "hi" \\ there \u00e9')
    assert isinstance(decode(orjson.dumps(ev)), Accepted)
    raw = orjson.dumps(sale()).replace(b'"e-1"', b'"e\\u002d1"')
    assert isinstance(decode(raw), Accepted)


def test_every_event_type_of_every_contract_round_trips() -> None:
    base = {"event_id": "e", "event_time": "2024-05-01T10:00:00Z"}
    click = base | {"channel": "web", "session_id": "s"}
    ofb = base | {"offer_id": "o", "channel": "sms", "customer": {"loyalty_id": "L"}}
    cases: dict[str, list[dict[str, Any]]] = {
        "tx": [sale(), sale(event_type="return", original_order_id="o1")],
        "click": [
            click | {"event_type": "page_view", "url": "/"},
            click | {"event_type": "product_view", "sku": "A"},
            click | {"event_type": "search", "query": "mug"},
            click | {"event_type": "add_to_cart", "sku": "A", "quantity": 1},
            click | {"event_type": "remove_from_cart", "sku": "A", "quantity": 1},
            click | {"event_type": "checkout_started"},
            click | {"event_type": "login", "customer": {"account_id": "A1"}},
        ],
        "inv": [
            base | {"event_type": "stock_snapshot", "sku": "A", "location_id": "s1", "on_hand": 3},
            base
            | {
                "event_type": "stock_adjustment",
                "sku": "A",
                "location_id": "s1",
                "delta": -2,
                "reason": "damage",
            },
            base
            | {
                "event_type": "price_update",
                "sku": "A",
                "channel": "web",
                "price_minor": 999,
                "currency": "GBP",
            },
        ],
        "ofb": [
            ofb | {"event_type": t}
            for t in (
                "offer_delivered",
                "offer_opened",
                "offer_clicked",
                "offer_redeemed",
                "offer_dismissed",
            )
        ],
    }
    for topic, events in cases.items():
        for ev in events:
            r = decode(orjson.dumps(ev), topic)
            assert isinstance(r, Accepted), (ev, r)
            assert r.event_type == ev["event_type"]


def test_dead_letter_record_is_complete_and_scrubbed() -> None:
    raw = orjson.dumps(sale(colour="red"))
    r = decode(raw)
    assert isinstance(r, Rejected)
    dl = msgspec.json.decode(r.record, type=DeadLetter)
    assert dl.reason == "unknown_field" and "colour" in dl.message
    assert (dl.source.topic, dl.source.partition, dl.source.offset) == ("tx", 2, 41)
    assert base64.b64decode(dl.source.key_b64 or "") == b"k"
    assert dl.source.timestamp_ms == 1714550400000
    assert dl.payload_size == len(raw) and dl.step == "validate" and dl.event_type == "sale"
    kept = orjson.loads(base64.b64decode(dl.payload_b64))
    assert dl.payload_scrubbed is True
    assert kept["customer"]["email"] == "hmac:" + HASHER.email("Ana.Lopez@Example.com")
    assert kept["customer"]["phone"] == "hmac:" + HASHER.phone("+34 600 123 456")
    assert kept["colour"] == "red" and kept["lines"] == sale()["lines"]
    assert r.dlq_key == b"tx:2:41"


def test_dead_letter_keeps_original_bytes_when_there_is_no_pii() -> None:
    raw = orjson.dumps(sale(customer={"loyalty_id": "L1"}, colour="red"))
    r = decode(raw)
    assert isinstance(r, Rejected)
    dl = msgspec.json.decode(r.record, type=DeadLetter)
    assert base64.b64decode(dl.payload_b64) == raw and dl.payload_scrubbed is False


@pytest.mark.parametrize(
    "raw",
    [
        orjson.dumps(sale())[:-20],  # truncated JSON with an email inside
        orjson.dumps(sale()).replace(b'"e-1"', b'"e-\xff"'),  # invalid UTF-8
        orjson.dumps(sale())[:-1] + b',"pad":"' + b"x" * 70_000 + b'"}',  # too large
        orjson.dumps(sale(note="write to ana.lopez@example.com")),  # email in free text
        orjson.dumps(sale(event_time="1990-01-01T00:00:00Z")),
    ],
)
def test_raw_email_and_phone_never_reach_the_dead_letter(raw: bytes) -> None:
    r = decode(raw)
    assert isinstance(r, Rejected)
    record = r.record.lower()
    payload = base64.b64decode(orjson.loads(r.record)["payload_b64"]).lower()
    for blob in (record, payload):
        assert b"ana.lopez@example.com" not in blob
        assert b"600 123 456" not in blob


def test_hostile_inputs_stay_cheap() -> None:
    # A 5000-digit number and deep nesting must not blow the stack or hang (not a timing
    # assertion: it must simply return a rejection).
    for raw in (b"[" * 200_000, b'{"a":' * 20_000, b"9" * 60_000):
        assert isinstance(decode(raw), Rejected)


def test_validator_refuses_unknown_contract_names() -> None:
    with pytest.raises(ValueError, match="unknown contracts"):
        Validator({"t": "telepathy"}, HASHER)


def test_consent_change_must_set_a_purpose_and_names_the_customer() -> None:
    base = {
        "event_type": "consent_changed",
        "event_id": "k1",
        "event_time": "2024-05-01T10:00:00Z",
        "channel": "email",
        "customer": {"email": "ana@example.com"},
    }
    ok = decode(orjson.dumps(base | {"consents": {"email": False}}), "cust")
    assert isinstance(ok, Accepted) and ok.ids == {"email": HASHER.email("ana@example.com")}
    assert reason(orjson.dumps(base | {"consents": {}}), "cust") == "missing_field"
    assert reason(orjson.dumps(base | {"consents": {"fax": True}}), "cust") == "unknown_field"
    no_customer = {k: v for k, v in base.items() if k != "customer"} | {"consents": {"sms": True}}
    assert reason(orjson.dumps(no_customer), "cust") == "missing_field"
    # A valid customer event on another topic is a wrong-topic dead letter.
    assert reason(orjson.dumps(base | {"consents": {"sms": True}}), "click") == "wrong_topic"

"""Edge validation: every reason code, hostile inputs, and PII never kept in clear."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.privacy import PiiHasher
from operators.validate import Validator
from schemas.deadletter import REASONS, DeadLetter
from schemas.envelope import Accepted, Rejected

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
            orjson.dumps(sale())[:-1]
            + b',"coupon_codes":'
            + b"[" * 150_000
            + b"]" * 150_000
            + b"}",
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
        (b"x" * 270_000, "too_large"),
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
        orjson.dumps(sale())[:-1] + b',"pad":"' + b"x" * 270_000 + b'"}',  # too large
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


def test_a_consents_time_zone_must_be_a_real_one() -> None:
    base = {"event_type": "consent_changed", "event_id": "k2",
            "event_time": "2024-05-01T10:00:00Z", "channel": "app",
            "customer": {"account_id": "A1"}, "consents": {"push": True}}  # fmt: skip
    ok = decode(orjson.dumps(base | {"time_zone": "Asia/Tokyo"}), "cust")
    assert isinstance(ok, Accepted) and ok.event.time_zone == "Asia/Tokyo"  # type: ignore[union-attr]
    for bad, why in (("Mars/Olympus", "invalid_value"), ("../../etc/passwd", "invalid_value"),
                     ("", "invalid_value"), ("x" * 65, "invalid_value")):  # fmt: skip
        assert reason(orjson.dumps(base | {"time_zone": bad}), "cust") == why, bad


def test_a_category_holding_an_email_or_a_phone_number_is_refused_never_kept() -> None:
    """Categories are kept in clear (profiles, stock, the cross-sell counts every customer
    shares): personal data there is refused, and the dead letter does not repeat it."""
    line = {"sku": "A1", "quantity": 1, "unit_price_minor": 100}
    ok = decode(orjson.dumps(sale(lines=[line | {"category": "garden tools 2024"}])))
    assert isinstance(ok, Accepted)
    for bad in ("ana.lopez@example.com", "call +44 7700 900123", "447700900123"):
        r = decode(orjson.dumps(sale(lines=[line, line | {"sku": "B", "category": bad}])))
        assert isinstance(r, Rejected) and r.reason == "invalid_value", bad
        assert b"lines[1].category" in r.record and bad.encode() not in r.record
    view = {"event_type": "product_view", "event_id": "v1", "event_time": "2024-05-01T10:00:00Z",
            "channel": "web", "session_id": "s", "sku": "A1",
            "category": "ana@example.com"}  # fmt: skip
    assert reason(orjson.dumps(view), "click") == "invalid_value"
    assert isinstance(decode(orjson.dumps(view | {"category": "toys"}), "click"), Accepted)


def test_an_identifier_holding_an_email_or_a_phone_number_is_refused_never_kept() -> None:
    """Identifiers are kept in clear (identity links, stock, the coupon ledger, cross-sell
    counts): an email or an international phone number in one is refused, not echoed, in
    every identifier field; EAN codes and plain numbers are not mistaken for phones."""
    line = {"sku": "4006381333931", "quantity": 1, "unit_price_minor": 100}
    base = sale(lines=[line]) | {"location_id": "store-7", "order_id": "10023456789012"}
    base["customer"] = {"loyalty_id": "9900123456", "card_token": "tok+1", "email": EMAIL}
    assert isinstance(decode(orjson.dumps(base)), Accepted)
    for bad in ("ana.lopez@example.com", "+44 7700 900123"):
        cases = {
            "location_id": base | {"location_id": bad},
            "order_id": base | {"order_id": bad},
            "event_id": base | {"event_id": bad},
            "customer.loyalty_id": base | {"customer": {"loyalty_id": bad}},
            "customer.cookie_id": base | {"customer": {"cookie_id": "c", "device_id": bad}},
            "lines[1].sku": base | {"lines": [line, line | {"sku": bad}]},
        }
        cases["customer.device_id"] = cases.pop("customer.cookie_id")
        for where, ev in cases.items():
            r = decode(orjson.dumps(ev))
            assert isinstance(r, Rejected) and r.reason == "invalid_value", (where, bad)
            assert where.encode() in r.record and bad.encode() not in r.record, (where, bad)
    view = {"event_type": "product_view", "event_id": "v2", "event_time": "2024-05-01T10:00:00Z",
            "channel": "web", "session_id": "s", "sku": "A1"}  # fmt: skip
    assert isinstance(decode(orjson.dumps(view), "click"), Accepted)
    for field in ("session_id", "sku"):
        assert reason(orjson.dumps(view | {field: EMAIL}), "click") == "invalid_value", field
    # with a customer email beside it (whose "@" alone lets the check be skipped)
    known = view | {"customer": {"email": EMAIL}}
    assert isinstance(decode(orjson.dumps(known), "click"), Accepted)
    for field in ("session_id", "sku", "event_id"):
        for bad in ("x@y.org", "+44 7700 900123"):
            r = decode(orjson.dumps(known | {field: bad}), "click")
            assert isinstance(r, Rejected) and r.reason == "invalid_value", (field, bad)
    # an "@" or a "+" written as a JSON escape is the same character
    escaped = orjson.dumps(view).replace(b'"sku":"A1"', b'"sku":"ana\\u0040example.com"')
    assert b"@" not in escaped and reason(escaped, "click") == "invalid_value"
    escaped = orjson.dumps(view).replace(b'"sku":"A1"', b'"sku":"\\u002b34 612 345 678"')
    assert b"+" not in escaped and reason(escaped, "click") == "invalid_value"


# ------------------------------------------------------------------ hostile input (issue 12)
EMAIL = "ana.lopez@example.com"
PHONE_DIGITS = "447700900123"


def record_and_payload(r: Accepted | Rejected) -> tuple[dict[str, Any], bytes]:
    assert isinstance(r, Rejected), r
    rec = orjson.loads(r.record)
    return rec, base64.b64decode(rec["payload_b64"])


def assert_no_pii(r: Accepted | Rejected, *secrets: str) -> None:
    rec, payload = record_and_payload(r)
    key = base64.b64decode(rec["source"].get("key_b64") or "")
    for blob in (r.record, payload, key):
        low = blob.lower()
        for s in secrets:
            assert s.lower().encode() not in low, (s, blob[:300])


@pytest.mark.parametrize("depth", [400, 500, 700, 950, 2000, 10_000])
def test_deeply_nested_payloads_are_dead_lettered_not_raised(depth: int) -> None:
    # 500-950 levels once escaped the parse guard through recursive scrubbing.
    raw = orjson.dumps(sale())[:-1] + b',"x":' + b"[" * depth + b"1" + b"]" * depth + b"}"
    r = decode(raw)
    assert isinstance(r, Rejected) and r.reason in ("wrong_type", "unknown_field")
    assert_no_pii(r, "Ana.Lopez@Example.com", "600 123 456")


@pytest.mark.parametrize("size", [800_000, 1_000_000])
def test_huge_payloads_make_dead_letters_that_fit_the_broker(size: int) -> None:
    raw = orjson.dumps(sale())[:-1] + b',"pad":"' + b"x" * size + b'"}'
    r = decode(raw)
    rec, payload = record_and_payload(r)
    assert rec["reason"] == "too_large" and rec["payload_size"] == len(raw)
    assert rec["payload_truncated"] is True and len(payload) == 64 * 1024
    assert len(r.record) < 100_000  # librdkafka's default message.max.bytes is 1,000,000
    assert_no_pii(r, "Ana.Lopez@Example.com", "600 123 456")
    # The hash covers the whole scrubbed payload, not the kept part.
    assert len(rec["payload_sha256"]) == 64
    assert rec["payload_sha256"] == hashlib.sha256(HASHER.scrub_payload(raw)).hexdigest()


def test_payload_hash_is_the_originals_when_nothing_was_scrubbed() -> None:
    raw = orjson.dumps(sale(customer={"loyalty_id": "L1"}, colour="red"))
    rec, payload = record_and_payload(decode(raw))
    assert payload == raw and rec["payload_sha256"] == hashlib.sha256(raw).hexdigest()
    assert "payload_truncated" not in rec  # false: left out, like every default


@pytest.mark.parametrize(
    "raw",
    [
        # a phone given as a JSON number, in a field named for it
        orjson.dumps(sale(customer={"loyalty_id": "L1", "phone": int(PHONE_DIGITS)})),
        # emails inside lists, and as an object key
        orjson.dumps(sale(note=["x", [EMAIL]], tags={EMAIL: 1})),
        # a phone with spaces in free text
        orjson.dumps(sale(note="call me on +44 7700 900123 after 6")),
        # an email hidden behind a JSON escape
        orjson.dumps(sale(colour="red"))[:-1] + b',"n":"ana.lopez\\u0040example.com"}',
        # odd field names, nested, any type
        orjson.dumps(sale(contact={"mobileNumber": [447700900123], "E-Mail": {"a": EMAIL}})),
        # personal data as the event type (it is echoed in the error message otherwise)
        orjson.dumps(sale(event_type=EMAIL)),
        orjson.dumps(sale(event_type="+44 7700 900123")),
        # broken JSON around both
        b'{"event_type":"sale","phone":447700900123,"note":"' + EMAIL.encode() + b'"',
    ],
)
def test_personal_data_in_odd_places_never_reaches_the_dead_letter(raw: bytes) -> None:
    r = V.decode("tx", 0, 1, EMAIL.encode(), raw, NOW, 1714550400000)
    assert_no_pii(r, EMAIL, "7700 900123", PHONE_DIGITS, "ana.lopez\\u0040example.com")


def test_a_kafka_key_that_is_a_phone_or_holds_an_email_is_scrubbed() -> None:
    raw = orjson.dumps(sale(colour="red"))
    for key in (b"+44 7700 900123", b"customer:ana.lopez@example.com", b"x" * 5000):
        r = V.decode("tx", 0, 1, key, raw, NOW, None)
        rec, _ = record_and_payload(r)
        kept = base64.b64decode(rec["source"]["key_b64"])
        assert b"7700" not in kept and b"ana.lopez" not in kept and len(kept) <= 1024


def test_an_exception_on_one_message_makes_it_a_dead_letter(monkeypatch: Any) -> None:
    class Boom(PiiHasher):
        def email(self, raw: str) -> str:
            raise ZeroDivisionError("boom with ana@example.com inside")

    v = Validator(TOPICS, Boom(b"unit-test-key-0123456789"))
    r = v.decode("tx", 0, 7, None, orjson.dumps(sale()), NOW, None)
    assert isinstance(r, Rejected) and r.reason == "internal_error"
    rec = orjson.loads(r.record)
    assert "ZeroDivisionError" in rec["message"] and "ana@" not in rec["message"]
    assert (rec["source"]["offset"], rec["payload_size"]) == (7, len(orjson.dumps(sale())))


def test_a_failure_while_scrubbing_keeps_the_position_and_drops_the_bytes(
    monkeypatch: Any,
) -> None:
    def broken(self: PiiHasher, raw: bytes) -> bytes:
        raise MemoryError

    monkeypatch.setattr(PiiHasher, "scrub_payload", broken)
    raw = orjson.dumps(sale(colour="red"))
    r = decode(raw)
    assert isinstance(r, Rejected) and r.reason == "unknown_field"
    rec = orjson.loads(r.record)
    assert rec["payload_b64"] == "" and rec["payload_size"] == len(raw)
    assert "MemoryError" in rec["message"] and rec["source"]["key_b64"] is None
    assert rec["source"]["offset"] == 41


def test_consents_and_erasures_trust_no_clock_far_ahead_of_the_broker() -> None:
    ahead = "2024-05-01T22:00:00+00:00"  # 12 h after the Kafka timestamp below
    kafka_ts = 1714557600000  # 2024-05-01T10:00:00Z
    ev = {
        "event_type": "consent_changed",
        "event_id": "k1",
        "event_time": ahead,
        "channel": "app",
        "customer": {"loyalty_id": "L1"},
        "consents": {"email": True},
    }
    a = V.decode("cust", 0, 1, None, orjson.dumps(ev), kafka_ts + 1000, kafka_ts)
    assert isinstance(a, Accepted)
    assert a.ts_ms == kafka_ts + 12 * 3600_000  # the event keeps its own time
    assert a.eff_ms == kafka_ts + 5 * 60_000  # decisions trust at most 5 minutes ahead
    on_time = V.decode(
        "cust",
        0,
        2,
        None,
        orjson.dumps(ev | {"event_time": "2024-05-01T10:01:00Z"}),
        kafka_ts,
        kafka_ts,
    )
    assert isinstance(on_time, Accepted) and on_time.eff_ms == on_time.ts_ms


_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**15), 10**15),
    st.text(max_size=12),
    st.sampled_from([EMAIL, "+44 7700 900123", "ping " + EMAIL + " now", "tel 07700 900123"]),
)
_json = st.recursive(
    _json_leaf,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(
            st.sampled_from(["a", "note", "email", "Phone", "mobile_no", EMAIL, "tags"]),
            kids,
            max_size=4,
        )
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(extra=_json, cut=st.integers(0, 400), depth=st.integers(0, 1200))
def test_no_input_raises_or_leaks(extra: Any, cut: int, depth: int) -> None:
    """Whatever shape the JSON has, cut anywhere or nested deep: a dead letter comes back,
    and the email and phone are not in it in clear."""
    body = orjson.dumps(sale(customer={"loyalty_id": "L1", "phone": "+44 7700 900123"}, x=extra))
    raw = body[:-1] + b',"d":' + b"[" * depth + b"0" + b"]" * depth + b"}"
    if cut:
        raw = raw[: len(raw) - cut]
    r = V.decode("tx", 0, 1, None, raw, NOW, None)  # "x" is not in the contract
    assert isinstance(r, Rejected)
    assert_no_pii(r, EMAIL, "7700 900123")

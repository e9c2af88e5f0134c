"""Coupon codes (``operators/coupons.py``): typing errors caught, forgeries refused, replays
stable; and the ledger in the real Redis (``state/coupons.py``): issued once, redeemed once,
from any channel, with a reason for every refusal."""

from __future__ import annotations

import hashlib
import hmac
import random
import time
from datetime import UTC, datetime

import base32_crockford as b32
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnicanal.config import Settings
from omnicanal.tools.services import LocalRedis
from operators.coupons import BODY_SYMBOLS, EPOCH, CouponCodec, Refused, Verified, day_of, serial_of
from schemas.envelope import Rejected
from state.coupons import CouponLedger, Issue, Redemption
from state.profiles import connect
from tests.test_pipeline_e2e import redis_dump

KEY = b"coupon-test-key-0123456789"
CODEC = CouponCodec(KEY)
SYMBOLS = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _chars(code: str) -> list[str]:
    return list(code.replace("-", ""))


@settings(max_examples=200, deadline=None)
@given(offer=st.text(min_size=1, max_size=40), day=st.integers(0, 65_535), pos=st.integers(0, 20))
def test_any_single_mistyped_symbol_is_caught(offer: str, day: int, pos: int) -> None:
    code = CODEC.issue(offer, day)
    assert CODEC.verify(code, today=day) == Verified(code, serial_of(offer), day)
    chars = _chars(code)
    for other in SYMBOLS:
        if other != chars[pos]:
            typo = [*chars[:pos], other, *chars[pos + 1 :]]
            assert CODEC.verify("".join(typo), today=0) == Refused("mistyped")


@settings(max_examples=200, deadline=None)
@given(offer=st.text(min_size=1, max_size=40), pos=st.integers(0, BODY_SYMBOLS - 2))
def test_swapped_neighbours_are_caught_by_the_check_symbol(offer: str, pos: int) -> None:
    chars = _chars(CODEC.issue(offer, 9000))
    if chars[pos] != chars[pos + 1]:
        chars[pos], chars[pos + 1] = chars[pos + 1], chars[pos]
        assert CODEC.verify("".join(chars), today=0) == Refused("mistyped")


@settings(max_examples=300, deadline=None)
@given(offer=st.text(min_size=1, max_size=40), day=st.integers(0, 65_535), salt=st.integers(0, 3))
def test_codes_are_what_the_specification_says_bit_for_bit(offer: str, day: int, salt: int) -> None:
    """The code written out from its definition (module docstring) with the library's
    base32 and a keyed HMAC object: issuing takes shortcuts, never other codes."""
    serial = serial_of(offer, salt)
    msg = serial.to_bytes(8, "big") + day.to_bytes(4, "big")
    mac = int.from_bytes(hmac.new(KEY, msg, hashlib.sha256).digest()[:8], "big") >> 24
    n = (serial << 56) | (day << 40) | mac
    body = b32.encode(n).rjust(20, "0")
    want = "-".join([body[i : i + 5] for i in range(0, 20, 5)] + [b32.encode(n, checksum=True)[-1]])
    assert CODEC.issue(offer, day, salt) == want


def test_codes_read_aloud_or_typed_loosely_still_verify() -> None:
    code = CODEC.issue("o-1", 9000)
    loose = code.lower().replace("-", " ").replace("0", "o").replace("1", "l")
    assert isinstance(CODEC.verify(loose.replace(" ", ""), today=9000), Verified)


def test_a_code_made_without_the_key_is_refused() -> None:
    forged = CouponCodec(b"another-key-0123456789").issue("o-1", 9000)
    assert CODEC.verify(forged, today=0) == Refused("bad_signature")
    rng = random.Random(1)
    passed = 0
    for _ in range(20_000):  # random bodies with a correct check symbol
        body = "".join(rng.choice(SYMBOLS) for _ in range(BODY_SYMBOLS))
        n = int.from_bytes(b"", "big")
        for c in body:
            n = n * 32 + SYMBOLS.index(c)
        check = (SYMBOLS + "*~$=U")[n % 37]
        passed += isinstance(CODEC.verify(body + check, today=0), Verified)
    assert passed == 0


@pytest.mark.parametrize(
    "typed", ["", "-", "ABC", "5GPRS-JDRM8-S8Q9E-22M21-C-X", "É" * 21, "U" * 21]
)
def test_malformed_input_is_refused_not_raised(typed: str) -> None:
    assert CODEC.verify(typed, today=0) in (Refused("malformed"), Refused("mistyped"))


def test_a_replay_issues_the_same_code_and_offers_get_distinct_codes() -> None:
    assert CODEC.issue("o-7", 9000) == CODEC.issue("o-7", 9000)
    assert CODEC.issue("o-7", 9000, salt=1) != CODEC.issue("o-7", 9000)
    codes = {CODEC.issue(f"offer-{i}", 9000) for i in range(20_000)}
    assert len(codes) == 20_000


def test_expiry_and_key_are_checked() -> None:
    code = CODEC.issue("o-1", 100)
    assert isinstance(CODEC.verify(code, today=100), Verified)  # valid through its day
    assert CODEC.verify(code, today=101) == Refused("expired")
    with pytest.raises(ValueError, match="16 bytes"):
        CouponCodec(b"short")
    with pytest.raises(ValueError, match="outside"):
        CODEC.issue("o", 1 << 16)


# ------------------------------------------------------------------ the ledger, in Redis
DAY_MS = 86_400_000


@pytest.fixture
def ledger(redis_server: LocalRedis) -> CouponLedger:
    return CouponLedger(connect(redis_server.url), "oc:", CODEC)


def _at(day: int) -> int:
    return day * DAY_MS + int(EPOCH.timestamp() * 1000)


#: the ledger keeps codes until 90 days past their expiry in Redis's own time: tests use days
#: around the real today
TODAY = day_of(int(time.time() * 1000))


@pytest.mark.services
def test_a_code_redeemed_in_store_is_refused_online_and_a_resend_is_idempotent(
    ledger: CouponLedger,
) -> None:
    (code,) = ledger.issue([Issue("offer-1", "C1", "cart-10", TODAY + 10)], _at(TODAY))
    assert ledger.issue([Issue("offer-1", "C1", "cart-10", TODAY + 10)], _at(TODAY)) == [code]
    store = Redemption(code.lower(), "", "pos-order-7", "store", _at(TODAY + 5), "t:0:1")
    web = Redemption(code, "C1", "web-order-9", "web", _at(TODAY + 5), "t:0:2")
    assert ledger.redeem([store]) == ["redeemed"]
    assert ledger.redeem([store, web]) == ["duplicate", "already_redeemed"]
    rec = ledger.lookup(code)
    assert (
        rec is not None and rec["s"] == "r" and rec["ord"] == "pos-order-7" and rec["ch"] == "store"
    )
    refusals = ledger.r.xrange("oc:cp:refusals")
    assert [(f[b"why"], f[b"source"]) for _, f in refusals] == [(b"already_redeemed", b"t:0:2")]
    assert int(ledger.r.get("oc:stats:coupons_redeemed") or 0) == 1


@pytest.mark.services
def test_every_refusal_has_its_reason(ledger: CouponLedger) -> None:
    a, b, c = ledger.issue(
        [
            Issue("o-a", "C1", "k", TODAY + 9),
            Issue("o-b", "C2", "k", TODAY + 9),
            Issue("o-c", "C3", "k", TODAY - 1),
        ],
        _at(TODAY - 5),
    )
    unissued = CODEC.issue("never-issued", TODAY + 9)
    forged = CouponCodec(b"x" * 32).issue("o-a", TODAY + 9)
    typo = a[:-1] + ("2" if a[-1] != "2" else "3")
    got = ledger.redeem(
        [
            Redemption(b, "C9", "o1", "web", _at(TODAY)),  # someone else's code
            Redemption(c, "C3", "o2", "app", _at(TODAY)),  # expired the day before
            Redemption(unissued, "C1", "o3", "web", _at(TODAY)),
            Redemption(forged, "C1", "o4", "web", _at(TODAY)),
            Redemption(typo, "C1", "o5", "web", _at(TODAY)),
            Redemption("hello", "C1", "o6", "web", _at(TODAY)),
            Redemption(a, "C1", "o7", "app", _at(TODAY)),
            Redemption(a, "C1", "o8", "store", _at(TODAY)),  # the same batch, second use
        ]
    )
    assert got == [
        "wrong_customer", "expired", "unknown", "bad_signature", "mistyped", "malformed",
        "redeemed", "already_redeemed",
    ]  # fmt: skip
    # refusals of codes that reached Redis are recorded; nothing else was redeemed
    assert int(ledger.r.get("oc:stats:coupons_redeemed") or 0) == 1
    assert len(ledger.r.xrange("oc:cp:refusals")) == 4


@pytest.mark.services
def test_codes_expire_from_redis_after_their_retention(ledger: CouponLedger) -> None:
    expiry = TODAY + 10
    (code,) = ledger.issue([Issue("o-x", "C1", "k", expiry_day=expiry)], _at(expiry - 10))
    end = int(EPOCH.timestamp()) + (expiry + 1 + 90) * 86_400  # kept 90 days past expiry
    assert ledger.r.expiretime(f"oc:cp:{code}") == end


# ------------------------------------------------------------------ through the pipeline
@pytest.mark.services
def test_a_coupon_redeemed_at_a_till_is_refused_in_the_app(settings: Settings) -> None:
    from flows import pipeline
    from monitoring import metrics as m
    from omnicanal.wiring import pipeline_setup
    from operators.identity import IdentityRules
    from operators.privacy import PiiHasher
    from operators.validate import Validator
    from tests.conftest import TEST_PII_KEY, Settled

    s = settings.model_copy(update={"coupon_key": KEY.decode()})
    ledger = CouponLedger(connect(s.redis_url), s.redis_prefix, CODEC)
    (code, other) = ledger.issue(
        [Issue("of-1", "", "cart-10", TODAY + 7), Issue("of-2", "C000000000999", "k", TODAY + 7)],
        _at(TODAY),
    )
    when = datetime.fromtimestamp(_at(TODAY) / 1000 + 60, UTC).isoformat()
    till = {"event_type": "sale", "event_id": "pos-1", "event_time": when, "channel": "store",
            "location_id": "st-1", "currency": "EUR", "order_id": "R-77",
            "customer": {"loyalty_id": "L1"}, "coupon_codes": [code.lower()],
            "lines": [{"sku": "MUG", "quantity": 1, "unit_price_minor": 900}]}  # fmt: skip
    app = {"event_type": "offer_redeemed", "event_id": "app-1", "event_time": when,
           "offer_id": "of-1", "channel": "app", "customer": {"loyalty_id": "L1"},
           "order_id": "A-5", "coupon_code": code}  # fmt: skip
    someone_elses = app | {"event_id": "app-2", "coupon_code": other, "order_id": "A-6"}
    # an order id that is an email must not reach Redis in clear: dead-lettered, not redeemed
    hidden = app | {"event_id": "app-3", "coupon_code": other, "order_id": "ana@example.com"}
    v = Validator(s.topic_contracts(), PiiHasher(TEST_PII_KEY.encode()))
    items = [
        v.decode(t, 0, n, None, orjson.dumps(e), 2e12)
        for n, (t, e) in enumerate(
            [
                (s.topic_transactions, till),
                (s.topic_offer_feedback, app),
                (s.topic_offer_feedback, someone_elses),
                (s.topic_offer_feedback, hidden),
            ]
        )
    ]
    assert isinstance(items[3], Rejected) and items[3].reason == "invalid_value"
    before = {o: m.counter_total(m.COUPON_REDEMPTIONS, outcome=o) for o in
              ("redeemed", "already_redeemed", "wrong_customer")}  # fmt: skip
    by_campaign = m.counter_total(m.OFFER_REDEMPTIONS, campaign="cart-10", channel="store")
    part = Settled(
        pipeline.state_sink(pipeline_setup(s, identity=IdentityRules())).build("state", 0, 1)
    )
    try:
        part.write_batch(items[:1])  # the till first: L1 becomes a known customer
        part.write_batch(items[1:])
    finally:
        part.close()
    after = {o: m.counter_total(m.COUPON_REDEMPTIONS, outcome=o) - n for o, n in before.items()}
    assert after == {"redeemed": 1, "already_redeemed": 1, "wrong_customer": 1}
    # the redemption counts for its campaign where it happened; the refusals do not
    assert (
        m.counter_total(m.OFFER_REDEMPTIONS, campaign="cart-10", channel="store") - (by_campaign)
        == 1
    )
    assert m.counter_total(m.OFFER_REDEMPTIONS, campaign="cart-10", channel="app") == 0
    rec = ledger.lookup(code)
    assert rec is not None and (rec["s"], rec["ord"], rec["ch"]) == ("r", "R-77", "store")
    assert ledger.lookup(other)["s"] == "i"  # type: ignore[index]
    refusals = ledger.r.xrange(f"{s.redis_prefix}cp:refusals")
    assert len(refusals) == 2
    assert b"ana@example.com" not in repr(redis_dump(s)).encode()


@pytest.mark.services
def test_a_batch_with_more_codes_than_one_script_call_takes(ledger: CouponLedger) -> None:
    n = CouponLedger.CHUNK * 2 + 7
    codes = ledger.issue([Issue(f"o-{i}", "", "k", TODAY + 5) for i in range(n)], _at(TODAY))
    reds = [Redemption(c, "", f"ord-{i}", "store", _at(TODAY)) for i, c in enumerate(codes)]
    reds.append(Redemption(codes[0], "", "ord-late", "web", _at(TODAY)))  # the last call sees it
    got = ledger.redeem(reds)
    assert got[:n] == ["redeemed"] * n and got[n] == "already_redeemed"


@pytest.mark.services
def test_a_code_follows_its_customer_through_a_merge(settings: Settings) -> None:
    from flows import pipeline
    from omnicanal.wiring import pipeline_setup
    from operators.identity import IdentityRules
    from operators.privacy import PiiHasher
    from operators.validate import Validator
    from state.profiles import ProfileStore
    from tests.conftest import TEST_PII_KEY, Settled

    s = settings.model_copy(update={"coupon_key": KEY.decode()})
    hasher = PiiHasher(TEST_PII_KEY.encode())
    v = Validator(s.topic_contracts(), hasher)
    when = datetime.fromtimestamp(_at(TODAY) / 1000 + 60, UTC).isoformat()

    def login(n: int, customer: dict[str, str]) -> dict[str, object]:
        return {"event_type": "login", "event_id": f"l{n}", "event_time": when,
                "channel": "web", "session_id": f"s{n}", "customer": customer}  # fmt: skip

    offsets = {"t": 0, "o": 0}

    def items(events: list[dict[str, object]]) -> list[object]:
        out = []
        for e in events:
            kind = "o" if e["event_type"] == "offer_redeemed" else "t"
            topic = s.topic_offer_feedback if kind == "o" else s.topic_clickstream
            out.append(v.decode(topic, 0, offsets[kind], None, orjson.dumps(e), 2e12))
            offsets[kind] += 1
        return out

    part = Settled(
        pipeline.state_sink(pipeline_setup(s, identity=IdentityRules())).build("state", 0, 1)
    )
    store = ProfileStore(connect(s.redis_url), s.redis_prefix)
    ledger = CouponLedger(store.r, s.redis_prefix, CODEC)
    try:
        part.write_batch(items([login(1, {"loyalty_id": "L1"})]))  # type: ignore[arg-type]
        part.write_batch(items([login(2, {"email": "b@example.com"})]))  # type: ignore[arg-type]
        older = store.resolve("loyalty:L1")
        later = store.resolve("email:" + hasher.email("b@example.com"))
        assert older and later and older < later
        (code,) = ledger.issue([Issue("of-9", later, "k", TODAY + 7)], _at(TODAY))
        # the email's customer merges into the loyalty card's (the older one survives)
        link = login(3, {"loyalty_id": "L1", "email": "b@example.com"})
        part.write_batch(items([link]))  # type: ignore[arg-type]
        assert store.resolve("email:" + hasher.email("b@example.com")) == older
        redeem = {"event_type": "offer_redeemed", "event_id": "r1", "event_time": when,
                  "offer_id": "of-9", "channel": "app", "customer": {"loyalty_id": "L1"},
                  "order_id": "A-1", "coupon_code": code}  # fmt: skip
        part.write_batch(items([redeem]))  # type: ignore[arg-type]
    finally:
        part.close()
    rec = ledger.lookup(code)
    assert rec is not None and (rec["s"], rec["ord"]) == ("r", "A-1")
    # the ledger's own rule, directly: a stranger is still refused
    (other,) = ledger.issue([Issue("of-10", later, "k", TODAY + 7)], _at(TODAY))
    assert ledger.redeem([Redemption(other, "C000000000777", "x", "web", _at(TODAY))]) == [
        "wrong_customer"
    ]

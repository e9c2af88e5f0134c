"""Edge decoding: raw Kafka bytes in, an :class:`Accepted` event or a :class:`Rejected` out.

Never raises on bad input. Checks, in order: size (before any parsing), UTF-8, JSON and the
topic's contract (types, ranges, unknown fields, event type), duplicate keys, then business
rules and the event-time window. Emails and phones are replaced by keyed HMACs here, so
nothing downstream ever sees them in clear; rejected payloads are scrubbed the same way.

>>> v = Validator({"omnicanal.clickstream": "clickstream"}, PiiHasher(b"k" * 32))
>>> raw = (b'{"event_type":"login","event_id":"e1","event_time":"2024-05-01T10:00:00Z",'
...        b'"channel":"web","session_id":"s1","customer":{"email":"Ana@example.com"}}')
>>> ok = v.decode("omnicanal.clickstream", 0, 7, None, raw, now_ms=1714557600000)
>>> ok.event_type, ok.customer.startswith("email:"), "Ana" in repr(ok.ids)
('login', True, False)
>>> bad = v.decode("omnicanal.clickstream", 0, 8, None, raw.replace(b'"login"', b'"lgn"'),
...                now_ms=1714557600000)
>>> bad.reason
'unknown_event_type'
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import zoneinfo
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from msgspec import UNSET

from operators.privacy import PiiHasher, holds_contact, looks_personal
from schemas.deadletter import DeadLetter, SourcePosition
from schemas.envelope import ID_PRIORITY, Accepted, Rejected
from schemas.events import CONTRACT_OF_TYPE, CONTRACTS, CustomerIds, line_amount

PROCESSOR: Final = "omnicanal/0.1.0"
#: Largest accepted payload: a 1,000-line receipt with descriptions (real Online Retail
#: invoices reach 749 lines, 72 KB) fits; Kafka's default message limit is 1 MB.
DEFAULT_MAX_BYTES: Final = 256 * 1024
#: Bytes of a rejected payload kept in its dead letter (base64 adds a third): with the
#: record's other fields, a dead letter stays far below Kafka's default 1 MB limit.
DEFAULT_DEAD_LETTER_PAYLOAD: Final = 64 * 1024
MAX_MESSAGE_CHARS: Final = 1000
MAX_KEY_BYTES: Final = 1024
#: Consents and erasures trust an event time at most this far ahead of the broker's
#: timestamp of the message (see :func:`trusted_time`).
DEFAULT_MAX_SKEW_MS: Final = 5 * 60 * 1000
#: 2000-01-01T00:00:00Z: older event times are treated as absurd.
DEFAULT_MIN_EVENT_MS: Final = 946_684_800_000
DEFAULT_MAX_FUTURE_MS: Final = 24 * 3600 * 1000
#: Largest transaction total accepted (10 billion in major units).
MAX_TRANSACTION_MINOR: Final = 10**12

_DEAD_LETTER_ENCODER = msgspec.json.Encoder()
_TAGS: dict[type, str] = {
    cls: cls.__struct_config__.tag
    for c in CONTRACTS.values()
    for cls in c.union.__args__  # type: ignore[attr-defined]
}


class _Reject(Exception):
    def __init__(self, reason: str, message: str, event_type: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.event_type = event_type


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _Reject("duplicate_key", f"duplicate key {dup!r}")
    return out


def _classify(err: msgspec.ValidationError, raw_type: object) -> _Reject:
    msg = str(err)
    if "`$.event_type`" in msg or "required field `event_type`" in msg:
        if isinstance(raw_type, str) and raw_type in CONTRACT_OF_TYPE:
            return _Reject(
                "wrong_topic",
                f"event_type {raw_type!r} belongs to the {CONTRACT_OF_TYPE[raw_type]} contract",
                raw_type,
            )
        return _Reject("unknown_event_type", msg)
    if msg.startswith("Object missing required field"):
        reason = "missing_field"
    elif msg.startswith("Object contains unknown field"):
        reason = "unknown_field"
    elif msg.startswith("Expected `object`, got") and " - at " not in msg:
        reason = "not_an_object"
    elif (
        " >= " in msg
        or " <= " in msg
        or "matching regex" in msg
        or "of length" in msg
        or msg.startswith("Invalid ")
        or "timezone" in msg
    ):
        reason = "invalid_value"
    else:  # "Expected `int`, got `str`", "Integer value out of range", null, ...
        reason = "wrong_type"
    # Only a known type is echoed: the raw value could be anything, personal data included.
    return _Reject(reason, msg, raw_type if raw_type in CONTRACT_OF_TYPE else None)


class Validator:
    """Decodes one topic's raw messages against its contract. Pure: the clock is passed in."""

    def __init__(
        self,
        topic_contracts: Mapping[str, str],
        hasher: PiiHasher,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        min_event_ms: int = DEFAULT_MIN_EVENT_MS,
        max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
        max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
        max_dead_letter_payload: int = DEFAULT_DEAD_LETTER_PAYLOAD,
        step: str = "validate",
    ) -> None:
        unknown = set(topic_contracts.values()) - set(CONTRACTS)
        if unknown:
            raise ValueError(f"unknown contracts {sorted(unknown)}; known: {sorted(CONTRACTS)}")
        self._decoders = {
            topic: (name, msgspec.json.Decoder(CONTRACTS[name].union))
            for topic, name in topic_contracts.items()
        }
        self._encoder = msgspec.json.Encoder()
        self.hasher = hasher
        self.max_bytes = max_bytes
        self.min_event_ms = min_event_ms
        self.max_future_ms = max_future_ms
        self.max_skew_ms = max_skew_ms
        self.max_dead_letter_payload = max_dead_letter_payload
        self.step = step

    # ------------------------------------------------------------------ public
    def decode(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        now_ms: float,
        timestamp_ms: int | None = None,
    ) -> Accepted | Rejected:
        """Decode one message. Never raises: whatever goes wrong with one message, its
        parsing, checks or scrubbing included, makes that message a dead letter."""
        raw = value or b""
        try:
            a = self._accept(topic, partition, offset, raw, now_ms)
            a.received_ms = now_ms
            a.kafka_ts_ms = timestamp_ms or 0
            a.eff_ms = trusted_time(a.ts_ms, timestamp_ms, now_ms, self.max_skew_ms)
            return a
        except _Reject as r:
            reason, message, event_type = r.reason, r.message, r.event_type
        except Exception as e:  # any failure on one event is that event's problem
            reason, event_type = "internal_error", None
            message = f"step {self.step!r}: {type(e).__name__} while validating this message"
        try:
            return self._reject(
                topic,
                partition,
                offset,
                key,
                raw,
                now_ms,
                timestamp_ms,
                reason,
                message,
                event_type,
            )
        except Exception as e:  # scrubbing failed: keep the position, drop the bytes
            record = DeadLetter(
                reason=reason,  # type: ignore[arg-type]
                message=f"{reason}; payload, key and details not kept ({type(e).__name__} "
                "while scrubbing them)",
                source=SourcePosition(topic, partition, offset, None, timestamp_ms),
                received_at=datetime.fromtimestamp(now_ms / 1000, UTC),
                payload_b64="",
                payload_scrubbed=True,
                payload_size=len(raw),
                processor=PROCESSOR,
                step=self.step,
                event_type=event_type if event_type is not None else UNSET,
            )
            return _rejected(record)

    # ------------------------------------------------------------------ internals
    def _accept(
        self, topic: str, partition: int, offset: int, raw: bytes, now_ms: float
    ) -> Accepted:
        if topic not in self._decoders:
            raise _Reject("wrong_topic", f"topic {topic!r} has no contract configured")
        contract, decoder = self._decoders[topic]
        if not raw:
            raise _Reject("malformed_json", "empty message")
        if len(raw) > self.max_bytes:
            raise _Reject("too_large", f"{len(raw)} bytes > limit of {self.max_bytes}")
        if not raw.isascii():
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _Reject("invalid_utf8", f"invalid UTF-8 at byte {e.start}") from None
        try:
            ev = decoder.decode(raw)
        except msgspec.ValidationError as e:
            # The typed decoder stops at the first contract violation; a payload that is not
            # even JSON further on (NaN, truncation) is reported as such.
            try:
                obj = msgspec.json.decode(raw)
            except msgspec.DecodeError as de:
                if str(de).startswith(("JSON is malformed", "Input data was truncated")):
                    raise _Reject("malformed_json", str(de)) from None
                obj = None  # valid JSON the untyped decoder cannot hold (huge numbers)
            except RecursionError:
                obj = None  # deeply nested, but JSON: the typed error stands
            raw_type = obj.get("event_type") if isinstance(obj, dict) else None
            raise _classify(e, raw_type) from None
        except msgspec.DecodeError as e:
            raise _Reject("malformed_json", str(e)) from None
        self._check_duplicates(raw, ev)
        event_type = _TAGS[type(ev)]
        ts_ms = int(ev.event_time.timestamp() * 1000)
        if ts_ms < self.min_event_ms or ts_ms > now_ms + self.max_future_ms:
            raise _Reject(
                "timestamp_out_of_range",
                f"event_time {ev.event_time.isoformat()} outside "
                f"[{_iso(self.min_event_ms)}, now + {self.max_future_ms // 1000}s]",
                event_type,
            )
        if contract == "transaction":
            _check_transaction(ev, event_type)
            for i, line in enumerate(ev.lines):
                if line.category is not UNSET:
                    _check_category(line.category, f"lines[{i}].category", event_type)
        elif getattr(ev, "category", UNSET) is not UNSET:
            _check_category(ev.category, "category", event_type)
        elif event_type == "consent_changed":
            if not any(getattr(ev.consents, f) is not UNSET for f in ev.consents.__struct_fields__):
                raise _Reject("missing_field", "consents must set at least one purpose", event_type)
            if ev.time_zone is not UNSET and ev.time_zone not in time_zones():
                raise _Reject(
                    "invalid_value",
                    f"time_zone {ev.time_zone!r} is not an IANA time zone (e.g. Europe/Madrid)",
                    event_type,
                )
        if (b"@" in raw or b"+" in raw or b"\\u" in raw) and not _ats_only_in_email(raw, ev):
            _check_identifiers(ev, event_type)  # else (\u0040 is an "@" too) no identifier
            # can hold an email or a phone
        ids = self._identifiers(ev)
        customer = None
        for kind in ID_PRIORITY:
            if kind in ids:
                customer = f"{kind}:{ids[kind]}"
                break
        return Accepted(
            topic,
            partition,
            offset,
            contract,
            event_type,
            ev.event_id,
            ts_ms,
            getattr(ev, "channel", None),
            customer,
            ids,
            ev,
        )

    def _check_duplicates(self, raw: bytes, ev: object) -> None:
        if b"\\" not in raw:
            # Without escapes, every key and string value adds two quotes, in the input and
            # in the re-encoded struct alike; a repeated key adds quotes only to the input.
            if raw.count(b'"') != self._encoder.encode(ev).count(b'"'):
                # Re-parse exactly to name the key (rare path).
                json.loads(raw, object_pairs_hook=_no_duplicates)
                raise _Reject("duplicate_key", "a JSON object repeats a key")
        else:
            json.loads(raw, object_pairs_hook=_no_duplicates)

    def _identifiers(self, ev: Any) -> dict[str, str]:
        ids: dict[str, str] = {}
        c: CustomerIds | Any = getattr(ev, "customer", UNSET)
        if c is not UNSET:
            if c.loyalty_id is not UNSET:
                ids["loyalty"] = c.loyalty_id
            if c.account_id is not UNSET:
                ids["account"] = c.account_id
            if c.email is not UNSET:
                ids["email"] = self.hasher.email(c.email)
            if c.phone is not UNSET:
                ids["phone"] = self.hasher.phone(c.phone)
            if c.card_token is not UNSET:
                ids["card"] = c.card_token
            if c.device_id is not UNSET:
                ids["device"] = c.device_id
            if c.cookie_id is not UNSET:
                ids["cookie"] = c.cookie_id
        device = getattr(ev, "device_id", UNSET)
        if device is not UNSET and "device" not in ids:
            ids["device"] = device
        return ids

    def _reject(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        raw: bytes,
        now_ms: float,
        timestamp_ms: int | None,
        reason: str,
        message: str,
        event_type: str | None,
    ) -> Rejected:
        h = self.hasher
        clean = h.scrub_payload(raw)
        kept = clean[: self.max_dead_letter_payload]
        record = DeadLetter(
            reason=reason,  # type: ignore[arg-type]
            message=h.scrub_text(message[:MAX_MESSAGE_CHARS]),
            source=SourcePosition(
                topic,
                partition,
                offset,
                base64.b64encode(self._scrub_key(key)).decode() if key is not None else None,
                timestamp_ms,
            ),
            received_at=datetime.fromtimestamp(now_ms / 1000, UTC),
            payload_b64=base64.b64encode(kept).decode(),
            payload_scrubbed=clean != raw,
            payload_size=len(raw),
            processor=PROCESSOR,
            step=self.step,
            event_type=event_type if event_type is not None else UNSET,
            payload_sha256=hashlib.sha256(clean).hexdigest(),
            payload_truncated=len(kept) < len(clean),
        )
        return _rejected(record)

    def _scrub_key(self, key: bytes) -> bytes:
        """A Kafka key as kept in a dead letter: an email or phone number (the whole key or
        inside it) replaced by its token, at most :data:`MAX_KEY_BYTES`."""
        key = key[:MAX_KEY_BYTES]
        text = key.decode("utf-8", "replace").strip()
        if "@" in text and " " not in text and text.count("@") == 1:
            return self.hasher.token("email", text).encode()
        return self.hasher.scrub_payload(key)


@functools.cache
def time_zones() -> frozenset[str]:
    """The IANA time zones this machine knows (the tzdata package ships them everywhere).

    >>> "Europe/Madrid" in time_zones(), "Mars/Olympus" in time_zones()
    (True, False)
    """
    return frozenset(zoneinfo.available_timezones())


def _check_category(category: str, where: str, event_type: str) -> None:
    """A category is kept in clear (profiles, stock, the cross-sell counts shared by every
    customer): one that holds an email address or a phone number is refused, never echoed."""
    if (
        "@" in category or (len(category) >= 9 and sum(map(str.isdigit, category)) >= 9)
    ) and looks_personal(category):
        raise _Reject(
            "invalid_value",
            f"{where} looks like an email address or a phone number: personal data is not "
            "kept in categories",
            event_type,
        )


#: Identifier fields kept in clear (Redis keys and values: profiles, identity links, stock,
#: coupons ledger, cross-sell counts); ``customer.email`` and ``customer.phone`` are hashed.
_CLEAR_IDS: Final = (
    "event_id", "sku", "location_id", "order_id", "original_order_id", "session_id",
    "device_id", "offer_id",
)  # fmt: skip
_CLEAR_CUSTOMER_IDS: Final = ("loyalty_id", "account_id", "device_id", "cookie_id", "card_token")


def _ats_only_in_email(raw: bytes, ev: Any) -> bool:
    """Is every "@" of ``raw`` inside ``customer.email``, with no "+" anywhere? Then no
    identifier can hold an email address or an international phone number, and
    :func:`_check_identifiers` can be skipped: without a backslash every string is in the
    bytes as it is, and an event has one ``customer.email`` (duplicate keys are refused
    before), while its keys are the contract's field names.

    >>> from schemas.events import Login, CustomerIds
    >>> ev = Login(event_id="e", event_time=None, channel="web", session_id="s",
    ...            customer=CustomerIds(email="a@b.co"))
    >>> _ats_only_in_email(b'{"session_id":"s","customer":{"email":"a@b.co"}}', ev)
    True
    >>> _ats_only_in_email(b'{"session_id":"x@y.z","customer":{"email":"a@b.co"}}', ev)
    False
    """
    if b"+" in raw or b"\\" in raw:
        return False
    c = getattr(ev, "customer", UNSET)
    email = UNSET if c is UNSET else c.email
    return type(email) is str and raw.count(b"@") == email.count("@")


def _check_identifiers(ev: Any, event_type: str) -> None:
    """An identifier holding an email address or an international phone number is
    refused (``invalid_value``, the value never echoed): identifiers are kept in clear,
    and an erasure could not find personal data hidden in them."""
    where = None
    for name in _CLEAR_IDS:
        v = getattr(ev, name, UNSET)
        if type(v) is str and holds_contact(v):
            where = name
            break
    if where is None:
        c = getattr(ev, "customer", UNSET)
        if c is not UNSET:
            for name in _CLEAR_CUSTOMER_IDS:
                v = getattr(c, name)
                if type(v) is str and holds_contact(v):
                    where = f"customer.{name}"
                    break
    if where is None:
        for i, line in enumerate(getattr(ev, "lines", ())):
            if holds_contact(line.sku):
                where = f"lines[{i}].sku"
                break
    if where is not None:
        raise _Reject(
            "invalid_value",
            f"{where} holds an email address or a phone number: identifiers are kept in "
            "clear, so personal data goes in customer.email or customer.phone (hashed)",
            event_type,
        )


def _check_transaction(ev: Any, event_type: str) -> None:
    total = 0
    for i, line in enumerate(ev.lines):
        gross = line.quantity * line.unit_price_minor
        discount = 0 if line.discount_minor is UNSET else line.discount_minor
        if discount > gross:
            raise _Reject(
                "invalid_value",
                f"lines[{i}].discount_minor {discount} exceeds quantity x unit price {gross}",
                event_type,
            )
        total += line_amount(line)
    if total < 0:
        raise _Reject("invalid_value", f"transaction total is negative ({total})", event_type)
    if total > MAX_TRANSACTION_MINOR:
        # Keeps every Redis counter exact (Lua numbers are doubles) and far from overflow.
        raise _Reject(
            "invalid_value",
            f"transaction total {total} exceeds {MAX_TRANSACTION_MINOR} minor units",
            event_type,
        )


def trusted_time(ts_ms: int, kafka_ts_ms: int | None, now_ms: float, skew_ms: int) -> int:
    """The event time that decisions about a person may trust.

    A device whose clock runs ahead must not make a consent it sent outrank a withdrawal
    made since, nor make its events look newer than the person's erasure. The reference
    is the message's Kafka timestamp (fixed in the log, so replays decide the same; the
    time of processing only when the message has none): an event time beyond it plus
    ``skew_ms`` is cut back to it.

    >>> trusted_time(10_000, 1_000, 99_999, skew_ms=500)
    1500
    >>> trusted_time(1_200, 1_000, 99_999, skew_ms=500)
    1200
    >>> trusted_time(90_000, None, 2_000.0, skew_ms=500)
    2500
    """
    ref = kafka_ts_ms if kafka_ts_ms is not None and kafka_ts_ms > 0 else int(now_ms)
    return min(ts_ms, ref + skew_ms)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def without_payload(record: bytes, why: str) -> bytes:
    """A dead-letter record with its payload removed (the broker refused it as too large);
    size and SHA-256 of the payload stay, the message says why.

    >>> r = msgspec.json.encode({"reason": "x", "message": "m", "payload_b64": "QUJD"})
    >>> without_payload(r, "Message size too large")
    b'{"reason":"x","message":"m (payload not kept: Message size too large)","payload_b64":""}'
    """
    rec = msgspec.json.decode(record)
    rec["message"] = f"{rec.get('message', '')} (payload not kept: {why[:200]})"
    rec["payload_b64"] = ""
    return msgspec.json.encode(rec)


def state_rejected(a: Accepted, why: str, hasher: PiiHasher | None) -> Rejected:
    """A valid event that Redis refused to apply, as a ``state_rejected`` dead letter. The
    payload is the event re-encoded (the original bytes are gone), scrubbed like any other
    dead letter; without a hasher nothing of it is kept."""
    raw = msgspec.json.encode(a.event)
    payload = hasher.scrub_payload(raw) if hasher is not None else b""
    record = DeadLetter(
        reason="state_rejected",
        message=(hasher.scrub_text(why) if hasher is not None else "")[:MAX_MESSAGE_CHARS],
        source=SourcePosition(a.topic, a.partition, a.offset, None, a.kafka_ts_ms or None),
        received_at=datetime.fromtimestamp((a.received_ms or 0) / 1000, UTC),
        payload_b64=base64.b64encode(payload[:DEFAULT_DEAD_LETTER_PAYLOAD]).decode(),
        payload_scrubbed=payload != raw,
        payload_size=len(raw),
        processor=PROCESSOR,
        step="state",
        event_type=a.event_type,
        payload_sha256=hashlib.sha256(payload).hexdigest() if payload else UNSET,
        payload_truncated=len(payload) > DEFAULT_DEAD_LETTER_PAYLOAD,
    )
    return _rejected(record)


def _rejected(record: DeadLetter) -> Rejected:
    """The dead letter of one input, encoded, with its source position."""
    src = record.source
    return Rejected(
        src.topic,
        src.partition,
        src.offset,
        record.reason,
        _DEAD_LETTER_ENCODER.encode(record),
        src.timestamp_ms or 0,
    )

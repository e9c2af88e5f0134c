"""Coupon codes redeemable in every channel: short enough to read out at a till, with a check
symbol that catches typing errors, unguessable and verifiable offline.

A code is 100 bits written in Crockford's base32 (digits and capitals without I, L, O, U;
decoding forgives case, reads I and L as 1 and O as 0, and ignores hyphens), in four groups
of five, then the check symbol (the value mod 37, which catches any single wrong symbol and
most swapped neighbours)::

    serial (44 bits) | expiry day (16 bits) | signature (40 bits)

The serial comes from the offer id (a replay issues the same code), the expiry day counts
days since 2000-01-01 (UTC), and the signature is a keyed HMAC-SHA-256 of both, cut to 40
bits: without the key, a made-up code passes with a chance of 1 in 10^12, and a till that
holds the key checks a code without asking anyone (:meth:`CouponCodec.verify`). That a code
was issued and is redeemed once is what the ledger in Redis decides (``state/coupons.py``).

>>> codec = CouponCodec(b"k" * 32)
>>> code = codec.issue("offer-1", expiry_day=9000)
>>> code
'5GPRS-JDRM8-S8Q9E-22M21-C'
>>> codec.verify(code.lower().replace("-", ""), today=8999)
Verified(code='5GPRS-JDRM8-S8Q9E-22M21-C', serial=3035884198794, expiry_day=9000)
>>> codec.verify("5GPRS-JDRM8-S8Q9E-22N21-C", today=8999).reason   # one symbol mistyped
'mistyped'
>>> codec.verify(code, today=9001).reason
'expired'
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

import base32_crockford as b32

from operators.privacy import hmac_sha256_states
from schemas.envelope import Accepted

SERIAL_BITS: Final = 44
DAY_BITS: Final = 16
MAC_BITS: Final = 40
#: symbols before the check symbol: 100 bits / 5
BODY_SYMBOLS: Final = (SERIAL_BITS + DAY_BITS + MAC_BITS) // 5
GROUP: Final = 5
EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
MIN_KEY_BYTES: Final = 16

Refusal = Literal["malformed", "mistyped", "bad_signature", "expired"]


@dataclass(frozen=True)
class Verified:
    """A code whose check symbol and signature hold and that has not expired."""

    code: str
    serial: int
    expiry_day: int


@dataclass(frozen=True)
class Refused:
    reason: Refusal


_EPOCH_MS: Final = int(EPOCH.timestamp() * 1000)


def day_of(ms: int) -> int:
    """Days since 2000-01-01 UTC of an epoch time in ms.

    >>> day_of(946_684_800_000), day_of(946_684_800_000 + 86_400_000 - 1)
    (0, 0)
    """
    return (ms - _EPOCH_MS) // 86_400_000


def serial_of(offer_id: str, salt: int = 0) -> int:
    """The serial of an offer's code: a hash of its id (``salt`` > 0 when the ledger found
    the code taken by another offer: rare, and the same on a replay)."""
    digest = hashlib.blake2b(f"{offer_id}#{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - SERIAL_BITS)


class CouponCodec:
    """Issues and verifies codes with one secret key (``OMNICANAL_COUPON_KEY``: channels that
    verify offline hold the same key)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the coupon key needs at least {MIN_KEY_BYTES} bytes")
        self._inner, self._outer = hmac_sha256_states(key)

    def _mac(self, serial: int, expiry_day: int) -> int:
        """HMAC-SHA256 of the serial and the day, cut to :data:`MAC_BITS`.

        >>> c = CouponCodec(b"k" * 32)
        >>> c._mac(5, 9000) == int.from_bytes(hmac.digest(b"k" * 32, (5).to_bytes(8, "big")
        ...     + (9000).to_bytes(4, "big"), "sha256")[:8], "big") >> (64 - MAC_BITS)
        True
        """
        inner = self._inner.copy()
        inner.update((serial << 32 | expiry_day).to_bytes(12, "big"))  # 8 bytes, then 4
        outer = self._outer.copy()
        outer.update(inner.digest())
        return int.from_bytes(outer.digest()[: MAC_BITS // 8], "big")  # its first 40 bits

    def issue(self, offer_id: str, expiry_day: int, salt: int = 0) -> str:
        """The code of an offer that expires at the end of ``expiry_day`` (UTC)."""
        if not 0 <= expiry_day < 1 << DAY_BITS:
            raise ValueError(f"expiry day {expiry_day} is outside 2000-2179")
        serial = serial_of(offer_id, salt)
        n = (serial << (DAY_BITS + MAC_BITS)) | (expiry_day << MAC_BITS)
        n |= self._mac(serial, expiry_day)
        return _format(n)

    def verify(self, typed: str, today: int) -> Verified | Refused:
        """Check a code as typed (any case, hyphens or not, I/L/O read as 1/1/0)."""
        try:
            norm = b32.normalize(typed.strip()[:64])
        except ValueError:
            return Refused("malformed")
        if len(norm) != BODY_SYMBOLS + 1 or norm[:-1].strip(b32.symbols):
            return Refused("malformed")  # a length or symbol a code never has
        try:
            n = b32.decode(norm, checksum=True)
        except ValueError:
            return Refused("mistyped")
        if n >> (SERIAL_BITS + DAY_BITS + MAC_BITS):
            return Refused("malformed")
        serial = n >> (DAY_BITS + MAC_BITS)
        day = (n >> MAC_BITS) & ((1 << DAY_BITS) - 1)
        mac = (n & ((1 << MAC_BITS) - 1)).to_bytes(5, "big")
        if not hmac.compare_digest(mac, self._mac(serial, day).to_bytes(5, "big")):
            return Refused("bad_signature")
        if day < today:
            return Refused("expired")
        return Verified(_format(n), serial, day)


def redemptions_of(a: Accepted) -> list[tuple[str, str]]:
    """The coupon codes an event redeems, each with its order: a sale's ``coupon_codes``
    (any channel: a till, the web checkout, the app) and an ``offer_redeemed`` event's
    ``coupon_code``; the order is the event's ``order_id``, else its ``event_id`` (so that a
    re-sent event redeems nothing twice).

    >>> from schemas.events import OfferRedeemed
    >>> ev = OfferRedeemed(event_id="e1", event_time=None, offer_id="of-1", channel="web",
    ...                    customer=None, coupon_code="5GPRS-JDRM8-S8Q9E-22M21-C")
    >>> redemptions_of(Accepted("t", 0, 1, "offer_feedback", "offer_redeemed", "e1", 0, "web",
    ...                         None, {}, ev))
    [('5GPRS-JDRM8-S8Q9E-22M21-C', 'e1')]
    """
    et = a.event_type
    if et != "sale" and et != "offer_redeemed":
        return []
    ev = a.event
    order = ev.order_id if isinstance(ev.order_id, str) else a.event_id
    if et == "sale":
        codes = ev.coupon_codes if isinstance(ev.coupon_codes, list) else []
        return [(c, order) for c in codes]
    return [(ev.coupon_code, order)] if isinstance(ev.coupon_code, str) else []


#: Crockford's symbols, then the five extra ones of the check symbol (mod 37)
_SYMBOLS: Final = b32.symbols + b32.check_symbols
#: every pair of symbols, by the 10 bits they write: ten lookups make a code's 20 symbols
_PAIRS: Final = tuple(a + b for a in b32.symbols for b in b32.symbols)


def _format(n: int) -> str:
    """The code as written: four groups of five symbols, a hyphen, the check symbol (what
    ``base32_crockford.encode`` gives, zero-padded and grouped, without its loops).

    >>> n = (1 << 100) - 12345
    >>> _format(n) == "-".join([*(lambda b: [b[i:i + 5] for i in range(0, 20, 5)])(
    ...     b32.encode(n).rjust(20, "0")), b32.encode(n, checksum=True)[-1]])
    True
    """
    p = _PAIRS
    s = (
        p[n >> 90 & 1023] + p[n >> 80 & 1023] + p[n >> 70 & 1023] + p[n >> 60 & 1023]
        + p[n >> 50 & 1023] + p[n >> 40 & 1023] + p[n >> 30 & 1023] + p[n >> 20 & 1023]
        + p[n >> 10 & 1023] + p[n & 1023]
    )  # fmt: skip
    return f"{s[:5]}-{s[5:10]}-{s[10:15]}-{s[15:]}-{_SYMBOLS[n % 37]}"

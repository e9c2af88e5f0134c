"""Guard rails of the offers: who may get an offer, through which channel, and when. Pure
logic, no I/O; each refusal has a reason from :data:`SUPPRESSIONS`, which the offers stage
counts.

>>> in_holdout("C000000000042", share=0.05) == in_holdout("C000000000042", share=0.05)
True
>>> consent_purpose("sms"), consent_purpose("web")
('sms', None)
>>> caps = FrequencyCaps(per_day=1, per_week=3, per_campaign_week=1)
>>> caps.check(sent_today=1, sent_week=1, campaign_week=0)
'frequency_day'
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo

Suppression = Literal[
    "holdout",
    "no_consent",
    "frequency_day",
    "frequency_week",
    "frequency_campaign",
    "out_of_stock",
    "duplicate_trigger",
    "too_late",
    "budget",
    "decision_error",
    "channel_down",
]
SUPPRESSIONS: Final[tuple[str, ...]] = Suppression.__args__  # type: ignore[attr-defined]
#: The consent an offer needs in each delivery channel (None: shown in the customer's own
#: session on the web site, not sent to them).
_PURPOSE: Final[dict[str, str | None]] = {
    "email": "email",
    "sms": "sms",
    "push": "push",
    "app": "push",
    "store": "in_store",
    "call_centre": "in_store",
    "web": None,
}
DEFAULT_HOLDOUT_SHARE: Final = 0.05


def in_holdout(customer_id: str, share: float = DEFAULT_HOLDOUT_SHARE, salt: str = "") -> bool:
    """Whether a customer is in the persistent holdout group, who never get offers (so that
    the offers' uplift is measured against them). A stable hash: the same customer is in or
    out on every worker, every restart, every day; ``salt`` draws a new group.

    >>> sum(in_holdout(f"C{i:012d}") for i in range(100_000)) / 100_000
    0.04842
    """
    h = hashlib.blake2b(f"{salt}|{customer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") < share * 2**64


def consent_purpose(channel: str) -> str | None:
    """The consent purpose a delivery channel needs (``KeyError`` for an unknown one)."""
    return _PURPOSE[channel]


def consented(consents: Mapping[str, Mapping[str, object]], channel: str) -> bool:
    """Whether a profile's consents allow an offer through ``channel`` (absent: not given).

    >>> consented({"email": {"granted": True}}, "email"), consented({}, "sms")
    (True, False)
    """
    purpose = consent_purpose(channel)
    return purpose is None or consents.get(purpose, {}).get("granted") is True


@dataclass(frozen=True)
class FrequencyCaps:
    """Offers per customer across every channel: per calendar day and per rolling week, and
    per campaign per week."""

    per_day: int = 1
    per_week: int = 3
    per_campaign_week: int = 1

    def check(self, sent_today: int, sent_week: int, campaign_week: int) -> Suppression | None:
        across = self.across(sent_today, sent_week)
        if across is None and campaign_week >= self.per_campaign_week:
            return "frequency_campaign"
        return across

    def across(self, sent_today: int, sent_week: int) -> Suppression | None:
        """The caps across all campaigns (:meth:`check` without the campaign's own).

        >>> FrequencyCaps(per_day=2).across(1, 2), FrequencyCaps(per_day=2).across(1, 3)
        (None, 'frequency_week')
        """
        if sent_today >= self.per_day:
            return "frequency_day"
        if sent_week >= self.per_week:
            return "frequency_week"
        return None


@dataclass(frozen=True)
class QuietHours:
    """No message between ``start`` and ``end`` o'clock in the customer's time zone (the
    window may span midnight); an offer decided then is held until it ends."""

    start: int = 21
    end: int = 8

    def release_ms(self, now_ms: int, tz: str) -> int | None:
        """When an offer decided at ``now_ms`` may go out, or None if it may go now.

        >>> q = QuietHours(21, 8)
        >>> import datetime as d
        >>> at = lambda h: int(d.datetime(2024, 3, 1, h, tzinfo=d.UTC).timestamp() * 1000)
        >>> q.release_ms(at(12), "UTC") is None, q.release_ms(at(23), "UTC") == at(8) + 86_400_000
        (True, True)
        >>> q.release_ms(at(3), "Europe/Madrid") == at(7)   # 04:00 in Madrid, out at 08:00
        True
        """
        zone = ZoneInfo(tz)
        local = datetime.fromtimestamp(now_ms / 1000, zone)
        h = local.hour
        quiet = (
            (self.start <= h or h < self.end)
            if self.start > self.end
            else (self.start <= h < self.end)
        )
        if not quiet:
            return None
        day = local.date() if h < self.end else local.date() + timedelta(days=1)
        release = datetime(day.year, day.month, day.day, self.end, tzinfo=zone)
        return int(release.timestamp() * 1000)

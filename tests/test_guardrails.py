"""Guard rails of the offers (``operators/guardrails.py``): a holdout group that stays put,
consent per channel, frequency caps, quiet hours in the customer's own time zone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.guardrails import (
    SUPPRESSIONS,
    FrequencyCaps,
    QuietHours,
    consent_purpose,
    consented,
    in_holdout,
)
from schemas.events import OfferChannel


def _ms(y: int, mo: int, d: int, h: int, mi: int = 0) -> int:
    return int(datetime(y, mo, d, h, mi, tzinfo=UTC).timestamp() * 1000)


def test_the_holdout_is_the_configured_share_and_never_moves() -> None:
    ids = [f"C{i:012d}" for i in range(200_000)]
    group = {c for c in ids if in_holdout(c, 0.05)}
    assert abs(len(group) / len(ids) - 0.05) < 0.003
    assert group == {c for c in ids if in_holdout(c, 0.05)}  # the same on every call
    # a larger share keeps everyone already held out (growing the group moves no one out)
    assert group <= {c for c in ids if in_holdout(c, 0.10)}
    assert {c for c in ids if in_holdout(c, 0.05, salt="2027")} != group
    assert not any(in_holdout(c, 0.0) for c in ids[:1000])


def test_every_delivery_channel_has_its_consent_rule() -> None:
    from typing import get_args

    for ch in get_args(OfferChannel):
        consent_purpose(ch)  # no KeyError: a new channel must be given a rule
    withdrawn = {"email": {"granted": False}, "sms": {"granted": True}}
    assert not consented(withdrawn, "email") and consented(withdrawn, "sms")
    assert not consented({}, "push") and consented({}, "web")


@given(today=st.integers(0, 5), week=st.integers(0, 10), campaign=st.integers(0, 3))
def test_frequency_caps(today: int, week: int, campaign: int) -> None:
    caps = FrequencyCaps(per_day=2, per_week=5, per_campaign_week=1)
    why = caps.check(today, week, campaign)
    assert (why is None) == (today < 2 and week < 5 and campaign < 1)
    assert why is None or why in SUPPRESSIONS


@pytest.mark.parametrize(
    ("now", "tz", "release"),
    [
        (_ms(2024, 3, 1, 12), "UTC", None),
        (_ms(2024, 3, 1, 21), "UTC", _ms(2024, 3, 2, 8)),
        (_ms(2024, 3, 1, 7, 59), "UTC", _ms(2024, 3, 1, 8)),
        (_ms(2024, 3, 1, 8), "UTC", None),
        # 22:30 in New York is 03:30 UTC: held until 08:00 New York = 13:00 UTC
        (_ms(2024, 3, 2, 3, 30), "America/New_York", _ms(2024, 3, 2, 13)),
        # the night the clocks go forward in Madrid: 08:00 local is 06:00 UTC
        (_ms(2024, 3, 31, 0, 30), "Europe/Madrid", _ms(2024, 3, 31, 6)),
    ],
)
def test_quiet_hours_in_the_customers_time_zone(now: int, tz: str, release: int | None) -> None:
    assert QuietHours(21, 8).release_ms(now, tz) == release


def test_a_daytime_quiet_window() -> None:
    q = QuietHours(start=12, end=14)
    assert q.release_ms(_ms(2024, 3, 1, 13), "UTC") == _ms(2024, 3, 1, 14)
    assert q.release_ms(_ms(2024, 3, 1, 15), "UTC") is None

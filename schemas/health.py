"""The channel-health message omnicanal writes to the channel-health topic (output
contract): a sales channel, one store, or a digital channel's browsing activity collapsed,
degraded or recovered, or an alarm so long that its level is now taken as normal
(``relearning``: a store closed for good).

``message_id`` (key, minute, status) is deterministic: a message re-sent after a crash
carries the same id, so consumers deduplicate on it.

>>> import msgspec
>>> h = msgspec.json.decode(
...     b'{"message_id":"sales:web:29000000:collapsed","key":"sales:web","channel":"web",'
...     b'"status":"collapsed","at":"2025-02-20T10:00:00Z","observed_per_minute":0.0,'
...     b'"expected_per_minute":21.5}', type=ChannelHealthMessage)
>>> h.status, h.expected_per_minute
('collapsed', 21.5)
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import UNSET, Meta, Struct, UnsetType


class ChannelHealthMessage(Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """One change of a channel's (or a store's) health."""

    message_id: Annotated[str, Meta(description="key:minute:status: deduplicate on it")]
    key: Annotated[
        str,
        Meta(
            description="sales:<channel> (sales), store:<location id> (one store's sales), "
            "region:<region> (the sales of a region's stores, OMNICANAL_STORE_REGIONS) or "
            "activity:<channel> (views, searches, cart and checkout events)"
        ),
    ]
    channel: Annotated[str, Meta(description="the channel (store for a store)")]
    location_id: str | UnsetType = UNSET
    region: str | UnsetType = UNSET
    status: Annotated[
        Literal["collapsed", "degraded", "recovered", "relearning"],
        Meta(
            description="relearning: the alarm lasted so long (3 days) that the detector "
            "forgets the old level and learns the new one (a store closed for good)"
        ),
    ]
    at: Annotated[str, Meta(description="RFC 3339 UTC: the minute that confirmed it")]
    observed_per_minute: Annotated[float, Meta(description="events in the last 5 minutes / 5")]
    expected_per_minute: Annotated[
        float, Meta(description="what the same time of the week usually has, per minute")
    ]

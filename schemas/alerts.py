"""The stock alert record omnicanal writes to the stock-alerts topic (output contract).

Every alert has a lifecycle: ``raised`` -> ``updated`` (severity or figures changed
materially) -> ``resolved``, all messages sharing ``alert_id``; ``back_in_stock`` is a
one-off ``raised`` message. ``message_id`` (``alert_id`` + ``-`` + ``seq``) is deterministic:
a message re-sent after a crash carries the same id, so consumers deduplicate on it.

>>> import msgspec
>>> a = msgspec.json.decode(
...     b'{"message_id":"x-1","alert_id":"x","seq":1,"type":"out_of_stock","status":"raised",'
...     b'"severity":"critical","sku":"A","location_id":"store-1","available":0,'
...     b'"as_of":"2024-05-01T10:00:00Z","raised_at":"2024-05-01T10:00:00Z"}',
...     type=StockAlert)
>>> a.type, a.available
('out_of_stock', 0)
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

AlertType = Literal[
    "low_stock", "out_of_stock", "predicted_stockout", "channel_inconsistency", "back_in_stock"
]
Time = Annotated[str, Meta(description="RFC 3339 UTC time (event time, not wall clock)")]


class StockAlert(Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """One message of a stock alert's lifecycle."""

    message_id: Annotated[str, Meta(description="alert_id-seq: deduplicate on it")]
    alert_id: Annotated[str, Meta(description="deterministic id shared by the lifecycle")]
    seq: Annotated[int, Meta(ge=1, description="1 when raised, +1 per later message")]
    type: AlertType
    status: Literal["raised", "updated", "resolved"]
    severity: Literal["info", "warning", "critical"]
    sku: str
    category: str | UnsetType = UNSET
    location_id: Annotated[str, Meta(description="set for alerts about one location")] | (
        UnsetType
    ) = UNSET
    channel: Annotated[str, Meta(description="'online' for the online channels' pool")] | (
        UnsetType
    ) = UNSET
    reason: (
        Annotated[
            Literal["no_stock_behind", "not_listed", "price_mismatch"],
            Meta(description="channel_inconsistency only"),
        ]
        | UnsetType
    ) = UNSET
    available: Annotated[int, Meta(description="units sellable in the scope")] | UnsetType = UNSET
    threshold: Annotated[int, Meta(description="low-stock threshold in force")] | UnsetType = UNSET
    expected_stockout_at: Time | UnsetType = UNSET
    confidence: (
        Annotated[float, Meta(ge=0, le=1, description="P(stock-out within the horizon)")]
        | UnsetType
    ) = UNSET
    rate_per_hour: Annotated[float, Meta(ge=0)] | UnsetType = UNSET
    prices: (
        Annotated[dict[str, int], Meta(description="channel -> price in minor units")] | UnsetType
    ) = UNSET
    currency: str | UnsetType = UNSET
    as_of: Time
    raised_at: Time

"""The offer message omnicanal sends to the channels (output contract).

``offer_id`` is deterministic (customer, campaign and the moment that triggered it): an offer
decided again after a crash carries the same id and the same content, so channels
deduplicate on it. ``propensity`` is the probability with which the policy chose this offer,
kept so that other policies can be evaluated off-line on the same log.

>>> import msgspec
>>> o = msgspec.json.decode(
...     b'{"offer_id":"of-1","customer_id":"C000000000001","campaign_id":"cart-10",'
...     b'"trigger":"cart_abandonment","channel":"email","coupon_code":"5GPRS-JDRM8-S8Q9E-22M21-C",'
...     b'"benefit":{"kind":"percent_off","value":10},"expires_on":"2026-12-09",'
...     b'"reason":"You left 2 items in your cart","decided_at":"2026-12-02T10:00:00Z",'
...     b'"model_version":"rules-1","propensity":1.0,"items":["SKU1","SKU2"]}', type=Offer)
>>> o.channel, o.benefit.value, o.items
('email', 10, ['SKU1', 'SKU2'])
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from schemas.campaigns import Benefit, Trigger
from schemas.events import OfferChannel


class Offer(Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """One personalised offer for one customer, redeemable in every sales channel."""

    offer_id: Annotated[str, Meta(description="deterministic: deduplicate on it")]
    customer_id: Annotated[str, Meta(description="omnicanal's canonical customer id")]
    campaign_id: str
    trigger: Trigger
    channel: Annotated[OfferChannel, Meta(description="where to deliver it")]
    coupon_code: Annotated[str, Meta(description="redeemable once, in store, web or app")]
    benefit: Benefit
    expires_on: Annotated[str, Meta(description="last day (UTC) the coupon is redeemable")]
    reason: Annotated[str, Meta(description="why the customer gets it, to show them")]
    decided_at: Annotated[str, Meta(description="RFC 3339 UTC time of the decision")]
    model_version: Annotated[str, Meta(description="the policy that chose the offer")]
    propensity: Annotated[
        float, Meta(ge=0.0, le=1.0, description="probability the policy chose this offer")
    ]
    items: Annotated[list[str], Meta(max_length=50, description="SKUs it is about")] = []

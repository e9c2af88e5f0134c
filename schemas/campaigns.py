"""The campaign catalogue: what offers a retailer runs, for whom, through which channels.

Marketing writes it (YAML or JSON); omnicanal validates it on load, names the exact place of
every mistake, and reloads it while running. Its JSON Schema is published with the event
contracts, so editors can check a catalogue before it ships.

>>> import msgspec
>>> cat = msgspec.json.decode(b'''{"version": 1, "campaigns": [{"id": "cart-10",
...   "trigger": "cart_abandonment", "benefit": {"kind": "percent_off", "value": 10},
...   "reason": "You left {items} items in your cart", "channels": ["email", "app"],
...   "valid_days": 7, "budget": {"max_offers": 5000}}]}''', type=CampaignCatalogue)
>>> c = cat.campaigns[0]
>>> c.trigger, c.benefit.kind, c.eligibility.min_basket_minor, c.wait_minutes
('cart_abandonment', 'percent_off', 0, 60)
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, get_args

from msgspec import UNSET, Meta, Struct, UnsetType, field

from schemas.events import OfferChannel, SalesChannel

Trigger = Literal[
    "cart_abandonment",
    "browse_abandonment",
    "cross_sell",
    "win_back",
    "back_in_stock",
    "channel_expansion",
]
TRIGGERS: Final = get_args(Trigger)
#: The RFM segments of a profile (``operators/profile.py`` ``rfm``).
Segment = Literal["champion", "loyal", "new", "promising", "at_risk", "hibernating", "prospect"]
SEGMENTS: Final = get_args(Segment)
CampaignId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
Time = Annotated[str, Meta(description="RFC 3339 time with offset")]


class _Strict(Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    pass


class Benefit(_Strict):
    """What the customer gets. ``value``: percent for percent_off (1-90), minor units for
    amount_off, points for points; none for free_shipping."""

    kind: Literal["percent_off", "amount_off", "free_shipping", "points"]
    value: Annotated[int, Meta(ge=0, le=10_000_000)] = 0
    currency: Annotated[str, Meta(pattern=r"^[A-Z]{3}$")] | UnsetType = UNSET


class Eligibility(_Strict):
    """Who may get the offer (every condition must hold; absent: no condition)."""

    segments: list[Segment] | UnsetType = UNSET
    #: the trigger's channel (where the cart, view or purchase happened; for channel
    #: expansion, every channel the customer buys in)
    trigger_channels: list[SalesChannel] | UnsetType = UNSET
    min_basket_minor: Annotated[int, Meta(ge=0)] = 0
    categories: Annotated[list[str], Meta(max_length=100)] | UnsetType = UNSET


class Budget(_Strict):
    """Caps over the campaign's life (absent: no cap)."""

    max_offers: Annotated[int, Meta(ge=1)] | UnsetType = UNSET
    max_redemptions: Annotated[int, Meta(ge=1)] | UnsetType = UNSET


class Campaign(_Strict):
    """One campaign: a trigger, who is eligible, the benefit, where it may be delivered and
    redeemed, for how long, and at what cost."""

    id: CampaignId
    trigger: Trigger
    benefit: Benefit
    #: the offer's reason, shown to the customer: {items}, {category}, {sku} and {store}
    #: (the store the customer chose) are filled in
    reason: Annotated[str, Meta(min_length=1, max_length=200)]
    #: channels the offer may be delivered through (the customer's preferred reachable one
    #: is chosen among them)
    channels: Annotated[list[OfferChannel], Meta(min_length=1)]
    #: days a coupon stays redeemable, in every sales channel
    valid_days: Annotated[int, Meta(ge=1, le=365)]
    eligibility: Eligibility = field(default_factory=Eligibility)
    budget: Budget = field(default_factory=Budget)
    #: minutes the trigger waits before firing (abandonment: time to buy anyway)
    wait_minutes: Annotated[int, Meta(ge=0, le=30 * 24 * 60)] = 60
    #: hours past the wait after which the moment is too old for this campaign (a cart
    #: abandoned days ago, while the campaign had not started or the pipeline was down).
    #: Absent: 72 for carts and browsing, 168 for cross-sell, no limit for the others
    too_late_hours: Annotated[int, Meta(ge=1, le=366 * 24)] | UnsetType = UNSET
    starts_at: Time | UnsetType = UNSET
    ends_at: Time | UnsetType = UNSET
    enabled: bool = True


class CampaignCatalogue(_Strict):
    """Every campaign the pipeline may offer."""

    version: Annotated[int, Meta(ge=1)]
    campaigns: Annotated[list[Campaign], Meta(max_length=1000)]

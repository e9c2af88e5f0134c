"""Event contracts: the single source of truth for every event omnicanal reads.

Each input topic has one contract, a tagged union on ``event_type``. Event types are
unique across contracts, so a JSON-lines file can be routed to topics by type alone.

Conventions, chosen for strictness and speed:

- **Money is in integer minor units** (pence, cents): ``unit_price_minor: 255`` is 2.55.
  Floats never carry money, so there is no rounding and no NaN.
- **Times are RFC 3339 strings with a timezone** (``2024-05-01T10:00:00+02:00``).
- **Optional fields are absent, never null.** An explicit ``null`` is a type error.
- **Unknown fields are rejected.** A new field means a new contract version.
- ``schema_version`` is optional and defaults to the current version (1).

>>> import msgspec
>>> ev = msgspec.json.decode(
...     b'{"event_type":"page_view","event_id":"e1","event_time":"2024-05-01T10:00:00Z",'
...     b'"channel":"web","session_id":"s1","url":"/"}',
...     type=ClickstreamEvent,
... )
>>> type(ev).__name__, ev.channel
('PageView', 'web')
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal, get_args

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

SCHEMA_VERSION: Final = 1

# ---------------------------------------------------------------- reusable field types
Id = Annotated[str, Meta(min_length=1, max_length=128)]
ShortText = Annotated[str, Meta(max_length=512)]
Sku = Annotated[str, Meta(min_length=1, max_length=64)]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]
EventTime = Annotated[
    datetime, Meta(tz=True, description="RFC 3339 date-time with a timezone offset")
]
Quantity = Annotated[int, Meta(ge=1, le=100_000)]
MinorAmount = Annotated[int, Meta(ge=0, le=10_000_000_000, description="integer minor units")]
Version = Annotated[int, Meta(ge=1, le=SCHEMA_VERSION)]
Email = Annotated[str, Meta(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")]
Phone = Annotated[str, Meta(min_length=6, max_length=32, pattern=r"^\+?[0-9 ()./-]+$")]

SalesChannel = Literal["store", "web", "app", "marketplace", "call_centre"]
DigitalChannel = Literal["web", "app"]
OfferChannel = Literal["store", "web", "app", "email", "sms", "push", "call_centre"]
#: Every sales channel, in order.
SALES_CHANNELS: Final[tuple[str, ...]] = get_args(SalesChannel)
#: Sales channels served from the online stock pool: every sales channel but the store.
ONLINE_SALES_CHANNELS: Final = frozenset(SALES_CHANNELS) - {"store"}
#: Channels with an online cart: a purchase there clears the customer's cart.
CART_CHANNELS: Final = frozenset(get_args(DigitalChannel))
LineKind = Literal["product", "shipping", "fee", "discount", "voucher", "sample", "adjustment"]
Category = Annotated[
    str, Meta(min_length=1, max_length=64, description="product category, e.g. 'shoes'")
]
ConsentPurpose = Literal["email", "sms", "push", "in_store"]

TRANSACTION_TYPES: Final = ("sale", "return")
CLICKSTREAM_TYPES: Final = (
    "page_view",
    "product_view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "checkout_started",
    "login",
)
INVENTORY_TYPES: Final = ("stock_snapshot", "stock_adjustment", "price_update")
CUSTOMER_TYPES: Final = ("consent_changed", "home_store_chosen")
OFFER_FEEDBACK_TYPES: Final = (
    "offer_delivered",
    "offer_opened",
    "offer_clicked",
    "offer_redeemed",
    "offer_dismissed",
)


class _Strict(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Base of every contract: unknown fields rejected, absent optionals not re-encoded."""


class CustomerIds(_Strict, kw_only=True):
    """Identifiers of the customer, whichever the channel knows.

    ``email`` and ``phone`` are raw personal data: omnicanal replaces them with keyed
    HMACs as soon as the event is decoded and never stores, logs or dead-letters them.
    """

    loyalty_id: Id | UnsetType = UNSET
    account_id: Id | UnsetType = UNSET
    email: Email | UnsetType = UNSET
    phone: Phone | UnsetType = UNSET
    device_id: Id | UnsetType = UNSET
    cookie_id: Id | UnsetType = UNSET
    card_token: Id | UnsetType = UNSET


class _Event(_Strict, tag_field="event_type", kw_only=True):
    event_id: Id
    event_time: EventTime
    schema_version: Version | UnsetType = UNSET


# ---------------------------------------------------------------- transactions
class TransactionLine(_Strict, kw_only=True):
    """One line of a receipt or order. ``kind`` marks lines that are not products."""

    sku: Sku
    quantity: Quantity
    unit_price_minor: MinorAmount
    discount_minor: MinorAmount | UnsetType = UNSET
    kind: LineKind | UnsetType = UNSET
    description: ShortText | UnsetType = UNSET
    category: Category | UnsetType = UNSET


def line_amount(line: TransactionLine) -> int:
    """Signed amount of one transaction line in minor units (discount lines subtract).

    >>> line_amount(TransactionLine(sku="A", quantity=3, unit_price_minor=250, discount_minor=50))
    700
    >>> line_amount(TransactionLine(sku="D", quantity=1, unit_price_minor=100, kind="discount"))
    -100
    """
    gross: int = line.quantity * line.unit_price_minor
    if line.discount_minor is not UNSET:
        gross -= line.discount_minor
    return -gross if line.kind == "discount" else gross


class _Transaction(_Event, kw_only=True):
    channel: SalesChannel
    lines: Annotated[list[TransactionLine], Meta(min_length=1, max_length=1000)]
    currency: Currency
    location_id: Id | UnsetType = UNSET
    order_id: Id | UnsetType = UNSET
    customer: CustomerIds | UnsetType = UNSET
    coupon_codes: Annotated[list[Id], Meta(max_length=20)] | UnsetType = UNSET


class Sale(_Transaction, tag="sale"):
    """A completed purchase in any channel."""


class Return(_Transaction, tag="return"):
    """Goods returned and refunded; quantities are positive, the type gives the direction."""

    original_order_id: Id | UnsetType = UNSET


TransactionEvent = Sale | Return


# ---------------------------------------------------------------- clickstream
class _Click(_Event, kw_only=True):
    channel: DigitalChannel
    session_id: Id
    device_id: Id | UnsetType = UNSET
    customer: CustomerIds | UnsetType = UNSET


class PageView(_Click, tag="page_view"):
    url: Annotated[str, Meta(max_length=2048)]


class ProductView(_Click, tag="product_view"):
    sku: Sku
    category: Category | UnsetType = UNSET


class Search(_Click, tag="search"):
    query: Annotated[str, Meta(max_length=256)]


class AddToCart(_Click, tag="add_to_cart"):
    sku: Sku
    quantity: Quantity
    category: Category | UnsetType = UNSET


class RemoveFromCart(_Click, tag="remove_from_cart"):
    sku: Sku
    quantity: Quantity


class CheckoutStarted(_Click, tag="checkout_started"):
    pass


class Login(_Click, tag="login"):
    """A sign-in: links the anonymous device/cookie to the account in ``customer``."""


ClickstreamEvent = (
    PageView | ProductView | Search | AddToCart | RemoveFromCart | CheckoutStarted | Login
)


# ---------------------------------------------------------------- inventory
class StockSnapshot(_Event, tag="stock_snapshot"):
    """Counted stock of a SKU at a location; replaces what was known before."""

    sku: Sku
    location_id: Id
    on_hand: Annotated[int, Meta(ge=0, le=100_000_000)]


class StockAdjustment(_Event, tag="stock_adjustment"):
    """A change of stock outside sales: delivery (+), damage, shrinkage, transfer (-)."""

    sku: Sku
    location_id: Id
    delta: Annotated[int, Meta(ge=-100_000_000, le=100_000_000)]
    reason: Literal["delivery", "damage", "shrinkage", "transfer", "correction", "other"]


class PriceUpdate(_Event, tag="price_update"):
    sku: Sku
    channel: SalesChannel
    price_minor: MinorAmount
    currency: Currency
    location_id: Id | UnsetType = UNSET


InventoryEvent = StockSnapshot | StockAdjustment | PriceUpdate


# ---------------------------------------------------------------- offer feedback
class _OfferFeedback(_Event, kw_only=True):
    offer_id: Id
    channel: OfferChannel
    customer: CustomerIds


class OfferDelivered(_OfferFeedback, tag="offer_delivered"):
    pass


class OfferOpened(_OfferFeedback, tag="offer_opened"):
    pass


class OfferClicked(_OfferFeedback, tag="offer_clicked"):
    pass


class OfferRedeemed(_OfferFeedback, tag="offer_redeemed"):
    """The customer used the offer; with its coupon code, the ledger redeems the code (once,
    whichever channel asks first)."""

    order_id: Id | UnsetType = UNSET
    coupon_code: Annotated[str, Meta(min_length=1, max_length=64)] | UnsetType = UNSET


class OfferDismissed(_OfferFeedback, tag="offer_dismissed"):
    pass


OfferFeedbackEvent = OfferDelivered | OfferOpened | OfferClicked | OfferRedeemed | OfferDismissed


# ---------------------------------------------------------------- customer
class Consents(_Strict, kw_only=True):
    """Marketing consents per purpose: true = granted, false = withdrawn; absent = unchanged."""

    email: bool | UnsetType = UNSET
    sms: bool | UnsetType = UNSET
    push: bool | UnsetType = UNSET
    in_store: bool | UnsetType = UNSET


class ConsentChanged(_Event, tag="consent_changed"):
    """The customer granted or withdrew marketing consent; the latest event time wins. The
    channel that asks may also say the customer's time zone (the device's): quiet hours
    are then the customer's own."""

    channel: OfferChannel
    customer: CustomerIds
    consents: Consents
    time_zone: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=64,
                pattern=r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$",
                description="IANA time zone of the customer, e.g. Europe/Madrid",
            ),
        ]
        | UnsetType
    ) = UNSET


class HomeStoreChosen(_Event, tag="home_store_chosen"):
    """The customer picked "my store" (in the app, on the web or at the till); it wins over
    the store derived from purchases. The latest event time wins."""

    channel: OfferChannel
    customer: CustomerIds
    location_id: Id


CustomerEvent = ConsentChanged | HomeStoreChosen

AnyEvent = TransactionEvent | ClickstreamEvent | InventoryEvent | OfferFeedbackEvent | CustomerEvent


class Contract(msgspec.Struct, frozen=True):
    """One input stream: its name, default topic, union type and event types."""

    name: str
    default_topic: str
    union: object
    event_types: tuple[str, ...]


CONTRACTS: Final[dict[str, Contract]] = {
    c.name: c
    for c in (
        Contract("transaction", "omnicanal.transactions", TransactionEvent, TRANSACTION_TYPES),
        Contract("clickstream", "omnicanal.clickstream", ClickstreamEvent, CLICKSTREAM_TYPES),
        Contract("inventory", "omnicanal.inventory", InventoryEvent, INVENTORY_TYPES),
        Contract(
            "offer_feedback",
            "omnicanal.offer-feedback",
            OfferFeedbackEvent,
            OFFER_FEEDBACK_TYPES,
        ),
        Contract("customer", "omnicanal.customers", CustomerEvent, CUSTOMER_TYPES),
    )
}

#: event_type -> contract name, used to route a mixed JSON-lines file to its topics.
CONTRACT_OF_TYPE: Final[dict[str, str]] = {
    t: c.name for c in CONTRACTS.values() for t in c.event_types
}

"""Offer decisions: from a trigger, a customer's profile and the campaign catalogue to one
offer, or to the reason there is none. Pure logic, no I/O; the offers stage reads the
profile and the counters, calls :func:`decide`, and writes what it returns.

The first trigger is **cart abandonment across channels**: items put in a cart in any
channel and not bought, in any channel, within the campaign's wait. A store purchase of the
carted items cancels it (single-channel tools send that customer a coupon for what they
already bought).

>>> cart = {"MUG": (1, 1_000), "LAMP": (2, 2_000)}
>>> abandoned_cart(cart, bought={"MUG": 5_000}, now_ms=2_000 + 3_600_000, wait_ms=3_600_000)
CartTrigger(skus=('LAMP',), units=2, last_added_ms=2000)
>>> abandoned_cart(cart, bought={"MUG": 5_000, "LAMP": 6_000}, now_ms=10**9, wait_ms=60_000)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from operators.coupons import EPOCH, CouponCodec, day_of
from operators.guardrails import FrequencyCaps, Suppression, consented, in_holdout
from operators.profile import build_profile
from schemas.campaigns import Campaign
from schemas.offers import Offer

#: The rule-based policy's version, carried by every offer it decides.
MODEL_VERSION: Final = "rules-1"


@dataclass(frozen=True)
class CartTrigger:
    """The abandoned part of a cart: SKUs not bought since they were added."""

    skus: tuple[str, ...]
    units: int
    #: the newest add of those SKUs: the trigger's identity (a new add is a new trigger)
    last_added_ms: int


def abandoned_cart(
    cart: Mapping[str, tuple[int, int]],
    bought: Mapping[str, int],
    now_ms: int,
    wait_ms: int,
) -> CartTrigger | None:
    """The cart's abandoned SKUs, once the newest add is ``wait_ms`` old: ``cart`` maps SKU to
    (quantity, time added), ``bought`` SKU to its last purchase time in any channel. None
    while the customer may still buy, or when they bought everything they carted."""
    left = {s: qa for s, qa in cart.items() if qa[0] > 0 and bought.get(s, -1) < qa[1]}
    if not left:
        return None
    last = max(added for _, added in left.values())
    if now_ms < last + wait_ms:
        return None
    return CartTrigger(tuple(sorted(left)), sum(q for q, _ in left.values()), last)


def offer_id(customer_id: str, campaign_id: str, trigger_ms: int) -> str:
    """Deterministic: deciding again after a crash gives the same id.

    >>> offer_id("C1", "cart-10", 5) == offer_id("C1", "cart-10", 5) != offer_id("C1", "c", 5)
    True
    """
    key = f"{customer_id}|{campaign_id}|{trigger_ms}".encode()
    return "of-" + hashlib.blake2b(key, digest_size=12).hexdigest()


@dataclass(frozen=True)
class CustomerView:
    """What a decision needs of a profile (:func:`operators.profile.build_profile`)."""

    customer_id: str
    segment: str
    consents: Mapping[str, Mapping[str, Any]]
    preferred_channel: str | None
    #: offers sent today, in the last 7 days, and per campaign in the last 7 days
    sent_today: int = 0
    sent_week: int = 0
    sent_campaign_week: Mapping[str, int] | None = None
    basket_minor: int = 0


@dataclass(frozen=True)
class Decision:
    offer: Offer | None
    #: why there is no offer (one reason, counted), None when there is one
    suppressed: Suppression | None = None
    campaign_id: str | None = None


def decide(
    trigger: CartTrigger,
    customer: CustomerView,
    campaigns: Sequence[Campaign],
    codec: CouponCodec,
    now_ms: int,
    *,
    caps: FrequencyCaps | None = None,
    holdout_share: float = 0.05,
    spent: Mapping[str, int] | None = None,
) -> Decision:
    """The offer for a cart-abandonment trigger: the first enabled, running, eligible
    campaign whose wait has passed, through the first of its channels the customer
    consented to (their preferred channel first). ``spent`` counts the offers each
    campaign has made (its budget).

    >>> from schemas.campaigns import Benefit
    >>> c = Campaign(id="cart-10", trigger="cart_abandonment", channels=["email", "sms"],
    ...     benefit=Benefit(kind="percent_off", value=10), valid_days=7,
    ...     reason="You left {items} items in your cart")
    >>> who = CustomerView("C000000000001", "loyal", {"sms": {"granted": True}}, "web")
    >>> d = decide(CartTrigger(("LAMP",), 2, 1_000), who, [c], CouponCodec(b"k" * 16), 10**12)
    >>> d.offer.channel, d.offer.reason, d.offer.expires_on
    ('sms', 'You left 2 items in your cart', '2001-09-16')
    """
    if in_holdout(customer.customer_id, holdout_share):
        return Decision(None, "holdout")
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    candidates = [
        c
        for c in campaigns
        if c.trigger == "cart_abandonment"
        and _running(c, now)
        and trigger.last_added_ms + wait_ms(c) <= now_ms
    ]
    candidates = [c for c in candidates if _eligible(c, customer)]
    if not candidates:
        return Decision(None, None)  # no campaign for it: nothing to count
    why: Suppression | None = None
    for c in candidates:
        budget = c.budget.max_offers
        if isinstance(budget, int) and (spent or {}).get(c.id, 0) >= budget:
            why = why or "budget"
            continue
        capped = (caps or FrequencyCaps()).check(
            customer.sent_today,
            customer.sent_week,
            (customer.sent_campaign_week or {}).get(c.id, 0),
        )
        if capped is not None:
            return Decision(None, capped, c.id)
        channel = _channel(c, customer)
        if channel is None:
            why = why or "no_consent"
            continue
        oid = offer_id(customer.customer_id, c.id, trigger.last_added_ms)
        expiry = day_of(now_ms) + c.valid_days
        return Decision(
            Offer(
                offer_id=oid,
                customer_id=customer.customer_id,
                campaign_id=c.id,
                trigger=c.trigger,
                channel=channel,  # type: ignore[arg-type]
                coupon_code=codec.issue(oid, expiry),
                benefit=c.benefit,
                expires_on=(EPOCH + timedelta(days=expiry)).date().isoformat(),
                reason=c.reason.format(items=trigger.units, sku=trigger.skus[0], category=""),
                decided_at=now.isoformat().replace("+00:00", "Z"),
                model_version=MODEL_VERSION,
                propensity=1.0,
                items=list(trigger.skus[:50]),
            ),
            None,
            c.id,
        )
    return Decision(None, why)


def _running(c: Campaign, now: datetime) -> bool:
    if not c.enabled:
        return False
    for name, after in (("starts_at", True), ("ends_at", False)):
        value = getattr(c, name)
        if isinstance(value, str):
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if (now < t) if after else (now >= t):
                return False
    return True


def _eligible(c: Campaign, who: CustomerView) -> bool:
    """Segment and basket; a campaign that asks for trigger channels or categories never
    matches a cart (the cart keeps neither: no offer rather than a wrong one)."""
    e = c.eligibility
    if isinstance(e.trigger_channels, list) or isinstance(e.categories, list):
        return False
    if isinstance(e.segments, list) and who.segment not in e.segments:
        return False
    return who.basket_minor >= e.min_basket_minor


def _channel(c: Campaign, who: CustomerView) -> str | None:
    order = sorted(c.channels, key=lambda ch: ch != who.preferred_channel)
    return next((ch for ch in order if consented(who.consents, ch)), None)


def wait_ms(c: Campaign) -> int:
    return c.wait_minutes * 60_000


def cart_campaigns(campaigns: Sequence[Campaign], now_ms: int) -> list[Campaign]:
    """The catalogue's running cart-abandonment campaigns, in catalogue order."""
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    return [c for c in campaigns if c.trigger == "cart_abandonment" and _running(c, now)]


@dataclass(frozen=True)
class OfferCounts:
    """A customer's offers so far (for the caps) and the newest cart add already offered
    for (no second offer for the same trigger)."""

    today: int = 0
    week: int = 0
    campaign_week: Mapping[str, int] | None = None
    cart_fired_ms: int = -1


def offer_counts(fields: Mapping[str, str], today: int) -> OfferCounts:
    """From the stored counters (``d:<day>``, ``c:<campaign>:<day>``, ``cart``).

    >>> c = offer_counts({"d:100": "1", "d:94": "2", "d:93": "5", "c:x:95": "1", "cart": "7"}, 100)
    >>> c.today, c.week, dict(c.campaign_week), c.cart_fired_ms
    (1, 3, {'x': 1}, 7)
    """
    day = week = 0
    per: dict[str, int] = {}
    for f, v in fields.items():
        kind, _, rest = f.partition(":")
        if kind == "cart":
            continue
        camp, _, d = rest.rpartition(":")
        n, age = int(v), today - int(d)
        if not 0 <= age < 7:
            continue
        if kind == "d":
            week += n
            day += n if age == 0 else 0
        elif kind == "c":
            per[camp] = per.get(camp, 0) + n
    return OfferCounts(day, week, per, int(fields.get("cart", -1)))


@dataclass(frozen=True)
class CartState:
    """What the offers stage read of a customer whose cart timer is due."""

    #: None: no profile any more (merged into another customer, or erased)
    customer: CustomerView | None
    #: SKU -> (quantity, time added) of the open cart
    cart: Mapping[str, tuple[int, int]]
    #: SKU -> last purchase time, in any channel
    bought: Mapping[str, int]
    counts: OfferCounts = OfferCounts()


@dataclass(frozen=True)
class TimerOutcome:
    """What to do with a due timer: ``offer`` (send it; the timer goes), ``drop`` (no offer
    for this trigger; ``suppressed`` says why, when it counts) or ``later`` (a campaign
    still waits: look again when the timer's score reaches ``later``)."""

    customer_id: str
    #: the timer's score as read: the write is fenced by it (a new add moved it: not done)
    seen: int
    action: Literal["offer", "drop", "later"]
    offer: Offer | None = None
    suppressed: Suppression | None = None
    later: int = 0
    trigger_ms: int = 0


def fire_cart(
    customer_id: str,
    seen: int,
    state: CartState,
    campaigns: Sequence[Campaign],
    codec: CouponCodec,
    now_ms: int,
    *,
    caps: FrequencyCaps | None = None,
    holdout_share: float = 0.05,
    spent: Mapping[str, int] | None = None,
) -> TimerOutcome:
    """Decide a due cart timer. The stage reads timers whose score is at most ``now``
    minus the shortest wait of ``campaigns`` (:func:`cart_campaigns`); a timer put off to
    the next campaign's wait is scored so that it is read again exactly then.

    >>> from schemas.campaigns import Benefit
    >>> c = Campaign(id="cart-10", trigger="cart_abandonment", channels=["web"],
    ...     benefit=Benefit(kind="percent_off", value=10), valid_days=7, wait_minutes=30,
    ...     reason="You left {items} items in your cart")
    >>> who, codec = CustomerView("C000000000001", "loyal", {}, "web"), CouponCodec(b"k" * 16)
    >>> t = 1_700_000_000_000
    >>> st = CartState(who, {"LAMP": (2, t)}, {"LAMP": t - 5})
    >>> out = fire_cart("C000000000001", t, st, [c], codec, t + 1_800_000)
    >>> out.action, out.offer.reason, out.trigger_ms == t
    ('offer', 'You left 2 items in your cart', True)
    >>> fire_cart("C000000000001", t, st, [c], codec, t + 60_000).action   # 29 minutes early
    'later'
    >>> bought = CartState(who, {"LAMP": (2, t)}, {"LAMP": t + 5})  # bought in the store
    >>> fire_cart("C000000000001", t, bought, [c], codec, t + 1_800_000).action
    'drop'
    """

    def out(action: Literal["offer", "drop", "later"], **kw: Any) -> TimerOutcome:
        return TimerOutcome(customer_id, seen, action, **kw)

    who = state.customer
    if who is None:
        return out("drop")
    trigger = abandoned_cart(state.cart, state.bought, now_ms, wait_ms=0)
    if trigger is None:
        return out("drop")  # bought (in any channel) or emptied: nothing to recover
    if trigger.last_added_ms <= state.counts.cart_fired_ms:
        return out("drop", suppressed="duplicate_trigger")
    if in_holdout(customer_id, holdout_share):
        return out("drop", suppressed="holdout")
    running = cart_campaigns(campaigns, now_ms)
    waiting = [trigger.last_added_ms + wait_ms(c) for c in running]
    later = [t for t in waiting if t > now_ms]
    counts = state.counts
    view = CustomerView(
        who.customer_id,
        who.segment,
        who.consents,
        who.preferred_channel,
        counts.today,
        counts.week,
        counts.campaign_week,
        who.basket_minor,
    )
    d = decide(trigger, view, running, codec, now_ms, caps=caps, holdout_share=0.0, spent=spent)
    if d.offer is not None:
        return out("offer", offer=d.offer, trigger_ms=trigger.last_added_ms)
    if later:  # another campaign may still offer: look again when its wait has passed
        shortest = min(wait_ms(c) for c in running)
        return out("later", later=min(later) - shortest)
    return out("drop", suppressed=d.suppressed)


def customer_view(customer_id: str, fields: dict[str, str], now_ms: int) -> CustomerView | None:
    """What a decision needs of a stored profile hash (None: no profile).

    >>> v = customer_view("C000000000001", {"web:o": "2", "web:s:GBP": "5000", "web:e": "9",
    ...     "web:lo": "1700000000000", "cs:email": "5:1"}, 1_700_000_000_000)
    >>> v.segment, v.preferred_channel, v.basket_minor, v.consents["email"]["granted"]
    ('new', 'web', 2500, True)
    """
    if not fields:
        return None
    p = build_profile(customer_id, fields, [], [], {}, [], now_ms)
    basket = max(p["average_basket_minor"].values(), default=0)
    return CustomerView(
        customer_id, p["segment"], p["consents"], p["preferred_channel"], 0, 0, None, basket
    )

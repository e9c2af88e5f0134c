"""Offer decisions (``operators/offers.py``): a cart abandoned across channels gives one
offer through a consented channel, with a coupon and a reason; a purchase in any channel,
the holdout, consent, frequency caps and budgets each stop it, with their reason."""

from __future__ import annotations

import msgspec

from operators.coupons import CouponCodec, Verified, day_of
from operators.guardrails import FrequencyCaps, in_holdout
from operators.offers import (
    CustomerView,
    OfferCounts,
    TimerOutcome,
    TimerState,
    TriggerEvent,
    abandoned_cart,
    decide,
    down_channels,
    fire_timer,
    offer_id,
)
from schemas.campaigns import Benefit, Budget, Campaign, Eligibility
from schemas.offers import Offer

CODEC = CouponCodec(b"offer-test-key-0123456789")
NOW = 1_800_000_000_000
HOUR = 3_600_000
CART10 = Campaign(
    id="cart-10",
    trigger="cart_abandonment",
    benefit=Benefit(kind="percent_off", value=10),
    reason="You left {items} items in your cart",
    channels=["email", "sms", "push"],
    valid_days=7,
)
#: a customer outside the 5% holdout
ID = next(f"C{i:012d}" for i in range(100) if not in_holdout(f"C{i:012d}"))
NONE_SENT = OfferCounts()
ALL = {"email": {"granted": True}, "sms": {"granted": True}, "push": {"granted": True}}


def who(**kw: object) -> CustomerView:
    base: dict[str, object] = {
        "customer_id": ID,
        "segment": "loyal",
        "consents": ALL,
        "preferred_channel": "sms",
    }
    return CustomerView(**(base | kw))  # type: ignore[arg-type]


TRIGGER = TriggerEvent("cart_abandonment", NOW - 2 * HOUR, ("LAMP", "MUG"), 3)


def test_a_store_purchase_cancels_the_web_cart_and_a_new_add_restarts_the_wait() -> None:
    cart = {"LAMP": (1, NOW - 3 * HOUR), "MUG": (2, NOW - 2 * HOUR)}
    assert abandoned_cart(cart, {}, NOW, wait_ms=HOUR) == TriggerEvent(
        "cart_abandonment", NOW - 2 * HOUR, ("LAMP", "MUG"), 3
    )
    # bought in store after it was carted: not abandoned any more
    assert abandoned_cart(cart, {"LAMP": NOW - HOUR}, NOW, HOUR) == TriggerEvent(
        "cart_abandonment", NOW - 2 * HOUR, ("MUG",), 2
    )
    assert abandoned_cart(cart, {"LAMP": NOW - HOUR, "MUG": NOW - HOUR}, NOW, HOUR) is None
    # bought before it was carted again: still abandoned
    assert abandoned_cart(cart, {"MUG": NOW - 5 * HOUR}, NOW, HOUR) is not None
    # a fresh add: wait again
    assert abandoned_cart(cart | {"RUG": (1, NOW - 60_000)}, {}, NOW, HOUR) is None


def test_the_offer_carries_a_coupon_redeemable_everywhere_and_the_reason() -> None:
    d = decide(TRIGGER, who(), [CART10], CODEC, NOW)
    o = d.offer
    assert o is not None and d.suppressed is None
    assert o.channel == "sms"  # the preferred channel, consented
    assert o.reason == "You left 3 items in your cart"
    assert o.offer_id == offer_id(ID, "cart-10", TRIGGER.at_ms)
    assert isinstance(CODEC.verify(o.coupon_code, today=day_of(NOW) + 7), Verified)
    assert o.items == ["LAMP", "MUG"] and o.propensity == 1.0
    # the message matches its published contract, and deciding again gives the same offer
    assert msgspec.json.decode(msgspec.json.encode(o), type=Offer) == o
    assert decide(TRIGGER, who(), [CART10], CODEC, NOW).offer == o


def test_consent_picks_the_channel_or_suppresses() -> None:
    only_email = {"email": {"granted": True}, "sms": {"granted": False}}
    d = decide(TRIGGER, who(consents=only_email), [CART10], CODEC, NOW)
    assert d.offer is not None and d.offer.channel == "email"
    d = decide(TRIGGER, who(consents={}), [CART10], CODEC, NOW)
    assert d.offer is None and d.suppressed == "no_consent"


def test_holdout_caps_and_budget_each_have_their_reason() -> None:
    held = next(f"C{i:012d}" for i in range(1000) if in_holdout(f"C{i:012d}"))
    assert decide(TRIGGER, who(customer_id=held), [CART10], CODEC, NOW).suppressed == "holdout"
    caps = FrequencyCaps(per_day=1, per_week=3, per_campaign_week=1)
    busy = who(sent_today=1)
    assert decide(TRIGGER, busy, [CART10], CODEC, NOW, caps=caps).suppressed == "frequency_day"
    again = who(sent_campaign_week={"cart-10": 1})
    got = decide(TRIGGER, again, [CART10], CODEC, NOW, caps=caps)
    assert got.suppressed == "frequency_campaign"
    capped = msgspec.structs.replace(CART10, budget=Budget(max_offers=100))
    d = decide(TRIGGER, who(), [capped], CODEC, NOW, spent={"cart-10": 100})
    assert d.offer is None and d.suppressed == "budget"


def test_only_running_eligible_campaigns_offer() -> None:
    off = msgspec.structs.replace(CART10, enabled=False)
    later = msgspec.structs.replace(CART10, starts_at="2099-01-01T00:00:00Z")
    over = msgspec.structs.replace(CART10, ends_at="2020-01-01T00:00:00Z")
    vip = msgspec.structs.replace(CART10, eligibility=Eligibility(segments=["champion"]))
    big = msgspec.structs.replace(CART10, eligibility=Eligibility(min_basket_minor=10_000))
    by_category = msgspec.structs.replace(CART10, eligibility=Eligibility(categories=["toys"]))
    for c in (off, later, over, vip, big, by_category):
        d = decide(TRIGGER, who(basket_minor=5_000), [c], CODEC, NOW)
        assert d.offer is None and d.suppressed is None, c
    # the first eligible campaign wins
    d = decide(TRIGGER, who(basket_minor=5_000), [vip, CART10], CODEC, NOW)
    assert d.offer is not None and d.offer.campaign_id == "cart-10"


def test_a_collapsed_channel_reroutes_the_offer_or_holds_it() -> None:
    # the app is down: push (through the app) is avoided, the next consented channel wins
    d = decide(TRIGGER, who(preferred_channel="push"), [CART10], CODEC, NOW,
               down=down_channels(["app"]))  # fmt: skip
    assert d.offer is not None and d.offer.channel == "email" and d.rerouted
    assert not decide(TRIGGER, who(preferred_channel="email"), [CART10], CODEC, NOW,
                      down=down_channels(["app"])).rerouted  # fmt: skip
    # consented only to push while the app is down: held, not refused
    only_push = who(consents={"push": {"granted": True}})
    d = decide(TRIGGER, only_push, [CART10], CODEC, NOW, down=down_channels(["app"]))
    assert d.offer is None and d.suppressed == "channel_down"
    state = TimerState(only_push, {"LAMP": (1, NOW - 2 * HOUR)}, {})
    out = fire_timer("cart", ID, NOW - 2 * HOUR, state, [CART10], CODEC, NOW,
                     holdout_share=0.0, down=down_channels(["app"]))  # fmt: skip
    assert out.action == "later" and out.held and out.suppressed is None
    # once the app is back, the same trigger gives the offer through push
    back = fire_timer("cart", ID, NOW - 2 * HOUR, state, [CART10], CODEC, NOW, holdout_share=0.0)
    assert back.action == "offer" and back.offer is not None and back.offer.channel == "push"


BACK = Campaign(
    id="back-5",
    trigger="back_in_stock",
    benefit=Benefit(kind="percent_off", value=5),
    reason="{sku} is back",
    channels=["email"],
    valid_days=7,
    wait_minutes=0,
)


def test_a_cart_of_what_is_out_of_stock_makes_the_customer_wait_for_it() -> None:
    cart = {"LAMP": (1, NOW - 2 * HOUR), "MUG": (1, NOW - 2 * HOUR + 5)}
    st = TimerState(who(), cart, {})
    out = fire_timer("cart", ID, 0, st, [CART10], CODEC, NOW, out_of_stock=frozenset({"LAMP"}))
    assert out.action == "offer" and out.offer is not None and out.offer.items == ["MUG"]
    assert out.waits == (("LAMP", NOW - 2 * HOUR),)
    gone = frozenset({"LAMP", "MUG"})
    out = fire_timer("cart", ID, 0, st, [CART10], CODEC, NOW, out_of_stock=gone)
    assert (out.action, out.suppressed) == ("drop", "out_of_stock")
    assert dict(out.waits) == {"LAMP": NOW - 2 * HOUR, "MUG": NOW - 2 * HOUR + 5}


def test_back_in_stock_offers_what_is_back_and_waits_for_the_rest() -> None:
    since = NOW - 3 * HOUR
    st = TimerState(who(), {}, {}, waits={"LAMP": since, "MUG": since + 10})
    # both still out of stock: looked at again later
    out = fire_timer("bis", ID, 0, st, [BACK], CODEC, NOW, out_of_stock=frozenset({"LAMP", "MUG"}))
    assert out.action == "later" and out.later > NOW
    # the lamp is back: an offer about it
    out = fire_timer("bis", ID, 0, st, [BACK], CODEC, NOW, out_of_stock=frozenset({"MUG"}))
    assert out.action == "offer" and out.offer is not None
    assert out.offer.items == ["LAMP"] and out.offer.reason == "LAMP is back"
    assert out.offer.trigger == "back_in_stock" and out.trigger_ms == since
    # bought in the store meanwhile: no longer waited for
    bought = TimerState(who(), {}, {"LAMP": NOW - HOUR}, waits={"LAMP": since})
    assert fire_timer("bis", ID, 0, bought, [BACK], CODEC, NOW).action == "drop"
    # wanted too long ago: forgotten
    old = TimerState(who(), {}, {}, waits={"LAMP": NOW - 15 * 24 * HOUR})
    assert fire_timer("bis", ID, 0, old, [BACK], CODEC, NOW).action == "drop"


BROWSE = Campaign(
    id="browse-5",
    trigger="browse_abandonment",
    benefit=Benefit(kind="percent_off", value=5),
    reason="Still thinking about {sku}?",
    channels=["email"],
    valid_days=3,
    wait_minutes=120,
)


def test_browse_abandonment_reminds_of_what_was_viewed_and_not_carted_or_bought() -> None:
    back = NOW - 3 * HOUR  # the return to a product viewed before
    views = {"LAMP": back, "MUG": back - 10 * 60_000, "OLD": back - 30 * HOUR}
    st = TimerState(who(), {}, {}, views=views)
    out = fire_timer("browse", ID, back, st, [BROWSE], CODEC, NOW)
    assert out.action == "offer" and out.offer is not None
    assert out.offer.items == ["LAMP", "MUG"]  # the newest first; a day-old view is not
    assert out.offer.reason == "Still thinking about LAMP?" and out.trigger_ms == back
    # not before the campaign's wait
    assert fire_timer("browse", ID, back, st, [BROWSE], CODEC, back + HOUR).action == "later"
    # the mug bought in a store since: only the lamp; both bought: nothing
    bought = TimerState(who(), {}, {"MUG": back + 1}, views=views)
    out = fire_timer("browse", ID, back, bought, [BROWSE], CODEC, NOW)
    assert out.offer is not None and out.offer.items == ["LAMP"]
    both = TimerState(who(), {}, {"MUG": back + 1, "LAMP": back + 1}, views=views)
    assert fire_timer("browse", ID, back, both, [BROWSE], CODEC, NOW).action == "drop"
    # carted after coming back: the cart timer's business
    carted = TimerState(who(), {"LAMP": (1, back + 5)}, {}, views=views)
    assert fire_timer("browse", ID, back, carted, [BROWSE], CODEC, NOW).action == "drop"
    # the lamp out of stock online: the mug alone, and the customer waits for the lamp
    out = fire_timer("browse", ID, back, st, [BROWSE], CODEC, NOW, out_of_stock=frozenset({"LAMP"}))
    assert out.offer is not None and out.offer.items == ["MUG"]
    assert out.waits == (("LAMP", back),)


XSELL = Campaign(
    id="camping-extras",
    trigger="cross_sell",
    benefit=Benefit(kind="percent_off", value=15),
    reason="Goes well with your {category}: 15% off {sku}",
    channels=["email"],
    valid_days=14,
    wait_minutes=60,
    eligibility=Eligibility(categories=["camping"]),
)


def test_cross_sell_offers_the_ranked_items_in_stock_and_campaigns_match_their_category() -> None:
    order = NOW - 2 * HOUR
    ranked = [("MAT", "camping"), ("STOVE", "camping"), ("MUG", "kitchen"), ("LAMP", "camping")]
    st = TimerState(who(), {}, {"TENT": order}, suggestions=ranked, ranked_by="xs-12")
    out = fire_timer("xsell", ID, order, st, [XSELL], CODEC, NOW, out_of_stock=frozenset({"STOVE"}))
    assert out.action == "offer" and out.offer is not None
    assert out.offer.items == ["MAT", "MUG", "LAMP"]  # the best 3 in stock online, in order
    assert out.offer.reason == "Goes well with your camping: 15% off MAT"
    assert out.offer.model_version == "rules-1+xs-12" and out.trigger_ms == order
    # not before the wait; nothing ranked (or nothing in stock): no offer
    assert fire_timer("xsell", ID, order, st, [XSELL], CODEC, order + HOUR // 2).action == "later"
    none = TimerState(who(), {}, {"TENT": order})
    assert fire_timer("xsell", ID, order, none, [XSELL], CODEC, NOW).action == "drop"
    # the best item's category decides the campaign: a kitchen suggestion gets none of this one
    kitchen = TimerState(who(), {}, {"TENT": order}, suggestions=[("MUG", "kitchen")])
    assert fire_timer("xsell", ID, order, kitchen, [XSELL], CODEC, NOW).offer is None
    unknown = TimerState(who(), {}, {"TENT": order}, suggestions=[("MUG", "")])
    assert fire_timer("xsell", ID, order, unknown, [XSELL], CODEC, NOW).offer is None
    # a cart campaign that asks for categories still never matches (a cart keeps none)
    cats = msgspec.structs.replace(CART10, eligibility=Eligibility(categories=["camping"]))
    assert decide(TRIGGER, who(), [cats], CODEC, NOW).offer is None


def test_a_ranked_timer_is_ranked_only_when_an_offer_may_follow() -> None:
    """Asked without suggestions, a cross-sell or win-back timer says ``rank`` only when an
    offer may follow; otherwise its answer is the outcome the ranked decision gives."""
    order = NOW - 2 * HOUR
    ranked = [("MAT", "camping")]
    held = next(f"C{i:012d}" for i in range(1000) if in_holdout(f"C{i:012d}"))
    winback = Campaign(
        id="wb", trigger="win_back", benefit=Benefit(kind="points", value=300),
        reason="We miss you", channels=["email"], valid_days=30, wait_minutes=60,
    )  # fmt: skip

    def ask(
        view: CustomerView,
        suggestions: list[tuple[str, str]] | None,
        counts: OfferCounts = NONE_SENT,
        timer: str = "xsell",
        now: int = NOW,
    ) -> TimerOutcome:
        st = TimerState(view, {}, {"TENT": order}, counts, suggestions=suggestions)
        campaign = XSELL if timer == "xsell" else winback
        return fire_timer(timer, view.customer_id, order, st, [campaign], CODEC, now)

    assert ask(who(), None).action == "rank"
    assert ask(who(), ranked).action == "offer"
    cases = [
        (who(consents={}), OfferCounts(), "xsell", NOW),  # no consent
        (who(), OfferCounts(today=1), "xsell", NOW),  # capped today
        (who(), OfferCounts(week=3), "xsell", NOW),  # capped this week
        (who(customer_id=held), OfferCounts(), "xsell", NOW),  # the holdout
        (who(), OfferCounts(fired={"xsell": order}), "xsell", NOW),  # offered for it before
        (who(), OfferCounts(), "xsell", order + HOUR // 2),  # before the campaign's wait
        # win-back: not overdue against the customer's own rhythm (an order a week)
        (who(last_order_ms=order, order_interval_ms=7 * 24 * HOUR), OfferCounts(), "winback",
         NOW),
        (who(last_order_ms=order, consents={}), OfferCounts(), "winback", NOW),
    ]  # fmt: skip
    for view, counts, timer, now in cases:
        first = ask(view, None, counts, timer, now)
        assert first.action in ("drop", "later"), (view, counts, timer)
        assert first == ask(view, ranked, counts, timer, now), (view, counts, timer)
    # a win-back that may go out is ranked; it names what was ranked
    due = who(last_order_ms=order)
    assert ask(due, None, timer="winback").action == "rank"
    offer = ask(due, ranked, timer="winback").offer
    assert offer is not None and offer.items == ["MAT"]


def test_browse_abandonment_campaigns_match_the_viewed_products_category() -> None:
    back = NOW - 3 * HOUR
    toys = msgspec.structs.replace(
        BROWSE,
        eligibility=Eligibility(categories=["toys"]),
        reason="Still thinking about {category}?",
    )
    st = TimerState(who(), {}, {}, views={"LAMP": back}, categories={"LAMP": "toys"})
    out = fire_timer("browse", ID, back, st, [toys], CODEC, NOW)
    assert out.offer is not None and out.offer.reason == "Still thinking about toys?"
    other = TimerState(who(), {}, {}, views={"LAMP": back}, categories={"LAMP": "lamps"})
    assert fire_timer("browse", ID, back, other, [toys], CODEC, NOW).offer is None


def test_a_moment_long_past_is_too_late_for_an_offer() -> None:
    """A cart abandoned days ago (a campaign started since, or the pipeline was down) gets
    no "you left items in your cart" now: dropped as too_late; a cross-sell a week after
    the purchase too. Win-back is about time passing: never too late."""
    day = 24 * HOUR
    for age, action in ((2 * HOUR, "offer"), (3 * day, "offer"), (3 * day + 2 * HOUR, "drop")):
        st = TimerState(who(), {"LAMP": (1, NOW - age)}, {})
        out = fire_timer("cart", ID, NOW - age, st, [CART10], CODEC, NOW, holdout_share=0.0)
        assert out.action == action, age
        assert out.suppressed == ("too_late" if action == "drop" else None)
    xsell = Campaign(id="xs", trigger="cross_sell", benefit=Benefit(kind="percent_off", value=5),
                     reason="{sku}", channels=["email"], valid_days=7, wait_minutes=60)  # fmt: skip
    for age, action in ((6 * day, "offer"), (8 * day, "drop")):
        st = TimerState(who(last_order_ms=NOW - age), {}, {"TENT": NOW - age},
                        suggestions=(("MAT", "camping"),))  # fmt: skip
        out = fire_timer("xsell", ID, NOW - age, st, [xsell], CODEC, NOW, holdout_share=0.0)
        assert out.action == action, age


def test_a_campaign_sets_how_late_is_too_late_for_it() -> None:
    """``too_late_hours`` overrides the default per campaign: a cart campaign for the same
    day only stays out of a cart 5 hours old while the default one offers; a win-back
    campaign may leave customers gone for years alone."""
    quick = msgspec.structs.replace(CART10, id="cart-today", too_late_hours=2)
    st = TimerState(who(), {"LAMP": (1, NOW - 5 * HOUR)}, {})
    out = fire_timer("cart", ID, NOW - 5 * HOUR, st, [quick], CODEC, NOW, holdout_share=0.0)
    assert (out.action, out.suppressed) == ("drop", "too_late")
    both = fire_timer(
        "cart", ID, NOW - 5 * HOUR, st, [quick, CART10], CODEC, NOW, holdout_share=0.0
    )
    assert both.offer is not None and both.offer.campaign_id == "cart-10"
    fresh = TimerState(who(), {"LAMP": (1, NOW - 2 * HOUR)}, {})
    out = fire_timer("cart", ID, NOW - 2 * HOUR, fresh, [quick], CODEC, NOW, holdout_share=0.0)
    assert out.offer is not None and out.offer.campaign_id == "cart-today"
    winback = Campaign(
        id="wb", trigger="win_back", benefit=Benefit(kind="points", value=300),
        reason="We miss you", channels=["email"], valid_days=30, wait_minutes=60,
    )  # fmt: skip
    year = 365 * 24 * HOUR
    half_year = msgspec.structs.replace(winback, too_late_hours=180 * 24)
    for campaign, action in ((winback, "offer"), (half_year, "drop")):
        st = TimerState(who(last_order_ms=NOW - 2 * year), {}, {})
        out = fire_timer(
            "winback", ID, NOW - 2 * year, st, [campaign], CODEC, NOW, holdout_share=0.0
        )
        assert out.action == action, campaign.too_late_hours


def test_each_timer_decides_from_what_the_stage_reads_for_it_and_nothing_else() -> None:
    """The offers stage reads of a customer only the parts ``READS`` names for the timer (a
    win-back reads no cart): blanking every other part never changes a decision."""
    import random

    from operators.offers import READS, TIMERS

    rng = random.Random(11)
    skus = [f"S{i}" for i in range(8)]
    campaigns = [
        Campaign(id=f"c-{t}", trigger=kind, benefit=Benefit(kind="percent_off", value=10),
                 reason="For you", channels=["email", "sms"], valid_days=7, wait_minutes=30)
        for t, kind in TIMERS.items()
    ]  # fmt: skip

    def times(n: int) -> dict[str, int]:
        return {s: NOW - rng.randrange(1, 96) * HOUR for s in rng.sample(skus, n)}

    offers = dict.fromkeys(TIMERS, 0)
    for _ in range(300):
        last = NOW - rng.randrange(1, 90 * 24) * HOUR
        customer = who(last_order_ms=last, order_interval_ms=rng.choice([None, 7 * 24 * HOUR]),
                       orders_by_channel={"web": 2}, chosen_store="S-1")  # fmt: skip
        full = {
            "cart": {s: (rng.randint(1, 3), t) for s, t in times(rng.randint(0, 4)).items()},
            "bought": times(rng.randint(0, 4)),
            "waits": times(rng.randint(0, 3)),
            "views": times(rng.randint(0, 5)),
        }
        suggestions = [(s, "home") for s in rng.sample(skus, rng.randint(0, 3))]
        gone = frozenset(rng.sample(skus, rng.randint(0, 3)))
        seen = NOW - rng.randrange(1, 72) * HOUR
        for timer in TIMERS:
            reads = READS[timer]
            blank = {
                "cart": full["cart"] if "c" in reads else {},
                "bought": full["bought"] if "b" in reads else {},
                "waits": full["waits"] if "w" in reads else {},
                "views": full["views"] if "v" in reads else {},
            }
            outs = [
                fire_timer(timer, ID, seen, TimerState(customer, **parts, suggestions=suggestions),
                           campaigns, CODEC, NOW, holdout_share=0.0, out_of_stock=gone)
                for parts in (full, blank)
            ]  # fmt: skip
            assert outs[0] == outs[1], (timer, full)
            offers[timer] += outs[0].offer is not None
    # every kind offered at least sometimes: the comparison saw real decisions
    assert all(offers.values()), offers


def _view_from_the_profile(cid: str, fields: dict[str, str], now_ms: int) -> CustomerView | None:
    """The decision's view as the 360° profile document states it (how it was first written)."""
    from operators.profile import build_profile

    if not fields:
        return None
    p = build_profile(cid, fields, [], [], {}, [], now_ms, iso=lambda ms: ms)
    lasts = [c["last_order"] for c in p["channels"].values() if c["last_order"] is not None]
    firsts = [c["first_seen"] for c in p["channels"].values() if c["first_seen"] is not None]
    last = max(lasts, default=None)
    interval = None
    if last is not None and firsts and p["orders"] >= 2:
        interval = (last - min(firsts)) // (p["orders"] - 1)
    return CustomerView(
        cid, p["segment"], p["consents"], p["preferred_channel"],
        basket_minor=max(p["average_basket_minor"].values(), default=0),
        last_order_ms=last, order_interval_ms=interval,
        orders_by_channel={ch: c["orders"] for ch, c in p["channels"].items() if c["orders"]},
        chosen_store=p["home_store"] if p["home_store_source"] == "chosen" else None,
        time_zone=p["time_zone"],
        responses=sum(c["offer_responses"] + c["offers_redeemed"] for c in p["channels"].values()),
    )  # fmt: skip


def test_the_decisions_view_of_a_profile_is_what_the_360_profile_says() -> None:
    """``customer_view`` reads the stored fields directly (a decision need not build the
    whole document): on any mix of fields it gives what ``build_profile`` gives."""
    import random

    from operators.offers import customer_view
    from operators.profile_fields import COUNTERS

    rng = random.Random(5)
    day = 86_400_000
    for _ in range(2_000):
        fields: dict[str, str] = {}
        for ch in rng.sample(["web", "app", "store", "email", "sms"], rng.randint(0, 4)):
            for code in rng.sample(sorted(COUNTERS), rng.randint(0, len(COUNTERS))):
                fields[f"{ch}:{code}"] = str(rng.choice([0, 1, 2, 5, 40]))
            for code in ("f", "l", "lo"):
                if rng.random() < 0.6:
                    fields[f"{ch}:{code}"] = str(NOW - rng.randrange(0, 400) * day)
            for cur in rng.sample(["GBP", "EUR"], rng.randint(0, 2)):
                fields[f"{ch}:s:{cur}"] = str(rng.choice([0, 999, 25_000, 300_000]))
            if rng.random() < 0.2:
                fields[f"{ch}:rf:GBP"] = "500"
        for purpose in rng.sample(["email", "sms", "push", "in_store"], rng.randint(0, 4)):
            fields[f"cs:{purpose}"] = f"{rng.randrange(10**12)}:{rng.choice('01')}"
        if rng.random() < 0.3:
            fields["hs"] = f"{NOW}:S-{rng.randrange(9)}"
        if rng.random() < 0.3:
            fields["tz"] = f"{NOW}:Europe/Madrid"
        for k in range(rng.randint(0, 2)):
            fields[f"loc:S-{k}"] = str(rng.randint(1, 9))
            fields[f"cat:toys{k}"] = str(rng.random())
        got = customer_view(ID, fields, NOW)
        assert got == _view_from_the_profile(ID, fields, NOW), fields

"""``omnicanal bench``'s measures of the offers: what one decision costs."""

from __future__ import annotations

import time
from typing import Any

HOUR = 3_600_000


def decision_cost(decisions: int = 20_000, seed: int = 7) -> dict[str, Any]:
    """What one offer decision costs (``operators.offers``: abandoned-cart check, holdout,
    eligibility, caps, consent, coupon code), in-process on generated customers: µs per
    decision, p50 and p99 over ``decisions``, in batches of 100 timed together (a single
    call is below the clock's resolution)."""
    import random

    from operators.coupons import CouponCodec
    from operators.offers import CustomerView, abandoned_cart, decide
    from schemas.campaigns import Benefit, Campaign

    rng = random.Random(seed)
    codec = CouponCodec(b"bench-coupon-key-0123456789")
    campaigns = [
        Campaign(
            id=f"cart-{k}",
            trigger="cart_abandonment",
            benefit=Benefit(kind="percent_off", value=5 + k),
            reason="You left {items} items in your cart",
            channels=["email", "sms", "push"],
            valid_days=7,
        )
        for k in range(5)
    ]
    now = 1_800_000_000_000
    cases = []
    for i in range(decisions):
        cart = {
            f"S{rng.randrange(2000)}": (rng.randint(1, 3), now - rng.randrange(1, 48) * HOUR)
            for _ in range(rng.randint(1, 6))
        }
        bought = {s: now - rng.randrange(72) * HOUR for s in list(cart)[: rng.randint(0, 2)]}
        consents = {p: {"granted": rng.random() < 0.7} for p in ("email", "sms", "push")}
        who = CustomerView(f"C{i:012d}", "loyal", consents, rng.choice(["email", "sms", "web"]))
        cases.append((cart, bought, who))
    per: list[float] = []
    offers = 0
    for k in range(0, decisions, 100):
        t0 = time.perf_counter()
        for cart, bought, who in cases[k : k + 100]:
            trigger = abandoned_cart(cart, bought, now, 3_600_000)
            if trigger is not None:
                offers += decide(trigger, who, campaigns, codec, now).offer is not None
        per.append((time.perf_counter() - t0) / len(cases[k : k + 100]) * 1e6)
    per.sort()
    return {
        "decisions": decisions,
        "offers": offers,
        "us_per_decision_p50": round(per[len(per) // 2], 2),
        "us_per_decision_p99": round(per[min(len(per) - 1, int(len(per) * 0.99))], 2),
    }

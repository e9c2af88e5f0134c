"""``omnicanal bench``'s measures of the offers: what one decision costs, and what one
update of the offer policy's model costs (the model the pipeline learns with)."""

from __future__ import annotations

import copy
import time
from typing import Any

HOUR = 3_600_000


#: passes over the batches of decisions; each batch's fastest is kept (see :func:`decision_cost`)
REPEAT = 5


def decision_cost(decisions: int = 20_000, seed: int = 7) -> dict[str, Any]:
    """What one offer decision costs (``operators.offers``: abandoned-cart check, holdout,
    eligibility, caps, consent, the learnt policy's scores of every eligible campaign, the
    ε-greedy choice, coupon code), in-process on generated customers: µs per decision, p50
    and p99 over ``decisions``, in batches of 100 timed together (a single call is below the
    clock's resolution). All batches are timed :data:`REPEAT` times, in passes a second
    apart, and each batch's fastest timing is kept (``timeit``'s method: a decision changes
    nothing, so the slower timings of the same batch are other processes of a shared
    machine, not the decision); ``*_once`` are the first pass's, interruptions included.
    Then the policy's model update, per outcome learnt, in batches of 100: an update
    changes the model, so each pass learns the same outcomes from its own copy of the same
    model, and each batch's fastest timing is kept as above. Then the cross-sell ranker's:
    one ranking of a basket's candidates, and one update per ranked item learnt
    (:func:`cross_sell_cost`); and the next-basket model's: one basket learnt, one ranking
    (:func:`next_basket_cost`). A cross-sell or win-back decision is a ranking and then
    this decision."""
    import random

    from operators.coupons import CouponCodec
    from operators.offers import CustomerView, abandoned_cart, decide
    from operators.policy import RedemptionModel, offer_context
    from schemas.campaigns import Benefit, Campaign

    rng = random.Random(seed)
    policy = RedemptionModel()
    segments, channels = ("loyal", "new", "at_risk", "champion"), ("email", "sms", "push")

    def outcome() -> tuple[dict[str, float], str, bool]:
        ctx = offer_context(rng.choice(segments), rng.choice(channels), "cart_abandonment",
                            rng.randint(500, 20_000), rng.randint(1, 6), rng.randint(0, 3),
                            rng.randint(0, 5))  # fmt: skip
        return ctx, f"cart-{rng.randrange(5)}", rng.random() < 0.08

    for _ in range(2_000):  # a model that has learnt something: weights for every feature
        policy.learn_one(*outcome())
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
    batches = [cases[k : k + 100] for k in range(0, decisions, 100)]
    passes: list[list[float]] = []  # µs per decision, per pass and batch
    for _ in range(REPEAT):  # the same decisions again: decide() changes nothing
        timed = []
        offers = 0  # the same in every pass
        for batch in batches:
            t0 = time.perf_counter()
            for cart, bought, who in batch:
                trigger = abandoned_cart(cart, bought, now, 3_600_000)
                if trigger is not None:
                    d = decide(trigger, who, campaigns, codec, now, policy=policy)
                    offers += d.offer is not None
            timed.append((time.perf_counter() - t0) / len(batch) * 1e6)
        passes.append(timed)
    per = [min(ts) for ts in zip(*passes, strict=True)]  # per batch, its fastest timing
    once = passes[0]
    learnt = [outcome() for _ in range(decisions)]
    start = copy.deepcopy(policy)
    upd_passes: list[list[float]] = []
    for _ in range(REPEAT):  # the same updates, each pass from a copy of the same model
        model, timed = copy.deepcopy(start), []
        for k in range(0, decisions, 100):
            t0 = time.perf_counter()
            for ctx, campaign, y in learnt[k : k + 100]:
                model.learn_one(ctx, campaign, y)
            timed.append((time.perf_counter() - t0) / len(learnt[k : k + 100]) * 1e6)
        upd_passes.append(timed)
    upd = [min(ts) for ts in zip(*upd_passes, strict=True)]
    return {
        "decisions": decisions,
        "offers": offers,
        "policy": "learnt",
        "us_per_decision_p50": _pct(per, 50),
        "us_per_decision_p99": _pct(per, 99),
        "us_per_decision_p50_once": _pct(once, 50),
        "us_per_decision_p99_once": _pct(once, 99),
        "us_per_model_update_p50": _pct(upd, 50),
        "us_per_model_update_p99": _pct(upd, 99),
        "cross_sell": cross_sell_cost(decisions // 4, seed),
        "next_basket": next_basket_cost(decisions // 20, seed),
    }


def cross_sell_cost(rankings: int = 5_000, seed: int = 7) -> dict[str, Any]:
    """The cross-sell ranker (``operators.cross_sell``), in-process: one ranking of a basket
    of 1-6 items (the 20 most co-bought items of each and 20 best sellers: up to 70
    candidates, scored and sorted), and one model update per ranked item learnt; µs, p50
    and p99 over batches of 50. The co-purchase counts are learnt from 20,000 generated
    baskets of 2,000 SKUs (popular ones more often), as the stage reads them from Redis."""
    import random

    from operators.cross_sell import CoPurchase, CrossSellRanker, Shopper

    rng = random.Random(seed)
    skus = [f"S{i}" for i in range(2_000)]

    def basket() -> list[str]:
        return [skus[min(int(rng.paretovariate(0.8)), 1_999)] for _ in range(rng.randint(1, 6))]

    co = CoPurchase()
    for _ in range(20_000):
        co.learn_one(basket(), {s: f"cat{int(s[1:]) % 40}" for s in skus[:300]})
    ranker = CrossSellRanker()
    cases = []
    for _ in range(rankings):
        b = sorted(set(basket()))
        who = Shopper({f"cat{rng.randrange(40)}": 0.3}, frozenset(basket()), frozenset(),
                      frozenset(basket()))  # fmt: skip
        cases.append((co.view(b), b, who))
    for view, b, who in cases[:500]:  # a ranker that has learnt something
        for _, x, _ in ranker.rank(view, b, who):
            ranker.learn_one(x, rng.random() < 0.05)
    per: list[float] = []
    learnt: list[dict[str, float]] = []
    for k in range(0, rankings, 50):
        t0 = time.perf_counter()
        for view, b, who in cases[k : k + 50]:
            ranked = ranker.rank(view, b, who)
        per.append((time.perf_counter() - t0) / len(cases[k : k + 50]) * 1e6)
        learnt.extend(x for _, x, _ in ranked)
    upd: list[float] = []
    for k in range(0, len(learnt), 50):
        t0 = time.perf_counter()
        for x in learnt[k : k + 50]:
            ranker.learn_one(x, rng.random() < 0.05)
        upd.append((time.perf_counter() - t0) / len(learnt[k : k + 50]) * 1e6)
    return {
        "rankings": rankings,
        "us_per_ranking_p50": _pct(per, 50),
        "us_per_ranking_p99": _pct(per, 99),
        "us_per_ranker_update_p50": _pct(upd, 50),
        "us_per_ranker_update_p99": _pct(upd, 99),
    }


def next_basket_cost(baskets: int = 1_000, seed: int = 7) -> dict[str, Any]:
    """The next-basket preference model (``operators.preferences``) as worker 0 runs it,
    in-process: learning one basket (the customer's kept baskets read into features, the
    candidates bought and 3 sampled per item bought predicted, then learnt) and one ranking
    for a win-back offer (every candidate: the customer's items and 20 best sellers); µs,
    p50 and p99 over batches of 20. Customers have 49 kept baskets of 1-12 items among
    2,000 SKUs, each with a few staples. ``us_per_sale`` is the learning's cost spread over
    every sale: only a stable share of the baskets is learnt."""
    import random

    from operators.cross_sell import CoView
    from operators.preferences import DAY_MS, LEARN_SHARE, PreferenceModel, Purchases

    rng = random.Random(seed)
    skus = [f"S{i}" for i in range(2_000)]

    def sku() -> str:
        return skus[min(int(rng.paretovariate(0.8)), 1_999)]

    counts = {s: 2_000 // (i + 1) + 1 for i, s in enumerate(skus)}
    crowd = CoView(100_000, counts, {}, category={s: f"cat{i % 40}" for i, s in enumerate(skus)},
                   popular=skus[:20])  # fmt: skip
    cases = []
    for c in range(baskets):
        staples = [sku() for _ in range(4)]
        kept = []
        for w in range(50):
            items = {s for s in staples if rng.random() < 0.5} | {
                sku() for _ in range(rng.randint(1, 8))
            }
            kept.append((w * 3 * DAY_MS, sorted(items)))
        cases.append((f"C{c}", kept))
    model = PreferenceModel()
    for cid, kept in cases[: baskets // 5]:  # a model that has learnt something
        model.learn_one(cid, Purchases(kept[:-1]), kept[-1], crowd)
    learn: list[float] = []
    rank: list[float] = []
    for k in range(0, baskets, 20):
        batch = cases[k : k + 20]
        t0 = time.perf_counter()
        for cid, kept in batch:
            model.learn_one(cid, Purchases(kept[:-1]), kept[-1], crowd)
        learn.append((time.perf_counter() - t0) / len(batch) * 1e6)
        t0 = time.perf_counter()
        for _, kept in batch:
            model.rank(Purchases(kept), 150 * DAY_MS, crowd, 6)
        rank.append((time.perf_counter() - t0) / len(batch) * 1e6)
    return {
        "baskets": baskets,
        "learn_share": LEARN_SHARE,
        "us_per_basket_learnt_p50": _pct(learn, 50),
        "us_per_basket_learnt_p99": _pct(learn, 99),
        "us_per_sale": round(_pct(learn, 50) * LEARN_SHARE, 2),
        "us_per_ranking_p50": _pct(rank, 50),
        "us_per_ranking_p99": _pct(rank, 99),
    }


def _pct(xs: list[float], q: int) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, len(s) * q // 100)], 2)

"""The check suite of the River models (``operators/policy.py``, ``operators/preferences.py``,
``operators/cross_sell.py``).

Unlike the stream's small learners (``tests/test_learners.py``), an SGD model depends on the
order it learns in, so it cannot merge; what it must do instead: learn something real
(progressive validation beats the constant baseline), leave its inputs alone, be the same
model for the same stream (a replay decides the same offers), and survive its stored form
mid-stream, so that a worker restored from a checkpoint goes on exactly as if it had never
stopped."""

from __future__ import annotations

import math
import random
from typing import Any

import orjson
import pytest

from operators.cross_sell import CoPurchase, CoView
from operators.policy import RedemptionModel, log_loss, offer_context
from operators.preferences import Basket, PreferenceModel, Purchases

SEGMENTS = ("loyal", "new", "at_risk")
CAMPAIGNS = ("cart-10", "points-200")


def _outcome(rng: random.Random) -> tuple[dict[str, float], str, bool]:
    """Loyal customers redeem points, new ones percentages; both rarely otherwise."""
    seg, camp = rng.choice(SEGMENTS), rng.choice(CAMPAIGNS)
    ctx = offer_context(seg, rng.choice(("email", "sms")), "cart_abandonment",
                        rng.randint(500, 9000), rng.randint(1, 4), rng.randint(0, 2))  # fmt: skip
    good = (seg, camp) in {("loyal", "points-200"), ("new", "cart-10")}
    return ctx, camp, rng.random() < (0.6 if good else 0.05)


def _stream(n: int, seed: int = 3) -> list[tuple[dict[str, float], str, bool]]:
    rng = random.Random(seed)
    return [_outcome(rng) for _ in range(n)]


def test_the_redemption_model_learns_what_the_baseline_cannot() -> None:
    m, seen, yes = RedemptionModel(), 0, 0
    model_loss = base_loss = 0.0
    for ctx, camp, y in _stream(6000):
        rate = (yes + 1) / (seen + 2)  # the constant baseline: the redemption rate so far
        model_loss += log_loss(m.predict_one(ctx, camp), y)
        base_loss += log_loss(rate, y)
        m.learn_one(ctx, camp, y)
        seen, yes = seen + 1, yes + y
    assert model_loss < 0.85 * base_loss, (model_loss / seen, base_loss / seen)
    loyal = offer_context("loyal", "email", "cart_abandonment", 3000, 2, 0)
    assert m.predict_one(loyal, "points-200") > 2 * m.predict_one(loyal, "cart-10")


def test_the_redemption_model_knows_nothing_before_it_learns_and_leaves_inputs_alone() -> None:
    m = RedemptionModel()
    ctx, camp, y = _stream(1)[0]
    assert m.predict_one(ctx, camp) == 0.5
    before = dict(ctx)
    m.learn_one(ctx, camp, y)
    m.predict_one(ctx, camp)
    assert ctx == before and m.version == "lr-1"


def test_the_redemption_model_restored_mid_stream_goes_on_as_if_it_never_stopped() -> None:
    stream = _stream(800)
    straight, first = RedemptionModel(), RedemptionModel()
    for obs in stream:
        straight.learn_one(*obs)
    for obs in stream[:400]:
        first.learn_one(*obs)
    restored = RedemptionModel.from_state(orjson.loads(orjson.dumps(first.to_state())))
    for obs in stream[400:]:
        restored.learn_one(*obs)
    for ctx, camp, _ in _stream(50, seed=9):
        assert math.isclose(restored.predict_one(ctx, camp), straight.predict_one(ctx, camp),
                            rel_tol=1e-9)  # fmt: skip
    assert restored.to_state() == straight.to_state()


def test_scoring_every_campaign_at_once_is_predicting_each_even_while_learning() -> None:
    """The decisions' fast path (``scores``) reads a copy of the weights: it must be made
    again after each outcome learnt, or decisions would use a stale model."""
    m = RedemptionModel()
    campaigns = [*CAMPAIGNS, "never-learnt"]
    for i, (ctx, camp, y) in enumerate(_stream(300)):
        if i % 7 == 0:
            for c, p in zip(campaigns, m.scores(ctx, campaigns), strict=True):
                assert math.isclose(p, m.predict_one(ctx, c), rel_tol=1e-12, abs_tol=1e-15)
        m.learn_one(ctx, camp, y)
    restored = RedemptionModel.from_state(m.to_state())
    ctx = _stream(1, seed=5)[0][0]
    assert restored.scores(ctx, campaigns) == m.scores(ctx, campaigns)


def test_the_same_stream_learns_the_same_models() -> None:
    a, b = RedemptionModel(), RedemptionModel()
    for obs in _stream(300):
        a.learn_one(*obs)
        b.learn_one(*obs)
    assert a.to_state() == b.to_state()
    pa, pb = PreferenceModel(), PreferenceModel()
    _replay(pa, _baskets())
    _replay(pb, _baskets())
    assert pa.weights() == pb.weights() and pa.log_loss == pb.log_loss


def test_the_preference_model_goes_on_from_its_checkpoint_as_if_it_never_stopped() -> None:
    baskets = _baskets()
    whole = PreferenceModel()
    _replay(whole, baskets)
    first = PreferenceModel()
    crowd, kept = _replay(first, baskets[:900])
    restored = PreferenceModel.from_state(orjson.loads(orjson.dumps(first.to_state())))
    _replay(restored, baskets[900:], crowd, kept)
    assert restored.weights() == whole.weights() and restored.learnt == whole.learnt
    assert restored.log_loss == pytest.approx(whole.log_loss, rel=1e-12)


def _baskets(customers: int = 150, rounds: int = 12, seed: int = 5) -> list[tuple[Any, ...]]:
    """Each customer has three staples bought most weeks, among 60 items with a popular
    head: their next basket is theirs, not the crowd's."""
    rng = random.Random(seed)
    items = [f"I{i:02d}" for i in range(60)]
    staples = {c: rng.sample(items[10:], 3) for c in range(customers)}
    out = []
    for week in range(rounds):
        for c in range(customers):
            basket = {s for s in staples[c] if rng.random() < 0.7}
            basket |= {rng.choice(items[:10]) for _ in range(2)}  # popular items
            out.append((f"C{c}", sorted(basket), week * 7 * 86_400_000 + c))
    return out


def _replay(
    m: PreferenceModel,
    baskets: list[tuple[Any, ...]],
    crowd: CoPurchase | None = None,
    kept: dict[str, list[Basket]] | None = None,
) -> tuple[CoPurchase, dict[str, list[Basket]]]:
    """Learn every basket as the pipeline does: from the customer's kept baskets before it,
    with the crowd's counts as they were."""
    crowd = crowd or CoPurchase()
    kept = {} if kept is None else kept
    for customer, items, ts in baskets:
        mine = kept.setdefault(customer, [])
        view = CoView(crowd.baskets, dict(crowd.items), {}, popular=_best(crowd))
        m.learn_one(customer, Purchases(mine), (ts, items), view)
        crowd.learn_one(items)
        mine.append((ts, items))
    return crowd, kept


def _best(crowd: CoPurchase, n: int = 20) -> list[str]:
    return sorted(crowd.items, key=lambda i: (-crowd.items[i], i))[:n]


def test_the_preference_model_ranks_each_customers_own_items_first() -> None:
    baskets = _baskets()
    m = PreferenceModel()
    crowd, kept = _replay(m, baskets[:-150])
    top = _best(crowd, 3)
    view = CoView(crowd.baskets, crowd.items, {}, popular=_best(crowd))
    hits = popular_hits = 0
    for customer, basket, ts in baskets[-150:]:
        ranked = m.rank(Purchases(kept[customer]), ts, view, k=3)
        hits += len(set(ranked) & set(basket))
        popular_hits += len(set(top) & set(basket))
    assert hits > 1.5 * popular_hits, (hits, popular_hits)
    assert m.log_loss < math.log(2)  # better than a coin on what it was asked


def _ranked_stream(n: int, seed: int = 4) -> list[tuple[dict[str, float], bool]]:
    """Ranked items as the cross-sell ranker learns them: bought next mostly when they go
    well with the basket and suit the customer's category interest."""
    from operators.cross_sell import CoPurchase, Shopper, features

    rng = random.Random(seed)
    co = CoPurchase()
    skus = [f"S{i}" for i in range(40)]
    for _ in range(2000):
        co.learn_one(rng.sample(skus, rng.randint(2, 4)), {s: f"c{int(s[1:]) % 5}" for s in skus})
    out = []
    for _ in range(n):
        basket = rng.sample(skus, 2)
        view = co.view(basket)
        sku = rng.choice([s for s in skus if s not in basket])
        who = Shopper({f"c{rng.randrange(5)}": 0.8}, owned=frozenset(rng.sample(skus, 3)))
        x = features(view, basket, sku, who)
        p = 0.02 + 0.5 * x.get("category", 0.0) + 0.3 * x["conf"]
        out.append((x, rng.random() < p))
    return out


def test_the_cross_sell_ranker_passes_the_same_checks() -> None:
    from operators.cross_sell import CrossSellRanker

    stream = _ranked_stream(4000)
    m, seen, yes, model_loss, base_loss = CrossSellRanker(), 0, 0, 0.0, 0.0
    x0 = dict(stream[0][0])
    assert m.predict_one(stream[0][0]) == 0.5  # nothing learnt: nothing known
    for x, y in stream:
        model_loss += log_loss(m.predict_one(x), y)
        base_loss += log_loss((yes + 1) / (seen + 2), y)
        m.learn_one(x, y)
        seen, yes = seen + 1, yes + y
    assert stream[0][0] == x0  # inputs left alone
    assert model_loss < 0.9 * base_loss, (model_loss / seen, base_loss / seen)
    half = CrossSellRanker()
    for x, y in stream[:2000]:
        half.learn_one(x, y)
    restored = CrossSellRanker.from_state(orjson.loads(orjson.dumps(half.to_state())))
    again = CrossSellRanker()
    for x, y in stream:
        again.learn_one(x, y)
    for x, y in stream[2000:]:
        restored.learn_one(x, y)
    assert restored.to_state() == again.to_state() == m.to_state()  # the same stream, model

"""The cross-sell ranker's pure logic: its fast scoring equals River's prediction on the
features it keeps, it ranks exactly as sorting every candidate by that prediction would, and
it learns what a stream teaches (a customer's category interest, from any channel)."""

from __future__ import annotations

import random

import pytest

from operators.cross_sell import (
    _FEATURES,
    CoPurchase,
    CrossSellRanker,
    Shopper,
    candidates,
    features,
    labelled,
)


def _setup(seed: int = 1) -> tuple[CoPurchase, CrossSellRanker, random.Random]:
    rng = random.Random(seed)
    co = CoPurchase()
    skus = [f"S{i:02d}" for i in range(60)]
    cats = {s: f"c{int(s[1:]) % 4}" for s in skus}
    for _ in range(3000):
        b = rng.sample(skus, rng.randint(2, 5))
        co.learn_one(b, {s: cats[s] for s in b})
    co.learn_return(["S01", "S02", "S01"])
    ranker = CrossSellRanker()
    who = Shopper({"c1": 0.7, "c2": 0.3}, frozenset({"S05"}), frozenset({"S07"}),
                  frozenset({"S09", "S11"}))  # fmt: skip
    for _ in range(100):
        basket = rng.sample(skus, 3)
        for sku, x, _ in ranker.rank(co.view(basket), basket, who):
            ranker.learn_one(x, cats[sku] == "c1" or rng.random() < 0.05)
    return co, ranker, rng


def test_fast_scores_equal_river_and_the_ranking_is_a_sort_of_every_candidate() -> None:
    co, ranker, rng = _setup()
    who = Shopper({"c1": 0.7, "c3": 0.1}, frozenset({"S05", "S20"}), frozenset({"S07"}),
                  frozenset({"S09", "S30"}))  # fmt: skip
    for _ in range(50):
        basket = sorted(rng.sample([f"S{i:02d}" for i in range(60)], rng.randint(1, 4)))
        view = co.view(basket)
        ranked = ranker.rank(view, basket, who, k=100)
        for sku, x, p in ranked:
            assert x == features(view, basket, sku, who)
            assert p == pytest.approx(ranker.predict_one(x), rel=1e-12, abs=1e-15)
            assert set(x) <= set(_FEATURES)  # a new feature must be scored by rank too
        every = candidates(view, basket) + [
            s for s in view.popular if s not in basket and s not in candidates(view, basket)
        ]
        slow = sorted(
            every,
            key=lambda s: (-ranker.predict_one(features(view, basket, s, who)),
                           -features(view, basket, s, who)["conf"], s),
        )  # fmt: skip
        assert [s for s, _, _ in ranked] == slow


def test_it_learns_the_customers_category_interest() -> None:
    _, ranker, _ = _setup()
    w = ranker.model.weights
    assert w["category"] > 0.5  # bought: the items of the category the customer likes
    co, _, _ = _setup(2)
    view = co.view(["S00"])
    fan = Shopper({"c1": 1.0})
    top = [s for s, _, _ in ranker.rank(view, ["S00"], fan, k=5)]
    assert all(int(s[1:]) % 4 == 1 for s in top), top


def test_labels_come_from_any_later_purchase() -> None:
    ranking = [("A", {"conf": 0.5}), ("B", {"conf": 0.2}), ("C", {"conf": 0.1})]
    got = labelled(ranking, 100, {"A": 150, "B": 100, "D": 200})
    assert [y for _, y in got] == [True, False, False]  # B bought at the ranking, not after

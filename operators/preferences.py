"""Customer preferences: which items a customer is likely to buy next, learnt online from
every purchase in every channel. Pure logic, no I/O.

Two parts:

- :class:`PurchaseHistory`, the statistics the model reads: per customer and item, how
  often and how recently it was bought (counts and decayed counts with half-lives of 7 and
  60 days), per customer and category, and per item, its popularity and how often it is
  bought again. Counts add up, so two histories merge exactly.
- :class:`PreferenceModel`, a River ``LogisticRegression`` over features of a (customer,
  candidate item) pair. It learns from each basket, predict-then-learn: the items bought
  are positives, candidates not bought (sampled) negatives, since a purchase log has no
  explicit dislikes. It ranks the customer's own items and the popular ones, so that it
  learns both "buys it again" (recency, the item's repeat rate) and "will try it"
  (category affinity, popularity).

>>> m = PreferenceModel(seed=1)
>>> day = 86_400_000
>>> for d in range(12):
...     m.learn_basket("ann", ["milk", "bread"] if d % 2 else ["milk"], d * day)
...     m.learn_basket("bob", ["beer"], d * day)
>>> m.rank("ann", 12 * day, k=2)
['milk', 'bread']
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

from river import linear_model, optim

DAY_MS: Final = 86_400_000
#: half-lives of the decayed purchase counts, in days
HALF_LIVES: Final = (7.0, 60.0)
#: popular items every ranking considers besides the customer's own
POPULAR: Final = 100


class _ItemStats:
    """One customer's purchases of one item (decayed counts are as of ``last``)."""

    __slots__ = ("count", "dec", "first", "last")

    def __init__(self) -> None:
        self.count = 0
        self.first = -1
        self.last = 0
        self.dec = [0.0] * len(HALF_LIVES)


def _decay(value: float, dt_ms: int, half_life_days: float) -> float:
    return value * 2.0 ** (-dt_ms / (half_life_days * DAY_MS))


class PurchaseHistory:
    """Purchase statistics per customer, item and category (see the module docstring)."""

    def __init__(self, category_of: Callable[[str], str | None] | None = None) -> None:
        self.items: dict[str, dict[str, _ItemStats]] = {}
        self.baskets: dict[str, int] = {}
        self.categories: dict[str, dict[str, float]] = {}
        #: item -> baskets it was in, and how many of those were a repeat for the customer
        self.popularity: dict[str, int] = {}
        self.repeats: dict[str, int] = {}
        self._category_of = category_of or (lambda item: None)
        self._top: list[str] = []
        self._top_dirty = 0

    def learn_basket(self, customer: str, items: Iterable[str], ts_ms: int) -> None:
        own = self.items.setdefault(customer, {})
        self.baskets[customer] = self.baskets.get(customer, 0) + 1
        cats = self.categories.setdefault(customer, {})
        for item in sorted(set(items)):  # sorted: the same stream, the same model
            st = own.get(item)
            if st is None:
                st = own[item] = _ItemStats()
            else:
                self.repeats[item] = self.repeats.get(item, 0) + 1
            dt = max(0, ts_ms - st.last)
            st.dec = [_decay(v, dt, h) + 1.0 for v, h in zip(st.dec, HALF_LIVES, strict=True)]
            st.count += 1
            st.first = ts_ms if st.first < 0 else min(st.first, ts_ms)
            st.last = max(st.last, ts_ms)
            self.popularity[item] = self.popularity.get(item, 0) + 1
            cat = self._category_of(item)
            if cat is not None:
                cats[cat] = cats.get(cat, 0.0) + 1.0
        self._top_dirty += 1

    def top(self, n: int = POPULAR) -> list[str]:
        """The ``n`` most popular items (recomputed every 1,000 baskets)."""
        if self._top_dirty >= 1000 or len(self._top) < min(n, len(self.popularity)):
            self._top = sorted(self.popularity, key=lambda i: (-self.popularity[i], i))[:n]
            self._top_dirty = 0
        return self._top[:n]

    def features(self, customer: str, item: str, now_ms: int) -> dict[str, float]:
        """What the model knows of ``customer`` and ``item`` at ``now_ms``."""
        own = self.items.get(customer, {})
        n = self.baskets.get(customer, 0)
        pop = self.popularity.get(item, 0)
        x = {
            "pop": math.log1p(pop) / 10.0,
            "repeat_rate": self.repeats.get(item, 0) / (pop + 10.0),
            "baskets": math.log1p(n) / 5.0,
        }
        cat = self._category_of(item)
        if cat is not None and n:
            cats = self.categories.get(customer, {})
            x["category_share"] = cats.get(cat, 0.0) / sum(cats.values() or [1.0])
        st = own.get(item)
        if st is None:
            x["new"] = 1.0
            x["new_pop"] = x["pop"]
            x["new_category"] = x.get("category_share", 0.0)
            return x
        dt = max(0, now_ms - st.last)
        x["share"] = st.count / n
        x["sqrt_share"] = math.sqrt(st.count / n)
        x["own_repeat_rate"] = x["repeat_rate"]
        if st.count >= 2:  # the customer's own rhythm for this item: is it due again?
            interval = (st.last - st.first) / (st.count - 1)
            due = math.log((dt + DAY_MS) / (interval + DAY_MS))
            x["due"] = max(-3.0, min(3.0, due)) / 3.0
            x["due_abs"] = abs(x["due"])
        x["log_count"] = math.log1p(st.count) / 3.0
        x["recency"] = math.log1p(dt / DAY_MS) / 5.0
        for v, h in zip(st.dec, HALF_LIVES, strict=True):
            x[f"dec{h:g}"] = math.log1p(_decay(v, dt, h)) / 3.0
        return x

    def candidates(self, customer: str, popular: int = POPULAR) -> list[str]:
        """The customer's own items, then the popular ones they never bought."""
        own = self.items.get(customer, {})
        return list(own) + [i for i in self.top(popular) if i not in own]

    def top_frequency(self, customer: str, k: int) -> list[str]:
        """P-TopFreq: the customer's ``k`` most bought items (ties: the most recent)."""
        own = self.items.get(customer, {})
        return sorted(own, key=lambda i: (-own[i].count, -own[i].last, i))[:k]


class PreferenceModel:
    """Ranks the items a customer is likely to buy next (see the module docstring).

    ``negatives`` candidates not bought are sampled per item bought (seeded: the same
    stream learns the same model)."""

    def __init__(
        self,
        *,
        category_of: Callable[[str], str | None] | None = None,
        negatives: int = 3,
        learning_rate: float = 0.05,
        seed: int = 0,
    ) -> None:
        self.history = PurchaseHistory(category_of)
        self.model = linear_model.LogisticRegression(optimizer=optim.SGD(learning_rate))
        self.negatives = negatives
        self._rng = random.Random(seed)
        #: progressive validation: log-loss of each prediction made before learning
        self.log_loss_sum = 0.0
        self.learnt = 0

    def learn_basket(self, customer: str, items: Sequence[str], ts_ms: int) -> None:
        """Learn from one basket (predict first: progressive validation), then count it."""
        h = self.history
        bought = set(items)
        # Learn on the candidates the ranking will see: an item bought from outside them
        # (new to the customer and not popular) would teach "unknown items sell".
        cands = h.candidates(customer)
        pos = [i for i in cands if i in bought]
        pool = [i for i in cands if i not in bought]
        k = min(len(pool), self.negatives * max(1, len(pos)))
        sample = [(i, True) for i in pos] + [(i, False) for i in self._rng.sample(pool, k)]
        if h.baskets.get(customer):  # a first basket teaches nothing about the customer
            for item, y in sample:
                x = h.features(customer, item, ts_ms)
                p = min(max(self.model.predict_proba_one(x)[True], 1e-7), 1 - 1e-7)
                self.log_loss_sum -= math.log(p if y else 1 - p)
                self.model.learn_one(x, y)
                self.learnt += 1
        h.learn_basket(customer, bought, ts_ms)

    def scores(self, customer: str, now_ms: int, candidates: Iterable[str]) -> dict[str, float]:
        h, predict = self.history, self.model.predict_proba_one
        return {i: predict(h.features(customer, i, now_ms))[True] for i in candidates}

    def rank(self, customer: str, now_ms: int, k: int = 10) -> list[str]:
        """The ``k`` items the customer is most likely to buy next."""
        s = self.scores(customer, now_ms, self.history.candidates(customer))
        return sorted(s, key=lambda i: (-s[i], i))[:k]

    @property
    def log_loss(self) -> float:
        """Mean progressive-validation log-loss so far."""
        return self.log_loss_sum / self.learnt if self.learnt else math.nan

    def weights(self) -> Mapping[str, float]:
        return dict(self.model.weights)

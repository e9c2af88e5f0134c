"""Customer preferences: which items a customer is likely to buy next, learnt online from
every purchase in every channel. Pure logic, no I/O.

The model reads two things, both kept in Redis by the pipeline and replayed the same way
by ``omnicanal evaluate recommendations``:

- the customer's last :data:`HISTORY_BASKETS` baskets, from any channel
  (:class:`Purchases`: per item how often and how recently it was bought, decayed counts
  with half-lives of 7 and 60 days, the customer's own rhythm for it; per category, how
  much of what they buy is in it);
- what every customer buys (:class:`operators.cross_sell.CoView`: baskets per item, the
  best sellers, items' categories; the co-purchase counts cross-sell keeps).

:class:`PreferenceModel` is a River ``LogisticRegression`` over features of a (customer,
candidate item) pair. It learns from each basket, predict-then-learn: the candidates
bought are positives, candidates not bought (sampled) negatives, since a purchase log has
no explicit dislikes. It ranks the customer's own items and the best sellers, so it learns
both "buys it again" (recency, rhythm) and "will try it" (category affinity, popularity).

>>> from operators.cross_sell import CoView
>>> day = 86_400_000
>>> ann = [(d * day, ("bread", "milk") if d % 2 else ("milk",)) for d in range(12)]
>>> crowd = CoView(100, {"milk": 40, "bread": 20, "beer": 60}, {}, popular=("beer", "milk"))
>>> m = PreferenceModel()
>>> for d in range(1, 12):
...     _ = m.learn_one("ann", Purchases(ann[:d]), ann[d], crowd)
>>> m.rank(Purchases(ann), 12 * day, crowd, k=2)
['milk', 'bread']
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import orjson
from river import linear_model, optim

from operators.cross_sell import CoView
from operators.policy import lr_from_state, lr_to_state

DAY_MS: Final = 86_400_000
#: half-lives of the decayed purchase counts, in days
HALF_LIVES: Final = (7.0, 60.0)
#: baskets kept per customer (the newest): what the model knows of them
HISTORY_BASKETS: Final = 50
#: distinct items kept per basket (a bulk order keeps its first ones, in SKU order)
BASKET_ITEMS: Final = 50
#: bytes of a kept basket's SKUs as JSON, at most: a basket of long SKUs full of escapes keeps
#: its first ones (the batch script refuses more than twice this, a bug)
BASKET_BYTES: Final = 4096
#: a basket as the model reads it: (time in ms, its distinct SKUs)
Basket = tuple[int, Sequence[str]]
#: the share of baskets learnt from (every basket is kept in the history): learning costs
#: about 140 µs per basket, and a model of a dozen weights needs far fewer examples (on
#: real baskets a tenth learns as well as all: README, Preferences)
LEARN_SHARE: Final = 0.1


def basket_json(skus: Sequence[str]) -> str:
    """A basket's SKUs as the batch script keeps them: JSON, at most :data:`BASKET_BYTES`
    bytes (the first SKUs, in order, that fit).

    >>> basket_json(["MAT", "TENT"])
    '["MAT","TENT"]'
    >>> long = basket_json(["\x01" * 64] * 50)  # each character escaped as \u0001
    >>> len(long.encode()) <= BASKET_BYTES, long.count(",") + 1
    (True, 10)
    """
    raw = orjson.dumps(list(skus))
    if len(raw) <= BASKET_BYTES:
        return raw.decode()
    kept: list[str] = []
    size = 2
    for sku in skus:
        size += len(orjson.dumps(sku)) + (1 if kept else 0)
        if size > BASKET_BYTES:
            break
        kept.append(sku)
    return orjson.dumps(kept).decode()


def learns(basket: Basket, share: float = LEARN_SHARE) -> bool:
    """Whether ``basket`` is learnt from: a stable hash of its time and items (the
    customer id is not known yet where it is decided), so a replay, another worker or the
    evaluation pick the same baskets.

    >>> sum(learns((t, ["milk"])) for t in range(10_000)), learns((5, ["a"]), 1.0), learns(
    ...     (5, ["a"]), 0)
    (1000, True, False)
    """
    ts, skus = basket
    key = str(ts) + "\x1f" + "\x1f".join(skus)
    return zlib.crc32(key.encode()) < share * 4_294_967_296


#: per half-life, ln 2 / (half-life in ms): a count bought ``dt`` ms ago weighs exp(-r·dt)
_RATES: Final = tuple(math.log(2.0) / (h * DAY_MS) for h in HALF_LIVES)


class Purchases:
    """One customer's baskets (any order), as the features see them: per item the times it
    was bought, the oldest first (its count, first and last purchase, decayed counts).

    >>> p = Purchases([(3 * DAY_MS, ("milk",)), (DAY_MS, ("milk", "tea"))])
    >>> p.baskets, p.items["milk"], p.top_frequency(2)
    (2, [86400000, 259200000], ['milk', 'tea'])
    """

    __slots__ = ("baskets", "items")

    def __init__(self, baskets: Iterable[Basket]) -> None:
        items: dict[str, list[int]] = {}
        n = 0
        for ts, skus in sorted(baskets, key=lambda b: b[0]):
            n += 1
            for item in skus:
                times = items.get(item)
                if times is None:
                    items[item] = [ts]
                else:
                    times.append(ts)
        self.baskets = n
        self.items = items

    def top_frequency(self, k: int) -> list[str]:
        """P-TopFreq: the ``k`` most bought items (ties: the most recent, then by SKU)."""
        own = self.items
        return sorted(own, key=lambda i: (-len(own[i]), -own[i][-1], i))[:k]

    def category_shares(self, category: Mapping[str, str]) -> dict[str, float]:
        """The share of the customer's item purchases in each known category."""
        counts: dict[str, float] = {}
        for item, times in self.items.items():
            cat = category.get(item)
            if cat is not None:
                counts[cat] = counts.get(cat, 0.0) + len(times)
        total = sum(counts.values())
        return {c: v / total for c, v in counts.items()}


def candidates(p: Purchases, crowd: CoView) -> list[str]:
    """What a ranking considers: the customer's own items, then the best sellers they
    never bought."""
    own = p.items
    return list(own) + [i for i in crowd.popular if i not in own]


def features(
    p: Purchases, item: str, now_ms: int, crowd: CoView, shares: Mapping[str, float]
) -> dict[str, float]:
    """What the model knows of the customer (``p``, ``shares``) and ``item`` at ``now_ms``.

    >>> p = Purchases([(0, ("milk",)), (7 * DAY_MS, ("milk",))])
    >>> x = features(p, "milk", 14 * DAY_MS, CoView(10, {"milk": 5}, {}), {})
    >>> round(x["due"], 3), x["share"], "new" in x
    (0.0, 1.0, False)
    """
    n = p.baskets
    pop = math.log1p(crowd.count.get(item, 0)) / 10.0
    x = {"pop": pop, "baskets": math.log1p(n) / 5.0}
    cat = crowd.category.get(item)
    share = shares.get(cat, 0.0) if cat is not None else 0.0
    if cat is not None and n:
        x["category_share"] = share
    times = p.items.get(item)
    if times is None:
        x["new"] = 1.0
        x["new_pop"] = pop
        x["new_category"] = share
        return x
    count, last = len(times), times[-1]
    dt = max(0, now_ms - last)
    x["share"] = count / n
    x["sqrt_share"] = math.sqrt(count / n)
    if count >= 2:  # the customer's own rhythm for this item: is it due again?
        interval = (last - times[0]) / (count - 1)
        due = math.log((dt + DAY_MS) / (interval + DAY_MS))
        x["due"] = max(-3.0, min(3.0, due)) / 3.0
        x["due_abs"] = abs(x["due"])
    x["log_count"] = math.log1p(count) / 3.0
    x["recency"] = math.log1p(dt / DAY_MS) / 5.0
    at = last + dt  # each purchase counts exp(-rate · its age), half as much per half-life
    for h, rate in zip(HALF_LIVES, _RATES, strict=True):
        x[f"dec{h:g}"] = math.log1p(sum(math.exp(rate * (t - at)) for t in times)) / 3.0
    return x


class PreferenceModel:
    """Ranks the items a customer is likely to buy next (see the module docstring).

    ``negatives`` candidates not bought are sampled per item bought, seeded by the customer
    and the basket's time: the same baskets learn the same model, in a replay too."""

    def __init__(self, *, negatives: int = 3, learning_rate: float = 0.05) -> None:
        self.model = linear_model.LogisticRegression(optimizer=optim.SGD(learning_rate))
        self.negatives = negatives
        self.learnt = 0
        #: progressive validation: log-loss of each prediction made before learning
        self.log_loss_sum = 0.0

    def learn_one(
        self, customer: str, before: Purchases, basket: Basket, crowd: CoView
    ) -> list[float]:
        """Learn from one basket, given the customer's purchases before it (predict first:
        progressive validation). A first basket teaches nothing about the customer.
        Returns the log-loss of each prediction made before learning."""
        if not before.baskets:
            return []
        ts, skus = basket
        bought = set(skus)
        # Learn on the candidates a ranking sees: an item bought from outside them (new to
        # the customer and not a best seller) would teach "unknown items sell".
        cands = candidates(before, crowd)
        pos = [i for i in cands if i in bought]
        pool = [i for i in cands if i not in bought]
        k = min(len(pool), self.negatives * max(1, len(pos)))
        rng = random.Random(f"{customer}:{ts}")
        sample = [(i, True) for i in pos] + [(i, False) for i in rng.sample(pool, k)]
        shares = before.category_shares(crowd.category)
        model = self.model
        losses = []
        for item, y in sample:
            x = features(before, item, ts, crowd, shares)
            p = min(max(model.predict_proba_one(x)[True], 1e-7), 1 - 1e-7)
            loss = -math.log(p if y else 1 - p)
            losses.append(loss)
            model.learn_one(x, y)
        self.log_loss_sum += sum(losses)
        self.learnt += len(losses)
        return losses

    def scores(self, p: Purchases, now_ms: int, crowd: CoView) -> dict[str, float]:
        shares = p.category_shares(crowd.category)
        predict = self.model.predict_proba_one
        return {
            i: predict(features(p, i, now_ms, crowd, shares))[True] for i in candidates(p, crowd)
        }

    def rank(self, p: Purchases, now_ms: int, crowd: CoView, k: int = 10) -> list[str]:
        """The ``k`` items the customer is most likely to buy next."""
        s = self.scores(p, now_ms, crowd)
        return sorted(s, key=lambda i: (-s[i], i))[:k]

    @property
    def log_loss(self) -> float:
        """Mean progressive-validation log-loss so far."""
        return self.log_loss_sum / self.learnt if self.learnt else math.nan

    @property
    def version(self) -> str:
        return f"pm-{self.learnt}"

    def weights(self) -> Mapping[str, float]:
        return dict(self.model.weights)

    def to_state(self) -> dict[str, Any]:
        return {**lr_to_state(self.model, self.learnt), "loss": self.log_loss_sum}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> PreferenceModel:
        """
        >>> m = PreferenceModel(); p = Purchases([(0, ("a",))])
        >>> [round(x, 4) for x in m.learn_one("c", p, (DAY_MS, ("a",)), CoView(1, {"a": 1}, {}))]
        [0.6931]
        >>> r = PreferenceModel.from_state(m.to_state())
        >>> r.rank(p, DAY_MS, CoView(1, {}, {})) == ["a"], r.version, r.log_loss == m.log_loss
        (True, 'pm-1', True)
        """
        m = cls()
        m.learnt = lr_from_state(m.model, state)
        m.log_loss_sum = float(state.get("loss", 0.0))
        return m

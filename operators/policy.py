"""Choosing among eligible offers: a River model of the probability that a customer redeems
an offer in a context, and an ε-greedy choice that logs the probability of each decision
(its propensity), so that other policies can be evaluated off-line on the same log. Pure
logic, no I/O.

>>> m = RedemptionModel()
>>> for _ in range(200):
...     m.learn_one({"bought_before": 1.0}, "c1", True)
...     m.learn_one({"bought_before": 0.0}, "c1", False)
>>> m.predict_one({"bought_before": 1.0}, "c1") > 0.8 > 0.2 > m.predict_one({}, "c1")
True
>>> choose([0.1, 0.7, 0.2], epsilon=0.1, u=0.5, pick=0)   # exploit: the best, p = 0.9 + 0.1/3
(1, 0.9333333333333333)
>>> choose([0.1, 0.7, 0.2], epsilon=0.1, u=0.05, pick=2)  # explore: uniform, p = 0.1/3
(2, 0.03333333333333333)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from river import linear_model, optim
from river._river_rust.vectordict import VectorDict

#: share of decisions that explore (a uniformly random eligible offer)
EPSILON: Final = 0.1


class RedemptionModel:
    """P(redeemed | context features, campaign): a River ``LogisticRegression`` over the
    context, the campaign and their crosses (a campaign may suit some customers and not
    others). Learns one offer outcome at a time; never pickled per event."""

    def __init__(self, learning_rate: float = 0.05, l2: float = 1e-4) -> None:
        self.model = linear_model.LogisticRegression(optimizer=optim.SGD(learning_rate), l2=l2)
        self.learnt = 0
        #: progressive validation: the log-loss of each outcome, predicted before learnt
        self.loss_sum = 0.0
        #: the weights as a plain dict for :meth:`scores` (None: copy them again), the
        #: campaign crosses ("<campaign>*<feature>") per campaign in ``_crosses``, and each
        #: campaign's merged weights (:meth:`_merge`), made when first scored
        self._weights: dict[str, float] | None = None
        self._crosses: dict[str, dict[str, float]] = {}
        self._merged: dict[str, tuple[float, dict[str, float]]] = {}

    @staticmethod
    def features(context: Mapping[str, float], campaign: str) -> dict[str, float]:
        x = dict(context)
        x["campaign=" + campaign] = 1.0
        for k, v in context.items():
            x[f"{campaign}*{k}"] = v
        return x

    def predict_one(self, context: Mapping[str, float], campaign: str) -> float:
        p: float = self.model.predict_proba_one(self.features(context, campaign))[True]
        return p

    def scores(self, context: Mapping[str, float], campaigns: Sequence[str]) -> list[float]:
        """:meth:`predict_one` of each campaign in one context, without building each
        campaign's features: each campaign's weights are merged once (after each outcome
        learnt), its crosses added to the context's own weights, so that a score is one
        read per context feature. The same probabilities up to the order of the float
        additions.

        >>> m = RedemptionModel()
        >>> for y in (True, False, True):
        ...     m.learn_one({"x": 1.0, "y": 0.5}, "a", y); m.learn_one({"x": 0.2}, "b", not y)
        >>> ctx = {"x": 0.7, "y": 0.1, "z": 1.0}
        >>> all(abs(s - m.predict_one(ctx, c)) < 1e-12 for s, c in zip(m.scores(ctx, "abc"), "abc"))
        True
        """
        if self._weights is None:  # a plain dict: reads at dict speed (River's are slower)
            self._weights = dict(self.model._weights)
            self._crosses = _crosses_of(self._weights)
            self._merged = {}
        items = list(context.items())
        b = self.model.intercept
        out: list[float] = []
        merged = self._merged
        for c in campaigns:
            got = merged.get(c)
            if got is None:
                got = merged[c] = self._merge(c)
            bias, weights = got
            z = b + bias
            get = weights.get
            for k, v in items:
                z += get(k, 0.0) * v
            # river.utils.math.sigmoid, inline (a call per campaign showed in profiles)
            out.append(0 if z < -30 else 1 if z > 30 else 1 / (1 + math.exp(-z)))
        return out

    def _merge(self, campaign: str) -> tuple[float, dict[str, float]]:
        """A campaign's bias (its one-hot weight) and, per feature, its weight plus the
        campaign's cross with it: the dot product of :meth:`features`, one read a feature."""
        assert self._weights is not None
        weights = dict(self._weights)
        for k, w in self._crosses.get(campaign, {}).items():
            weights[k] = weights.get(k, 0.0) + w
        return self._weights.get("campaign=" + campaign, 0.0), weights

    def learn_one(self, context: Mapping[str, float], campaign: str, redeemed: bool) -> None:
        self.model.learn_one(self.features(context, campaign), redeemed)
        self._weights = None
        self.learnt += 1

    def validate_one(self, context: Mapping[str, float], campaign: str, redeemed: bool) -> float:
        """Predict, then learn (progressive validation): the outcome's log-loss, added to
        :attr:`log_loss`, which is stored with the model.

        >>> m = RedemptionModel()
        >>> round(m.validate_one({"x": 1.0}, "c", True), 4), round(m.log_loss, 4)  # ln 2
        (0.6931, 0.6931)
        """
        loss = log_loss(self.predict_one(context, campaign), redeemed)
        self.loss_sum += loss
        self.learn_one(context, campaign, redeemed)
        return loss

    @property
    def log_loss(self) -> float:
        """Mean progressive-validation log-loss (NaN before any outcome)."""
        return self.loss_sum / self.learnt if self.learnt else math.nan

    @property
    def version(self) -> str:
        """Carried by every offer it chose: the outcomes it has learnt from."""
        return f"lr-{self.learnt}"

    def to_state(self) -> dict[str, Any]:
        """JSON-able: weights, intercept and counts (:meth:`from_state` restores an equal
        model; never pickled)."""
        return {**lr_to_state(self.model, self.learnt), "loss": self.loss_sum}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RedemptionModel:
        """
        >>> m = RedemptionModel(); m.learn_one({"x": 1.0}, "c", True)
        >>> r = RedemptionModel.from_state(m.to_state())
        >>> r.predict_one({"x": 1.0}, "c") == m.predict_one({"x": 1.0}, "c"), r.version
        (True, 'lr-1')
        """
        m = cls()
        m.learnt = lr_from_state(m.model, state)
        m.loss_sum = float(state.get("loss", 0.0))  # (absent from states stored before)
        return m


def _crosses_of(weights: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """The campaign crosses ("<campaign>*<feature>") per campaign by feature: scoring a
    campaign then reads its crosses without building their names (a campaign id never holds
    "*": ``schemas.campaigns.CampaignId``).

    >>> _crosses_of({"x": 1.0, "c1*x": 2.0, "campaign=c1": 3.0})
    {'c1': {'x': 2.0}}
    """
    crosses: dict[str, dict[str, float]] = {}
    for k, w in weights.items():
        c, star, feature = k.partition("*")
        if star:
            crosses.setdefault(c, {})[feature] = w
    return crosses


def lr_to_state(model: linear_model.LogisticRegression, learnt: int) -> dict[str, Any]:
    """A River ``LogisticRegression`` (plain SGD) as JSON: weights, intercept, the
    optimiser's step count, and the examples learnt."""
    return {
        "w": dict(model._weights),
        "b": model.intercept,
        "n": learnt,
        "it": model.optimizer.n_iterations,
    }


def lr_from_state(model: linear_model.LogisticRegression, state: Mapping[str, Any]) -> int:
    """Restore :func:`lr_to_state` into a fresh ``model``; returns the examples learnt."""
    model._weights = VectorDict({str(k): float(v) for k, v in state["w"].items()})
    model.intercept = float(state["b"])
    model.optimizer.n_iterations = int(state["it"])
    return int(state["n"])


def offer_context(
    segment: str,
    channel: str,
    trigger: str,
    basket_minor: int,
    items: int,
    sent_week: int,
    responses: int = 0,
) -> dict[str, float]:
    """The decision's context, as the model sees it (stored with the offer, learnt from when
    its outcome is known). ``responses``: the offers the customer clicked or redeemed so
    far, in any channel (clicks are a signal too, not only redemptions).

    >>> offer_context("loyal", "email", "cart_abandonment", 2500, 2, 0)["segment=loyal"]
    1.0
    >>> round(offer_context("loyal", "email", "win_back", 0, 0, 0, responses=3)["responded"], 3)
    0.462
    """
    return {
        "segment=" + segment: 1.0,
        "channel=" + channel: 1.0,
        "trigger=" + trigger: 1.0,
        "basket": math.log1p(basket_minor) / 10.0,
        "items": math.log1p(items) / 3.0,
        "sent_week": float(sent_week) / 3.0,
        "responded": math.log1p(responses) / 3.0,
    }


def choose(scores: Sequence[float], epsilon: float, u: float, pick: int) -> tuple[int, float]:
    """ε-greedy over ``scores``: with probability 1 - ε the best (ties: the first), else
    one at random. ``u`` in [0, 1) decides whether to explore and ``pick`` which one then
    (both from :func:`draws`: the same decision is the same choice on a replay). Returns
    the index chosen and its probability under this policy (the propensity to log)."""
    k = len(scores)
    best, top = 0, scores[0]
    for i in range(1, k):  # (a loop: max() with a key built a tuple per campaign)
        if scores[i] > top:
            best, top = i, scores[i]
    chosen = pick % k if u < epsilon else best
    return chosen, (1.0 - epsilon) * (chosen == best) + epsilon / k


def draws(*key: object) -> tuple[float, int]:
    """Two stable pseudo-random draws for a decision: a uniform in [0, 1) and an integer.

    >>> draws("C1", 5) == draws("C1", 5) != draws("C1", 6)
    True
    """
    return _draws_of("|".join(map(str, key)))


def decision_draws(customer_id: str, trigger: str, at_ms: int) -> tuple[float, int]:
    """:func:`draws` of a decision (customer, trigger, its time), without the generic join.

    >>> decision_draws("C1", "win_back", 5) == draws("C1", "win_back", 5)
    True
    """
    return _draws_of(f"{customer_id}|{trigger}|{at_ms}")


def _draws_of(key: str) -> tuple[float, int]:
    h = hashlib.blake2b(key.encode(), digest_size=16).digest()
    return int.from_bytes(h[:8], "big") / 2**64, int.from_bytes(h[8:], "big")


def log_loss(p: float, y: bool) -> float:
    p = min(max(p, 1e-7), 1 - 1e-7)
    return -math.log(p if y else 1 - p)

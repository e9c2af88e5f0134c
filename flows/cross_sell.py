"""Stage "cross-sell counts": every worker learns which items are bought together from the
sales it applied (any channel), and returns per item, in memory
(:class:`operators.cross_sell.CoPurchase`), and adds them to the shared counts in Redis
every :attr:`CoPurchaseCounts.interval` seconds and at close (``state/cross_sell.py``).

Exactly-once: only applied events are learnt (the fence and the duplicate check have run),
and a flush is added once (its id is kept). A crash loses what was learnt since the last
flush (at most one interval of baskets, counted in no metric as added); it never counts a
basket twice, because the replay starts after the applied offsets.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from typing import Any, Final

import redis
from msgspec import UNSET

from monitoring import metrics as m
from operators.cross_sell import (
    KEPT,
    CoPurchase,
    CoView,
    CrossSellRanker,
    Shopper,
    category_shares,
    labelled,
)
from schemas.envelope import Accepted
from state.cross_sell import CoPurchaseStore, RankerStore, Ranking
from state.offers import StoredCart

log = logging.getLogger(__name__)

#: a delta Redis refused this long is dropped (and counted as lost)
MAX_DELTA_ENTRIES: Final = 2_000_000


def learn(delta: CoPurchase, items: Sequence[Any]) -> int:
    """Learn a batch's applied sales (their product lines) and returns into ``delta``.
    Returns the baskets learnt.

    >>> from schemas.events import Sale, TransactionLine as L
    >>> sale = Sale(event_id="e", event_time=None, channel="store", currency="EUR",
    ...     lines=[L(sku="TENT", quantity=1, unit_price_minor=9900, category="camping"),
    ...            L(sku="MAT", quantity=1, unit_price_minor=1900),
    ...            L(sku="BAG", quantity=1, unit_price_minor=10, kind="fee")])
    >>> a = Accepted("t", 0, 1, "transactions", "sale", "e", 1, "store", "C1", {}, sale)
    >>> d = CoPurchase(); learn(d, [a])
    1
    >>> d.pairs["TENT"], d.categories
    ({'MAT': 1}, {'TENT': 'camping'})
    """
    n = 0
    for a in items:
        if type(a) is not Accepted:
            continue
        kind = a.event_type
        if kind != "sale" and kind != "return":
            continue
        try:
            lines = [ln for ln in a.event.lines if ln.kind is UNSET or ln.kind == "product"]
            if kind == "return":
                delta.learn_return(ln.sku for ln in lines)
                continue
            if lines:
                cats = {ln.sku: ln.category for ln in lines if ln.category is not UNSET}
                delta.learn_one([ln.sku for ln in lines], cats)
                n += 1
        except Exception as e:  # one event's problem: it is not counted, the batch goes on
            log.error("step 'state' (cross-sell counts): %s not counted: %s: %s",
                      a.event_id, type(e).__name__, e)  # fmt: skip
    return n


class CoPurchaseCounts:
    """One worker's co-purchase learning and its flushes (see the module docstring)."""

    def __init__(
        self,
        store: CoPurchaseStore,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.interval = interval
        self._clock = clock
        self._delta = CoPurchase()
        self._baskets = 0  # in the delta
        #: flushes Redis refused, retried first, each with its id and content unchanged
        self._unsent: list[tuple[str, CoPurchase, int]] = []
        self._token = uuid.uuid4().hex[:16]
        self._seq = 0
        self._next = clock() + interval

    def add(self, applied: Sequence[Any]) -> None:
        self._baskets += learn(self._delta, applied)
        if self._clock() >= self._next:
            self.flush()

    def flush(self) -> bool:
        """Add what was learnt to Redis, once (a flush keeps its id and content until Redis
        took it). On a Redis error it is kept for the next flush, up to
        :data:`MAX_DELTA_ENTRIES` in all (then the oldest is dropped and counted as lost).
        Never raises."""
        self._next = self._clock() + self.interval
        d = self._delta
        if d.baskets or d.returns:
            self._unsent.append((f"{self._token}:{self._seq}", d, self._baskets))
            self._seq += 1
            self._delta, self._baskets = CoPurchase(), 0
        while self._unsent:
            fid, delta, baskets = self._unsent[0]
            try:
                self.store.add(delta, fid)
            except redis.RedisError as e:
                if isinstance(e, redis.ResponseError) and "INVALID" in str(e):
                    # refused for good (the script's checks: a bug), so never retried
                    log.error("step 'state' (cross-sell counts): %d baskets not counted: %s",
                              baskets, e)  # fmt: skip
                    m.CROSS_SELL_BASKETS.labels("lost").inc(baskets)
                    self._unsent.pop(0)
                    continue
                log.warning("step 'state' (cross-sell counts): kept for the next flush: %s", e)
                while len(self._unsent) > 1 and sum(len(u[1]) for u in self._unsent) > (
                    MAX_DELTA_ENTRIES
                ):
                    lost = self._unsent.pop(0)[2]
                    log.error(
                        "step 'state' (cross-sell counts): %d baskets not counted, Redis "
                        "refused them too long", lost,
                    )  # fmt: skip
                    m.CROSS_SELL_BASKETS.labels("lost").inc(lost)
                return False
            m.CROSS_SELL_BASKETS.labels("added").inc(baskets)
            self._unsent.pop(0)
        return True

    def close(self) -> None:
        self.flush()


class CrossSellRanks:
    """Worker 0's cross-sell ranker (restored from its checkpoint): at each due cross-sell
    timer, it learns from the ranking it made at the customer's previous purchase
    (labelled by what they bought since, in any channel; predicted first: progressive
    validation), then ranks what goes with the new basket. The model and the new rankings
    are stored together after the decisions are written (:meth:`checkpoint`); until then
    the learning is on a copy, so a failed slice learns nothing twice."""

    def __init__(
        self,
        co: CoPurchaseStore,
        ranks: RankerStore,
        counted: Callable[[], object] | None = None,
    ) -> None:
        self.co = co
        self.ranks = ranks
        #: adds the worker's own co-purchase counts to Redis before a ranking reads them:
        #: a basket decided soon after it was bought (a replay, traffic a day old, a demo)
        #: is ranked on counts that include the baskets just before it, not on none
        self._counted = counted
        state = ranks.load()
        self.model = CrossSellRanker.from_state(state) if state else CrossSellRanker()
        self._trial: CrossSellRanker | None = None
        self._kept: dict[str, Ranking] = {}
        self._learnt: list[str] = []

    def rank(
        self,
        timers: Sequence[tuple[str, int]],
        stored: Sequence[StoredCart],
        skip: Collection[str] = frozenset(),
    ) -> dict[str, list[tuple[str, str]]]:
        """Per customer, the ranked candidates for their newest basket (the SKUs bought at
        the timer's time), as (SKU, category); learns from the previous rankings first.
        Customers in ``skip`` (no offer can go to them now) are not ranked: their previous
        ranking is still learnt from."""
        if self._counted is not None:
            self._counted()  # never raises: what Redis refused is added later
        trial = CrossSellRanker.from_state(self.model.to_state())
        baskets = {
            cid: sorted(sku for sku, t in st.bought.items() if t == seen)
            for (cid, seen), st in zip(timers, stored, strict=True)
            if cid not in skip
        }
        skus = sorted({s for b in baskets.values() for s in b})
        view = self.co.view(skus) if skus else CoView(0, {}, {})
        before = self.ranks.rankings([cid for cid, _ in timers])
        self._kept, self._learnt = {}, []
        out: dict[str, list[tuple[str, str]]] = {}
        for (cid, seen), st in zip(timers, stored, strict=True):
            try:
                ranked = self._one(
                    trial, view, cid, seen, st, before.get(cid), baskets.get(cid, [])
                )
            except Exception as e:  # one customer's problem, never the pipeline's
                log.error(
                    "step 'state' (cross-sell): %s not ranked, no suggestion: %s: %s",
                    cid, type(e).__name__, e,
                )  # fmt: skip
                continue
            if ranked is not None:
                out[cid] = ranked
        self._trial = trial
        return out

    def _one(
        self,
        trial: CrossSellRanker,
        view: CoView,
        cid: str,
        seen: int,
        st: StoredCart,
        old: Ranking | None,
        basket: list[str],
    ) -> list[tuple[str, str]] | None:
        if old is not None and old[0] < seen:  # a purchase since: learn, at most once
            self._learnt.append(cid)
            for x, y in labelled(old[1], old[0], st.bought, st.returned):
                m.PREFERENCE_MODEL_LOSS.observe(trial.validate_one(x, y))
                m.PREFERENCE_EXAMPLES.labels("bought" if y else "not_bought").inc()
        if not basket:
            return None
        who = Shopper(
            category_shares(st.fields),
            frozenset(st.views),
            frozenset(s for s, (q, _) in st.cart.items() if q > 0),
            frozenset(s for s, t in st.bought.items() if t < seen),
        )
        # what the customer returned is never suggested to them again
        back = st.returned
        ranked = [r for r in trial.rank(view, basket, who, k=KEPT + len(back)) if r[0] not in back]
        ranked = ranked[:KEPT]
        self._kept[cid] = (seen, [(sku, x) for sku, x, _ in ranked])
        return [(sku, view.category.get(sku, "")) for sku, _, _ in ranked]

    @property
    def version(self) -> str:
        return (self._trial or self.model).version

    def checkpoint(self) -> None:
        """Store what the last :meth:`rank` learnt and made, then keep it."""
        trial = self._trial
        if trial is None:
            return
        self.ranks.checkpoint(trial.to_state(), self._kept, self._learnt)
        self.model, self._trial = trial, None

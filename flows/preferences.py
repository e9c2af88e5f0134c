"""The offer decider's next-basket preference model (``operators/preferences.py``) in the pipeline.

- **Learning.** The batch script keeps every customer's last baskets, from any channel, and
  marks a stable share of them to learn from (``<p>pf:due``). At each look for due offers,
  before deciding, the decider learns them a slice at a time until none is left or its
  budget is spent (``OMNICANAL_OFFER_LEARN_MS``). Each slice (:meth:`NextBasket.learn`) reads up
  to :attr:`NextBasket.SLICE` such customers' baskets and the co-purchase counts of their
  items, learns each marked basket from the
  baskets kept before it (predict, then learn: progressive validation), then stores the
  model and marks those baskets learnt in one call. Until then the learning is on a copy:
  a failed call, a crash or a replay learns nothing twice.
- **Ranking.** A win-back offer names the items the customer is most likely to buy next
  (:meth:`NextBasket.rank`): a store purchase changes what the web offers, and the reverse,
  since the history holds every channel's baskets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from monitoring import metrics as m
from operators.preferences import PreferenceModel, Purchases
from state.cross_sell import CoPurchaseStore
from state.offers import StoredCart
from state.preferences import PreferenceStore

log = logging.getLogger(__name__)


class NextBasket:
    """The model, restored from its checkpoint (see the module docstring)."""

    #: customers learnt from per look (each basket learnt costs about 140 µs)
    SLICE = 64

    def __init__(self, store: PreferenceStore, co: CoPurchaseStore) -> None:
        self.store = store
        self.co = co
        state = store.load()
        self.model = PreferenceModel.from_state(state) if state else PreferenceModel()

    #: the last slice was full: more customers may be due
    more = False

    def learn(self) -> int:
        """Learn one slice of the baskets due; returns the baskets learnt. A basket whose
        learning fails (a bug) is logged and marked learnt all the same, never retried."""
        due = self.store.due(self.SLICE)
        self.more = len(due) == self.SLICE
        if not due:
            m.NEXT_BASKET_PENDING.set(0)
            return 0
        kept = self.store.histories([c for c, _ in due])
        crowd = self.co.view(sorted({s for ks in kept.values() for k in ks for s in k.skus}), 0)
        trial = PreferenceModel.from_state(self.model.to_state())
        learnt: list[tuple[str, str]] = []
        losses: list[float] = []
        for cid, _ in due:
            baskets = kept.get(cid, [])
            for i, k in enumerate(baskets):
                if not k.learn:
                    continue
                before = Purchases(b.basket for b in baskets[:i])
                try:
                    losses += trial.learn_one(cid, before, k.basket, crowd)
                except Exception as e:  # one basket's problem, never the pipeline's
                    log.error(
                        "step 'state' (next-basket model): basket of %s at %d not learnt: %s: %s",
                        cid, k.ts, type(e).__name__, e,
                    )  # fmt: skip
                learnt.append((cid, k.member))
        self.store.checkpoint(trial.to_state(), learnt, due)
        self.model = trial
        # what is left (a slice that was not full left nothing but what came meanwhile)
        m.NEXT_BASKET_PENDING.set(self.store.pending() if self.more else 0)
        m.NEXT_BASKET_BASKETS.inc(len(learnt))
        for x in losses:
            m.NEXT_BASKET_LOSS.observe(x)
        return len(learnt)

    def learn_due(self, seconds: float) -> int:
        """Learn slices (:meth:`learn`) until none is due or ``seconds`` have passed (one
        slice at least); returns the baskets learnt. :attr:`more` says whether some are
        left."""
        until = time.monotonic() + seconds
        n = self.learn()
        while self.more and time.monotonic() < until:
            n += self.learn()
        return n

    def rank(
        self, stored: Sequence[StoredCart], now_ms: int, k: int
    ) -> dict[str, list[tuple[str, str]]]:
        """Per customer, the ``k`` items they are most likely to buy next, as (SKU,
        category), from their kept baskets (``stored``'s history; none kept: no items)."""
        skus = sorted({s for st in stored for b in st.history for s in b.skus})
        if not skus:
            return {}
        crowd = self.co.view(skus, 0)
        out: dict[str, list[tuple[str, str]]] = {}
        for st in stored:
            if not st.history:
                continue
            try:
                ranked = self.model.rank(
                    Purchases(b.basket for b in st.history), now_ms, crowd, k + len(st.returned)
                )
            except Exception as e:  # one customer's problem: their offer names no item
                log.error("step 'state' (next-basket model): %s not ranked: %s: %s",
                          st.customer_id, type(e).__name__, e)  # fmt: skip
                continue
            # what the customer returned is never suggested to them again
            ranked = [s for s in ranked if s not in st.returned][:k]
            out[st.customer_id] = [(s, crowd.category.get(s, "")) for s in ranked]
        return out

    @property
    def version(self) -> str:
        return self.model.version

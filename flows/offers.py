"""Stage "offers": fires the cart-abandonment timers that are due, decides each one
(``operators/offers.py``), issues the coupon codes, writes the outcomes with an outbox and
sends the offers to the offers topic; none lost, none sent twice.

The timers are written by the apply (``state/lua/apply_batch.lua``) with the cart, so a
crash never loses one; a timer leaves Redis in the same script that writes its offer to the
outbox, fenced by the score read (a new add in between: decided again later), so a replay
never fires it twice. One worker (worker 0) runs this stage: offers are few next to events,
and a single decider keeps the frequency caps and budgets exact.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from flows.outbox import OutboxSender
from monitoring import metrics as m
from operators.coupons import CouponCodec, day_of
from operators.guardrails import FrequencyCaps
from operators.offers import (
    CartState,
    TimerOutcome,
    cart_campaigns,
    customer_view,
    fire_cart,
    offer_counts,
    wait_ms,
)
from schemas.campaigns import Campaign
from state.coupons import CouponLedger, Issue
from state.offers import OfferStore, Outcome

log = logging.getLogger(__name__)


class Offers:
    """Fires due timers a slice at a time: at most one look per ``interval`` seconds while
    nothing is due, at once again while a slice came back full."""

    #: timers decided per call: each is a profile read and a decision (~100 µs)
    SLICE = 256

    def __init__(
        self,
        store: OfferStore,
        ledger: CouponLedger,
        sender: OutboxSender,
        campaigns: Callable[[], Sequence[Campaign]],
        *,
        interval: float = 1.0,
        caps: FrequencyCaps | None = None,
        holdout_share: float = 0.05,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.codec: CouponCodec = ledger.codec
        self.out = sender
        self._campaigns = campaigns
        self._interval = interval
        self._caps = caps
        self._holdout = holdout_share
        self._clock = clock
        self._next = 0.0

    def recover(self) -> tuple[int, int]:
        """Send what a crashed run left in the outbox (see :meth:`OutboxSender.recover`)."""
        return self.out.recover()

    def due(self) -> None:
        """Decide the timers that are due, if it is time to look."""
        self.out.retry()
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._interval
        t0 = time.perf_counter()
        if self.out.attempt(self._fire) and self._full:
            self._next = 0.0  # more are due: the next batch or idle poll goes on
        m.BATCH_SECONDS.labels("offers").observe(time.perf_counter() - t0)

    _full = False

    def _fire(self) -> None:
        self._full = False
        now_ms = int(self._clock() * 1000)
        running = cart_campaigns(self._campaigns(), now_ms)
        m.OFFER_TIMERS.set(self.store.timers())
        if not running:
            return  # no cart campaign: timers wait (a catalogue reload may add one)
        shortest = min(wait_ms(c) for c in running)
        timers = self.store.due_carts(now_ms - shortest, self.SLICE)
        if not timers:
            return
        self._full = len(timers) == self.SLICE
        stored, spent = self.store.read([c for c, _ in timers])
        today = day_of(now_ms)
        outcomes: list[TimerOutcome] = []
        for (cid, seen), st in zip(timers, stored, strict=True):
            state = CartState(
                customer_view(cid, st.fields, now_ms),
                st.cart,
                st.bought,
                offer_counts(st.counters, today),
            )
            outcome = fire_cart(
                cid, seen, state, running, self.codec, now_ms,
                caps=self._caps, holdout_share=self._holdout, spent=spent,
            )  # fmt: skip
            if outcome.offer is not None:  # the budget counts this slice's offers too
                spent[outcome.offer.campaign_id] = spent.get(outcome.offer.campaign_id, 0) + 1
            outcomes.append(outcome)
        self._write(outcomes, today, now_ms)

    def _write(self, outcomes: list[TimerOutcome], today: int, now_ms: int) -> None:
        offers = [o.offer for o in outcomes if o.offer is not None]
        # The ledger knows each code before any channel can see it (a replay: the same codes).
        if offers:
            expiry = [_days(o.expires_on) for o in offers]
            codes = self.ledger.issue(
                [
                    Issue(o.offer_id, o.customer_id, o.campaign_id, x)
                    for o, x in zip(offers, expiry, strict=True)
                ],
                now_ms,
            )
            code_of = {o.offer_id: c for o, c in zip(offers, codes, strict=True)}
        rows: list[Outcome] = []
        docs: dict[str, dict[str, Any]] = {}
        for o in outcomes:
            doc = None
            if o.offer is not None:
                doc = msgspec.to_builtins(o.offer)
                doc["coupon_code"] = code_of[o.offer.offer_id]
                docs[o.customer_id] = doc
            rows.append(
                Outcome(
                    o.customer_id, o.seen, o.action, doc,
                    o.offer.campaign_id if o.offer is not None else "",
                    today, o.suppressed or "", o.later, o.trigger_ms,
                )
            )  # fmt: skip
        skipped, ids = self.store.commit(rows)
        skip = set(skipped)
        written = [o for o in outcomes if o.customer_id not in skip]
        sent = [docs[o.customer_id] for o in written if o.offer is not None]
        if len(sent) != len(ids):  # the script and this code disagree: a bug, say so
            raise RuntimeError(f"step 'state' (offers): {len(sent)} offers, {len(ids)} outbox ids")
        self.out.send(ids, sent)
        for o in written:
            if o.offer is not None:
                m.OFFERS.labels(o.offer.campaign_id, o.offer.channel).inc()
            elif o.suppressed is not None:
                m.OFFER_SUPPRESSIONS.labels(o.suppressed).inc()

    def ack(self) -> None:
        self.out.ack()

    def close(self) -> None:
        """Decide what is due now (input that ends, or a stop, need not wait for the
        interval; at most :attr:`CLOSE_SLICES` slices), then wait for every offer sent:
        what the broker did not confirm stays in the outbox for the next start."""
        for _ in range(self.CLOSE_SLICES):
            if not self.out.attempt(self._fire) or not self._full:
                break
        self.out.flush()

    #: slices decided at close, at most (the rest is decided after the next start)
    CLOSE_SLICES = 20


def _days(iso_day: str) -> int:
    """Day number (:func:`operators.coupons.day_of`) of an ISO date."""
    return day_of(int(datetime.fromisoformat(iso_day).replace(tzinfo=UTC).timestamp() * 1000))

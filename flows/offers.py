"""Stage "offers": fires the offer timers that are due (cart abandonment, win-back),
decides each one (``operators/offers.py``), issues the coupon codes, writes the outcomes
with an outbox and sends the offers to the offers topic; none lost, none sent twice.

The timers are written by the apply (``state/lua/apply_batch.lua``) with the cart add or
the order that starts them, so a crash never loses one; a timer leaves Redis in the same
script that writes its offer to the outbox, fenced by the score read (a new event in
between: decided again later), so a replay never fires it twice. One process runs this
stage, the offer decider (``flows/decider.py``; or worker 0, between its batches): a single
decider keeps the frequency caps and budgets exact.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from flows.cross_sell import CrossSellRanks
from flows.outbox import OutboxSender
from flows.preferences import NextBasket
from monitoring import metrics as m
from operators.coupons import CouponCodec, day_of
from operators.guardrails import SUPPRESSIONS, FrequencyCaps, QuietHours
from operators.offers import (
    CROSS_SELL_ITEMS,
    READS,
    TIMERS,
    BacklogHold,
    CustomerView,
    TimerOutcome,
    TimerState,
    customer_view,
    fire_timer,
    offer_counts,
    running_campaigns,
    wait_ms,
)
from operators.policy import RedemptionModel
from operators.stock import StockRules, out_of_stock_online
from schemas.campaigns import Campaign
from state.coupons import CouponLedger, Issue
from state.offers import BacklogStore, OfferStore, Outcome, PolicyStore, StoredCart
from state.stock import StockStore

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
        learn_seconds: float = 0.2,
        caps: FrequencyCaps | None = None,
        holdout_share: float = 0.05,
        clock: Callable[[], float] = time.time,
        policy: PolicyStore | None = None,
        quiet: QuietHours | None = None,
        tz: str = "UTC",
        stock: tuple[StockStore, StockRules] | None = None,
        down: Callable[[], frozenset[str]] | None = None,
        xsell: CrossSellRanks | None = None,
        prefs: NextBasket | None = None,
        backlog: BacklogStore | None = None,
        hold: BacklogHold | None = None,
    ) -> None:
        self.store = store
        #: the workers' reported backlog, and the rule that makes the timers wait for it
        self._backlog, self._hold = backlog, hold
        self._waiting = self._closing = False
        # Every series a dashboard reads exists from the start, at 0: Prometheus's increase()
        # cannot see the first count of a series that appears with it (no earlier sample).
        for reason in SUPPRESSIONS:
            m.OFFER_SUPPRESSIONS.labels(reason)
        for timer, model in (("xsell", xsell), ("winback", prefs)):
            if model is not None:
                m.OFFER_RANKINGS.labels(timer, "ranked")
                m.OFFER_RANKINGS.labels(timer, "skipped")
        #: the catalogue whose campaigns' offer counters exist (a reload adds the new ones)
        self._counted: Sequence[Campaign] | None = None
        #: the next-basket model: learns from baskets, names a win-back offer's items
        self._prefs = prefs
        #: ranks what goes with a basket (cross-sell), and names the items' categories
        self._xsell = xsell
        self.ledger = ledger
        self.codec: CouponCodec = ledger.codec
        self.out = sender
        self._campaigns = campaigns
        self._interval = interval
        #: seconds a look may spend learning the next-basket model's due baskets (a slice at
        #: a time) before it decides (``OMNICANAL_OFFER_LEARN_MS``)
        self._learn_seconds = learn_seconds
        self._caps = caps
        self._holdout = holdout_share
        self._clock = clock
        self._next = 0.0
        self._quiet, self._tz = quiet, tz
        #: live stock: carted SKUs out of stock online leave the offer
        self._stock = stock
        #: delivery channels to avoid now (their sales channel collapsed)
        self._down = down or frozenset
        #: the learnt policy (None: the rules), restored from its last checkpoint
        self._policy_store = policy
        self.model: RedemptionModel | None = None
        self._cursor = "0-0"
        if policy is not None:
            state, self._cursor = policy.load()
            self.model = RedemptionModel.from_state(state) if state else RedemptionModel()

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
        """One slice of each timer kind, one kind after the other: the second reads the
        counters (caps, budgets) the first wrote."""
        self._full = False
        now_ms = int(self._clock() * 1000)
        campaigns = self._campaigns()
        if campaigns is not self._counted:  # the first look, or a reloaded catalogue
            self._counted = campaigns
            for c in campaigns:
                for channel in c.channels:
                    m.OFFERS.labels(c.id, channel)
        self._learn(now_ms)
        if self._waits(now_ms):
            return  # the workers are catching up: decided once they have
        if self._prefs is not None:
            # Catch up on the baskets due before deciding (a win-back names items with this
            # model: one slice per look decided offers with a model that had not yet seen
            # baskets Redis already held), within a budget so that a backlog never holds the
            # decisions back for long; what is left is learnt at the next looks.
            self._prefs.learn_due(self._learn_seconds)
            self._full = self._prefs.more  # more baskets to learn from: look again soon
        pending = self.store.timers()
        for timer, kind in TIMERS.items():
            m.OFFER_TIMERS.labels(timer).set(pending.get(timer, 0))
            running = running_campaigns(campaigns, kind, now_ms)
            if not running:
                continue  # no campaign: timers wait (a catalogue reload may add one)
            shortest = min(wait_ms(c) for c in running)
            timers = self.store.due(timer, now_ms - shortest, self.SLICE)
            if not timers:
                continue
            self._full = self._full or len(timers) == self.SLICE
            self._decide(timer, timers, running, now_ms)

    def _waits(self, now_ms: int) -> bool:
        """Do the timers wait for the workers to catch up (:class:`BacklogHold`)? Never at
        close: the workers are stopping, what is due is decided."""
        if self._backlog is None or self._hold is None or self._closing:
            return False
        behind = self._backlog.behind(now_ms)
        m.OFFER_BACKLOG.set(behind)
        waits = self._hold.waits(behind, now_ms)
        m.OFFERS_WAITING.set(1 if waits else 0)
        m.OFFERS_HOLD_EXPIRED.set(1 if self._hold.expired else 0)
        if waits != self._waiting:
            self._waiting = waits
            if waits:
                log.info("offers: timers wait, the workers are %d events behind (more than "
                         "%d)", behind, self._hold.events)  # fmt: skip
            elif behind > self._hold.events:
                log.warning("offers: timers waited %.0f s for a backlog of %d events: decided "
                            "again without it (OMNICANAL_OFFER_HOLD_MAX_MINUTES)",
                            self._hold.max_ms / 1000, behind)  # fmt: skip
            else:
                log.info("offers: the workers caught up (%d events behind): timers decided "
                         "again", behind)  # fmt: skip
        return waits

    def _learn(self, now_ms: int) -> None:
        """Learn from the outcomes known since the last checkpoint (redemptions, offers
        expired unredeemed), predicting each first (progressive validation), then store
        the model with what it learnt, in one transaction."""
        ps, model = self._policy_store, self.model
        if ps is None or model is None:
            return
        outcomes, cursor, expired, ctx = ps.outcomes(self._cursor, now_ms)
        if not outcomes and cursor == self._cursor and not expired:
            return
        learnt = []
        for oid, redeemed in outcomes:
            if oid not in ctx or oid in learnt:
                continue  # learnt before, or decided before contexts were kept
            x, campaign = ctx[oid]
            m.OFFER_MODEL_LOSS.observe(model.validate_one(x, campaign, redeemed))
            m.OFFER_OUTCOMES.labels(_outcome_label(redeemed, oid, expired)).inc()
            learnt.append(oid)
        ps.checkpoint(model.to_state(), cursor, expired, learnt)
        self._cursor = cursor

    def _decide(
        self, timer: str, timers: list[tuple[str, int]], running: list[Campaign], now_ms: int
    ) -> None:
        stored, spent = self.store.read([c for c, _ in timers], READS[timer])
        today = day_of(now_ms)
        down = self._down()
        ranked: dict[str, list[tuple[str, str]]] = {}
        cats: dict[str, str] = {}
        ranked_by = ""
        #: outcomes known before any ranking (a ranked timer that cannot make an offer)
        known: dict[int, TimerOutcome] = {}
        #: each customer's view, built once though a ranked timer is asked twice
        views: dict[str, CustomerView | None] = {}
        ranker = (timer == "xsell" and self._xsell is not None) or (
            timer == "winback" and self._prefs is not None
        )
        if ranker:  # rank only the customers an offer may go to (see fire_timer)
            for i, ((cid, seen), st) in enumerate(zip(timers, stored, strict=True)):
                o = self._fire_one(timer, cid, seen, st, None, "", cats, running, now_ms,
                                   today, spent, frozenset(), down, views)  # fmt: skip
                if o.action != "rank":
                    known[i] = o
            todo = [i for i in range(len(timers)) if i not in known]
            m.OFFER_RANKINGS.labels(timer, "skipped").inc(len(known))
            m.OFFER_RANKINGS.labels(timer, "ranked").inc(len(todo))
            if timer == "xsell" and self._xsell is not None:
                # the skipped ones' last rankings are still learnt from
                ranked = self._xsell.rank(timers, stored, {timers[i][0] for i in known})
                ranked_by = self._xsell.version
            elif self._prefs is not None:
                # a few more than an offer names: some may be out of stock online
                ranked = self._prefs.rank([stored[i] for i in todo], now_ms, 2 * CROSS_SELL_ITEMS)
                ranked_by = self._prefs.version
        elif timer == "browse" and self._xsell is not None:
            cats = self._xsell.co.categories(sorted({s for st in stored for s in st.views}))
        oos: frozenset[str] = frozenset()
        if timer in ("cart", "bis", "browse", "xsell", "winback") and self._stock is not None:
            stock, rules = self._stock
            if timer in ("xsell", "winback"):
                skus = sorted({sku for r in ranked.values() for sku, _ in r})
            else:
                of = {"cart": "cart", "bis": "waits", "browse": "views"}[timer]
                skus = sorted({sku for st in stored for sku in getattr(st, of)})
            oos = out_of_stock_online(stock.levels(skus), rules) if skus else frozenset()
        outcomes: list[TimerOutcome] = []
        for i, ((cid, seen), st) in enumerate(zip(timers, stored, strict=True)):
            outcome = known.get(i)
            if outcome is None:
                outcome = self._fire_one(
                    timer, cid, seen, st, ranked.get(cid, ()), ranked_by, cats, running,
                    now_ms, today, spent, oos, down, views,
                )  # fmt: skip
            if outcome.rerouted or outcome.held:
                m.OFFER_CONTINGENCY.labels("rerouted" if outcome.rerouted else "held").inc()
            if outcome.offer is not None:  # the budget counts this slice's offers too
                spent[outcome.offer.campaign_id] = spent.get(outcome.offer.campaign_id, 0) + 1
            outcomes.append(outcome)
        self._write(timer, outcomes, today, now_ms)
        if timer == "xsell" and self._xsell is not None:
            self._xsell.checkpoint()  # after the decisions: what was learnt is kept

    def _fire_one(
        self,
        timer: str,
        cid: str,
        seen: int,
        st: StoredCart,
        suggestions: Sequence[tuple[str, str]] | None,
        ranked_by: str,
        cats: dict[str, str],
        running: list[Campaign],
        now_ms: int,
        today: int,
        spent: dict[str, int],
        oos: frozenset[str],
        down: frozenset[str],
        views: dict[str, CustomerView | None],
    ) -> TimerOutcome:
        """One customer's decision (:func:`fire_timer`); an error is that customer's problem,
        never the pipeline's: their timer is dropped, counted. ``views``: the customers'
        views built so far in this slice (a customer's timer appears once in a slice)."""
        try:
            if cid not in views:
                views[cid] = customer_view(cid, st.fields, now_ms)
            state = TimerState(
                views[cid],
                st.cart,
                st.bought,
                offer_counts(st.counters, today),
                st.waits,
                st.views,
                suggestions,
                ranked_by,
                cats,
            )
            out = fire_timer(
                timer, cid, seen, state, running, self.codec, now_ms,
                caps=self._caps, holdout_share=self._holdout, spent=spent,
                policy=self.model, quiet=self._quiet, tz=self._tz, out_of_stock=oos,
                down=down,
            )  # fmt: skip
            if out.action == "rank" and suggestions is not None:
                raise RuntimeError("asked to rank once ranked")  # a bug: never loops
            return out
        except Exception as e:  # one customer's problem, never the pipeline's
            log.error(
                "step 'state' (offers): %s timer of %s not decided, dropped: %s: %s",
                timer, cid, type(e).__name__, e,
            )  # fmt: skip
            return TimerOutcome(cid, seen, "drop", suppressed="decision_error")

    def _write(self, timer: str, outcomes: list[TimerOutcome], today: int, now_ms: int) -> None:
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
                    today, o.suppressed or "", o.later, o.trigger_ms, timer, o.context,
                    _expires_ms(o.offer.expires_on) if o.offer is not None else 0,
                    o.waits, now_ms,
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
        self._closing = True
        for _ in range(self.CLOSE_SLICES):
            if not self.out.attempt(self._fire) or not self._full:
                break
        self.out.flush()

    #: slices decided at close, at most (the rest is decided after the next start)
    CLOSE_SLICES = 20


def _outcome_label(redeemed: bool, offer_id: str, expired: list[str]) -> str:
    """
    >>> _outcome_label(True, "o1", []), _outcome_label(False, "o1", ["o1"]), _outcome_label(
    ...     False, "o2", ["o1"])
    ('redeemed', 'expired', 'dismissed')
    """
    if redeemed:
        return "redeemed"
    return "expired" if offer_id in expired else "dismissed"


def _expires_ms(iso_day: str) -> int:
    """The end of an offer's last day (UTC): when it expires unredeemed."""
    end = datetime.fromisoformat(iso_day).replace(tzinfo=UTC) + timedelta(days=1)
    return int(end.timestamp() * 1000)


def _days(iso_day: str) -> int:
    """Day number (:func:`operators.coupons.day_of`) of an ISO date."""
    return day_of(int(datetime.fromisoformat(iso_day).replace(tzinfo=UTC).timestamp() * 1000))

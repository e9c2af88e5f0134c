"""Stage "coupons": the coupon codes a batch presents (a sale's ``coupon_codes`` at a till,
the web checkout or the app; an ``offer_redeemed`` event's ``coupon_code``) are redeemed in
the ledger, once, whichever channel comes first (``state/coupons.py``). Offers the customer
dismissed (``offer_dismissed``) go to the offer policy's feedback, as negatives learnt at
once (``state/offers.py``).

It runs before the fenced apply, and that is safe on a replay: a redemption is idempotent
per code and order (a batch read again after a crash gets ``duplicate``, nothing is redeemed
twice), and it writes nothing the apply depends on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flows.stages import Item, RedisWait
from monitoring import metrics as m
from operators.coupons import redemptions_of
from operators.privacy import PiiHasher
from schemas.envelope import Accepted
from schemas.events import SALES_CHANNELS
from state.coupons import REDEEM_OUTCOMES, CouponLedger, Redemption
from state.offers import PolicyStore
from state.profiles import ProfileStore

log = logging.getLogger(__name__)


class CouponRedemptions:
    """Redeems a batch's coupon codes in one ledger call (none when it presents none)."""

    def __init__(
        self,
        ledger: CouponLedger,
        store: ProfileStore,
        wait: RedisWait,
        hasher: PiiHasher,
        policy: PolicyStore | None = None,
    ) -> None:
        self._ledger = ledger
        self._policy = policy
        #: order ids are free text: an email or phone in one is hashed before Redis sees it
        self._scrub = hasher.scrub_text
        self._store = store
        self._wait = wait
        # every outcome's series exists from the start, at 0 (Prometheus's increase() cannot
        # see the first count of a series that appears with it)
        for outcome in REDEEM_OUTCOMES:
            for channel in (*SALES_CHANNELS, "unknown"):
                m.COUPON_REDEMPTIONS.labels(outcome, channel)

    def redeem(self, items: list[Item]) -> None:
        found: list[tuple[Accepted, str, str]] = []
        dismissed: list[Accepted] = []
        for i in items:
            if type(i) is Accepted and (i.event_type == "sale" or i.event_type == "offer_redeemed"):
                found.extend((i, code, order) for code, order in redemptions_of(i))
            elif type(i) is Accepted and i.event_type == "offer_dismissed":
                dismissed.append(i)
        if dismissed and self._policy is not None:
            self._dismiss(self._policy, dismissed)
        if not found:
            return
        # One not known yet (first seen in this batch) redeems on the code alone, as at a
        # till that does not know them.
        ids, merged = self._known(a for a, _, _ in found)
        reds = [
            Redemption(
                code,
                (ids.get(a.customer) or "") if a.customer else "",
                self._scrub(order),
                a.channel or "unknown",
                a.ts_ms,
                f"{a.topic}:{a.partition}:{a.offset}",
                merged.get(ids.get(a.customer) or "", ()) if a.customer else (),
            )
            for a, code, order in found
        ]
        outcomes = self._wait.run(lambda: self._ledger.redeem(reds))
        counts: dict[tuple[str, str], int] = {}
        for r, outcome in zip(reds, outcomes, strict=True):
            k: tuple[str, str] = (outcome, r.channel)
            counts[k] = counts.get(k, 0) + 1
        for k, n in counts.items():
            m.COUPON_REDEMPTIONS.labels(*k).inc(n)
        offers: dict[tuple[str, str], int] = {}
        for r, outcome, campaign in zip(reds, outcomes, outcomes.campaigns, strict=True):
            if outcome == "redeemed":
                ko = (campaign or "unknown", r.channel)
                offers[ko] = offers.get(ko, 0) + 1
        for ko, n in offers.items():
            m.OFFER_REDEMPTIONS.labels(*ko).inc(n)

    def _known(
        self, events: Iterable[Accepted]
    ) -> tuple[dict[str, str | None], dict[str, tuple[str, ...]]]:
        """The customers of ``events`` as Redis knows them now (identifier -> customer id,
        None: not known yet), and the ids merged into each known one."""
        people = {a.customer for a in events if a.customer}
        ids = self._wait.run(lambda: self._store.resolve_many(people))
        known = {c for c in ids.values() if c}
        merged = self._wait.run(lambda: self._store.merged_into(known)) if known else {}
        return ids, merged

    def _dismiss(self, policy: PolicyStore, dismissed: list[Accepted]) -> None:
        """Record the dismissals of offers made to the customers who dismiss them (the
        customer as Redis knows them now, with the ids merged into them)."""
        ids, merged = self._known(dismissed)
        who = []
        for a in dismissed:
            cid = ids.get(a.customer or "") or ""
            who.append((a.event.offer_id, frozenset((cid, *merged.get(cid, ()))) - {""}))
        ok = self._wait.run(lambda: policy.dismissed(who))
        for good in ok:
            m.OFFER_DISMISSALS.labels("accepted" if good else "wrong_customer").inc()

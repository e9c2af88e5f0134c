"""Offer timers, counters and the offers outbox in Redis: the only code that reads or
writes them.

- ``<p>tm:cart`` / ``<p>tm:winback`` / ``<p>tm:expand`` / ``<p>tm:browse`` sorted sets:
  a customer's cart-abandonment timer, scored by the newest cart add, win-back and
  channel-expansion timers, scored by the last order, and browse-abandonment timer, scored
  by a return to a product viewed before (written by the batch script,
  ``state/lua/apply_batch.lua``, with the events themselves);
- ``<p>of:n:<customer>`` hash: offers per day and per campaign per day (the frequency caps)
  and per timer the trigger time last offered for (no second offer for the same trigger);
- ``<p>bisq:<customer>`` hash: SKUs the customer carted while out of stock online, and
  since when (their back-in-stock timer, ``<p>tm:bis``, looks at them);
- ``<p>of:spent`` hash: offers made per campaign (the budgets); ``<p>of:stats``: offers and
  suppressions per reason;
- ``<p>offers:outbox`` / ``<p>offers:sent``: the outbox (``state/outbox.py``).

Outcomes are written by ``state/lua/offers.lua``, fenced by the timer's score as read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import redis

from operators.offers import TIMERS
from state.connection import pairs
from state.outbox import Outbox
from state.preferences import Kept, history

_LUA = (Path(__file__).with_name("lua") / "offers.lua").read_text()
_READ_LUA = (Path(__file__).with_name("lua") / "offers_read.lua").read_text()
#: every part of a customer :meth:`OfferStore.read` can read besides the profile and counters
ALL_PARTS: Final = "cbwvrh"
#: the timers the batch script keeps
TIMER_KINDS = tuple(TIMERS)


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


@dataclass(frozen=True)
class StoredCart:
    """One customer's pieces an offer decision reads, as stored."""

    customer_id: str
    fields: dict[str, str]
    #: SKU -> (quantity, newest add) of the open cart
    cart: dict[str, tuple[int, int]]
    #: SKU -> last purchase time (recently bought, every channel)
    bought: dict[str, int]
    counters: dict[str, str]
    #: SKU -> since when the customer waits for it to be back in stock online
    waits: dict[str, int] = field(default_factory=dict)
    #: SKU -> last view (recently viewed)
    views: dict[str, int] = field(default_factory=dict)
    #: SKU -> last return (never suggested to this customer again)
    returned: dict[str, int] = field(default_factory=dict)
    #: the baskets kept (the next-basket model's history), the oldest first
    history: list[Kept] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    """One timer outcome, as :func:`state/lua/offers.lua` takes it."""

    customer_id: str
    seen: int
    action: str
    offer: dict[str, Any] | None = None
    campaign_id: str = ""
    day: int = 0
    suppressed: str = ""
    later: int = 0
    trigger_ms: int = 0
    timer: str = "cart"
    #: the offer's context (learnt from when its outcome is known) and its expiry
    context: dict[str, float] | None = None
    expires_ms: int = 0
    #: SKUs (and since when) the customer now waits for, back in stock; the score of their
    #: back-in-stock timer when it starts
    waits: tuple[tuple[str, int], ...] = ()
    bis_at: int = 0


class OfferStore:
    """Batched access to the offer timers and counters. One instance per worker."""

    def __init__(self, client: redis.Redis, prefix: str = "oc:") -> None:
        self.r = client
        self.prefix = prefix
        self._commit = client.register_script(_LUA)
        self._read = client.register_script(_READ_LUA)
        self.outbox = Outbox(client, prefix, "offers")

    def due(self, timer: str, until_ms: int, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` timers of one kind scored at most ``until_ms``, oldest first."""
        raw: Any = self.r.zrangebyscore(
            f"{self.prefix}tm:{timer}", "-inf", until_ms, start=0, num=limit, withscores=True
        )
        return [(_s(c), int(score)) for c, score in raw]

    def read(
        self, customers: Sequence[str], parts: str = ALL_PARTS
    ) -> tuple[list[StoredCart], dict[str, int]]:
        """Each customer's profile fields, offer counters and the ``parts`` asked for (one
        letter each: ``c`` cart, ``b`` recently bought, ``w`` the SKUs they wait for, ``v``
        recently viewed, ``r`` returned, ``h`` the baskets kept; the others come back empty),
        and the offers made per campaign: one script call (``state/lua/offers_read.lua``)."""
        if set(parts) - set(ALL_PARTS):
            raise ValueError(f"unknown parts {parts!r} (known: {ALL_PARTS})")
        # per customer seven flat arrays and the kept baskets' string; then the spending
        res: list[Any] = self._read(args=[self.prefix, parts, *customers])
        out = []
        for i, c in enumerate(customers):
            fields, cart_raw, bought, counters, waits, views, returned = (
                pairs(x) for x in res[8 * i : 8 * i + 7]
            )
            baskets = history(res[8 * i + 7])
            clear = next((int(q) for f, q in cart_raw if f == b"_clr"), 0)
            cart: dict[str, list[int]] = {}
            for f, q in cart_raw:
                if f == b"_clr":
                    continue
                sku, _, ts = _s(f).rpartition("|")
                if int(ts) <= clear:
                    continue
                line = cart.setdefault(sku, [0, 0])
                line[0] += int(q)
                if int(q) > 0:
                    line[1] = max(line[1], int(ts))
            out.append(
                StoredCart(
                    c,
                    {k.decode(): v.decode() for k, v in fields},
                    {s: (q, ts) for s, (q, ts) in cart.items()},
                    {s.decode(): int(float(ts)) for s, ts in bought},
                    {k.decode(): v.decode() for k, v in counters},
                    {k.decode(): int(v) for k, v in waits},
                    {sku.decode(): int(float(ts)) for sku, ts in views},
                    {sku.decode(): int(float(ts)) for sku, ts in returned},
                    baskets,
                )
            )
        spent = {k.decode(): int(v) for k, v in pairs(res[-1])}
        return out, spent

    def commit(self, outcomes: Sequence[Outcome]) -> tuple[list[str], list[str]]:
        """Write the outcomes whose timer did not move since it was read. Returns (skipped
        customers, outbox ids of the offers written, in order)."""
        if not outcomes:
            return [], []
        items = [
            [
                o.customer_id,
                o.seen,
                o.action,
                orjson.dumps(o.offer).decode() if o.offer is not None else "",
                o.campaign_id,
                o.day,
                o.suppressed,
                o.later,
                o.trigger_ms,
                o.timer,
                o.offer["offer_id"] if o.offer is not None else "",
                orjson.dumps(o.context or {}).decode() if o.offer is not None else "",
                o.expires_ms,
                o.offer["coupon_code"] if o.offer is not None else "",
                [[sku, since] for sku, since in o.waits],
                o.bis_at,
            ]
            for o in outcomes
        ]
        skipped, ids = self._commit(args=[self.prefix, orjson.dumps(items)])
        return [_s(x) for x in skipped], [_s(x) for x in ids]

    def timers(self) -> dict[str, int]:
        """Timers pending, per kind."""
        pipe = self.r.pipeline(transaction=False)
        for t in TIMER_KINDS:
            pipe.zcard(f"{self.prefix}tm:{t}")
        return {t: int(n) for t, n in zip(TIMER_KINDS, pipe.execute(), strict=True)}

    def stats(self) -> dict[str, Any]:
        """Offers made, per campaign, suppressions per reason, timers and unsent offers."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.prefix + "of:stats")
        pipe.hgetall(self.prefix + "of:spent")
        pipe.xlen(self.outbox.key)
        stats, spent, unsent = pipe.execute()
        st = {_s(k): int(v) for k, v in stats.items()}
        return {
            "offers": st.get("offers", 0),
            "per_campaign": {_s(k): int(v) for k, v in sorted(spent.items())},
            "suppressed": {k[2:]: v for k, v in sorted(st.items()) if k.startswith("s:")},
            "timers_pending": self.timers(),
            "unsent": int(unsent),
        }


class PolicyStore:
    """The offer policy's learning state: the outcomes to learn from and the model.

    - ``<p>of:feedback`` stream: redemptions (``y`` 1, written by the coupon ledger's
      script, once per code) and dismissals (``y`` 0, :meth:`dismissed`), read from
      ``<p>of:model:cursor`` on;
    - ``<p>tm:expiry``: offers by expiry; one that expires unredeemed is a negative;
    - ``<p>of:ctx:<offer id>``: the context an offer was chosen in, deleted once learnt;
    - ``<p>of:model``: the model's JSON state, written with the cursor and the deletions in
      one transaction: after a crash the model and what it has learnt agree.
    """

    def __init__(self, client: redis.Redis, prefix: str = "oc:") -> None:
        self.r = client
        self.prefix = prefix

    def load(self) -> tuple[dict[str, Any] | None, str]:
        """The stored model state (None: none yet) and the feedback cursor."""
        model, cursor = self.r.mget(self.prefix + "of:model", self.prefix + "of:model:cursor")
        return (orjson.loads(model) if model else None), (_s(cursor) if cursor else "0-0")

    def outcomes(
        self, cursor: str, now_ms: int, count: int = 500
    ) -> tuple[list[tuple[str, bool]], str, list[str], dict[str, tuple[dict[str, float], str]]]:
        """Redemptions and dismissals after ``cursor`` and offers expired by ``now_ms`` (at
        most ``count`` each), the new cursor, and the stored context of each offer still to
        learn from (offer id -> (context, campaign)). An expired offer whose code was
        redeemed is not a negative (its redemption is in the stream)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.xrange(self.prefix + "of:feedback", min="(" + cursor, count=count)
        pipe.zrangebyscore(self.prefix + "tm:expiry", "-inf", now_ms, start=0, num=count)
        rows, expired = pipe.execute()
        redeemed = [(_s(f[b"o"]), f.get(b"y", b"1") == b"1") for _, f in rows]
        new_cursor = _s(rows[-1][0]) if rows else cursor
        exp = [_s(x) for x in expired]
        ids = [o for o, _ in redeemed] + exp
        pipe = self.r.pipeline(transaction=False)
        for oid in ids:
            pipe.hgetall(self.prefix + "of:ctx:" + oid)
        ctx: dict[str, tuple[dict[str, float], str]] = {}
        codes: dict[str, str] = {}
        for oid, h in zip(ids, pipe.execute(), strict=True):
            if h:
                ctx[oid] = (orjson.loads(h[b"x"]), _s(h[b"k"]))
                codes[oid] = _s(h[b"c"])
        pipe = self.r.pipeline(transaction=False)
        for oid in exp:
            pipe.hget(self.prefix + "cp:" + codes.get(oid, "-"), "s")
        negatives = [(oid, False) for oid, s in zip(exp, pipe.execute(), strict=True) if s != b"r"]
        return redeemed + negatives, new_cursor, exp, ctx

    def dismissed(self, dismissals: Sequence[tuple[str, frozenset[str]]]) -> list[bool]:
        """Offers dismissed, each with the customer ids the dismissing customer is (their
        id and the ids merged into it): negatives, learnt at once (not at expiry). One made
        to someone else is refused (False), so that nobody who learns an offer id can teach
        the policy about another customer's offer; an offer whose context is gone (learnt,
        expired, or never kept) is recorded and learnt from by no one. Sent again on a
        replay, harmlessly: an offer is learnt from once (its context goes)."""
        if not dismissals:
            return []
        pipe = self.r.pipeline(transaction=False)
        for oid, _ in dismissals:
            pipe.hget(self.prefix + "of:ctx:" + oid, "u")
        owners = pipe.execute()
        ok = [o is None or _s(o) in who for (_, who), o in zip(dismissals, owners, strict=True)]
        pipe = self.r.pipeline(transaction=False)
        for (oid, _), good in zip(dismissals, ok, strict=True):
            if good:
                pipe.xadd(self.prefix + "of:feedback", {"o": oid, "y": "0"}, maxlen=1_000_000)
        pipe.execute()
        return ok

    def checkpoint(
        self, state: dict[str, Any], cursor: str, expired: Sequence[str], learnt: Sequence[str]
    ) -> None:
        """Store the model with the cursor; forget the expired offers and the contexts
        learnt from, in one transaction."""
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self.prefix + "of:model", orjson.dumps(state))
        pipe.set(self.prefix + "of:model:cursor", cursor)
        if expired:
            pipe.zrem(self.prefix + "tm:expiry", *expired)
        for oid in learnt:
            pipe.delete(self.prefix + "of:ctx:" + oid)
        pipe.execute()


#: a worker's backlog report counts this long (a worker reports every 5 s while it reads:
#: one that stopped reporting is idle, or gone, and holds nothing back)
BACKLOG_FRESH_MS: Final = 15_000


class BacklogStore:
    """The workers' consumer lag as each last reported it, for the offer decider
    (``operators.offers.BacklogHold``): ``<p>backlog``, worker -> "<events> <ms>"."""

    def __init__(self, client: redis.Redis, prefix: str = "oc:") -> None:
        self.r = client
        self.key = f"{prefix}backlog"

    def report(self, worker: int, events: int, now_ms: int) -> None:
        self.r.hset(self.key, str(worker), f"{events} {now_ms}")

    def behind(self, now_ms: int, fresh_ms: int = BACKLOG_FRESH_MS) -> int:
        """Events the workers are behind, summed over the reports at most ``fresh_ms`` old
        (a field that is not "<events> <ms>" counts as none)."""
        total = 0
        raw: Any = self.r.hgetall(self.key)
        for value in raw.values():
            events, _, at = _s(value).partition(" ")
            if events.isdigit() and at.isdigit() and now_ms - int(at) <= fresh_ms:
                total += int(events)
        return total

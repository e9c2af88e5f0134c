"""Cross-sell in Redis: the co-purchase counts every worker adds to, and the ranker the offer
decider learns. The only code that reads or writes them.

- ``<p>xs:n`` (baskets), ``<p>xs:i`` (sorted set: baskets per SKU, whose most bought are
  candidates too), ``<p>xs:r`` (returns per SKU),
  ``<p>xs:c`` (SKU -> category) and ``<p>xs:p:<sku>`` sorted sets (co-SKU -> baskets with
  both; the :data:`KEEP` most co-bought are kept): the sum of every worker's flushes, each
  added once (``<p>xs:f:<flush id>``), so the counts are those one worker would have
  learnt from every basket (``state/lua/cross_sell.lua``);
- ``<p>xs:model``: the ranker's JSON state, and ``<p>xs:rank:<customer>``: the ranking made
  at the customer's last purchase (time and each candidate's features), learnt from at
  their next one. Both are written in one transaction: after a crash the model and what
  it has learnt agree.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import orjson
import redis

from operators.cross_sell import CO_ITEMS, POPULAR, CoPurchase, CoView
from state.connection import pairs

log = logging.getLogger(__name__)
_LUA = (Path(__file__).with_name("lua") / "cross_sell.lua").read_text()
#: What one decision reads (reads only), in one call instead of two pipelines of one command
#: per item (redis-py's packing and parsing cost more than Redis's reads). ARGV: prefix, top
#: (0: no rows), popular, basket SKUs. Returns {rows per basket SKU (ZREVRANGE WITHSCORES), baskets,
#: popular (ZREVRANGE WITHSCORES), every SKU named, and per SKU named its baskets, returns
#: and category ("" when unknown)}.
_VIEW_LUA = """
local p, top, npop = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
-- the k highest scored, ties at the cut by member ascending (ZREVRANGE would keep the
-- greatest members): the same rows as CoPurchase.view
local function best(key, k)
  local r = redis.call('ZREVRANGE', key, 0, k - 1, 'WITHSCORES')
  if #r < 2 * k then return r end
  local cut, out, tied = r[#r], {}, 0
  for j = 1, #r, 2 do
    if r[j + 1] == cut then tied = tied + 1 else out[#out + 1] = r[j]; out[#out + 1] = r[j + 1] end
  end
  local low = redis.call('ZRANGEBYSCORE', key, cut, cut, 'WITHSCORES', 'LIMIT', 0, tied)
  for j = 1, #low do out[#out + 1] = low[j] end
  return out
end
local seen, every, rows = {}, {}, {}
local function named(s)
  if not seen[s] then seen[s] = true; every[#every + 1] = s end
end
for i = 4, #ARGV do
  local a = ARGV[i]
  named(a)
  if top > 0 then  -- top 0: the SKUs' own counts only (no co-items)
    local r = best(p .. 'xs:p:' .. a, top)
    rows[#rows + 1] = r
    for j = 1, #r, 2 do named(r[j]) end
  end
end
local n = redis.call('GET', p .. 'xs:n') or '0'
local pop = best(p .. 'xs:i', npop)
for j = 1, #pop, 2 do named(pop[j]) end
local counts, rets, cats = {}, {}, {}
for i, x in ipairs(every) do
  counts[i] = redis.call('ZSCORE', p .. 'xs:i', x) or ''
  rets[i] = redis.call('HGET', p .. 'xs:r', x) or ''
  cats[i] = redis.call('HGET', p .. 'xs:c', x) or ''
end
return {rows, n, pop, every, counts, rets, cats}
"""
#: co-items kept per SKU in Redis (the ranking reads the first :data:`CO_ITEMS`)
KEEP: Final = 100
#: entries per script call: a large flush is cut in pieces, each added once, so that no
#: call blocks Redis for long
CHUNK: Final = 20_000
#: a customer's kept ranking is forgotten after this long without a purchase
RANK_TTL_SECONDS: Final = 60 * 86_400


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def chunks(delta: CoPurchase, size: int = CHUNK) -> list[dict[str, Any]]:
    """A flush as script arguments of at most about ``size`` entries each (a pair row is
    never split; the basket count goes with the first).

    >>> co = CoPurchase(); co.learn_one(["a", "b", "c"])
    >>> [sorted(c["p"]) for c in chunks(co, size=4)]
    [['a'], ['b', 'c']]
    """
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] = {"n": delta.baskets, "i": dict(delta.items), "r": dict(delta.returns),
                           "c": dict(delta.categories), "p": {}}  # fmt: skip
    size_now = len(cur["i"]) + len(cur["r"]) + len(cur["c"])
    for a, row in delta.pairs.items():
        if cur["p"] and size_now + len(row) > size:
            out.append(cur)
            cur, size_now = {"n": 0, "i": {}, "r": {}, "c": {}, "p": {}}, 0
        cur["p"][a] = row
        size_now += len(row)
    out.append(cur)
    return out


class CoPurchaseStore:
    """The shared co-purchase counts. One instance per worker."""

    def __init__(self, client: redis.Redis, prefix: str = "oc:") -> None:
        self.r = client
        self.prefix = prefix
        self._add = client.register_script(_LUA)
        self._view = client.register_script(_VIEW_LUA)

    def add(self, delta: CoPurchase, flush_id: str) -> int:
        """Add a worker's counts, once per ``flush_id`` (a retried flush is not counted
        twice). Returns the pieces added now."""
        added = 0
        for k, piece in enumerate(chunks(delta)):
            added += int(
                self._add(args=[self.prefix, f"{flush_id}:{k}", orjson.dumps(piece), KEEP])
            )
        return added

    def view(self, skus: Sequence[str], top: int = CO_ITEMS) -> CoView:
        """What decisions about baskets of ``skus`` read: one script call. ``top`` 0: only
        the SKUs' own counts and categories, and the best sellers (the next-basket model)."""
        basket = sorted(set(skus))
        raw: Any = self._view(args=[self.prefix, top, POPULAR, *basket])
        rows, n, pop, every, counts, returns, cats = raw
        co = {
            a: {_s(b): int(float(x)) for b, x in sorted(pairs(r), key=_by_count)}
            for a, r in zip(basket if top else (), rows, strict=True)
        }
        popular = [_s(x) for x, _ in sorted(pairs(pop), key=_by_count)]
        if not every:
            return CoView(int(n), {}, co)
        names = [_s(x) for x in every]
        return CoView(
            int(n),
            {x: int(float(v)) for x, v in zip(names, counts, strict=True) if v != b""},
            co,
            {x: int(v) for x, v in zip(names, returns, strict=True) if v != b""},
            {x: _s(v) for x, v in zip(names, cats, strict=True) if v != b""},
            popular,
        )

    def baskets(self) -> int:
        """Baskets counted so far, by every worker."""
        return int(self.r.get(self.prefix + "xs:n") or 0)

    def categories(self, skus: Sequence[str]) -> dict[str, str]:
        """The category of each SKU, where a sale line named it."""
        if not skus:
            return {}
        raw = self.r.hmget(self.prefix + "xs:c", list(skus))
        return {s: _s(v) for s, v in zip(skus, raw, strict=True) if v is not None}

    def learnt(self) -> CoPurchase:
        """Everything stored, as one learner (tests, tools; reads every pair set)."""
        pre = self.prefix
        c = CoPurchase()
        c.baskets = self.baskets()
        items: Any = self.r.zrange(pre + "xs:i", 0, -1, withscores=True)
        c.items = {_s(k): int(v) for k, v in items}
        c.returns = {_s(k): int(v) for k, v in self.r.hgetall(pre + "xs:r").items()}
        c.categories = {_s(k): _s(v) for k, v in self.r.hgetall(pre + "xs:c").items()}
        for key in self.r.scan_iter(match=pre + "xs:p:*", count=1000):
            a = _s(key)[len(pre) + 5 :]
            rows: Any = self.r.zrange(key, 0, -1, withscores=True)
            c.pairs[a] = {_s(b): int(n) for b, n in rows}
        return c


Ranking = tuple[int, list[tuple[str, dict[str, float]]]]


def _by_count(row: tuple[bytes, bytes]) -> tuple[float, bytes]:
    """Most first, then by name (ties in the same order whoever reads)."""
    return (-float(row[1]), row[0])


class RankerStore:
    """The cross-sell ranker's state and the rankings it learns from."""

    def __init__(self, client: redis.Redis, prefix: str = "oc:") -> None:
        self.r = client
        self.prefix = prefix

    def load(self) -> dict[str, Any] | None:
        raw = self.r.get(self.prefix + "xs:model")
        return orjson.loads(raw) if raw else None

    def rankings(self, customers: Sequence[str]) -> dict[str, Ranking]:
        """Each customer's kept ranking: (time made, [(SKU, features), ...])."""
        if not customers:
            return {}
        raw = self.r.mget([self.prefix + "xs:rank:" + c for c in customers])
        out: dict[str, Ranking] = {}
        for c, v in zip(customers, raw, strict=True):
            if not v:
                continue
            try:
                doc = orjson.loads(v)
                ranking = [(str(s), {str(f): float(n) for f, n in x.items()}) for s, x in doc["x"]]
                if not all(abs(n) <= 100.0 for _, x in ranking for n in x.values()):
                    raise ValueError("a feature out of range")  # NaN included: never learnt
                out[c] = (int(doc["t"]), ranking)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
                # not written by this version: nothing to learn from (it is replaced)
                log.warning("cross-sell ranking of %s unreadable, not learnt from: %s", c, e)
        return out

    def checkpoint(
        self, state: Mapping[str, Any], kept: Mapping[str, Ranking], learnt: Sequence[str]
    ) -> None:
        """Store the model, the new rankings, and forget the rankings learnt from (and not
        replaced), in one transaction."""
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self.prefix + "xs:model", orjson.dumps(state))
        for c, (t, ranking) in kept.items():
            pipe.set(
                self.prefix + "xs:rank:" + c,
                orjson.dumps({"t": t, "x": ranking}),
                ex=RANK_TTL_SECONDS,
            )
        gone = [self.prefix + "xs:rank:" + c for c in learnt if c not in kept]
        if gone:
            pipe.delete(*gone)
        pipe.execute()

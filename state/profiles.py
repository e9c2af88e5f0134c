"""Customers in Redis: identity graph, profiles, applied offsets, erasures.
The only module that talks to Redis.

Layout (``oc:`` is the configurable prefix)::

    oc:offsets             hash  "<topic>:<partition>" -> last applied offset
    oc:ids:<bucket>        hash  "<type>:<value>" -> canonical customer id "C" + 12 digits,
                                 bucket = CRC-32 of the identifier mod oc:ids:buckets (small
                                 hashes cost far less than one key per identifier)
    oc:ids:buckets         int   bucket count, set by the first writer and then fixed
    oc:members:<cid>       hash  the customer's identifiers (emails/phones as keyed HMACs)
                                 -> their bucket
    oc:mg:<cid>            list  merge records (JSON: survivor, merged, via, why, at)
    oc:p:<cid>             hash  profile fields (operators/profile_fields.py: every field
                                 with the rule that combines two of its values)
    oc:v:<cid>, oc:b:<cid> zset  sku -> last viewed / bought ms (most recent N)
    oc:rt:<cid>            zset  sku -> last returned ms (most recent N): never suggested again
    oc:cart:<cid>          hash  "<sku>|<ts ms>" -> quantity delta, "_clr" -> last checkout ms
    oc:seq                 int   last canonical id number
    oc:stats:<name>        int   customers, identifiers, merges, refused, suppressed, erased
    oc:refusals            stream  links refused by the guard rails (capped)
    oc:erased              hash  identifier -> erasure ms (tombstones), oc:erased:version
    oc:erasures            stream  erasure records (customer id, count, time)
    oc:dd:<day>:<bucket>   set   63-bit hashes of the event ids applied, per event day (days
                                 since 1970) and bucket (hash mod oc:dd:buckets); expire
                                 after the dedupe window (operators/dedupe.py)
    oc:dd:buckets          int   dedupe bucket count, set by the first writer and then fixed
    oc:applying            str   present only while a batch script writes (see the script)

Each batch is applied by one Lua call that also advances the offsets, so a batch's
effects and its position are stored together or not at all.
"""

from __future__ import annotations

import importlib.resources
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from operators.identity import IdentityRules
from operators.preferences import HISTORY_BASKETS
from operators.profile import CART_CAP, RECENT_BOUGHT, RECENT_VIEWS, build_profile
from operators.profile_fields import lua_rules
from state.connection import (
    EvictionPolicyError,
    RedisBusyError,
    RedisOutOfMemoryError,
    ScriptRejectedError,
    StateError,
    StateRegressedError,
    StateUnavailableError,
    TornBatchError,
    connect,
    redact_url,
    transient,
)
from state.preferences import history

_LUA = importlib.resources.files("state") / "lua"
#: The batch script: the stock section (a function) first, then the batch itself.
#: The profile field rules go to the script as a table: declared once, in Python.
_APPLY_LUA = (
    f"local FIELD_RULES = {lua_rules()}\n"
    + (_LUA / "stock.lua").read_text()
    + (_LUA / "apply_batch.lua").read_text()
)
_ERASE_LUA = (_LUA / "erase.lua").read_text()


#: Identity-link buckets of a new Redis: aim for about 100 identifiers per bucket at your
#: expected size (4,096 suits ~100k customers; more buckets than that only cost a little).
DEFAULT_ID_BUCKETS = 4096


def id_bucket(identifier: str, buckets: int) -> str:
    """The hash bucket holding an identifier's link.

    >>> id_bucket("loyalty:L1", 4096)
    '95a'
    """
    return format(zlib.crc32(identifier.encode()) % buckets, "x")


#: Event-id dedupe sets per event day: each stays a compact intset (about 9 bytes per event)
#: up to 512 events, so up to ~400k events a day at 1,024 buckets; past that a set becomes a
#: hash table (about 64 bytes per event): size it at about events per day / 400.
DEFAULT_DEDUPE_BUCKETS = 1024
DEFAULT_DEDUPE_WINDOW_MS = 7 * 86_400_000

#: Favourite categories shown in a profile.
STATS = ("customers", "identifiers", "merges", "refused", "suppressed", "erased")


@dataclass(frozen=True)
class ApplyResult:
    ok: bool
    new_customers: int = 0
    merges: int = 0
    #: identifiers newly linked to a customer
    linked: int = 0
    refusals: int = 0
    #: stock: units counts found missing (shrinkage; negative: found extra), movements
    #: already in a count, counts too late to apply
    shrinkage: int = 0
    moves_in_count: int = 0
    late_counts: int = 0
    #: SKUs whose alerts need an evaluation (counted somewhere or priced)
    to_evaluate: tuple[str, ...] = ()
    #: partitions where Redis is ahead of what the caller assumed: part -> stored offset
    stale: dict[str, int] | None = None
    #: the erasure version changed: reload the tombstones (nothing was written)
    erasures: int | None = None
    #: rows the guard rails refused: row index -> reason (nothing was written)
    refused: dict[int, str] | None = None
    #: hashes of events Redis has already applied (nothing was written)
    duplicates: frozenset[int] | None = None


@dataclass(frozen=True)
class _Stored:
    """One customer's keys as read from Redis, decoded."""

    fields: dict[str, str]
    views: list[tuple[str, int]]
    bought: list[tuple[str, int]]
    cart: dict[str, int]
    members: list[str]


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


class ProfileStore:
    """Batched, fenced access to customers. One instance per worker; never per event."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "oc:",
        rules: IdentityRules | None = None,
        *,
        id_buckets: int = DEFAULT_ID_BUCKETS,
        dedupe_buckets: int = DEFAULT_DEDUPE_BUCKETS,
        dedupe_window_ms: int = DEFAULT_DEDUPE_WINDOW_MS,
    ) -> None:
        self.r = client
        self.prefix = prefix
        self.rules = rules or IdentityRules()
        self._new_buckets = id_buckets
        self._buckets: int | None = None
        self._new_dd_buckets = dedupe_buckets
        self._dd_buckets: int | None = None
        #: how long a copy of an event is recognised (0: no dedupe)
        self.dedupe_window_ms = dedupe_window_ms
        self.offsets_key = prefix + "offsets"
        self._apply = client.register_script(_APPLY_LUA)
        self._erase = client.register_script(_ERASE_LUA)

    # ------------------------------------------------------------------ health
    def ping(self) -> bool:
        return bool(self.r.ping())

    def persistence(self) -> dict[str, str]:
        """AOF/RDB settings, or {} where CONFIG is not allowed (managed Redis)."""
        try:
            cfg = self.r.config_get("appendonly")
            cfg.update(self.r.config_get("appendfsync"))
            cfg.update(self.r.config_get("maxmemory-policy"))
        except redis.ResponseError:
            return {}
        return {_s(k or ""): _s(v or "") for k, v in cfg.items()}

    def check_version(self) -> str:
        """The Redis version; raises :class:`StateError` below 6.2 (the batch script uses
        SMISMEMBER and ZADD GT)."""
        version = _s(str(self.r.info("server").get("redis_version", "0")))
        parts = tuple(int(x) for x in version.split(".")[:2] if x.isdigit())
        if parts < (6, 2):
            raise StateError(f"Redis {version} is too old: omnicanal needs Redis 6.2 or newer")
        return version

    def check_eviction(self, *, allow: bool = False) -> str:
        """The ``maxmemory-policy``; raises :class:`EvictionPolicyError` unless it is
        ``noeviction`` (or ``allow``). Read from INFO, which managed Redis also serves."""
        policy = _s(str(self.r.info("memory").get("maxmemory_policy", "")))
        if policy and policy != "noeviction" and not allow:
            raise EvictionPolicyError(
                f"Redis maxmemory-policy is {policy!r}: Redis may evict keys when it is full, "
                "and an evicted id sequence, identity link or erasure tombstone silently "
                "corrupts customers or brings erased people back. Set `maxmemory-policy "
                "noeviction` (omnicanal pauses when Redis is full instead), or, if you know "
                "what you are doing, OMNICANAL_REDIS_ALLOW_EVICTION=true."
            )
        return policy

    def close(self) -> None:
        self.r.close()

    def delete_all(self) -> int:
        """Delete every key under this store's prefix and nothing else (benchmarks and
        tools that work under a prefix of their own; never the pipeline)."""
        n = 0
        batch: list[bytes] = []
        for k in self.r.scan_iter(match=self.prefix + "*", count=1000):
            batch.append(k)
            if len(batch) >= 1000:
                n += int(self.r.unlink(*batch))
                batch = []
        if batch:
            n += int(self.r.unlink(*batch))
        return n

    def dedupe_memory(self) -> tuple[int, int]:
        """(sets, bytes) of the event-id dedupe sets (MEMORY USAGE), for the benchmark."""
        sets = list(self.r.scan_iter(match=self.prefix + "dd:*:*", count=1000))
        return len(sets), sum(int(self.r.memory_usage(k) or 0) for k in sets)

    def used_memory(self) -> int:
        """Bytes Redis uses in all (INFO memory)."""
        return int(self.r.info("memory")["used_memory"])

    # ------------------------------------------------------------------ offsets
    def load_offsets(self, parts: Sequence[str] | None = None) -> dict[str, int]:
        """Last applied offset per ``topic:partition`` (absent: never applied)."""
        if parts is None:
            raw = self.r.hgetall(self.offsets_key)
            return {_s(k): int(v) for k, v in raw.items()}
        if not parts:
            return {}
        vals = self.r.hmget(self.offsets_key, list(parts))
        return {p: int(v) for p, v in zip(parts, vals, strict=True) if v is not None}

    def set_offsets(self, offsets: dict[str, int]) -> None:
        """Overwrite applied offsets (operator tool: ``--resume-from`` decisions)."""
        if offsets:
            self.r.hset(self.offsets_key, mapping={k: str(v) for k, v in offsets.items()})

    def offset_stamps(self, parts: Sequence[str]) -> dict[str, int]:
        """Kafka timestamp of the last applied message per part (where known)."""
        if not parts:
            return {}
        vals = self.r.hmget(self.offsets_key + ":ts", list(parts))
        return {p: int(v) for p, v in zip(parts, vals, strict=True) if v is not None}

    def forget_offsets(self, parts: Sequence[str]) -> None:
        """Delete the applied offsets of ``parts`` (operator tool, after a topic was
        recreated or retention removed unread events): they start afresh."""
        if parts:
            self.r.hdel(self.offsets_key, *parts)
            self.r.hdel(self.offsets_key + ":ts", *parts)

    # ------------------------------------------------------------------ batch apply
    def apply(
        self,
        parts: Iterable[tuple[str, int, int] | tuple[str, int, int, int]],
        rows: list[list[Any]],
        *,
        refusals: Sequence[Sequence[str]] = (),
        erasures: int = 0,
        suppressed: int = 0,
        stock: dict[str, Any] | None = None,
        dedupe: Sequence[tuple[int, int]] = (),
    ) -> ApplyResult:
        """Resolve and apply a batch plan (``operators/batch.py``) and advance ``parts``
        (name, floor, max offset[, Kafka timestamp of the message at max]), atomically.

        Raises :class:`StateRegressedError` if Redis holds an offset below ``floor``,
        :class:`TornBatchError` if an earlier call died half-way through its writes,
        :class:`RedisOutOfMemoryError` / :class:`RedisBusyError` when Redis cannot take it
        now, and :class:`ScriptRejectedError` when the script refuses the plan or fails
        before writing (split the batch). Returns ``ok=False``, having written nothing,
        where Redis is already ahead of ``floor`` (a replay or a second writer: drop what is
        covered and call again), where the erasure version is not ``erasures`` (reload
        :meth:`erased` and call again), where the guard rails refuse rows' links (apply
        those rows unlinked), or where events of ``dedupe`` ((event day, hash) per event,
        :func:`operators.dedupe.event_key`) were applied before (drop them, call again).
        ``stock`` is the batch's stock plan (``operators/stock.py``), applied in the same
        transaction.
        """
        parts = list(parts)
        now = int(time.time() * 1000)
        payload = orjson.dumps(
            {
                "parts": parts,
                "c": rows,
                "refusals": list(refusals),
                "erasures": erasures,
                "suppressed": suppressed,
                "limits": dict(self.rules.limits),
                "max": self.rules.max_component,
                "now": now,
                "bk": {i: id_bucket(i, self.buckets()) for row in rows for i in row[0]},
                "id": f"{parts[0][0]}:{parts[0][1] + 1}-{parts[0][2]}" if parts else "",
                **({"st": stock} if stock else {}),
                **({"dd": self._dedupe_groups(dedupe, now)} if dedupe else {}),
            }
        )
        try:
            res = self._apply(
                args=[self.prefix, payload, RECENT_VIEWS, CART_CAP, RECENT_BOUGHT, HISTORY_BASKETS]
            )
        except redis.ResponseError as e:
            raise self._script_error(e) from e
        status = _s(res[0])
        if status == "OK":
            new, merges, linked, refused, gap, in_count, late = (int(x) for x in res[1:8])
            skus = tuple(_s(x) for x in res[8])
            return ApplyResult(True, new, merges, linked, refused, gap, in_count, late, skus)
        if status == "STALE":
            it = iter(res[1:])
            return ApplyResult(False, stale={_s(k): int(v) for k, v in zip(it, it, strict=True)})
        if status == "ERASURES":
            return ApplyResult(False, erasures=int(res[1]))
        if status == "REFUSED":
            it = iter(res[1:])
            return ApplyResult(False, refused={int(i): _s(r) for i, r in zip(it, it, strict=True)})
        if status == "DUPLICATE":
            return ApplyResult(False, duplicates=frozenset(int(x) for x in res[1:]))
        if status == "INVALID":
            raise ScriptRejectedError(f"the batch script refused row {_s(res[1])}: {_s(res[2])}")
        if status == "TORN":
            raise TornBatchError(self._torn_message(_s(res[1])))
        part, stored, floor = _s(res[1]), int(res[2]), int(res[3])
        raise StateRegressedError(
            f"Redis state went back in time for {part}: Redis says offset {stored} is the "
            f"last applied, but this worker already applied up to {floor}. Redis lost writes "
            "(restarted without persistence, failed over, or was flushed). Stopping rather "
            "than building wrong profiles; see README 'Recovering from Redis data loss'."
        )

    def _dedupe_groups(self, keys: Sequence[tuple[int, int]], now_ms: int) -> list[list[Any]]:
        """The script's ``dd`` argument: per set key, its expiry (s) and the hashes."""
        buckets = self.dedupe_buckets()
        groups: dict[str, list[Any]] = {}
        for day, h in keys:
            key = f"{self.prefix}dd:{day}:{h % buckets:x}"
            g = groups.get(key)
            if g is None:
                end_of_day = (day + 1) * 86_400_000
                expire = (max(end_of_day, now_ms) + self.dedupe_window_ms) // 1000
                g = groups[key] = [key, expire, []]
            g[2].append(str(h))  # as text: Lua numbers are doubles, 63 bits would round
        return list(groups.values())

    def dedupe_buckets(self) -> int:
        """Dedupe set buckets per day: stored in Redis by the first writer, fixed after."""
        if self._dd_buckets is None:
            key = self.prefix + "dd:buckets"
            self.r.set(key, self._new_dd_buckets, nx=True)
            self._dd_buckets = int(self.r.get(key) or self._new_dd_buckets)
        return self._dd_buckets

    def _script_error(self, e: redis.ResponseError) -> StateError:
        """What a failed script call means: busy, full, torn, or refused before writing."""
        msg = str(e)
        why = transient(e)
        if why == "out_of_memory":
            return RedisOutOfMemoryError(f"Redis is out of memory: {msg}")
        if why == "busy":
            return RedisBusyError(f"Redis cannot take writes now: {msg}")
        marker = self.r.get(self.prefix + "applying")
        if marker is not None:
            return TornBatchError(self._torn_message(_s(marker), msg))
        return ScriptRejectedError(f"the batch script failed before writing: {msg[:300]}")

    def _torn_message(self, batch: str, cause: str = "") -> str:
        return (
            f"a batch script died half-way through its writes (batch {batch}"
            f"{': ' + cause[:300] if cause else ''}): Redis holds part of that batch, and "
            "applying anything more would count some events twice. This is a bug or a key "
            f"changed by something else; please report it. Recovery: restore Redis from a "
            f"backup taken before, or rebuild (README 'Recovering from Redis data loss'); "
            f"`DEL {self.prefix}applying` only once you have decided what Redis should hold."
        )

    # ------------------------------------------------------------------ identity
    def buckets(self) -> int:
        """Identity-link bucket count: stored in Redis by the first writer, fixed after."""
        if self._buckets is None:
            key = self.prefix + "ids:buckets"
            self.r.set(key, self._new_buckets, nx=True)
            self._buckets = int(self.r.get(key) or self._new_buckets)
        return self._buckets

    def resolve(self, identifier: str) -> str | None:
        """Canonical customer id of ``"<type>:<value>"`` (or of a canonical id itself)."""
        if identifier.startswith("C") and ":" not in identifier:
            return identifier if self.r.exists(self.prefix + "members:" + identifier) else None
        v = self.r.hget(self.prefix + "ids:" + id_bucket(identifier, self.buckets()), identifier)
        return _s(v) if v is not None else None

    def resolve_many(self, identifiers: Iterable[str]) -> dict[str, str | None]:
        """:meth:`resolve` for many ``"<type>:<value>"`` identifiers, in one round trip."""
        idents = list(identifiers)
        if not idents:
            return {}
        buckets = self.buckets()
        pipe = self.r.pipeline(transaction=False)
        for i in idents:
            pipe.hget(self.prefix + "ids:" + id_bucket(i, buckets), i)
        return {
            i: (_s(v) if v is not None else None)
            for i, v in zip(idents, pipe.execute(), strict=True)
        }

    def merged_into(self, customer_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """The ids merged into each customer over time (their merge records carry those of
        earlier merges too), in one round trip."""
        cids = list(customer_ids)
        if not cids:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for c in cids:
            pipe.lrange(self.prefix + "mg:" + c, 0, -1)
        return {
            c: tuple(orjson.loads(rec).get("merged", "") for rec in recs)
            for c, recs in zip(cids, pipe.execute(), strict=True)
        }

    def members(self, customer_id: str) -> set[str]:
        return {_s(m) for m in self.r.hkeys(self.prefix + "members:" + customer_id)}

    def merges(self, customer_id: str) -> list[dict[str, Any]]:
        """Merge records of a customer, oldest first."""
        return [orjson.loads(x) for x in self.r.lrange(self.prefix + "mg:" + customer_id, 0, -1)]

    def refusals(self, count: int = 100) -> list[dict[str, str]]:
        """The most recent links refused by the guard rails."""
        rows = self.r.xrevrange(self.prefix + "refusals", count=count) or []
        return [{_s(k): _s(v) for k, v in (f or {}).items()} for _, f in rows]

    def stats(self) -> dict[str, int]:
        """Customers, linked identifiers, merges, refusals, suppressed events, erasures."""
        vals = self.r.mget([self.prefix + "stats:" + n for n in STATS])
        return {n: int(v or 0) for n, v in zip(STATS, vals, strict=True)}

    # ------------------------------------------------------------------ privacy
    def erasure_version(self) -> int:
        return int(self.r.get(self.prefix + "erased:version") or 0)

    def erased(self) -> tuple[int, dict[str, int]]:
        """(version, tombstones: identifier -> erasure ms), read together."""
        pipe = self.r.pipeline(transaction=True)
        pipe.get(self.prefix + "erased:version")
        pipe.hgetall(self.prefix + "erased")
        version, tombs = pipe.execute()
        return int(version or 0), {_s(k): int(v) for k, v in tombs.items()}

    def erase(self, customer_id: str, now_ms: int | None = None) -> int | None:
        """Erase a customer everywhere in Redis; returns how many identifiers were
        tombstoned, or None if there is no such customer."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        n = int(self._erase(args=[self.prefix, customer_id, now]))
        return None if n < 0 else n

    def export(self, customer_id: str, as_of_ms: int | None = None) -> dict[str, Any] | None:
        """Everything Redis holds about a customer (right of access), as JSON-able data."""
        raw = self._stored(customer_id)
        if raw is None:
            return None
        return {
            "customer_id": customer_id,
            "exported_at": _iso(int(time.time() * 1000)),
            "profile": self._build(customer_id, raw, as_of_ms),
            "identifiers": raw.members,
            "merges": self.merges(customer_id),
            "stored": {
                "profile_fields": dict(sorted(raw.fields.items())),
                "viewed": dict(raw.views),
                "bought": dict(raw.bought),
                "returned": self.returned(customer_id),
                "baskets": self.baskets(customer_id),
                "cart_entries": raw.cart,
            },
            "offers": self._offer_data(customer_id),
        }

    def baskets(self, customer_id: str) -> list[dict[str, Any]]:
        """The customer's kept baskets (the next-basket model's history), the oldest first."""
        kept = history(self.r.get(self.prefix + "ph:" + customer_id))
        return [{"at": _iso(k.ts), "skus": list(k.skus), "to_learn": k.learn} for k in kept]

    def returned(self, customer_id: str) -> dict[str, int]:
        """SKUs the customer returned (most recent kept), with when: never suggested again."""
        raw: Any = self.r.zrange(self.prefix + "rt:" + customer_id, 0, -1, withscores=True)
        return {_s(s): int(ts) for s, ts in raw}

    def _offer_data(self, customer_id: str) -> dict[str, Any]:
        """What the offers keep about a customer: their offer counters (per day, campaign and
        trigger), the SKUs they wait for (back in stock), and the cross-sell ranking made at
        their last purchase (SKUs and the features the ranker saw)."""
        pre = self.prefix
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(f"{pre}of:n:{customer_id}")
        pipe.hgetall(f"{pre}bisq:{customer_id}")
        pipe.get(f"{pre}xs:rank:{customer_id}")
        counters, waits, ranking = pipe.execute()
        return {
            "counters": {_s(k): _s(v) for k, v in sorted(counters.items())},
            "waiting_for": {_s(k): int(v) for k, v in sorted(waits.items())},
            "cross_sell_ranking": orjson.loads(ranking) if ranking else None,
        }

    # ------------------------------------------------------------------ reads
    def customer_count(self) -> int:
        return int(self.r.get(self.prefix + "stats:customers") or 0)

    def customer_ids(self, count: int = 1000) -> Iterable[str]:
        """All customer ids (SCAN, for tools and tests; never on the hot path)."""
        plen = len(self.prefix) + 2
        for k in self.r.scan_iter(match=self.prefix + "p:*", count=count):
            yield _s(k)[plen:]

    def read_profile(self, customer_id: str, as_of_ms: int | None = None) -> dict[str, Any] | None:
        """The unified 360° profile of one customer as plain JSON-able data, or None.
        ``as_of_ms`` (default: now) is the time recency and decayed interests refer to."""
        raw = self._stored(customer_id)
        return None if raw is None else self._build(customer_id, raw, as_of_ms)

    def _stored(self, customer_id: str) -> _Stored | None:
        """A customer's stored pieces, read in one transaction (None: no such profile)."""
        pre = self.prefix
        pipe = self.r.pipeline(transaction=True)
        pipe.hgetall(pre + "p:" + customer_id)
        pipe.zrevrange(pre + "v:" + customer_id, 0, -1, withscores=True)
        pipe.zrevrange(pre + "b:" + customer_id, 0, -1, withscores=True)
        pipe.hgetall(pre + "cart:" + customer_id)
        pipe.hkeys(pre + "members:" + customer_id)
        h, views, bought, cart, members = pipe.execute()
        if not h:
            return None
        return _Stored(
            {_s(k): _s(v) for k, v in h.items()},
            [(_s(s), int(ts)) for s, ts in views],
            [(_s(s), int(ts)) for s, ts in bought],
            {_s(k): int(v) for k, v in cart.items()},
            sorted(_s(m) for m in members),
        )

    @staticmethod
    def _build(customer_id: str, raw: _Stored, as_of_ms: int | None) -> dict[str, Any]:
        return build_profile(
            customer_id,
            raw.fields,
            raw.views,
            raw.bought,
            dict(raw.cart),  # build_profile consumes the "_clr" entry
            raw.members,
            int(time.time() * 1000) if as_of_ms is None else as_of_ms,
        )

    def memory_usage(self, customer_id: str) -> int:
        """Bytes Redis uses for one customer's keys (identity links included)."""
        pre = self.prefix
        keys = [
            pre + k + customer_id
            for k in ("p:", "v:", "b:", "rt:", "cart:", "members:", "mg:", "ph:")
        ]
        total = sum(int(self.r.memory_usage(k) or 0) for k in keys)
        for m in self.members(customer_id):  # its share of the bucket holding each link
            bucket = pre + "ids:" + id_bucket(m, self.buckets())
            total += int(self.r.memory_usage(bucket) or 0) // max(1, int(self.r.hlen(bucket)))
        return total


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


__all__ = [
    "ApplyResult",
    "EvictionPolicyError",
    "ProfileStore",
    "RedisBusyError",
    "RedisOutOfMemoryError",
    "ScriptRejectedError",
    "StateError",
    "StateUnavailableError",
    "TornBatchError",
    "connect",
    "redact_url",
    "transient",
]

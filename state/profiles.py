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
    oc:p:<cid>             hash  profile fields, by kind (how two values combine):
        sum   <ch>:o|r|i|ir|e|rsp|red  orders, returns, items, items returned, events,
                                       offer responses, redemptions
              <ch>:s:<CUR>, <ch>:rf:<CUR>  spend / refunds in minor units
              loc:<location>           store purchases at a location
        min   <ch>:f                   first seen (ms)
        max   <ch>:l, <ch>:lo          last seen, last order (ms)
        log   cat:<category>           decayed interest, log2 (operators/profile.py)
        last  cs:<purpose>             consent "<event ms>:<1|0>", latest event time wins
              hs                       home store chosen "<event ms>:<location>"
    oc:v:<cid>, oc:b:<cid> zset  sku -> last viewed / bought ms (most recent N)
    oc:cart:<cid>          hash  "<sku>|<ts ms>" -> quantity delta, "_clr" -> last checkout ms
    oc:seq                 int   last canonical id number
    oc:stats:<name>        int   customers, identifiers, merges, refused, suppressed, erased
    oc:refusals            stream  links refused by the guard rails (capped)
    oc:erased              hash  identifier -> erasure ms (tombstones), oc:erased:version
    oc:erasures            stream  erasure records (customer id, count, time)

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
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from operators.identity import IdentityRules
from operators.profile import (
    CART_CAP,
    CONSENT_PURPOSES,
    RECENT_BOUGHT,
    RECENT_VIEWS,
    cart_lines,
    decayed,
    rfm,
)

_LUA = importlib.resources.files("state") / "lua"
#: The batch script: the stock section (a function) first, then the batch itself.
_APPLY_LUA = (_LUA / "stock.lua").read_text() + (_LUA / "apply_batch.lua").read_text()
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


#: Favourite categories shown in a profile.
TOP_CATEGORIES = 5
STATS = ("customers", "identifiers", "merges", "refused", "suppressed", "erased")


class StateError(RuntimeError):
    """Redis state cannot be trusted; the message says why and what to do."""


class StateRegressedError(StateError):
    """Redis holds less than this process already applied: Redis lost writes."""


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


@dataclass(frozen=True)
class _Stored:
    """One customer's keys as read from Redis, decoded."""

    fields: dict[str, str]
    views: list[tuple[str, int]]
    bought: list[tuple[str, int]]
    cart: dict[str, int]
    members: list[str]


def connect(url: str, *, retry_seconds: float = 20.0) -> redis.Redis:
    """A client that rides out short Redis restarts and raises after ``retry_seconds``."""
    attempts = max(1, int(retry_seconds / 2))
    return redis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), attempts),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=5,
        health_check_interval=30,
    )


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
    ) -> None:
        self.r = client
        self.prefix = prefix
        self.rules = rules or IdentityRules()
        self._new_buckets = id_buckets
        self._buckets: int | None = None
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

    def close(self) -> None:
        self.r.close()

    def used_memory(self) -> int:
        """Bytes Redis uses in all (INFO memory)."""
        return int(self.r.info("memory")["used_memory"])

    def flush_all(self) -> None:
        """Empty the whole Redis database (tools and benchmarks only, never the pipeline)."""
        self.r.flushdb()
        self._buckets = None

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

    # ------------------------------------------------------------------ batch apply
    def apply(
        self,
        parts: Iterable[tuple[str, int, int]],
        rows: list[list[Any]],
        *,
        refusals: Sequence[Sequence[str]] = (),
        erasures: int = 0,
        suppressed: int = 0,
        stock: dict[str, Any] | None = None,
    ) -> ApplyResult:
        """Resolve and apply a batch plan (``operators/batch.py``) and advance ``parts``
        (name, floor, max offset), atomically.

        Raises :class:`StateRegressedError` if Redis holds an offset below ``floor``.
        Returns ``ok=False``, having written nothing, where Redis is already ahead of
        ``floor`` (a replay or a second writer: drop what is covered and call again), where
        the erasure version is not ``erasures`` (reload :meth:`erased` and call again), or
        where the guard rails refuse rows' links (apply those rows unlinked).
        ``stock`` is the batch's stock plan (``operators/stock.py``), applied in the same
        transaction.
        """
        payload = orjson.dumps(
            {
                "parts": list(parts),
                "c": rows,
                "refusals": list(refusals),
                "erasures": erasures,
                "suppressed": suppressed,
                "limits": dict(self.rules.limits),
                "max": self.rules.max_component,
                "now": int(time.time() * 1000),
                "bk": {i: id_bucket(i, self.buckets()) for row in rows for i in row[0]},
                **({"st": stock} if stock else {}),
            }
        )
        res = self._apply(args=[self.prefix, payload, RECENT_VIEWS, CART_CAP, RECENT_BOUGHT])
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
        part, stored, floor = _s(res[1]), int(res[2]), int(res[3])
        raise StateRegressedError(
            f"Redis state went back in time for {part}: Redis says offset {stored} is the "
            f"last applied, but this worker already applied up to {floor}. Redis lost writes "
            "(restarted without persistence, failed over, or was flushed). Stopping rather "
            "than building wrong profiles; see README 'Recovering from Redis data loss'."
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
                "cart_entries": raw.cart,
            },
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
        keys = [pre + k + customer_id for k in ("p:", "v:", "b:", "cart:", "members:", "mg:")]
        total = sum(int(self.r.memory_usage(k) or 0) for k in keys)
        for m in self.members(customer_id):  # its share of the bucket holding each link
            bucket = pre + "ids:" + id_bucket(m, self.buckets())
            total += int(self.r.memory_usage(bucket) or 0) // max(1, int(self.r.hlen(bucket)))
        return total


_COUNTERS = {
    "o": "orders",
    "r": "returns",
    "i": "items",
    "ir": "items_returned",
    "e": "events",
    "rsp": "offer_responses",
    "red": "offers_redeemed",
}


def build_profile(
    customer_id: str,
    fields: dict[str, str],
    views: list[tuple[str, int]],
    bought: list[tuple[str, int]],
    cart: dict[str, int],
    identifiers: list[str],
    as_of_ms: int,
) -> dict[str, Any]:
    """Assemble the stored pieces into the profile document.

    >>> p = build_profile("C000000000007", {"store:o": "2", "store:s:GBP": "1250",
    ...     "store:f": "0", "store:l": "60000", "store:lo": "60000", "store:e": "2",
    ...     "loc:S1": "2", "cs:sms": "5:0"}, [("SKU9", 1000)], [], {}, ["loyalty:7"], 60000)
    >>> p["channels"]["store"]["orders"], p["spend_minor"], p["home_store"], p["segment"]
    (2, {'GBP': 1250}, 'S1', 'new')
    >>> p["consents"]["sms"]
    {'granted': False, 'at': '1970-01-01T00:00:00.005000+00:00'}
    """
    channels: dict[str, dict[str, Any]] = {}
    locations: dict[str, int] = {}
    categories: dict[str, float] = {}
    consents: dict[str, dict[str, Any]] = {}
    chosen_store = None
    for field, raw in fields.items():
        if field == "hs":
            chosen_store = raw.partition(":")[2]
            continue
        head, _, rest = field.partition(":")
        if head == "loc":
            locations[rest] = int(raw)
            continue
        if head == "cat":
            categories[rest] = float(raw)
            continue
        if head == "cs":
            ts, _, v = raw.partition(":")
            consents[rest] = {"granted": v == "1", "at": _iso(int(ts))}
            continue
        value = int(raw)
        c = channels.setdefault(
            head,
            {
                **dict.fromkeys(_COUNTERS.values(), 0),
                "spend_minor": {},
                "refund_minor": {},
                "first_seen": None,
                "last_seen": None,
                "last_order": None,
            },
        )
        if rest in _COUNTERS:
            c[_COUNTERS[rest]] = value
        elif rest == "f":
            c["first_seen"] = value
        elif rest == "l":
            c["last_seen"] = value
        elif rest == "lo":
            c["last_order"] = value
        elif rest.startswith("s:"):
            c["spend_minor"][rest[2:]] = value
        elif rest.startswith("rf:"):
            c["refund_minor"][rest[3:]] = value
    firsts = [c["first_seen"] for c in channels.values() if c["first_seen"] is not None]
    lasts = [c["last_seen"] for c in channels.values() if c["last_seen"] is not None]
    last_orders = [c["last_order"] for c in channels.values() if c["last_order"] is not None]
    preferred = max(
        channels,
        key=lambda n: (
            channels[n]["orders"] + channels[n]["offers_redeemed"] + channels[n]["offer_responses"],
            channels[n]["events"],
            channels[n]["last_seen"] or 0,
            n,
        ),
        default=None,
    )
    for c in channels.values():
        for k in ("first_seen", "last_seen", "last_order"):
            c[k] = _iso(c[k])
    clear = cart.pop("_clr", 0)
    entries = []
    for f, q in cart.items():
        sku, _, ts = f.rpartition("|")
        entries.append((sku, int(ts), q))
    spend: dict[str, int] = {}
    for c in channels.values():
        for cur, v in c["spend_minor"].items():
            spend[cur] = spend.get(cur, 0) + v
    orders = sum(c["orders"] for c in channels.values())
    main_currency = max(spend, key=lambda k: (spend[k], k), default=None)
    main_spend = spend[main_currency] if main_currency else 0
    scores = rfm(max(last_orders, default=None), orders, main_spend, as_of_ms)
    top = sorted(categories.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CATEGORIES]
    return {
        "customer_id": customer_id,
        "identifiers": identifiers,
        "first_seen": _iso(min(firsts)) if firsts else None,
        "last_seen": _iso(max(lasts)) if lasts else None,
        "orders": orders,
        "spend_minor": spend,
        "average_basket_minor": {k: round(v / orders) for k, v in spend.items()} if orders else {},
        "rfm": {k: scores[k] for k in ("recency", "frequency", "monetary", "score")},
        "segment": scores["segment"],
        "preferred_channel": preferred,
        "home_store": chosen_store
        or (min(locations, key=lambda k: (-locations[k], k)) if locations else None),
        "home_store_source": "chosen" if chosen_store else "purchases" if locations else None,
        "favourite_categories": [
            {"category": k, "score": round(decayed(v, as_of_ms), 4)} for k, v in top
        ],
        "consents": {p: consents.get(p, {"granted": False, "at": None}) for p in CONSENT_PURPOSES},
        "channels": dict(sorted(channels.items())),
        "recently_viewed": [{"sku": s, "at": _iso(ts)} for s, ts in views],
        "recently_bought": [{"sku": s, "at": _iso(ts)} for s, ts in bought],
        "cart": cart_lines(entries, clear),
        "cart_cleared_at": _iso(clear) if clear else None,
    }


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


__all__ = ["ApplyResult", "ProfileStore", "StateError", "connect"]

"""Per-customer profiles and applied offsets in Redis. The only module that talks to Redis.

Layout (``oc:`` is the configurable prefix)::

    oc:offsets          hash  "<topic>:<partition>" -> last applied offset
    oc:stats:customers  int   number of customer profiles created
    oc:p:<customer>     hash  "<channel>:<counter>" -> int  (o, r, i, ir, e, f, l,
                              s:<CUR>, rf:<CUR>: orders, returns, items, items returned,
                              events, first/last seen ms, spend/refund minor units)
    oc:v:<customer>     zset  sku -> last view ms (most recent N)
    oc:cart:<customer>  hash  "<sku>|<ts ms>" -> quantity delta, "_clr" -> last checkout ms

Each batch is applied by one Lua call that also advances the offsets, so a batch's
effects and its position are stored together or not at all.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from operators.profile import CART_CAP, RECENT_VIEWS, cart_lines

_APPLY_LUA = (importlib.resources.files("state") / "lua" / "apply_batch.lua").read_text()


class StateError(RuntimeError):
    """Redis state cannot be trusted; the message says why and what to do."""


class StateRegressedError(StateError):
    """Redis holds less than this process already applied: Redis lost writes."""


@dataclass(frozen=True)
class ApplyResult:
    ok: bool
    new_customers: int = 0
    #: partitions where Redis is ahead of what the caller assumed: part -> stored offset
    stale: dict[str, int] | None = None


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
    """Batched, fenced access to profiles. One instance per worker; never per event."""

    def __init__(self, client: redis.Redis, prefix: str = "oc:") -> None:
        self.r = client
        self.prefix = prefix
        self.offsets_key = prefix + "offsets"
        self.customers_key = prefix + "stats:customers"
        self._apply = client.register_script(_APPLY_LUA)

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
    def apply(self, parts: Iterable[tuple[str, int, int]], rows: list[list[Any]]) -> ApplyResult:
        """Apply profile rows and advance ``parts`` (name, floor, max offset) atomically.

        Raises :class:`StateRegressedError` if Redis holds an offset below ``floor``.
        Returns ``ok=False`` with the stored offsets where Redis is already ahead of
        ``floor`` (a replay or a second writer): the caller drops what is covered and
        calls again.
        """
        payload = orjson.dumps({"parts": list(parts), "c": rows})
        res = self._apply(
            keys=[self.offsets_key, self.customers_key],
            args=[self.prefix, payload, RECENT_VIEWS, CART_CAP],
        )
        status = _s(res[0])
        if status == "OK":
            return ApplyResult(True, int(res[1]))
        if status == "STALE":
            it = iter(res[1:])
            return ApplyResult(False, stale={_s(k): int(v) for k, v in zip(it, it, strict=True)})
        part, stored, floor = _s(res[1]), int(res[2]), int(res[3])
        raise StateRegressedError(
            f"Redis state went back in time for {part}: Redis says offset {stored} is the "
            f"last applied, but this worker already applied up to {floor}. Redis lost writes "
            "(restarted without persistence, failed over, or was flushed). Stopping rather "
            "than building wrong profiles; see README 'Recovering from Redis data loss'."
        )

    # ------------------------------------------------------------------ reads
    def customer_count(self) -> int:
        return int(self.r.get(self.customers_key) or 0)

    def customer_ids(self, count: int = 1000) -> Iterable[str]:
        """All customer ids (SCAN, for tools and tests; never on the hot path)."""
        plen = len(self.prefix) + 2
        for k in self.r.scan_iter(match=self.prefix + "p:*", count=count):
            yield _s(k)[plen:]

    def read_profile(self, customer_id: str) -> dict[str, Any] | None:
        """The unified profile of one customer as plain JSON-able data, or None."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hgetall(self.prefix + "p:" + customer_id)
        pipe.zrevrange(self.prefix + "v:" + customer_id, 0, -1, withscores=True)
        pipe.hgetall(self.prefix + "cart:" + customer_id)
        h, views, cart = pipe.execute()
        if not h:
            return None
        return build_profile(
            customer_id,
            {_s(k): int(v) for k, v in h.items()},
            [(_s(s), int(ts)) for s, ts in views],
            {_s(k): int(v) for k, v in cart.items()},
        )

    def memory_usage(self, customer_id: str) -> int:
        """Bytes Redis uses for one customer's keys."""
        total = 0
        for kind in ("p:", "v:", "cart:"):
            total += int(self.r.memory_usage(self.prefix + kind + customer_id) or 0)
        return total


def build_profile(
    customer_id: str,
    fields: dict[str, int],
    views: list[tuple[str, int]],
    cart: dict[str, int],
) -> dict[str, Any]:
    """Assemble the stored pieces into the profile document.

    >>> p = build_profile("loyalty:7", {"store:o": 2, "store:s:GBP": 1250, "store:f": 0,
    ...                   "store:l": 60000, "store:e": 2}, [("SKU9", 1000)], {})
    >>> p["channels"]["store"]["orders"], p["channels"]["store"]["spend_minor"], p["orders"]
    (2, {'GBP': 1250}, 2)
    """
    channels: dict[str, dict[str, Any]] = {}
    names = {"o": "orders", "r": "returns", "i": "items", "ir": "items_returned", "e": "events"}
    for field, value in fields.items():
        ch, _, rest = field.partition(":")
        c = channels.setdefault(
            ch,
            {
                "orders": 0,
                "returns": 0,
                "items": 0,
                "items_returned": 0,
                "events": 0,
                "spend_minor": {},
                "refund_minor": {},
                "first_seen": None,
                "last_seen": None,
            },
        )
        if rest in names:
            c[names[rest]] = value
        elif rest == "f":
            c["first_seen"] = value
        elif rest == "l":
            c["last_seen"] = value
        elif rest.startswith("s:"):
            c["spend_minor"][rest[2:]] = value
        elif rest.startswith("rf:"):
            c["refund_minor"][rest[3:]] = value
    firsts = [c["first_seen"] for c in channels.values() if c["first_seen"] is not None]
    lasts = [c["last_seen"] for c in channels.values() if c["last_seen"] is not None]
    for c in channels.values():
        c["first_seen"], c["last_seen"] = _iso(c["first_seen"]), _iso(c["last_seen"])
    clear = cart.pop("_clr", 0)
    entries = []
    for f, q in cart.items():
        sku, _, ts = f.rpartition("|")
        entries.append((sku, int(ts), q))
    spend: dict[str, int] = {}
    for c in channels.values():
        for cur, v in c["spend_minor"].items():
            spend[cur] = spend.get(cur, 0) + v
    return {
        "customer_id": customer_id,
        "first_seen": _iso(min(firsts)) if firsts else None,
        "last_seen": _iso(max(lasts)) if lasts else None,
        "orders": sum(c["orders"] for c in channels.values()),
        "spend_minor": spend,
        "channels": dict(sorted(channels.items())),
        "recently_viewed": [{"sku": s, "at": _iso(ts)} for s, ts in views],
        "cart": cart_lines(entries, clear),
        "cart_cleared_at": _iso(clear) if clear else None,
    }


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v

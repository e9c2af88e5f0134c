"""Channel health in Redis: the only code that reads or writes it.

- ``<p>ch:min:<minute>`` hash: events per key (``sales:<channel>``, ``store:<location>``,
  ``activity:<channel>``) applied in that wall-clock minute, by every worker (one script
  call per batch); at most a cap of store keys a minute (location ids come from events);
  kept two days;
- ``<p>health:state`` / ``<p>health:minute``: the detectors' JSON state and the last minute
  they learnt, written with the outbox messages in one transaction;
- ``<p>health:outbox`` / ``<p>health:sent``: the outbox (``state/outbox.py``);
- ``<p>health:external`` hash: sales channels Prometheus alerts say are down (written by
  ``omnicanal webhook``), each until a time in ms, read by the offers stage for its contingency.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import redis

from state.outbox import Outbox

#: seconds a minute's counts are kept
KEEP_SECONDS = 2 * 86_400

# Adds counts to a minute's hash. Channel and region keys always (bounded by the contracts
# and the configuration); a store key only if the hash has it already or holds fewer than
# the cap of fields. Returns the events not counted. Every argument is checked before the
# first write: a bad one fails the call with nothing written.
_ADD_LUA = """
local cap, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
if not cap or not ttl or (#ARGV - 2) % 2 ~= 0 then
  return redis.error_reply('INVALID channel-health counts')
end
for i = 3, #ARGV, 2 do
  local c = tonumber(ARGV[i + 1])
  if #ARGV[i] > 256 or not c or c < 1 or c ~= math.floor(c) then
    return redis.error_reply('INVALID channel-health count ' .. tostring((i - 1) / 2))
  end
end
local n = redis.call('HLEN', KEYS[1])
local dropped = 0
for i = 3, #ARGV, 2 do
  local f, c = ARGV[i], tonumber(ARGV[i + 1])
  if string.sub(f, 1, 6) ~= 'store:' or n < cap or redis.call('HEXISTS', KEYS[1], f) == 1 then
    if redis.call('HINCRBY', KEYS[1], f, c) == c then n = n + 1 end
  else
    dropped = dropped + c
  end
end
redis.call('EXPIRE', KEYS[1], ttl)
return dropped
"""


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class HealthStore:
    """Minute counts and the detectors' state. One instance per worker."""

    def __init__(self, client: redis.Redis, prefix: str = "oc:") -> None:
        self.r = client
        self.prefix = prefix
        self.outbox = Outbox(client, prefix, "health")
        self._add = client.register_script(_ADD_LUA)

    def add(self, minute: int, counts: Mapping[str, int], cap: int) -> int:
        """Add a batch's positive counts to its minute (minutes since the epoch), in one
        call; a new store key only while the minute holds fewer than ``cap`` keys. The
        events not counted (their store was past the cap)."""
        args: list[int | str] = [int(cap), KEEP_SECONDS]
        for k, n in counts.items():
            if n > 0:
                args += [k, int(n)]
        if len(args) == 2:
            return 0
        return int(self._add(keys=[f"{self.prefix}ch:min:{minute}"], args=args))

    def minutes(self, first: int, last: int) -> dict[int, dict[str, int]]:
        """Each minute's counts, ``first`` to ``last`` included: one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for m in range(first, last + 1):
            pipe.hgetall(f"{self.prefix}ch:min:{m}")
        return {
            m: {_s(k): int(v) for k, v in raw.items()}
            for m, raw in zip(range(first, last + 1), pipe.execute(), strict=True)
        }

    def load(self) -> tuple[dict[str, Any] | None, int | None]:
        """The detectors' state and the last minute they learnt (None: never ran)."""
        state, minute = self.r.mget(self.prefix + "health:state", self.prefix + "health:minute")
        return (orjson.loads(state) if state else None), (int(minute) if minute else None)

    def commit(self, state: dict[str, Any], minute: int, messages: Sequence[bytes]) -> list[str]:
        """Store the detectors with the minute they reached and their messages in the
        outbox, in one transaction; the outbox ids, in order."""
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self.prefix + "health:state", orjson.dumps(state))
        pipe.set(self.prefix + "health:minute", minute)
        for m in messages:
            pipe.xadd(self.outbox.key, {"m": m})
        res = pipe.execute()
        return [_s(x) for x in res[2:]]

    def mark(self, down: Sequence[str], up: Sequence[str], until_ms: int) -> None:
        """Channels an alert says are down (until ``until_ms``) or up again: one round trip."""
        key = self.prefix + "health:external"
        pipe = self.r.pipeline(transaction=True)
        if down:
            pipe.hset(key, mapping={c: until_ms for c in down})
        if up:
            pipe.hdel(key, *up)
        pipe.execute()

    def external_down(self, now_ms: int) -> frozenset[str]:
        """Sales channels an alert says are down now."""
        raw = self.r.hgetall(self.prefix + "health:external")
        return frozenset(_s(c) for c, until in raw.items() if int(until) > now_ms)

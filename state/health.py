"""Channel health in Redis: the only code that reads or writes it.

- ``<p>ch:min:<minute>`` hash: sales per key (``sales:<channel>``, ``store:<location>``)
  applied in that wall-clock minute, by every worker (HINCRBY, one round trip per batch);
  kept two days;
- ``<p>health:state`` / ``<p>health:minute``: the detectors' JSON state and the last minute
  they learnt, written with the outbox messages in one transaction;
- ``<p>health:outbox`` / ``<p>health:sent``: the outbox (``state/outbox.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import redis

from state.outbox import Outbox

#: seconds a minute's counts are kept
KEEP_SECONDS = 2 * 86_400


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class HealthStore:
    """Minute counts and the detectors' state. One instance per worker."""

    def __init__(self, client: redis.Redis, prefix: str = "oc:") -> None:
        self.r = client
        self.prefix = prefix
        self.outbox = Outbox(client, prefix, "health")

    def add(self, minute: int, counts: Mapping[str, int]) -> None:
        """Add a batch's counts to its minute (minutes since the epoch)."""
        if not counts:
            return
        key = f"{self.prefix}ch:min:{minute}"
        pipe = self.r.pipeline(transaction=False)
        for k, n in counts.items():
            pipe.hincrby(key, k, n)
        pipe.expire(key, KEEP_SECONDS)
        pipe.execute()

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

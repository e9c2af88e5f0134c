"""An outbox in Redis: messages written in the same script as the decisions that made them,
deleted once the broker has confirmed them. Stock alerts and offers each have one.

``<p><name>:outbox`` is a stream (field ``m``: the message), ``<p><name>:sent`` the highest
topic offset the broker confirmed per partition: where a recovery starts looking for a
message confirmed but not yet deleted (a crash in between).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import redis

_SENT_MAX_LUA = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
"""


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class Outbox:
    """One outbox: ``name`` is its key's stem (``alerts``, ``offers``)."""

    def __init__(self, client: redis.Redis, prefix: str, name: str) -> None:
        self.r = client
        self.key = f"{prefix}{name}:outbox"
        self.sent_key = f"{prefix}{name}:sent"
        self._sent_max = client.register_script(_SENT_MAX_LUA)

    def pages(self, page: int = 1000) -> Iterator[list[tuple[str, bytes]]]:
        """Messages written but not yet confirmed sent, oldest first, a page at a time,
        all of them."""
        start = "-"
        while True:
            rows: Any = self.r.xrange(self.key, min=start, count=page)
            if not rows:
                return
            yield [(_s(i), bytes(fields[b"m"])) for i, fields in rows]
            if len(rows) < page:
                return
            start = "(" + _s(rows[-1][0])

    def ack(self, ids: Sequence[str], sent: dict[int, int] | None = None) -> None:
        """Remove sent messages, and record the highest offset the broker confirmed per
        partition of the topic."""
        pipe = self.r.pipeline(transaction=True)
        for i in range(0, len(ids), 1000):
            pipe.xdel(self.key, *ids[i : i + 1000])
        for partition, offset in (sent or {}).items():
            self._sent_max(keys=[self.sent_key], args=[str(partition), offset], client=pipe)
        pipe.execute()

    def set_sent(self, offsets: dict[int, int]) -> None:
        """Replace the recorded offsets: everything at or below them is resolved (after a
        recovery, when no sender runs)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.sent_key)
        if offsets:
            pipe.hset(self.sent_key, mapping={str(p): o for p, o in offsets.items()})
        pipe.execute()

    def sent_offsets(self) -> dict[int, int]:
        """Highest topic offset acknowledged per partition (see :meth:`ack`)."""
        raw = self.r.hgetall(self.sent_key)
        return {int(k): int(v) for k, v in raw.items()}

    def size(self) -> int:
        return int(self.r.xlen(self.key))

"""The next-basket model's data in Redis: the only code that reads or writes it.

- ``<p>ph:<customer>``: the customer's last :data:`~operators.preferences.HISTORY_BASKETS`
  baskets from any channel, written by the batch script with the sale: one string, a line
  ``"<time>|<L or ->|<SKUs as JSON>"`` a basket, in time order (``L``: to learn from; JSON
  never holds a raw newline); merged into the survivor of an identity merge, erased with
  the customer;
- ``<p>pf:due``: customers with baskets to learn from (score: how many);
- ``<p>pf:model``: the offer decider's model, stored with the baskets it learnt marked as learnt, in
  one call (``state/lua/preferences.lua``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from operators.preferences import Basket

log = logging.getLogger(__name__)
_LUA = (Path(__file__).with_name("lua") / "preferences.lua").read_text()


@dataclass(frozen=True)
class Kept:
    """One kept basket: its member in Redis, time, SKUs, and whether to learn from it."""

    member: str
    ts: int
    skus: tuple[str, ...]
    learn: bool

    @property
    def basket(self) -> Basket:
        return (self.ts, self.skus)


def history(raw: bytes | str | None) -> list[Kept]:
    """A customer's stored baskets (``<p>ph:<customer>``), the oldest first; lines this
    version did not write are left out.

    >>> [(k.ts, k.skus) for k in history(b'9|-|["A"]\\n3|L|["B","C"]\\nnot a basket')]
    [(3, ('B', 'C')), (9, ('A',))]
    >>> history(None), history(b"")
    ([], [])
    """
    if not raw:
        return []
    text = raw.decode() if isinstance(raw, bytes) else raw
    lines = text.split("\n")
    kept = [k for k in map(parse, lines) if k is not None]
    if len(kept) < len(lines):
        log.warning("%d stored baskets unreadable, left out", len(lines) - len(kept))
    return sorted(kept, key=lambda k: (k.ts, k.member))


def parse(member: bytes | str) -> Kept | None:
    """A stored basket (one line), or None for one this version did not write.

    >>> parse(b'17|L|["MAT","TENT"]')
    Kept(member='17|L|["MAT","TENT"]', ts=17, skus=('MAT', 'TENT'), learn=True)
    >>> parse("x|L|[]") is None, parse('5|-|[1]') is None, parse("+5|L|[]") is None
    (True, True, True)
    >>> parse('5|L|"AB"') is None, parse("5|-|[]").learn
    (True, False)
    """
    m = member.decode() if isinstance(member, bytes) else member
    try:
        ts, flag, raw = m.split("|", 2)
        skus = orjson.loads(raw)
        if not (ts.isascii() and ts.isdigit()) or flag not in ("L", "-"):
            return None  # the checkpoint script takes only what the batch script writes
        if type(skus) is not list or not all(type(s) is str for s in skus):
            return None
        return Kept(m, int(ts), tuple(skus), flag == "L")
    except (ValueError, TypeError, orjson.JSONDecodeError):
        return None


class PreferenceStore:
    """Baskets kept per customer, the customers due for learning, and the model."""

    def __init__(self, client: redis.Redis, prefix: str = "oc:") -> None:
        self.r = client
        self.prefix = prefix
        self._checkpoint = client.register_script(_LUA)

    def load(self) -> dict[str, Any] | None:
        raw = self.r.get(self.prefix + "pf:model")
        return orjson.loads(raw) if raw else None

    def due(self, n: int) -> list[tuple[str, int]]:
        """Up to ``n`` customers with baskets to learn from, and how many (as read)."""
        rows: Any = self.r.zrange(self.prefix + "pf:due", 0, n - 1, withscores=True)
        return [(k.decode() if isinstance(k, bytes) else k, int(v)) for k, v in rows]

    def pending(self) -> int:
        """Customers with baskets to learn from."""
        return int(self.r.zcard(self.prefix + "pf:due"))

    def histories(self, customers: Sequence[str]) -> dict[str, list[Kept]]:
        """Each customer's kept baskets, the oldest first (unreadable ones left out)."""
        if not customers:
            return {}
        raw = self.r.mget([self.prefix + "ph:" + c for c in customers])
        return {c: history(v) for c, v in zip(customers, raw, strict=True)}

    def checkpoint(
        self,
        state: Mapping[str, Any],
        learnt: Sequence[tuple[str, str]],
        due: Sequence[tuple[str, int]],
    ) -> int:
        """Store the model and mark what it learnt as learnt (``learnt``: customer and
        member), taking ``due``'s counts off, in one call. Returns the baskets marked."""
        doc = orjson.dumps({"learnt": list(learnt), "due": list(due)})
        return int(self._checkpoint(args=[self.prefix, orjson.dumps(state), doc]))

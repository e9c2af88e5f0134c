"""The identity graph in Redis: identifiers -> one canonical customer id, with merges.

Not yet wired into the pipeline (issue 3); the batch linking that feeds it is
:func:`operators.identity.link_batch`. One Lua call resolves a whole batch's components.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import redis

from operators.identity import DEFAULT_LIMITS

_LINK_LUA = (importlib.resources.files("state") / "lua" / "link_identities.lua").read_text()


class IdentityGraph:
    """Canonical ids ("C" + 12 digits, oldest first) for linked identifiers."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "oc:",
        *,
        limits: Mapping[str, int] = DEFAULT_LIMITS,
        max_component: int = 200,
    ) -> None:
        self.r = client
        self.prefix = prefix
        self.limits = dict(limits)
        self.max_component = max_component
        self._link = client.register_script(_LINK_LUA)

    def resolve(
        self, components: Sequence[Sequence[str]], why: str = "", ts_ms: int = 0
    ) -> list[str | None]:
        """Link each component's identifiers and return its canonical id (None: refused)."""
        if not components:
            return []
        payload = orjson.dumps(
            {
                "c": [list(c) for c in components],
                "max": self.max_component,
                "limits": self.limits,
                "why": why,
                "ts": ts_ms,
            }
        )
        res = self._link(args=[self.prefix, payload])
        return [(_s(x) or None) for x in res]

    def canonical(self, identifier: str) -> str | None:
        v = self.r.get(self.prefix + "id:" + identifier)
        return _s(v) if v is not None else None

    def members(self, canonical_id: str) -> set[str]:
        return {_s(m) for m in self.r.smembers(self.prefix + "members:" + canonical_id)}

    def stats(self) -> dict[str, int]:
        names = ["customers", "identifiers", "merges", "refused"]
        vals = self.r.mget([self.prefix + "stats:" + n for n in names])
        return {n: int(v or 0) for n, v in zip(names, vals, strict=True)}

    def merges(self, count: int = 100) -> list[dict[str, Any]]:
        """The most recent merge records (who survived, who was merged, via what, why)."""
        rows = self.r.xrevrange(self.prefix + "merges", count=count) or []
        return [
            {_s(k): _s(v) for k, v in (fields or {}).items()} | {"id": _s(i or "")}
            for i, fields in rows
        ]


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v

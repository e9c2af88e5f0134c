"""Stock state and stock alerts in Redis: the only code that reads or writes them.

Stock levels, prices and velocities are written by the batch script (``state/lua/stock.lua``,
part of :meth:`state.profiles.ProfileStore.apply`, fenced by the offsets). This module reads
SKUs back for evaluation, writes the alert decisions with :data:`_ALERTS_LUA` (version-fenced,
with an outbox) and serves the ``alerts`` and ``stock`` commands.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import redis

from operators.stock import SkuState, seasonal_index
from operators.stock_alerts import Evaluation
from state.outbox import Outbox

_ALERTS_LUA = (Path(__file__).with_name("lua") / "stock_alerts.lua").read_text()
#: Each SKU's levels and snapshot times (fields ``q:<location>``, ``st:<location>``) as flat
#: [field, value, ...] arrays: one script call instead of one pipelined HGETALL per SKU,
#: whose packing and parsing cost redis-py ~25 µs a SKU (reads only).
_LEVELS_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  local h = redis.call('HGETALL', key)
  local kept = {}
  for j = 1, #h, 2 do
    local f = h[j]
    if string.sub(f, 1, 2) == 'q:' or string.sub(f, 1, 3) == 'st:' then
      kept[#kept + 1] = f
      kept[#kept + 1] = h[j + 1]
    end
  end
  out[i] = kept
end
return out
"""
#: Seconds a location's hour-of-week profile is cached per worker (it moves slowly).
SEASON_TTL = 300.0


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class StockStore:
    """Batched access to SKUs and their alerts. One instance per worker."""

    def __init__(self, client: redis.Redis, prefix: str = "oc:") -> None:
        self.r = client
        self.prefix = prefix
        self._reconcile = client.register_script(_ALERTS_LUA)
        self._levels = client.register_script(_LEVELS_LUA)
        #: the alert messages not yet confirmed by the broker (``<p>alerts:outbox``)
        self.alerts_outbox = Outbox(client, prefix, "alerts")
        self._seasons: dict[str, tuple[float, list[float]]] = {}

    # ------------------------------------------------------------------ reads
    def read(self, skus: Sequence[str]) -> list[tuple[SkuState, dict[str, dict[str, Any]]]]:
        """Each SKU's state and open alerts (key -> record), in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for sku in skus:
            pipe.hgetall(f"{self.prefix}sku:{sku}")
            pipe.hgetall(f"{self.prefix}alerts:{sku}")
        res = pipe.execute()
        out = []
        for i, sku in enumerate(skus):
            fields = {k.decode(): v.decode() for k, v in res[2 * i].items()}
            alerts = {k.decode(): orjson.loads(v) for k, v in res[2 * i + 1].items()}
            out.append((SkuState.from_fields(sku, fields), alerts))
        return out

    def levels(self, skus: Sequence[str]) -> list[SkuState]:
        """Each SKU's levels and counts only (what an offer needs to know whether the
        online channels can sell it): one script call per 5,000 SKUs, without the alerts or
        the models."""
        out: list[SkuState] = []
        res: list[list[bytes]] = []
        for i in range(0, len(skus), 5000):  # bounded calls: a script blocks Redis while it runs
            res += self._levels(keys=[f"{self.prefix}sku:{s}" for s in skus[i : i + 5000]])
        for sku, flat in zip(skus, res, strict=True):
            st = SkuState(sku)
            it = iter(flat)
            for f, v in zip(it, it, strict=True):
                if f[:2] == b"q:":
                    st.levels[f[2:].decode()] = int(v)
                elif f[:3] == b"st:":
                    st.snapshot_ms[f[3:].decode()] = int(v)
            out.append(st)
        return out

    def sku(self, sku: str) -> SkuState | None:
        """One SKU's stored state (None if omnicanal never saw it)."""
        fields = self.r.hgetall(f"{self.prefix}sku:{sku}")
        if not fields:
            return None
        return SkuState.from_fields(sku, {_s(k): _s(v) for k, v in fields.items()})

    def seasons(self, locations: Iterable[str]) -> dict[str, list[float]]:
        """Hour-of-week sales index per location, cached for :data:`SEASON_TTL` seconds."""
        now = time.monotonic()
        want = [
            loc
            for loc in set(locations)
            if now - self._seasons.get(loc, (-1e9, []))[0] > SEASON_TTL
        ]
        if want:
            pipe = self.r.pipeline(transaction=False)
            for loc in want:
                pipe.hgetall(f"{self.prefix}season:{loc}")
            for loc, raw in zip(want, pipe.execute(), strict=True):
                counts = [0.0] * 168
                span = {"t0": 0, "t1": 0}
                for h, n in raw.items():
                    name = _s(h)
                    if name in span:
                        span[name] = int(n)
                    else:
                        counts[int(name)] = float(n)
                self._seasons[loc] = (now, seasonal_index(counts, span["t1"] - span["t0"]))
        return {loc: self._seasons[loc][1] for loc in locations if loc in self._seasons}

    def dirty(self, page: int = 1000) -> Iterator[list[str]]:
        """SKUs whose stock changed and whose alerts were not re-evaluated (a crash between
        the batch and its evaluation, or another worker's newer version), a page at a
        time, all of them (SSCAN: a SKU added meanwhile may come twice, which is harmless:
        its version says whether it still needs work)."""
        cursor = 0
        while True:
            cursor, raw = self.r.sscan(f"{self.prefix}stock:dirty", cursor, count=page)
            if raw:
                yield sorted(_s(x) for x in raw)
            if cursor == 0:
                return

    # ------------------------------------------------------------------ alert writes
    def reconcile(self, evaluations: Sequence[Evaluation]) -> tuple[list[str], list[str]]:
        """Write the decisions of SKUs whose version did not move; their messages go to
        the outbox. Returns (skipped SKUs, outbox ids of the new messages, in order)."""
        entries = []
        for ev in evaluations:
            raised: dict[str, int] = {}
            for m in ev.messages:
                if m["status"] == "raised":
                    raised[m["type"]] = raised.get(m["type"], 0) + 1
            entries.append(
                {
                    "sku": ev.sku,
                    "ver": ev.version,
                    "set": {k: orjson.dumps(v).decode() for k, v in ev.set.items()},
                    "del": ev.delete,
                    "msgs": [orjson.dumps(m).decode() for m in ev.messages],
                    "open": ev.opened,
                    "raised": raised,
                    "risk": int(ev.at_risk),
                }
            )
        if not entries:
            return [], []
        skipped, ids = self._reconcile(args=[self.prefix, orjson.dumps(entries)])
        return [_s(x) for x in skipped], [_s(x) for x in ids]

    def outbox(self, page: int = 1000) -> Iterator[list[tuple[str, bytes]]]:
        """Alert messages written but not yet confirmed sent, a page at a time."""
        return self.alerts_outbox.pages(page)

    # ------------------------------------------------------------------ listing
    def open_alerts(
        self,
        *,
        type_: str | None = None,
        sku: str | None = None,
        location: str | None = None,
    ) -> list[dict[str, Any]]:
        """Open alerts, most severe first, then by SKU."""
        skus = [sku] if sku else sorted(_s(x) for x in self.r.smembers(f"{self.prefix}alerts:skus"))
        pipe = self.r.pipeline(transaction=False)
        for s in skus:
            pipe.hvals(f"{self.prefix}alerts:{s}")
        out = []
        for vals in pipe.execute():
            for v in vals:
                rec = orjson.loads(v)
                if type_ and rec["type"] != type_:
                    continue
                if location and rec.get("location_id") != location:
                    continue
                out.append({k: x for k, x in rec.items() if not k.startswith("_")})
        rank = {"critical": 0, "warning": 1, "info": 2}
        out.sort(key=lambda a: (rank[a["severity"]], a["sku"], a["type"], a.get("location_id", "")))
        return out

    def alert_stats(self) -> dict[str, Any]:
        """Open alerts and alerts raised so far by type, SKUs at risk, messages unsent."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(f"{self.prefix}alerts:open")
        pipe.hgetall(f"{self.prefix}alerts:raised")
        pipe.scard(f"{self.prefix}alerts:risk")
        pipe.xlen(f"{self.prefix}alerts:outbox")
        opened, raised, risk, unsent = pipe.execute()
        return {
            "open": {_s(k): int(v) for k, v in sorted(opened.items()) if int(v)},
            "raised": {_s(k): int(v) for k, v in sorted(raised.items()) if int(v)},
            "skus_at_risk": int(risk),
            "unsent": int(unsent),
        }

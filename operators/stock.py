"""Live stock per SKU and location, channel availability, sales rate and seasonality.

Pure logic, no I/O: :func:`plan_stock` turns a batch of events into stock movements for the
state script (``state/lua/apply_batch.lua``, stock section); ``operators/stock_alerts.py``
turns one SKU's stored state and its open alerts into alert messages.

Stock rules, all by event time, so the order in which topics are consumed does not matter:

- a **snapshot** (a count) sets the level at its event time; movements with an earlier
  event time are already in the count and are ignored, later ones are added on top (even
  when they arrived before the count); the gap between the level we expected at the count
  and the count is the **shrinkage** measured;
- **movements**: adjustments (+/-), sales (-) and returns (+) at the event's location;
  web/app/marketplace/call-centre sales without a location come from
  :attr:`StockRules.online_fulfilment`;
- a location's level is **known once it has been counted**; until then movements give a
  change, not a level, and raise no alert;
- **online availability** = stock at the online locations (warehouses, the allocation
  reserved for online) + :attr:`StockRules.online_store_share` of the stores' stock.

>>> rules = StockRules(online_locations=frozenset({"wh"}), online_store_share=0.5)
>>> availability({"wh": 3, "s1": 4, "s2": -2}, rules)
{'loc:s1': 4, 'loc:s2': -2, 'loc:wh': 3, 'ch:online': 5}
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from operators.learners import Learner
from schemas.envelope import Accepted
from schemas.events import ONLINE_SALES_CHANNELS

#: Half-life of the sales velocity: a week, so a day-of-week pattern averages out.
VELOCITY_HALF_LIFE_MS: Final = 7 * 86_400_000
HOUR_MS: Final = 3_600_000
WEEK_HOURS: Final = 168
#: Channels that sell from the online pool (every sales channel but the store); a sale
#: there without a location_id is fulfilled from ``online_fulfilment``.
ONLINE_CHANNELS: Final = ONLINE_SALES_CHANNELS
#: The hourly profile of a location is used once it holds this many units, its hour-of-day
#: shape once it covers two days, its day-of-week shape once it covers two weeks.
SEASON_MIN_UNITS: Final = 200
SEASON_DAILY_MS: Final = 2 * 86_400_000
SEASON_WEEKLY_MS: Final = 14 * 86_400_000


@dataclass(frozen=True)
class StockRules:
    """Thresholds and allocation rules (from ``OMNICANAL_STOCK_*`` settings)."""

    online_locations: frozenset[str] = frozenset({"online"})
    online_fulfilment: str = "online"
    online_store_share: float = 0.0
    low_stock: int = 5
    low_stock_sku: Mapping[str, int] = field(default_factory=dict)
    low_stock_category: Mapping[str, int] = field(default_factory=dict)
    price_tolerance: float = 0.01
    horizon_hours: float = 24.0
    min_confidence: float = 0.7

    def threshold(self, sku: str, category: str | None) -> int:
        """Low-stock threshold (reorder point): per SKU, else per category, else default.

        >>> StockRules(low_stock_sku={"A": 9}, low_stock_category={"shoes": 2}).threshold(
        ...     "B", "shoes")
        2
        """
        t = self.low_stock_sku.get(sku)
        if t is None and category is not None:
            t = self.low_stock_category.get(category)
        return self.low_stock if t is None else t


def parse_thresholds(spec: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """Split ``{"sku:A": 9, "category:shoes": 2}`` into per-SKU and per-category maps.

    >>> parse_thresholds({"sku:A": 9, "category:shoes": 2})
    ({'A': 9}, {'shoes': 2})
    """
    skus: dict[str, int] = {}
    cats: dict[str, int] = {}
    for k, v in spec.items():
        kind, _, name = k.partition(":")
        if kind not in ("sku", "category") or not name:
            raise ValueError(f"{k!r}: expected 'sku:<id>' or 'category:<name>'")
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"{k!r}: threshold must be an integer >= 0, not {v!r}")
        (skus if kind == "sku" else cats)[name] = v
    return skus, cats


# ---------------------------------------------------------------- batch -> movements
@dataclass
class StockPlan:
    """A batch's stock effects, in the shape the state script takes (see ``to_payload``)."""

    #: (sku, location, event ms) -> units (+ in, - out); one entry per event time
    moves: dict[tuple[str, str, int], int] = field(default_factory=dict)
    #: (sku, location, event ms, on hand): every count of the batch, in arrival order (each
    #: one closes a shrinkage interval, so keeping only the newest would make the
    #: shrinkage depend on where batches end)
    snaps: list[tuple[str, str, int, int]] = field(default_factory=list)
    #: (sku, channel or "store@<location>") -> (event ms, price minor, currency)
    prices: dict[tuple[str, str], tuple[int, int, str]] = field(default_factory=dict)
    #: sku -> category (the smallest name seen, so that any batching gives the same)
    categories: dict[str, str] = field(default_factory=dict)
    #: (sku, location) -> the batch's sales rate learner
    velocity: dict[tuple[str, str], Velocity] = field(default_factory=dict)
    #: (location, hour of the week) -> units sold
    season: dict[tuple[str, int], int] = field(default_factory=dict)
    #: location -> [first, last] sale time seen (how much of a week the profile covers)
    season_span: dict[str, list[int]] = field(default_factory=dict)
    #: sku -> newest event time touching its stock
    touched: dict[str, int] = field(default_factory=dict)
    #: stock events by type (inventory events, sale/return lines) for the metrics
    counts: dict[str, int] = field(default_factory=dict)
    #: store sales/returns without a location: counted, their stock effect unknown
    unlocated: int = 0

    def __bool__(self) -> bool:
        return bool(self.touched)

    def to_payload(self) -> dict[str, Any]:
        return {
            # zero nets too: one event at a time, +1 then -1 at the same time leaves a level
            # of 0 (and a record) just as this does
            "mv": [[s, loc, t, d] for (s, loc, t), d in self.moves.items()],
            "sn": [list(s) for s in self.snaps],
            "pr": [[s, ch, t, p, c] for (s, ch), (t, p, c) in self.prices.items()],
            "cat": [[s, c] for s, c in self.categories.items()],
            "vel": [
                [s, loc, v.ref_ms, v.units, v.sales, v.first_ms]
                for (s, loc), v in self.velocity.items()
            ],
            "sea": [[loc, h, n] for (loc, h), n in self.season.items()],
            "ssp": [[loc, lo, hi] for loc, (lo, hi) in self.season_span.items()],
            "sku": [[s, t] for s, t in self.touched.items()],
            "hl": VELOCITY_HALF_LIFE_MS,
        }


def hour_of_week(ms: int) -> int:
    """Hour of the week in UTC, Monday 00:00 = 0 (the profile is learnt and applied in the
    same frame, so no time zone is needed).

    >>> hour_of_week(0)  # 1970-01-01 was a Thursday
    72
    """
    return (ms // HOUR_MS + 72) % WEEK_HOURS


def plan_stock(events: Iterable[Accepted], rules: StockRules) -> StockPlan:
    """The stock effects of a batch of validated events.

    >>> from schemas.events import Sale, TransactionLine
    >>> from datetime import datetime, UTC
    >>> t = datetime(2024, 1, 1, tzinfo=UTC)
    >>> sale = Sale(event_id="e", event_time=t, channel="web", currency="EUR",
    ...             lines=[TransactionLine(sku="A", quantity=2, unit_price_minor=5)])
    >>> a = Accepted("t", 0, 1, "transaction", "sale", "e", 1000, "web", None, {}, sale)
    >>> plan_stock([a], StockRules()).moves
    {('A', 'online', 1000): -2}
    """
    plan = StockPlan()
    counts = plan.counts
    for a in events:
        c = a.contract
        ev = a.event
        ts = a.ts_ms
        if c == "transaction":
            loc = getattr(ev, "location_id", None)
            if not isinstance(loc, str):
                if a.channel in ONLINE_CHANNELS:
                    loc = rules.online_fulfilment
                else:
                    plan.unlocated += 1
                    continue
            sign = -1 if a.event_type == "sale" else 1
            for line in ev.lines:
                kind = line.kind
                if isinstance(kind, str) and kind != "product":
                    continue
                sku, q = line.sku, line.quantity
                key = (sku, loc, ts)
                plan.moves[key] = plan.moves.get(key, 0) + sign * q
                counts[a.event_type] = counts.get(a.event_type, 0) + 1
                cat = line.category
                if isinstance(cat, str) and (
                    sku not in plan.categories or cat < plan.categories[sku]
                ):
                    plan.categories[sku] = cat
                if sign < 0:
                    v = plan.velocity.get((sku, loc))
                    if v is None:
                        v = plan.velocity[(sku, loc)] = Velocity()
                    v.learn_one(ts, q)
                    sk = (loc, hour_of_week(ts))
                    plan.season[sk] = plan.season.get(sk, 0) + q
                    span = plan.season_span.get(loc)
                    if span is None:
                        plan.season_span[loc] = [ts, ts]
                    elif ts < span[0]:
                        span[0] = ts
                    elif ts > span[1]:
                        span[1] = ts
                _touch(plan.touched, sku, ts)
        elif c == "inventory":
            et = a.event_type
            counts[et] = counts.get(et, 0) + 1
            sku = ev.sku
            if et == "stock_snapshot":
                plan.snaps.append((sku, ev.location_id, ts, ev.on_hand))
            elif et == "stock_adjustment":
                key = (sku, ev.location_id, ts)
                plan.moves[key] = plan.moves.get(key, 0) + ev.delta
            else:  # price_update
                loc = ev.location_id
                ch = (
                    f"store@{loc}" if ev.channel == "store" and isinstance(loc, str) else ev.channel
                )
                pk = (sku, ch)
                new = (ts, ev.price_minor, ev.currency)
                oldp = plan.prices.get(pk)
                if oldp is None or new > oldp:
                    plan.prices[pk] = new
            _touch(plan.touched, sku, ts)
    return plan


def _touch(touched: dict[str, int], sku: str, ts: int) -> None:
    if ts > touched.get(sku, -1):
        touched[sku] = ts


# ---------------------------------------------------------------- stored state
@dataclass
class Velocity(Learner):
    """The sales rate of a SKU at a location: decayed units sold at ``ref_ms`` (half-life
    :data:`VELOCITY_HALF_LIFE_MS`), decayed number of sales, and the first sale time. The
    one implementation of the rate: the batch plan learns with it, the batch script merges
    a batch's learner into the stored one the same way (``state/lua/stock.lua``), and the
    stock-out evaluation replays with it.

    >>> v = Velocity(); v.learn_one(0, 4); v.learn_one(-VELOCITY_HALF_LIFE_MS, 4)
    >>> v.units, v.sales, v.ref_ms
    (6.0, 1.5, 0)
    """

    units: float = 0.0
    sales: float = 0.0
    ref_ms: int = 0
    first_ms: int = 0

    def learn_one(self, ts_ms: int, units: float) -> None:
        """One sale of ``units`` at ``ts_ms`` (in any order)."""
        self.merge(Velocity(float(units), 1.0, ts_ms, ts_ms))

    def merge(self, other: Velocity) -> None:
        """Both histories, referenced to the newer of the two reference times."""
        if other.sales == 0:
            return
        if self.sales == 0:
            self.units, self.sales, self.ref_ms, self.first_ms = (
                other.units, other.sales, other.ref_ms, other.first_ms
            )  # fmt: skip
            return
        hl = VELOCITY_HALF_LIFE_MS
        t = max(self.ref_ms, other.ref_ms)
        fa, fb = 2.0 ** (-(t - self.ref_ms) / hl), 2.0 ** (-(t - other.ref_ms) / hl)
        self.units = self.units * fa + other.units * fb
        self.sales = self.sales * fa + other.sales * fb
        self.ref_ms = t
        self.first_ms = min(self.first_ms, other.first_ms)

    def predict_one(self, ms: int) -> float:
        """Units per hour at ``ms``."""
        units, hours = self.at(ms)
        return units / hours

    def at(self, ms: int) -> tuple[float, float]:
        """(decayed units, effective hours observed) at ``ms``.

        The effective exposure is the decayed length of the history: a SKU first sold a day
        ago is averaged over about a day, not over a whole half-life.

        >>> u, h = Velocity(10.0, 10.0, 0, -86_400_000).at(0)
        >>> round(u, 6), round(h, 2)
        (10.0, 22.85)
        """
        hl = VELOCITY_HALF_LIFE_MS
        units = self.units * 2.0 ** (-max(0, ms - self.ref_ms) / hl)
        age = max(HOUR_MS, ms - self.first_ms)
        hours = (hl / math.log(2) / HOUR_MS) * (1.0 - 2.0 ** (-age / hl))
        return units, hours

    def to_state(self) -> str:
        """The stored form (``v:<location>`` of ``<prefix>sku:<sku>``)."""
        return f"{self.units!r} {self.sales!r} {self.ref_ms} {self.first_ms}"

    @classmethod
    def from_state(cls, state: str) -> Velocity:
        u, n, ref, first = state.split()
        return cls(float(u), float(n), int(float(ref)), int(float(first)))

    @classmethod
    def check_stream(
        cls, rng: random.Random
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        t0 = 1_700_000_000_000
        sales = [(t0 + rng.randrange(60 * 86_400_000), rng.randint(1, 5)) for _ in range(200)]
        return sales, [(t0 + 61 * 86_400_000,), (t0 + 90 * 86_400_000,)]


class HourOfWeekProfile(Learner):
    """A location's units sold per hour of the week and the span of its history: the
    seasonal profile the stock-out prediction scales its rate with (:func:`seasonal_index`;
    the batch script keeps the same counts in ``<prefix>season:<location>``)."""

    def __init__(self) -> None:
        self.counts = [0.0] * WEEK_HOURS
        self.t0: int | None = None
        self.t1: int | None = None

    def learn_one(self, ts_ms: int, units: float) -> None:
        self.counts[hour_of_week(ts_ms)] += units
        self.t0 = ts_ms if self.t0 is None else min(self.t0, ts_ms)
        self.t1 = ts_ms if self.t1 is None else max(self.t1, ts_ms)

    def merge(self, other: HourOfWeekProfile) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        for t in (other.t0, other.t1):
            if t is not None:
                self.t0 = t if self.t0 is None else min(self.t0, t)
                self.t1 = t if self.t1 is None else max(self.t1, t)

    def index(self) -> SeasonIndex:
        span = 0 if self.t0 is None or self.t1 is None else self.t1 - self.t0
        return seasonal_index(self.counts, span)

    def predict_one(self, ts_ms: int) -> float:
        """The relative sales rate (mean 1) at the hour of the week of ``ts_ms``."""
        return self.index()[hour_of_week(ts_ms)]

    def to_state(self) -> dict[str, Any]:
        return {"counts": self.counts, "t0": self.t0, "t1": self.t1}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> HourOfWeekProfile:
        p = cls()
        p.counts, p.t0, p.t1 = [float(x) for x in state["counts"]], state["t0"], state["t1"]
        return p

    @classmethod
    def check_stream(
        cls, rng: random.Random
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        t0 = 1_700_000_000_000
        obs = [(t0 + rng.randrange(21 * 86_400_000), rng.randint(1, 9)) for _ in range(400)]
        return obs, [(t0 + h * HOUR_MS,) for h in range(0, 168, 7)]


@dataclass
class SkuState:
    """One SKU as stored (``<prefix>sku:<sku>``), decoded."""

    sku: str
    version: int = 0
    ts_ms: int = 0
    category: str | None = None
    levels: dict[str, int] = field(default_factory=dict)
    snapshot_ms: dict[str, int] = field(default_factory=dict)
    shrinkage: dict[str, int] = field(default_factory=dict)
    #: channel key -> (event ms, price minor, currency)
    prices: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    velocity: dict[str, Velocity] = field(default_factory=dict)

    @classmethod
    def from_fields(cls, sku: str, fields: Mapping[str, str]) -> SkuState:
        """Decode the stored hash (field layout: ``state/lua/apply_batch.lua``).

        >>> s = SkuState.from_fields("A", {"ver": "3", "q:s1": "4", "p:web": "5 250 EUR"})
        >>> s.levels, s.prices
        ({'s1': 4}, {'web': (5, 250, 'EUR')})
        """
        s = cls(sku)
        for k, v in fields.items():
            kind, _, loc = k.partition(":")
            if kind == "q":
                s.levels[loc] = int(v)
            elif kind == "st":
                s.snapshot_ms[loc] = int(v)
            elif kind == "sh":
                s.shrinkage[loc] = int(v)
            elif kind == "p":
                t, p, cur = v.split(" ")
                s.prices[loc] = (int(t), int(p), cur)
            elif kind == "v":
                u, n, ref, first = v.split(" ")
                s.velocity[loc] = Velocity(float(u), float(n), int(float(ref)), int(float(first)))
            elif k == "ver":
                s.version = int(v)
            elif k == "ts":
                s.ts_ms = int(v)
            elif k == "cat":
                s.category = v
        return s

    def counted(self) -> dict[str, int]:
        """Levels of the locations counted at least once: only those are known. Movements
        at a location never counted give a change, not a level, and raise no alert."""
        return {loc: q for loc, q in self.levels.items() if loc in self.snapshot_ms}

    def listed(self) -> set[str]:
        """Channels with a price: ``online`` if any online channel, ``store`` if any store."""
        out = set()
        for ch in self.prices:
            out.add("store" if ch.startswith("store") else "online")
        return out


def out_of_stock_online(states: Iterable[SkuState], rules: StockRules) -> frozenset[str]:
    """SKUs the online channels cannot sell now: counted somewhere, and nothing online may
    sell. A SKU never counted is not known to be out of stock.

    >>> rules = StockRules(online_locations=frozenset({"wh"}))
    >>> gone = SkuState.from_fields("A", {"q:wh": "0", "st:wh": "5"})
    >>> fine = SkuState.from_fields("B", {"q:wh": "3", "st:wh": "5"})
    >>> sorted(out_of_stock_online([gone, fine, SkuState("C")], rules))
    ['A']
    """
    return frozenset(
        s.sku for s in states if s.counted() and availability(s.counted(), rules)["ch:online"] <= 0
    )


def availability(levels: Mapping[str, int], rules: StockRules) -> dict[str, int]:
    """What each location holds (``loc:<id>``, may be negative when a channel sold stock
    the records do not show) and what the online channels may sell (``ch:online``)."""
    out = {f"loc:{loc}": q for loc, q in sorted(levels.items())}
    online = sum(max(0, q) for loc, q in levels.items() if loc in rules.online_locations)
    stores = sum(max(0, q) for loc, q in levels.items() if loc not in rules.online_locations)
    out["ch:online"] = online + int(rules.online_store_share * stores)
    return out


# ---------------------------------------------------------------- seasonality, prediction
class SeasonIndex(list[float]):
    """A location's hour-of-week index, with its peak kept for quick bounds."""

    peak: float = 1.0


FLAT: Final = SeasonIndex([1.0] * WEEK_HOURS)


def peak(season: Sequence[float]) -> float:
    """The highest value of a seasonal index (kept on a :class:`SeasonIndex`)."""
    return season.peak if isinstance(season, SeasonIndex) else max(season)


def seasonal_index(counts: Sequence[float], span_ms: int) -> SeasonIndex:
    """Relative sales rate per hour of the week (mean 1) from units sold per hour of the
    week over ``span_ms`` of history: hour-of-day shape x day-of-week shape, smoothed, so
    sparse data stays robust. Each shape is used only once the history covers it (two days,
    two weeks: see :data:`SEASON_DAILY_MS`); until then, and below
    :data:`SEASON_MIN_UNITS` units, that shape is flat.

    >>> week = 7 * 86_400_000
    >>> idx = seasonal_index([10.0 if 9 <= h % 24 < 21 else 0.0 for h in range(168)], week)
    >>> round(idx[12], 2), round(idx[3], 2), round(sum(idx) / 168, 6)
    (1.99, 0.01, 1.0)
    >>> seasonal_index([10.0 if h == 12 else 0.0 for h in range(168)], 3_600_000)[12]
    1.0
    """
    total = float(sum(counts))
    if len(counts) != WEEK_HOURS or total < SEASON_MIN_UNITS or span_ms < SEASON_DAILY_MS:
        return SeasonIndex(FLAT)
    by_hour = [sum(counts[d * 24 + h] for d in range(7)) for h in range(24)]
    by_day = [sum(counts[d * 24 : d * 24 + 24]) for d in range(7)]
    alpha_h, alpha_d = total / 24 * 0.01, total / 7 * 0.01  # 1% smoothing
    hours = [(x + alpha_h) / (total / 24 + alpha_h) for x in by_hour]
    days = [(x + alpha_d) / (total / 7 + alpha_d) for x in by_day]
    if span_ms < SEASON_WEEKLY_MS:
        days = [1.0] * 7
    raw = [days[h // 24] * hours[h % 24] for h in range(WEEK_HOURS)]
    mean = sum(raw) / WEEK_HOURS
    out = SeasonIndex(x / mean for x in raw)
    out.peak = max(out)
    return out

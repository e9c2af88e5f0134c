"""Stock alerts: one SKU's stored state and its open alerts in, alert messages out (raised,
updated, resolved), with the stock-out prediction. Pure logic, no I/O: ``flows/alerts.py``
reads the state, calls :func:`evaluate` and writes its decisions with an outbox.

Alerts do not flap: a condition already open holds until it is clearly over
(:data:`LOW_STOCK_BAND`, :data:`CONFIDENCE_HYSTERESIS`, half the price tolerance).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, get_args

from operators.stock import (
    FLAT,
    HOUR_MS,
    WEEK_HOURS,
    SkuState,
    StockRules,
    Velocity,
    availability,
    hour_of_week,
    peak,
)
from schemas.alerts import AlertType
from schemas.events import SalesChannel

#: Every alert type (the contract's).
ALERT_TYPES: Final[tuple[str, ...]] = get_args(AlertType)
#: Channel-level prices compared for mismatches (location prices are regional on purpose).
PRICE_CHANNELS: Final[tuple[str, ...]] = get_args(SalesChannel)
#: Gamma prior of the hourly sales rate (shape, exposure in hours): weak, so a handful of
#: sales dominate it, but a SKU seen once is not projected to sell out with confidence.
PRIOR_SHAPE: Final = 0.5
PRIOR_HOURS: Final = 1.0
#: No prediction from fewer sales than this at a location (decayed count): one basket
#: says little about a rate.
MIN_SALES: Final = 3.0
#: A low-stock alert resolves above threshold + this share of it (at least 1 unit).
LOW_STOCK_BAND: Final = 0.2
#: A predicted stock-out resolves this far below the confidence that raised it.
CONFIDENCE_HYSTERESIS: Final = 0.2


@dataclass(frozen=True)
class Prediction:
    #: expected stock-out time (ms), None if not within the horizon on the mean path
    expected_ms: int | None
    #: probability that demand over the horizon reaches the stock
    confidence: float
    #: expected units sold per hour, now
    rate_per_hour: float


def predict_stockout(
    stock: int,
    velocity: Velocity,
    season: Sequence[float],
    now_ms: int,
    horizon_hours: float,
) -> Prediction:
    """When ``stock`` runs out at the learnt sales rate, and how sure we are.

    The hourly rate has a Gamma posterior (decayed units sold over the decayed hours
    observed, plus a weak prior); demand over the horizon, shaped by the location's
    hour-of-week profile, is then negative binomial, and the confidence is its probability
    of reaching ``stock``. The expected time follows the mean rate, hour by hour.

    One unit an hour for the last ten days (units decayed as stored):

    >>> units = sum(2 ** (-h / 168) for h in range(240))
    >>> v = Velocity(units=units, sales=units, ref_ms=0, first_ms=-240 * HOUR_MS)
    >>> p = predict_stockout(10, v, [1.0] * 168, 0, 24)
    >>> round(p.rate_per_hour, 2), round((p.expected_ms or 0) / HOUR_MS, 1), p.confidence > 0.99
    (1.0, 10.0, True)
    >>> round(predict_stockout(20, v, [1.0] * 168, 0, 24).confidence, 2)
    0.8
    >>> predict_stockout(30, v, [1.0] * 168, 0, 24).expected_ms is None
    True
    """
    if stock <= 0:
        return Prediction(now_ms, 1.0, 0.0)
    units, hours = velocity.at(now_ms)
    if units <= 0 or hours <= 0:
        return Prediction(None, 0.0, 0.0)
    mean_rate = units / hours
    # Seasonal hours in the horizon, and the mean-path stock-out time.
    h0 = hour_of_week(now_ms)
    frac0 = 1.0 - (now_ms % HOUR_MS) / HOUR_MS
    weight = 0.0
    expected: int | None = None
    left = horizon_hours
    i = 0
    while left > 1e-9:
        span = min(left, frac0 if i == 0 else 1.0)
        s = season[(h0 + i) % WEEK_HOURS] * span
        if expected is None and mean_rate * (weight + s) >= stock:
            need = (stock / mean_rate - weight) / season[(h0 + i) % WEEK_HOURS]
            offset = (0.0 if i == 0 else frac0 + (i - 1)) + need
            expected = now_ms + int(offset * HOUR_MS)
        weight += s
        left -= span
        i += 1
    confidence = _nbinom_sf(
        stock, PRIOR_SHAPE + units, (PRIOR_HOURS + hours) / (PRIOR_HOURS + hours + weight)
    )
    return Prediction(expected, confidence, mean_rate * season[h0])


def warm_up() -> None:
    """Import what :func:`predict_stockout` needs (scipy, ~0.2 s) ahead of the first use."""
    from scipy.special import betainc  # noqa: F401


def _nbinom_sf(k: int, r: float, p: float) -> float:
    """P(X >= k) for X ~ NegBin(r, p) (failures before the r-th success of probability p):
    1 - I_p(r, k), the regularized incomplete beta function."""
    from scipy.special import betainc

    return float(1.0 - betainc(r, k, p)) if k > 0 else 1.0


# ---------------------------------------------------------------- alerts
@dataclass(frozen=True)
class Finding:
    """A condition that holds now for one alert key."""

    type: str
    severity: str
    location_id: str | None = None
    channel: str | None = None
    reason: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


def alert_key(type_: str, scope: str, reason: str | None = None) -> str:
    return f"{type_}|{scope}|{reason or ''}"


def alert_id(sku: str, key: str, raised_ms: int, version: int = 0) -> str:
    """Deterministic: the same SKU, alert, raise time and SKU version give the same id
    (replays, rebuilds). The version tells apart two raises at the same newest event time
    (late events move stock, not the SKU's time): each lifecycle has its own id.

    >>> alert_id("A", "low_stock|loc:s1|", 5, 3) == alert_id("A", "low_stock|loc:s1|", 5, 3)
    True
    >>> alert_id("A", "low_stock|loc:s1|", 5, 3) == alert_id("A", "low_stock|loc:s1|", 5, 7)
    False
    """
    raw = f"{sku}|{key}|{raised_ms}|{version}".encode()
    return hashlib.blake2b(raw, digest_size=10).hexdigest()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def findings(
    state: SkuState,
    open_keys: Mapping[str, Mapping[str, Any]],
    rules: StockRules,
    seasons: Mapping[str, Sequence[float]],
) -> dict[str, Finding]:
    """Every alert condition that holds for ``state``, with hysteresis: a condition that is
    already open (``open_keys``) holds until it is clearly over, so alerts do not flap.

    - low stock: raised at or below the threshold, resolved above threshold + band
      (band = :data:`LOW_STOCK_BAND` of the threshold, at least 1 unit);
    - out of stock: raised at 0 or below, resolved at 1 or more;
    - predicted stock-out: raised at ``min_confidence`` (from :data:`MIN_SALES` sales on),
      resolved :data:`CONFIDENCE_HYSTERESIS` below it;
    - price mismatch: raised above the tolerance, resolved at half of it.
    """
    out: dict[str, Finding] = {}
    thr = rules.threshold(state.sku, state.category)
    band = max(1, math.ceil(thr * LOW_STOCK_BAND))
    listed = state.listed()
    levels = state.counted()
    online_known = "online" in listed or any(loc in rules.online_locations for loc in levels)
    for scope, avail in availability(levels, rules).items():
        loc = scope[4:] if scope.startswith("loc:") else None
        if loc is None and not online_known:
            continue
        where = {"location_id": loc} if loc else {"channel": "online"}
        data = {"available": avail, "threshold": thr}
        k = alert_key("out_of_stock", scope)
        if avail <= 0:
            out[k] = Finding("out_of_stock", "critical", data=data, **where)
        k = alert_key("low_stock", scope)
        if avail <= thr or (k in open_keys and avail <= thr + band):
            out[k] = Finding("low_stock", "warning", data=data, **where)
        if loc is None:
            if avail > 0 and listed and "online" not in listed:
                k = alert_key("channel_inconsistency", scope, "not_listed")
                out[k] = Finding("channel_inconsistency", "warning", reason="not_listed",
                                 data={"available": avail}, **where)  # fmt: skip
            continue
        if avail < 0:
            k = alert_key("channel_inconsistency", scope, "no_stock_behind")
            out[k] = Finding("channel_inconsistency", "warning", reason="no_stock_behind",
                             data={"available": avail}, **where)  # fmt: skip
        if avail > 0 and loc not in rules.online_locations and listed and "store" not in listed:
            k = alert_key("channel_inconsistency", scope, "not_listed")
            out[k] = Finding("channel_inconsistency", "warning", reason="not_listed",
                             data={"available": avail}, **where)  # fmt: skip
        vel = state.velocity.get(loc)
        if avail > 0 and vel is not None and vel.sales >= MIN_SALES:
            k = alert_key("predicted_stockout", scope)
            floor = rules.min_confidence - (CONFIDENCE_HYSTERESIS if k in open_keys else 0.0)
            season = seasons.get(loc) or FLAT
            # Markov's inequality: P(demand >= stock) <= E[demand] / stock. When even the
            # busiest hours cannot make that reach the floor, skip the exact computation.
            units, hours = vel.at(state.ts_ms)
            mean_bound = (PRIOR_SHAPE + units) / (PRIOR_HOURS + hours) * rules.horizon_hours
            if mean_bound * peak(season) < floor * avail:
                continue
            p = predict_stockout(avail, vel, season, state.ts_ms, rules.horizon_hours)
            if p.expected_ms is not None and p.confidence >= floor:
                soon = p.expected_ms - state.ts_ms <= rules.horizon_hours * HOUR_MS / 4
                out[k] = Finding(
                    "predicted_stockout",
                    "critical" if soon else "warning",
                    data={
                        "available": avail,
                        "expected_stockout_at": _iso(p.expected_ms),
                        "expected_ms": p.expected_ms,
                        "confidence": round(p.confidence, 4),
                        "rate_per_hour": round(p.rate_per_hour, 4),
                    },
                    **where,
                )
    mismatch = _price_mismatch(state, rules, alert_key("channel_inconsistency", "price",
                                                       "price_mismatch") in open_keys)  # fmt: skip
    if mismatch is not None:
        out[alert_key("channel_inconsistency", "price", "price_mismatch")] = mismatch
    return out


def _price_mismatch(state: SkuState, rules: StockRules, is_open: bool) -> Finding | None:
    by_cur: dict[str, dict[str, int]] = {}
    for ch in PRICE_CHANNELS:
        p = state.prices.get(ch)
        if p is not None:
            by_cur.setdefault(p[2], {})[ch] = p[1]
    tol = rules.price_tolerance / (2 if is_open else 1)
    for cur, prices in sorted(by_cur.items()):
        if len(prices) < 2:
            continue
        lo, hi = min(prices.values()), max(prices.values())
        if hi - lo > tol * max(lo, 1):
            return Finding(
                "channel_inconsistency",
                "warning",
                reason="price_mismatch",
                data={"prices": prices, "currency": cur},
            )
    return None


@dataclass
class Evaluation:
    """What to write for one SKU: open alerts to set / delete, and messages to send."""

    sku: str
    version: int
    set: dict[str, dict[str, Any]] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    #: open alerts of this SKU after the change, by type: +1 raised, -1 resolved
    opened: dict[str, int] = field(default_factory=dict)
    at_risk: bool = False


_RISK: Final = frozenset({"low_stock", "out_of_stock", "predicted_stockout"})


def evaluate(
    state: SkuState,
    open_alerts: Mapping[str, Mapping[str, Any]],
    rules: StockRules,
    seasons: Mapping[str, Sequence[float]] | None = None,
) -> Evaluation:
    """Compare what holds now with the open alerts: raise, update, resolve.

    A message is sent when an alert is raised or resolved, when its severity changes, or
    when a predicted stock-out moves by more than a quarter of the horizon; the open
    record always carries the latest figures. When an out-of-stock resolves, a one-off
    ``back_in_stock`` message follows. Times are event times, so a replay decides the same.

    >>> rules = StockRules(low_stock=2)
    >>> s = SkuState("A", version=1, ts_ms=0, levels={"s1": 1}, snapshot_ms={"s1": 0})
    >>> ev = evaluate(s, {}, rules)
    >>> [(m["type"], m["status"]) for m in ev.messages]
    [('low_stock', 'raised')]
    >>> s2 = SkuState("A", version=2, ts_ms=60_000, levels={"s1": 0}, snapshot_ms={"s1": 0})
    >>> ev2 = evaluate(s2, ev.set, rules)
    >>> [(m["type"], m["status"]) for m in ev2.messages]
    [('out_of_stock', 'raised')]
    """
    seasons = seasons or {}
    now = findings(state, open_alerts, rules, seasons)
    ev = Evaluation(state.sku, state.version)
    at = _iso(state.ts_ms)
    for key, f in now.items():
        rec = open_alerts.get(key)
        base = {
            "type": f.type,
            "severity": f.severity,
            "sku": state.sku,
            **({"category": state.category} if state.category else {}),
            **({"location_id": f.location_id} if f.location_id else {}),
            **({"channel": f.channel} if f.channel else {}),
            **({"reason": f.reason} if f.reason else {}),
            **{k: v for k, v in f.data.items() if k != "expected_ms"},
            "as_of": at,
        }
        if rec is None:
            aid = alert_id(state.sku, key, state.ts_ms, state.version)
            new = {"alert_id": aid, "seq": 1, "status": "raised", "raised_at": at, **base}
            new["_exp"] = f.data.get("expected_ms")
            ev.set[key] = new
            ev.messages.append(_message(new))
            ev.opened[f.type] = ev.opened.get(f.type, 0) + 1
            continue
        changed = rec.get("severity") != f.severity or rec.get("prices") != f.data.get("prices")
        exp, old_exp = f.data.get("expected_ms"), rec.get("_exp")
        if exp is not None and old_exp is not None:
            changed |= abs(exp - old_exp) > rules.horizon_hours * HOUR_MS / 4
        upd = {**rec, **base, "status": "updated" if changed else rec["status"]}
        if changed:
            upd["seq"] = rec["seq"] + 1
            upd["_exp"] = exp
            ev.messages.append(_message(upd))
        if upd != rec:
            ev.set[key] = upd
    for key, rec in open_alerts.items():
        if key in now:
            continue
        done = {**rec, "status": "resolved", "seq": rec["seq"] + 1, "as_of": at}
        ev.delete.append(key)
        ev.messages.append(_message(done))
        ev.opened[rec["type"]] = ev.opened.get(rec["type"], 0) - 1
        if rec["type"] == "out_of_stock":
            scope = key.split("|")[1]
            avail = availability(state.counted(), rules).get(scope, 0)
            back = {k: rec[k] for k in ("sku", "category", "location_id", "channel") if k in rec}
            ev.messages.append(
                _message(
                    {
                        "alert_id": alert_id(state.sku, "back_in_stock|" + rec["alert_id"], 0),
                        "seq": 1,
                        "type": "back_in_stock",
                        "status": "raised",
                        "severity": "info",
                        **back,
                        "available": avail,
                        "as_of": at,
                        "raised_at": at,
                    }
                )
            )
    ev.at_risk = any(k.split("|")[0] in _RISK for k in now)
    return ev


def _message(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The alert message of a record: its figures plus a message id (alert id + seq)."""
    msg = {k: v for k, v in rec.items() if not k.startswith("_")}
    msg["message_id"] = f"{rec['alert_id']}-{rec['seq']}"
    return msg

"""Per-customer profile effects of events, folded per batch into one delta per customer.

Every effect is commutative (sums, minima, maxima, latest-by-event-time, top-N by event
time, decayed scores in log space), so the profile is the same whatever order, lateness or
batch boundaries the events arrive in. That is what lets several workers, late events and
replays update Redis without coordination, and what lets two profiles merge exactly.

A delta is a set of profile-hash fields, grouped by how they combine (the field grammar is
documented in ``state/profiles.py``):

- **sums**: per channel orders, returns, items bought/returned (product lines), events,
  spend/refunds per currency in minor units, offer responses and redemptions; store
  purchases per location (the home store);
- **minima / maxima**: per channel first and last seen, last order;
- **decayed scores**: favourite categories, ``log2`` of a score that halves every
  :data:`CATEGORY_HALF_LIFE_DAYS` (stored relative to a fixed epoch, so adding two scores
  is a log-add-exp and never overflows);
- **latest by event time**: consents per purpose (a tie withdraws, the safe side) and the
  home store the customer chose;
- recently viewed and recently bought SKUs (most recent by event time), and the open cart:
  the sum of add (+q) and remove (-q) events per SKU whose event time is after the
  customer's last online (web/app) purchase; lines that sum to <= 0 are not shown.

>>> from schemas.envelope import Accepted
>>> from schemas.events import AddToCart
>>> ev = Accepted("t", 0, 1, "clickstream", "add_to_cart", "e1", 1000, "web",
...               "cookie:c1", {"cookie": "c1"}, AddToCart(
...                   event_id="e1", event_time=None, channel="web", session_id="s",
...                   sku="SKU1", quantity=2, category="toys"))
>>> d = fold([ev])
>>> d.sums["web:e"], d.cart, sorted(d.logs)
(1, {('SKU1', 1000): 2}, ['cat:toys'])
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final

from msgspec import UNSET

from operators.learners import Learner, Stream
from operators.preferences import BASKET_ITEMS, HISTORY_BASKETS, basket_json, learns
from operators.profile_fields import COUNTERS, rule_of
from schemas.envelope import Accepted
from schemas.events import CART_CHANNELS, line_amount

RECENT_VIEWS: Final = 20
#: a product viewed again at least this long after a view is a return to it (browse
#: abandonment), not the same page loaded twice
VIEWED_AGAIN_MS: Final = 60_000
RECENT_BOUGHT: Final = 20
#: Cart entries kept per customer; past this the oldest are dropped (a bot's cart).
CART_CAP: Final = 200
#: A category interest halves every 30 days without new activity.
CATEGORY_HALF_LIFE_DAYS: Final = 30.0
#: Reference time of the stored decayed scores (2000-01-01T00:00:00Z).
DECAY_EPOCH_MS: Final = 946_684_800_000
_HALF_LIFE_MS: Final = CATEGORY_HALF_LIFE_DAYS * 86_400_000
#: Interest weight of an event in a category (log2 of it is added to the score).
CATEGORY_WEIGHTS: Final = {"product_view": 1.0, "add_to_cart": 2.0, "sale": 4.0}
_LOG_WEIGHTS: Final = {k: math.log2(w) for k, w in CATEGORY_WEIGHTS.items()}
CONSENT_PURPOSES: Final = ("email", "sms", "push", "in_store")

#: The per-channel fields the fold writes, in the order :func:`fold` unpacks them, with
#: the group it puts each in; the registry (``operators/profile_fields.py``) must agree.
_FOLD_FIELDS: Final = (
    ("e", "sum"), ("f", "min"), ("l", "max"), ("o", "sum"), ("i", "sum"), ("lo", "max"),
    ("r", "sum"), ("ir", "sum"), ("rsp", "sum"), ("red", "sum"),
)  # fmt: skip
for _code, _how in _FOLD_FIELDS:
    if rule_of(f"web:{_code}").combine != _how:  # a registry change the fold does not follow
        raise RuntimeError(f"operators/profile.py folds {_code!r} as {_how}: see profile_fields")
_CHANNEL_FIELDS: dict[str, tuple[str, ...]] = {}


def _fields(ch: str) -> tuple[str, ...]:
    names = _CHANNEL_FIELDS.get(ch)
    if names is None:
        names = _CHANNEL_FIELDS[ch] = tuple(f"{ch}:{code}" for code, _ in _FOLD_FIELDS)
    return names


def log2_add(a: float, b: float) -> float:
    """``log2(2**a + 2**b)`` without overflow: how two decayed scores add.

    >>> log2_add(3.0, 3.0)
    4.0
    """
    hi, lo = (a, b) if a >= b else (b, a)
    return hi + math.log2(1.0 + 2.0 ** (lo - hi))


def decayed(log_score: float, as_of_ms: int) -> float:
    """The decayed score at ``as_of_ms`` of a stored log2 score.

    >>> round(decayed(_log_at(4.0, 0) , 30 * 86_400_000), 6)  # one half-life later
    2.0
    """
    return float(2.0 ** (log_score - (as_of_ms - DECAY_EPOCH_MS) / _HALF_LIFE_MS))


def interest_log(event_type: str, ts_ms: int) -> float:
    """The stored log2 score one event adds to its category's interest."""
    return _LOG_WEIGHTS[event_type] + (ts_ms - DECAY_EPOCH_MS) / _HALF_LIFE_MS


def _log_at(weight: float, ts_ms: int) -> float:
    """Stored log2 score of ``weight`` at event time ``ts_ms`` (relative to the epoch)."""
    return math.log2(weight) + (ts_ms - DECAY_EPOCH_MS) / _HALF_LIFE_MS


class CategoryInterests(Learner):
    """A customer's interest per category: each view, cart add and purchase adds its
    :data:`CATEGORY_WEIGHTS` weight, and every score halves every
    :data:`CATEGORY_HALF_LIFE_DAYS` without new activity. Scores are kept as ``log2`` relative
    to :data:`DECAY_EPOCH_MS`, so that adding two is a log-add-exp that never overflows and a
    merge is exact; the batch fold and the Redis merge combine the stored ``cat:<category>``
    fields the same way (``operators/profile_fields.py``).

    >>> c = CategoryInterests(); c.learn_one("toys", "sale", 0); c.learn_one("toys", "sale", 0)
    >>> round(c.predict_one(0)["toys"], 6)
    8.0
    """

    def __init__(self) -> None:
        self.scores: dict[str, float] = {}

    def learn_one(self, category: str, event_type: str, ts_ms: int) -> None:
        x = interest_log(event_type, ts_ms)
        old = self.scores.get(category)
        self.scores[category] = x if old is None else log2_add(old, x)

    def merge(self, other: CategoryInterests) -> None:
        for k, x in other.scores.items():
            old = self.scores.get(k)
            self.scores[k] = x if old is None else log2_add(old, x)

    def predict_one(self, as_of_ms: int) -> dict[str, float]:
        """Every category's decayed score at ``as_of_ms``."""
        return {k: decayed(x, as_of_ms) for k, x in self.scores.items()}

    def to_state(self) -> dict[str, float]:
        """The stored form: ``cat:<category>`` fields of the profile hash, without prefix."""
        return dict(self.scores)

    @classmethod
    def from_state(cls, state: dict[str, float]) -> CategoryInterests:
        c = cls()
        c.scores = {k: float(v) for k, v in state.items()}
        return c

    @classmethod
    def check_stream(cls, rng: random.Random) -> Stream:
        t0 = 1_700_000_000_000
        kinds = list(CATEGORY_WEIGHTS)
        obs = [
            (rng.choice("abcde"), rng.choice(kinds), t0 + rng.randrange(90 * 86_400_000))
            for _ in range(300)
        ]
        return obs, [(t0 + 91 * 86_400_000,), (t0 + 400 * 86_400_000,)]


class CustomerDelta:
    """One batch's effects on one customer, grouped by how each field combines."""

    __slots__ = (
        "baskets", "bought", "cart", "cart_clear_ms", "logs", "lww", "maxs", "mins", "returned",
        "sums", "views", "views_first",
    )  # fmt: skip

    def __init__(self) -> None:
        self.sums: dict[str, int] = {}
        self.mins: dict[str, int] = {}
        self.maxs: dict[str, int] = {}
        self.logs: dict[str, float] = {}
        #: field -> (event ms, value): consents "1" granted | "0" withdrawn, home store id
        self.lww: dict[str, tuple[int, str]] = {}
        self.views: dict[str, int] = {}
        #: the first view of each SKU in the batch (a second, a minute later, is a return)
        self.views_first: dict[str, int] = {}
        self.bought: dict[str, int] = {}
        #: SKUs returned (a negative: never suggested to this customer again)
        self.returned: dict[str, int] = {}
        #: each sale's distinct product SKUs, with its time: the next-basket model's history
        self.baskets: list[tuple[int, list[str]]] = []
        self.cart: dict[tuple[str, int], int] = {}
        self.cart_clear_ms = 0


def fold(events: Iterable[Accepted], into: CustomerDelta | None = None) -> CustomerDelta:
    """Fold one customer's events into a delta (events without a channel are skipped)."""
    d = CustomerDelta() if into is None else into
    sums, mins, maxs = d.sums, d.mins, d.maxs
    for a in events:
        ch = a.channel
        if ch is None:
            continue
        f_e, f_f, f_l, f_o, f_i, f_lo, f_r, f_ir, f_rsp, f_red = _fields(ch)
        ts = a.ts_ms
        sums[f_e] = sums.get(f_e, 0) + 1
        if ts < mins.get(f_f, ts + 1):
            mins[f_f] = ts
        if ts > maxs.get(f_l, -1):
            maxs[f_l] = ts
        et = a.event_type
        ev = a.event
        if et == "sale" or et == "return":
            amount = 0
            units = 0
            skus: set[str] = set()
            for line in ev.lines:
                amount += line_amount(line)
                if line.kind == "product" or line.kind is UNSET:
                    units += line.quantity
                    if et == "sale":
                        skus.add(line.sku)
                        if ts > d.bought.get(line.sku, -1):
                            d.bought[line.sku] = ts
                        if line.category is not UNSET:
                            _interest(d, line.category, "sale", ts)
                    elif ts > d.returned.get(line.sku, -1):
                        d.returned[line.sku] = ts
            if et == "sale":
                if skus:
                    d.baskets.append((ts, sorted(skus)[:BASKET_ITEMS]))
                sums[f_o] = sums.get(f_o, 0) + 1
                sums[f_i] = sums.get(f_i, 0) + units
                k = f"{ch}:s:{ev.currency}"
                sums[k] = sums.get(k, 0) + amount
                if ts > maxs.get(f_lo, -1):
                    maxs[f_lo] = ts
                if ch in CART_CHANNELS and ts > d.cart_clear_ms:
                    d.cart_clear_ms = ts
                if ch == "store" and ev.location_id is not UNSET:
                    k = "loc:" + ev.location_id
                    sums[k] = sums.get(k, 0) + 1
            else:
                sums[f_r] = sums.get(f_r, 0) + 1
                sums[f_ir] = sums.get(f_ir, 0) + units
                k = f"{ch}:rf:{ev.currency}"
                sums[k] = sums.get(k, 0) + amount
        elif et == "product_view":
            if ts > d.views.get(ev.sku, -1):
                d.views[ev.sku] = ts
            if ts < d.views_first.get(ev.sku, ts + 1):
                d.views_first[ev.sku] = ts
            if ev.category is not UNSET:
                _interest(d, ev.category, et, ts)
        elif et == "add_to_cart" or et == "remove_from_cart":
            k2 = (ev.sku, ts)
            q = ev.quantity if et == "add_to_cart" else -ev.quantity
            d.cart[k2] = d.cart.get(k2, 0) + q
            if et == "add_to_cart" and ev.category is not UNSET:
                _interest(d, ev.category, et, ts)
        elif et == "offer_clicked" or et == "offer_redeemed":
            f = f_red if et == "offer_redeemed" else f_rsp
            sums[f] = sums.get(f, 0) + 1
        elif et == "consent_changed":
            # A clock running ahead must not outrank later choices (validate.trusted_time).
            eff = a.eff_ms or ts
            c = ev.consents
            for purpose in CONSENT_PURPOSES:
                v = getattr(c, purpose)
                if v is not UNSET:
                    _latest(d, "cs:" + purpose, eff, "1" if v else "0")
            if ev.time_zone is not UNSET:
                _latest(d, "tz", eff, ev.time_zone)
        elif et == "home_store_chosen":
            _latest(d, "hs", a.eff_ms or ts, ev.location_id)
    return d


def _interest(d: CustomerDelta, category: str, event_type: str, ts: int) -> None:
    """:meth:`CategoryInterests.learn_one` on the delta's ``cat:`` fields."""
    k = "cat:" + category
    x = interest_log(event_type, ts)
    old = d.logs.get(k)
    d.logs[k] = x if old is None else log2_add(old, x)


def _latest(d: CustomerDelta, field: str, ts: int, v: str) -> None:
    """Latest event time wins; a tie goes to the smaller value (a withdrawn consent)."""
    old = d.lww.get(field)
    if old is None or ts > old[0] or (ts == old[0] and v < old[1]):
        d.lww[field] = (ts, v)


def to_row(d: CustomerDelta) -> list[Any]:
    """Compact form of a delta for the Redis script (``state/lua/apply_batch.lua``):
    ``[sums, mins, maxs, logs, lww, views, bought, cart, cart_clear_ms, viewed_again_ms,
    returned, baskets]``, each a flat list but ``baskets``: the newest
    :data:`~operators.preferences.HISTORY_BASKETS` sales as ``[time, SKUs as JSON, "L"]``
    (``"L"``: to learn from, :func:`~operators.preferences.learns`; ``"-"``: history only);
    ``viewed_again_ms`` is the newest view of a SKU already viewed at least
    :data:`VIEWED_AGAIN_MS` earlier in the same batch (0: none; the script compares the
    batch's views with the stored ones too: the browse-abandonment timer).

    Recently viewed and bought SKUs and cart entries are capped to what Redis keeps anyway
    (the most recent :data:`RECENT_VIEWS`, :data:`RECENT_BOUGHT`, :data:`CART_CAP`, in the
    order Redis trims them), so a bot viewing thousands of SKUs in one batch costs no more
    than a person, and the profile is the same as without the cap.

    >>> d = CustomerDelta(); d.sums["web:e"] = 2; d.lww["cs:sms"] = (5, "0")
    >>> to_row(d)
    [['web:e', 2], [], [], [], ['cs:sms', 5, '0'], [], [], [], 0, 0, [], []]
    >>> d.baskets = [(7, ["MAT", "TENT"])]; to_row(d)[11]
    [[7, '["MAT","TENT"]', 'L']]
    >>> d.views = {f"S{i}": i for i in range(4500)}
    >>> row = to_row(d); len(row[5]) // 2, row[5][:2]
    (20, ['S4499', 4499])
    >>> d.views, d.views_first = {"A": 90_000, "B": 95_000}, {"A": 10_000, "B": 94_000}
    >>> to_row(d)[9]   # A viewed again 80 s later; B twice within a second: not a return
    90000
    """
    clear = d.cart_clear_ms
    cart = [(sku, ts, q) for (sku, ts), q in d.cart.items() if ts > clear and q != 0]
    if len(cart) > CART_CAP:  # Redis keeps the greatest (time, "sku|time") entries
        cart = sorted(cart, key=lambda e: (e[1], f"{e[0]}|{e[1]}"), reverse=True)[:CART_CAP]
    return [
        [x for kv in d.sums.items() if kv[1] for x in kv],
        [x for kv in d.mins.items() for x in kv],
        [x for kv in d.maxs.items() for x in kv],
        [x for kv in d.logs.items() for x in kv],
        [x for f, (ts, v) in d.lww.items() for x in (f, ts, v)],
        [x for kv in _most_recent(d.views, RECENT_VIEWS) for x in kv],
        [x for kv in _most_recent(d.bought, RECENT_BOUGHT) for x in kv],
        [x for e in cart for x in e],
        clear,
        max(
            (t for sku, t in d.views.items() if t - d.views_first.get(sku, t) >= VIEWED_AGAIN_MS),
            default=0,
        ),
        [x for kv in _most_recent(d.returned, RECENT_BOUGHT) for x in kv],
        [
            [ts, basket_json(skus), "L" if learns((ts, skus)) else "-"]
            for ts, skus in sorted(d.baskets, key=lambda b: b[0])[-HISTORY_BASKETS:]
        ],
    ]


def _most_recent(latest: dict[str, int], keep: int) -> Iterable[tuple[str, int]]:
    """The ``keep`` entries a Redis sorted set trimmed by rank keeps: greatest (time, sku)."""
    if len(latest) <= keep:
        return latest.items()
    return sorted(latest.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:keep]


def cart_lines(entries: Iterable[tuple[str, int, int]], clear_ms: int) -> dict[str, int]:
    """Open cart from its stored entries ``(sku, ts_ms, delta)``.

    >>> cart_lines([("A", 5, 2), ("A", 9, -1), ("B", 3, 1), ("C", 7, -1)], clear_ms=4)
    {'A': 1}
    """
    qty: dict[str, int] = {}
    for sku, ts, delta in entries:
        if ts > clear_ms:
            qty[sku] = qty.get(sku, 0) + delta
    return {sku: q for sku, q in sorted(qty.items()) if q > 0}


#: Recency (days since the last order), frequency (orders) and monetary (spend in minor
#: units of the customer's main currency) thresholds for scores 5, 4, 3, 2 (else 1).
RFM_RECENCY_DAYS: Final = (30, 90, 180, 365)
RFM_FREQUENCY: Final = (20, 10, 5, 2)
RFM_MONETARY_MINOR: Final = (200_000, 100_000, 30_000, 10_000)


def rfm(last_order_ms: int | None, orders: int, spend_minor: int, as_of_ms: int) -> dict[str, Any]:
    """Recency-frequency-monetary scores (1-5) and the segment they put the customer in.

    >>> day = 86_400_000
    >>> rfm(100 * day, 12, 150_000, 110 * day)
    {'recency': 5, 'frequency': 4, 'monetary': 4, 'score': '544', 'segment': 'champion'}
    >>> rfm(None, 0, 0, 0)["segment"]
    'prospect'
    >>> rfm(0, 6, 40_000, 400 * day)["segment"]
    'at_risk'
    """
    if not orders or last_order_ms is None:
        return {"recency": None, "frequency": 0, "monetary": None, "score": None,
                "segment": "prospect"}  # fmt: skip
    days = (as_of_ms - last_order_ms) / 86_400_000
    r = 5 - sum(days > t for t in RFM_RECENCY_DAYS)
    f = 1 + sum(orders >= t for t in RFM_FREQUENCY)
    m = 1 + sum(spend_minor >= t for t in RFM_MONETARY_MINOR)
    if r >= 4 and f >= 4:
        segment = "champion"
    elif r >= 3 and f >= 3:
        segment = "loyal"
    elif r >= 4:
        segment = "new"
    elif r <= 2 and f >= 3:
        segment = "at_risk"
    elif r <= 2:
        segment = "hibernating"
    else:
        segment = "promising"
    return {"recency": r, "frequency": f, "monetary": m, "score": f"{r}{f}{m}", "segment": segment}


#: Favourite categories shown in a profile.
TOP_CATEGORIES: Final = 5


def build_profile(
    customer_id: str,
    fields: dict[str, str],
    views: list[tuple[str, int]],
    bought: list[tuple[str, int]],
    cart: dict[str, int],
    identifiers: list[str],
    as_of_ms: int,
    *,
    iso: Callable[[int | None], Any] | None = None,
) -> dict[str, Any]:
    """Assemble the stored pieces into the profile document. Times are ISO 8601 text;
    ``iso`` (e.g. ``lambda ms: ms``) formats them otherwise, for callers that compute with
    them (offer decisions) and need not pay for the text.

    >>> p = build_profile("C000000000007", {"store:o": "2", "store:s:GBP": "1250",
    ...     "store:f": "0", "store:l": "60000", "store:lo": "60000", "store:e": "2",
    ...     "loc:S1": "2", "cs:sms": "5:0"}, [("SKU9", 1000)], [], {}, ["loyalty:7"], 60000)
    >>> p["channels"]["store"]["orders"], p["spend_minor"], p["home_store"], p["segment"]
    (2, {'GBP': 1250}, 'S1', 'new')
    >>> p["consents"]["sms"]
    {'granted': False, 'at': '1970-01-01T00:00:00.005000+00:00'}
    >>> build_profile("C000000000007", {"cs:sms": "5:0"}, [], [], {}, [], 60000,
    ...     iso=lambda ms: ms)["consents"]["sms"]
    {'granted': False, 'at': 5}
    """
    iso = iso or _iso
    channels: dict[str, dict[str, Any]] = {}
    locations: dict[str, int] = {}
    categories: dict[str, float] = {}
    consents: dict[str, dict[str, Any]] = {}
    chosen_store = time_zone = None
    for field, raw in fields.items():
        if field == "hs":
            chosen_store = raw.partition(":")[2]
            continue
        if field == "tz":
            time_zone = raw.partition(":")[2]
            continue
        head, _, rest = field.partition(":")
        if head == "loc":
            locations[rest] = int(raw)
            continue
        if head == "cat":
            categories[rest] = float(raw)
            continue
        if head == "cs":
            ts, _, v = raw.partition(":")
            consents[rest] = {"granted": v == "1", "at": iso(int(ts))}
            continue
        value = int(raw)
        c = channels.get(head)
        if c is None:  # (not setdefault: its default would be built for every field)
            c = channels[head] = {
                **dict.fromkeys(COUNTERS.values(), 0),
                "spend_minor": {},
                "refund_minor": {},
                "first_seen": None,
                "last_seen": None,
                "last_order": None,
            }
        if rest in COUNTERS:
            c[COUNTERS[rest]] = value
        elif rest == "f":
            c["first_seen"] = value
        elif rest == "l":
            c["last_seen"] = value
        elif rest == "lo":
            c["last_order"] = value
        elif rest.startswith("s:"):
            c["spend_minor"][rest[2:]] = value
        elif rest.startswith("rf:"):
            c["refund_minor"][rest[3:]] = value
    firsts = [c["first_seen"] for c in channels.values() if c["first_seen"] is not None]
    lasts = [c["last_seen"] for c in channels.values() if c["last_seen"] is not None]
    last_orders = [c["last_order"] for c in channels.values() if c["last_order"] is not None]
    preferred = max(
        channels,
        key=lambda n: (
            channels[n]["orders"] + channels[n]["offers_redeemed"] + channels[n]["offer_responses"],
            channels[n]["events"],
            channels[n]["last_seen"] or 0,
            n,
        ),
        default=None,
    )
    for c in channels.values():
        for k in ("first_seen", "last_seen", "last_order"):
            c[k] = iso(c[k])
    clear = cart.pop("_clr", 0)
    entries = []
    for f, q in cart.items():
        sku, _, ts = f.rpartition("|")
        entries.append((sku, int(ts), q))
    spend: dict[str, int] = {}
    for c in channels.values():
        for cur, v in c["spend_minor"].items():
            spend[cur] = spend.get(cur, 0) + v
    orders = sum(c["orders"] for c in channels.values())
    main_currency = max(spend, key=lambda k: (spend[k], k), default=None)
    main_spend = spend[main_currency] if main_currency else 0
    scores = rfm(max(last_orders, default=None), orders, main_spend, as_of_ms)
    top = sorted(categories.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CATEGORIES]
    return {
        "customer_id": customer_id,
        "identifiers": identifiers,
        "first_seen": iso(min(firsts)) if firsts else None,
        "last_seen": iso(max(lasts)) if lasts else None,
        "orders": orders,
        "spend_minor": spend,
        "average_basket_minor": {k: round(v / orders) for k, v in spend.items()} if orders else {},
        "rfm": {k: scores[k] for k in ("recency", "frequency", "monetary", "score")},
        "segment": scores["segment"],
        "preferred_channel": preferred,
        "home_store": chosen_store
        or (min(locations, key=lambda k: (-locations[k], k)) if locations else None),
        "home_store_source": "chosen" if chosen_store else "purchases" if locations else None,
        "time_zone": time_zone,
        "favourite_categories": [
            {"category": k, "score": round(decayed(v, as_of_ms), 4)} for k, v in top
        ],
        "consents": {p: consents.get(p, {"granted": False, "at": None}) for p in CONSENT_PURPOSES},
        "channels": dict(sorted(channels.items())),
        "recently_viewed": [{"sku": s, "at": iso(ts)} for s, ts in views],
        "recently_bought": [{"sku": s, "at": iso(ts)} for s, ts in bought],
        "cart": cart_lines(entries, clear),
        "cart_cleared_at": iso(clear) if clear else None,
    }


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()

"""Per-customer profile effects of events, folded per batch into one delta per customer.

Every effect is commutative (sums, minima, maxima, top-N by event time), so the profile is
the same whatever order or batch boundaries the events arrive in. That is what lets
several workers, and replays, update Redis without coordination:

- per channel: orders, returns, items bought/returned (product lines), spend/refunds per
  currency in minor units, events seen, first and last seen;
- recently viewed SKUs: the ``RECENT_VIEWS`` most recent by event time;
- open cart: the sum of add (+q) and remove (-q) events per SKU whose event time is after
  the customer's last online (web/app) purchase; lines that sum to <= 0 are not shown.

>>> from operators.validate import Accepted
>>> from schemas.events import AddToCart
>>> ev = Accepted("t", 0, 1, "clickstream", "add_to_cart", "e1", 1000, "web",
...               "cookie:c1", {"cookie": "c1"}, AddToCart(
...                   event_id="e1", event_time=None, channel="web", session_id="s",
...                   sku="SKU1", quantity=2))
>>> d = aggregate([ev])["cookie:c1"]
>>> d.channels["web"].events, d.cart
(1, {('SKU1', 1000): 2})
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from msgspec import UNSET

from operators.validate import Accepted, line_amount

RECENT_VIEWS: Final = 20
#: Cart entries kept per customer; past this the oldest are dropped (a bot's cart).
CART_CAP: Final = 200
ONLINE_CHANNELS: Final = frozenset({"web", "app"})


class ChannelDelta:
    __slots__ = (
        "events",
        "first_ms",
        "items",
        "items_returned",
        "last_ms",
        "orders",
        "refund",
        "returns",
        "spend",
    )

    def __init__(self, ts_ms: int) -> None:
        self.orders = 0
        self.returns = 0
        self.items = 0
        self.items_returned = 0
        self.events = 0
        self.first_ms = ts_ms
        self.last_ms = ts_ms
        self.spend: dict[str, int] = {}
        self.refund: dict[str, int] = {}


class CustomerDelta:
    __slots__ = ("cart", "cart_clear_ms", "channels", "views")

    def __init__(self) -> None:
        self.channels: dict[str, ChannelDelta] = {}
        self.views: dict[str, int] = {}
        self.cart: dict[tuple[str, int], int] = {}
        self.cart_clear_ms = 0


def aggregate(events: Iterable[Accepted]) -> dict[str, CustomerDelta]:
    """Fold events into one delta per customer key; events without a customer are skipped."""
    out: dict[str, CustomerDelta] = {}
    for a in events:
        cid = a.customer
        if cid is None or a.channel is None:
            continue
        d = out.get(cid)
        if d is None:
            d = out[cid] = CustomerDelta()
        ts = a.ts_ms
        ch = d.channels.get(a.channel)
        if ch is None:
            ch = d.channels[a.channel] = ChannelDelta(ts)
        else:
            if ts < ch.first_ms:
                ch.first_ms = ts
            if ts > ch.last_ms:
                ch.last_ms = ts
        ch.events += 1
        et = a.event_type
        ev = a.event
        if et == "sale" or et == "return":
            amount = 0
            units = 0
            for line in ev.lines:
                amount += line_amount(line)
                if line.kind == "product" or line.kind is UNSET:
                    units += line.quantity
            if et == "sale":
                ch.orders += 1
                ch.items += units
                ch.spend[ev.currency] = ch.spend.get(ev.currency, 0) + amount
                if a.channel in ONLINE_CHANNELS and ts > d.cart_clear_ms:
                    d.cart_clear_ms = ts
            else:
                ch.returns += 1
                ch.items_returned += units
                ch.refund[ev.currency] = ch.refund.get(ev.currency, 0) + amount
        elif et == "product_view":
            if ts > d.views.get(ev.sku, -1):
                d.views[ev.sku] = ts
        elif et == "add_to_cart" or et == "remove_from_cart":
            k = (ev.sku, ts)
            q = ev.quantity if et == "add_to_cart" else -ev.quantity
            d.cart[k] = d.cart.get(k, 0) + q
    return out


def to_payload(deltas: dict[str, CustomerDelta]) -> list[list[Any]]:
    """Compact form of the deltas for the Redis script (see ``state/lua/apply_batch.lua``).

    One row per customer: ``[id, channels, views, cart, cart_clear_ms]`` with
    ``channels`` flattened to ``[name, orders, returns, items, items_returned, events,
    first_ms, last_ms, n_currencies, cur, spend, refund, ...]``.
    """
    rows: list[list[Any]] = []
    for cid, d in deltas.items():
        flat: list[Any] = []
        for name, c in d.channels.items():
            currencies = c.spend.keys() | c.refund.keys()
            flat += (
                name,
                c.orders,
                c.returns,
                c.items,
                c.items_returned,
                c.events,
                c.first_ms,
                c.last_ms,
                len(currencies),
            )
            for cur in sorted(currencies):
                flat += (cur, c.spend.get(cur, 0), c.refund.get(cur, 0))
        views = [x for sku, ts in d.views.items() for x in (sku, ts)]
        clear = d.cart_clear_ms
        cart = [x for (sku, ts), q in d.cart.items() if ts > clear and q != 0 for x in (sku, ts, q)]
        rows.append([cid, flat, views, cart, clear])
    return rows


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

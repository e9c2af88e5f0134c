"""A plain-Python reference of the profile semantics, written independently of operators/:
events are applied one by one to dicts, in whatever order they come."""

from __future__ import annotations

import hmac
import re
from datetime import UTC, datetime
from typing import Any

PRIORITY = [
    ("loyalty_id", "loyalty"),
    ("account_id", "account"),
    ("email", "email"),
    ("phone", "phone"),
    ("card_token", "card"),
    ("device_id", "device"),
    ("cookie_id", "cookie"),
]


def _mac(key: bytes, kind: bytes, value: str) -> str:
    return hmac.new(key, kind + b"\x00" + value.encode(), "sha256").hexdigest()[:32]


def customer_key(ev: dict[str, Any], key: bytes) -> str | None:
    ids = dict(ev.get("customer") or {})
    if "device_id" in ev and "device_id" not in ids:
        ids["device_id"] = ev["device_id"]
    for field, kind in PRIORITY:
        if field in ids:
            v = ids[field]
            if field == "email":
                v = _mac(key, b"email", v.strip().lower())
            elif field == "phone":
                v = _mac(key, b"phone", re.sub(r"[^0-9+]", "", v))
            return f"{kind}:{v}"
    return None


def _ms(ev: dict[str, Any]) -> int:
    return int(datetime.fromisoformat(ev["event_time"].replace("Z", "+00:00")).timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def build(events: list[dict[str, Any]], key: bytes) -> dict[str, dict[str, Any]]:
    """customer id -> profile, in the document format of `omnicanal profile`."""
    raw: dict[str, dict[str, Any]] = {}
    for ev in events:
        cid = customer_key(ev, key)
        if cid is None or "channel" not in ev:
            continue
        ts = _ms(ev)
        c = raw.setdefault(cid, {"ch": {}, "views": {}, "cart": [], "clear": 0})
        ch = c["ch"].setdefault(
            ev["channel"],
            {
                "orders": 0,
                "returns": 0,
                "items": 0,
                "items_returned": 0,
                "events": 0,
                "spend_minor": {},
                "refund_minor": {},
                "first": ts,
                "last": ts,
            },
        )
        ch["first"], ch["last"] = min(ch["first"], ts), max(ch["last"], ts)
        ch["events"] += 1
        t = ev["event_type"]
        if t in ("sale", "return"):
            amount = 0
            units = 0
            for ln in ev["lines"]:
                a = ln["quantity"] * ln["unit_price_minor"] - ln.get("discount_minor", 0)
                amount += -a if ln.get("kind") == "discount" else a
                if ln.get("kind", "product") == "product":
                    units += ln["quantity"]
            cur = ev["currency"]
            if t == "sale":
                ch["orders"] += 1
                ch["items"] += units
                ch["spend_minor"][cur] = ch["spend_minor"].get(cur, 0) + amount
                if ev["channel"] in ("web", "app"):
                    c["clear"] = max(c["clear"], ts)
            else:
                ch["returns"] += 1
                ch["items_returned"] += units
                ch["refund_minor"][cur] = ch["refund_minor"].get(cur, 0) + amount
        elif t == "product_view":
            c["views"][ev["sku"]] = max(c["views"].get(ev["sku"], 0), ts)
        elif t in ("add_to_cart", "remove_from_cart"):
            c["cart"].append(
                (ev["sku"], ts, ev["quantity"] if t == "add_to_cart" else -ev["quantity"])
            )
    out = {}
    for cid, c in raw.items():
        cart: dict[str, int] = {}
        for sku, ts, q in c["cart"]:
            if ts > c["clear"]:
                cart[sku] = cart.get(sku, 0) + q
        views = sorted(c["views"].items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:20]
        spend: dict[str, int] = {}
        channels = {}
        for name, ch in sorted(c["ch"].items()):
            for cur, v in ch["spend_minor"].items():
                spend[cur] = spend.get(cur, 0) + v
            channels[name] = {
                "orders": ch["orders"],
                "returns": ch["returns"],
                "items": ch["items"],
                "items_returned": ch["items_returned"],
                "events": ch["events"],
                "spend_minor": {k: v for k, v in ch["spend_minor"].items() if v},
                "refund_minor": {k: v for k, v in ch["refund_minor"].items() if v},
                "first_seen": _iso(ch["first"]),
                "last_seen": _iso(ch["last"]),
            }
        out[cid] = {
            "customer_id": cid,
            "first_seen": _iso(min(ch["first"] for ch in c["ch"].values())),
            "last_seen": _iso(max(ch["last"] for ch in c["ch"].values())),
            "orders": sum(ch["orders"] for ch in c["ch"].values()),
            "spend_minor": {k: v for k, v in spend.items() if v},
            "channels": channels,
            "recently_viewed": [{"sku": s, "at": _iso(ts)} for s, ts in views],
            "cart": {s: q for s, q in sorted(cart.items()) if q > 0},
            "cart_cleared_at": _iso(c["clear"]) if c["clear"] else None,
        }
    return out

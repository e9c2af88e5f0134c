"""A plain-Python reference of identity resolution and the profile, written independently
of operators/ and state/: identifiers are linked by a plain graph search over all events,
then each customer's events are applied one by one to dicts, in whatever order they come.
Decayed interests are computed directly (sum of weight x 2^-age/half-life), not in log
space as the pipeline stores them.

Profiles are keyed by the customer's set of identifiers (canonical ids depend on the order
customers were first seen, which is not what these tests check)."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

FIELDS = [
    ("loyalty_id", "loyalty"),
    ("account_id", "account"),
    ("email", "email"),
    ("phone", "phone"),
    ("card_token", "card"),
    ("device_id", "device"),
    ("cookie_id", "cookie"),
]
#: identifier types of one event beyond these counts link nothing by that type
LIMITS = {"loyalty": 1, "account": 1, "email": 3, "phone": 3, "card": 10, "device": 20}
HALF_LIFE_MS = 30 * 86_400_000
WEIGHTS = {"product_view": 1.0, "add_to_cart": 2.0, "sale": 4.0}
#: the profile's "now" in these tests (recency, decayed interests)
AS_OF_MS = 1_900_000_000_000

Key = frozenset[str]


def _mac(key: bytes, kind: bytes, value: str) -> str:
    return hmac.new(key, kind + b"\x00" + value.encode(), "sha256").hexdigest()[:32]


def identifiers(ev: dict[str, Any], key: bytes, blocked: Iterable[str] = ()) -> list[str]:
    """The event's usable identifiers as "type:value" (emails/phones hashed)."""
    ids = dict(ev.get("customer") or {})
    if "device_id" in ev and "device_id" not in ids:
        ids["device_id"] = ev["device_id"]
    out = []
    for field, kind in FIELDS:
        if field in ids:
            v = ids[field]
            if field == "email":
                v = _mac(key, b"email", v.strip().lower())
            elif field == "phone":
                v = _mac(key, b"phone", re.sub(r"[^0-9+]", "", v))
            out.append(f"{kind}:{v}")
    out = [i for i in out if i not in set(blocked)]
    per_type: dict[str, int] = {}
    for i in out:
        per_type[i.split(":")[0]] = per_type.get(i.split(":")[0], 0) + 1
    return [i for i in out if per_type[i.split(":")[0]] <= LIMITS.get(i.split(":")[0], 10**9)]


def customers(events: list[dict[str, Any]], key: bytes, blocked: Iterable[str] = ()) -> list[Key]:
    """Connected components of the identifiers seen together (graph search)."""
    adj: dict[str, set[str]] = {}
    for ev in events:
        ids = identifiers(ev, key, blocked)
        for i in ids:
            adj.setdefault(i, set()).update(ids)
    seen: set[str] = set()
    out = []
    for start in sorted(adj):
        if start in seen:
            continue
        comp: set[str] = set()
        todo = [start]
        while todo:
            x = todo.pop()
            if x not in comp:
                comp.add(x)
                todo.extend(adj[x])
        seen |= comp
        out.append(frozenset(comp))
    return out


def _ms(ev: dict[str, Any]) -> int:
    return int(datetime.fromisoformat(ev["event_time"].replace("Z", "+00:00")).timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def build(
    events: list[dict[str, Any]], key: bytes, blocked: Iterable[str] = (), as_of: int = AS_OF_MS
) -> dict[Key, dict[str, Any]]:
    """identifiers of each customer -> profile, in the document format of `omnicanal profile`
    (without ``customer_id``)."""
    comps = customers(events, key, blocked)
    owner = {i: c for c in comps for i in c}
    raw: dict[Key, dict[str, Any]] = {}
    for ev in events:
        ids = identifiers(ev, key, blocked)
        if not ids or "channel" not in ev:
            continue
        cust = owner[ids[0]]
        ts = _ms(ev)
        c = raw.setdefault(
            cust,
            {
                "ch": {},
                "views": {},
                "bought": {},
                "cart": [],
                "clear": 0,
                "cats": {},
                "locs": {},
                "consents": {},
                "home": None,
                "tz": None,
            },
        )
        ch = c["ch"].setdefault(
            ev["channel"],
            {
                "orders": 0,
                "returns": 0,
                "items": 0,
                "items_returned": 0,
                "events": 0,
                "offer_responses": 0,
                "offers_redeemed": 0,
                "spend_minor": {},
                "refund_minor": {},
                "first": ts,
                "last": ts,
                "last_order": None,
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
                    if t == "sale":
                        c["bought"][ln["sku"]] = max(c["bought"].get(ln["sku"], 0), ts)
                        if "category" in ln:
                            c["cats"].setdefault(ln["category"], []).append((4.0, ts))
            cur = ev["currency"]
            if t == "sale":
                ch["orders"] += 1
                ch["items"] += units
                ch["spend_minor"][cur] = ch["spend_minor"].get(cur, 0) + amount
                ch["last_order"] = max(ch["last_order"] or 0, ts)
                if ev["channel"] in ("web", "app"):
                    c["clear"] = max(c["clear"], ts)
                if ev["channel"] == "store" and "location_id" in ev:
                    c["locs"][ev["location_id"]] = c["locs"].get(ev["location_id"], 0) + 1
            else:
                ch["returns"] += 1
                ch["items_returned"] += units
                ch["refund_minor"][cur] = ch["refund_minor"].get(cur, 0) + amount
        elif t == "product_view":
            c["views"][ev["sku"]] = max(c["views"].get(ev["sku"], 0), ts)
            if "category" in ev:
                c["cats"].setdefault(ev["category"], []).append((1.0, ts))
        elif t in ("add_to_cart", "remove_from_cart"):
            c["cart"].append(
                (ev["sku"], ts, ev["quantity"] if t == "add_to_cart" else -ev["quantity"])
            )
            if t == "add_to_cart" and "category" in ev:
                c["cats"].setdefault(ev["category"], []).append((2.0, ts))
        elif t == "offer_clicked":
            ch["offer_responses"] += 1
        elif t == "offer_redeemed":
            ch["offers_redeemed"] += 1
        elif t == "consent_changed":
            for purpose, granted in ev["consents"].items():
                old = c["consents"].get(purpose)
                new = (ts, 1 if granted else 0)
                # latest wins; on a tie, the withdrawal
                if old is None or new[0] > old[0] or (new[0] == old[0] and new[1] < old[1]):
                    c["consents"][purpose] = new
            if "time_zone" in ev:
                new_tz = (ts, ev["time_zone"])
                old_tz = c["tz"]
                if (
                    old_tz is None
                    or new_tz[0] > old_tz[0]
                    or (new_tz[0] == old_tz[0] and new_tz[1] < old_tz[1])
                ):
                    c["tz"] = new_tz
        elif t == "home_store_chosen":
            new_home = (ts, ev["location_id"])
            if (
                c["home"] is None
                or new_home[0] > c["home"][0]
                or (new_home[0] == c["home"][0] and new_home[1] < c["home"][1])
            ):
                c["home"] = new_home
    return {cust: _document(cust, c, as_of) for cust, c in raw.items()}


def _document(cust: Key, c: dict[str, Any], as_of: int) -> dict[str, Any]:
    cart: dict[str, int] = {}
    for sku, ts, q in c["cart"]:
        if ts > c["clear"]:
            cart[sku] = cart.get(sku, 0) + q
    views = sorted(c["views"].items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:20]
    bought = sorted(c["bought"].items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:20]
    spend: dict[str, int] = {}
    channels = {}
    for name, ch in sorted(c["ch"].items()):
        for cur, v in ch["spend_minor"].items():
            spend[cur] = spend.get(cur, 0) + v
        channels[name] = {
            k: ch[k]
            for k in (
                "orders",
                "returns",
                "items",
                "items_returned",
                "events",
                "offer_responses",
                "offers_redeemed",
            )
        } | {
            "spend_minor": {k: v for k, v in ch["spend_minor"].items() if v},
            "refund_minor": {k: v for k, v in ch["refund_minor"].items() if v},
            "first_seen": _iso(ch["first"]),
            "last_seen": _iso(ch["last"]),
            "last_order": _iso(ch["last_order"]) if ch["last_order"] else None,
        }
    spend = {k: v for k, v in spend.items() if v}
    orders = sum(ch["orders"] for ch in c["ch"].values())
    last_order = max((ch["last_order"] for ch in c["ch"].values() if ch["last_order"]), default=0)
    main = max(spend.values(), default=0) if spend else 0
    if orders:
        days = (as_of - last_order) / 86_400_000
        r = 5 if days <= 30 else 4 if days <= 90 else 3 if days <= 180 else 2 if days <= 365 else 1
        f = (
            5
            if orders >= 20
            else 4
            if orders >= 10
            else 3
            if orders >= 5
            else 2
            if orders >= 2
            else 1
        )
        m = (
            5
            if main >= 200_000
            else 4
            if main >= 100_000
            else 3
            if main >= 30_000
            else 2
            if main >= 10_000
            else 1
        )
        segment = (
            "champion"
            if r >= 4 and f >= 4
            else "loyal"
            if r >= 3 and f >= 3
            else "new"
            if r >= 4
            else "at_risk"
            if r <= 2 and f >= 3
            else "hibernating"
            if r <= 2
            else "promising"
        )
        scores = {"recency": r, "frequency": f, "monetary": m, "score": f"{r}{f}{m}"}
    else:
        segment = "prospect"
        scores = {"recency": None, "frequency": 0, "monetary": None, "score": None}
    chs = c["ch"]
    preferred = max(
        chs,
        key=lambda n: (
            chs[n]["orders"] + chs[n]["offers_redeemed"] + chs[n]["offer_responses"],
            chs[n]["events"],
            chs[n]["last"],
            n,
        ),
    )
    interests = {
        cat: sum(w * 2.0 ** (-(as_of - ts) / HALF_LIFE_MS) for w, ts in hits)
        for cat, hits in c["cats"].items()
    }
    locs = c["locs"]
    home = c["home"][1] if c["home"] else None
    if home is None and locs:
        home = sorted(locs, key=lambda k: (-locs[k], k))[0]
    return {
        "identifiers": sorted(cust),
        "first_seen": _iso(min(ch["first"] for ch in chs.values())),
        "last_seen": _iso(max(ch["last"] for ch in chs.values())),
        "orders": orders,
        "spend_minor": spend,
        "average_basket_minor": {k: round(v / orders) for k, v in spend.items()} if orders else {},
        "rfm": scores,
        "segment": segment,
        "preferred_channel": preferred,
        "home_store": home,
        "home_store_source": "chosen" if c["home"] else "purchases" if locs else None,
        "time_zone": c["tz"][1] if c["tz"] else None,
        "favourite_categories": interests,  # compared by same_profile()
        "consents": {
            p: (
                {"granted": c["consents"][p][1] == 1, "at": _iso(c["consents"][p][0])}
                if p in c["consents"]
                else {"granted": False, "at": None}
            )
            for p in ("email", "sms", "push", "in_store")
        },
        "channels": channels,
        "recently_viewed": [{"sku": s, "at": _iso(ts)} for s, ts in views],
        "recently_bought": [{"sku": s, "at": _iso(ts)} for s, ts in bought],
        "cart": {s: q for s, q in sorted(cart.items()) if q > 0},
        "cart_cleared_at": _iso(c["clear"]) if c["clear"] else None,
    }


def by_identifiers(profiles: Iterable[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Stored profiles keyed like :func:`build`, without their canonical ids."""
    out = {}
    for p in profiles:
        q = {k: v for k, v in p.items() if k != "customer_id"}
        out[frozenset(p["identifiers"])] = q
    return out


def mismatches(got: dict[Key, dict[str, Any]], want: dict[Key, dict[str, Any]]) -> list[str]:
    """Differences between stored and reference profiles (empty: the same)."""
    problems = []
    if set(got) != set(want):
        problems.append(
            f"customers differ: {len(set(got) - set(want))} only stored, "
            f"{len(set(want) - set(got))} only in the reference"
        )
    for k in set(got) & set(want):
        g, w = dict(got[k]), dict(want[k])
        top, interests = g.pop("favourite_categories"), w.pop("favourite_categories")
        if g != w:
            diff = sorted(f for f in g.keys() | w.keys() if g.get(f) != w.get(f))
            problems.append(f"{sorted(k)[0]}: fields differ: {diff}")
        problems += _interest_problems(sorted(k)[0], top, interests)
    return problems


def _interest_problems(who: str, top: list[dict[str, Any]], want: dict[str, float]) -> list[str]:
    """The stored top categories must be a top-N of the reference scores, with its scores."""
    out = []
    shown = {t["category"]: t["score"] for t in top}
    if len(top) != min(5, len(want)):
        out.append(f"{who}: {len(top)} favourite categories, want {min(5, len(want))}")
    for cat, score in shown.items():
        if cat not in want or abs(want[cat] - score) > 1e-4 + 1e-9 * want[cat]:
            out.append(f"{who}: category {cat} score {score}, want {want.get(cat)}")
    left_out = [v for k, v in want.items() if k not in shown]
    if shown and left_out and max(left_out) > min(shown.values()) + 1e-4:
        out.append(f"{who}: a category with a higher score is not among the favourites")
    scores = [t["score"] for t in top]
    if scores != sorted(scores, reverse=True):
        out.append(f"{who}: favourite categories are not in descending order")
    return out

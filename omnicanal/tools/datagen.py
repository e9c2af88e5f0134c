"""Seeded, realistic omnichannel traffic, with a configurable share of bad inputs.

Customers browse anonymously (a cookie), log in, view products, fill and abandon carts,
buy on the web and in the app, buy in stores with a loyalty card (sometimes with a receipt
email), return items; stock snapshots, adjustments, price changes and offer feedback are
mixed in. The mix is clickstream-heavy, as in real retail (many views per purchase).

Each generated message says which contract it is for and, for a deliberately bad one,
which dead-letter reason it must get: tests and the demo check both.

>>> g = Generator(seed=7, customers=50, bad_share=0.0)
>>> msgs = list(g.messages(200))
>>> len(msgs), {m.expected_reason for m in msgs}
(200, {None})
>>> [m.value for m in Generator(seed=7, customers=50).messages(3)] == [
...     m.value for m in Generator(seed=7, customers=50).messages(3)]
True
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

FIRST_NAMES: Final = (
    "ana",
    "ben",
    "chloe",
    "david",
    "emma",
    "farid",
    "grace",
    "hugo",
    "ines",
    "jonas",
    "kofi",
    "lea",
    "marta",
    "noah",
    "olga",
    "pedro",
    "quinn",
    "rosa",
    "sami",
    "tara",
)
LAST_NAMES: Final = (
    "smith",
    "garcia",
    "muller",
    "rossi",
    "dubois",
    "nowak",
    "silva",
    "jensen",
    "kim",
    "okafor",
    "novak",
    "costa",
    "martin",
    "weber",
    "lopez",
    "ivanova",
)
CATEGORIES: Final = ("home", "kitchen", "garden", "toys", "fashion", "beauty", "sport", "books")
STORES: Final = tuple(f"store-{i:03d}" for i in range(1, 13))
#: customers' time zones, as their devices report them in consent events
TIME_ZONES: Final = ("Europe/London", "Europe/Madrid", "Europe/Berlin", "America/New_York")
#: Bad-input kinds and the dead-letter reason each must get.
BAD_KINDS: Final = {
    "truncated_json": "malformed_json",
    "nan": "malformed_json",
    "invalid_utf8": "invalid_utf8",
    "wrong_type": "wrong_type",
    "huge_number": "wrong_type",
    "null_field": "wrong_type",
    "deep_nesting": "wrong_type",
    "missing_field": "missing_field",
    "unknown_field": "unknown_field",
    "unknown_event_type": "unknown_event_type",
    "invalid_id": "invalid_value",
    "future_time": "timestamp_out_of_range",
    "ancient_time": "timestamp_out_of_range",
    "duplicate_key": "duplicate_key",
    "too_large": "too_large",
    "not_an_object": "not_an_object",
    "wrong_topic": "wrong_topic",
}


@dataclass(frozen=True, slots=True)
class Message:
    contract: str  # transaction | clickstream | inventory | offer_feedback | customer
    key: bytes
    value: bytes
    expected_reason: str | None = None


@dataclass(slots=True)
class _Customer:
    n: int
    account: str
    loyalty: str | None
    email: str
    phone: str | None
    cookie: str
    device: str
    home_store: str
    purchases: list[tuple[str, list[dict[str, Any]], str]]  # (order id, lines, channel)


class Generator:
    """Deterministic for a given seed and parameters."""

    def __init__(
        self,
        seed: int = 42,
        customers: int = 10_000,
        skus: int = 2_000,
        bad_share: float = 0.02,
        start: datetime | None = None,
        events_per_second: float = 50.0,
        currency: str = "GBP",
    ) -> None:
        if not 0.0 <= bad_share <= 1.0:
            raise ValueError("bad_share must be between 0 and 1")
        if customers < 1 or skus < 1:
            raise ValueError("customers and skus must be positive")
        self.rng = random.Random(seed)
        self.n_customers = customers
        self.bad_share = bad_share
        self.currency = currency
        self.now = start or datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        self.step = 1.0 / events_per_second
        self.skus = [f"SKU-{i:05d}" for i in range(skus)]
        self.prices = [int(self.rng.lognormvariate(6.5, 0.8)) + 49 for _ in range(skus)]
        self.categories = [CATEGORIES[i * 7 % len(CATEGORIES)] for i in range(skus)]
        self._customers: dict[int, _Customer] = {}
        self._seq = 0
        self._buf: list[Message] = []

    # ------------------------------------------------------------------ public
    def messages(self, count: int) -> Iterator[Message]:
        """Exactly ``count`` messages."""
        produced = 0
        while produced < count:
            if not self._buf:
                self._journey()
            msg = self._buf.pop(0)
            if self.bad_share and self.rng.random() < self.bad_share:
                msg = self._bad(msg)
            yield msg
            produced += 1

    # ------------------------------------------------------------------ helpers
    def _customer(self) -> _Customer:
        # A third of the traffic comes from regulars (the first 5% of customers, Pareto-
        # weighted), the rest from anyone.
        if self.rng.random() < 0.33:
            regulars = max(1, self.n_customers // 20)
            n = min(int(self.rng.paretovariate(1.5)) - 1, regulars - 1)
        else:
            n = self.rng.randrange(self.n_customers)
        c = self._customers.get(n)
        if c is None:
            r = random.Random(n * 1_000_003 + 17)
            first, last = r.choice(FIRST_NAMES), r.choice(LAST_NAMES)
            c = _Customer(
                n=n,
                account=f"A{n:07d}",
                loyalty=f"L{n:08d}" if r.random() < 0.7 else None,
                email=f"{first}.{last}{n}@example.com",
                phone=f"+44 7700 {n % 1_000_000:06d}" if r.random() < 0.5 else None,
                cookie=f"ck-{r.getrandbits(48):012x}",
                device=f"dev-{r.getrandbits(40):010x}",
                home_store=r.choice(STORES),
                purchases=[],
            )
            self._customers[n] = c
        return c

    def _tick(self) -> str:
        self.now += timedelta(seconds=self.rng.expovariate(1.0 / self.step))
        return self.now.isoformat().replace("+00:00", "Z")

    def _id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}-{self._seq:09d}"

    def _emit(self, contract: str, key: str, event: dict[str, Any]) -> None:
        self._buf.append(Message(contract, key.encode(), orjson.dumps(event)))

    def _sku(self) -> int:
        return (
            min(int(self.rng.paretovariate(1.1)) - 1, len(self.skus) - 1) * 13 % len(self.skus)
            if self.rng.random() < 0.6
            else self.rng.randrange(len(self.skus))
        )

    def _lines(self, k: int) -> list[dict[str, Any]]:
        lines = []
        for i in {self._sku() for _ in range(k)}:
            line: dict[str, Any] = {
                "sku": self.skus[i],
                "quantity": self.rng.choice((1, 1, 1, 2, 2, 3, 6)),
                "unit_price_minor": self.prices[i],
                "category": self.categories[i],
            }
            if self.rng.random() < 0.1:
                line["discount_minor"] = self.prices[i] * line["quantity"] // 10
            lines.append(line)
        return lines

    def _click(
        self,
        etype: str,
        channel: str,
        session: str,
        ids: dict[str, str] | None,
        device: str,
        **fields: Any,
    ) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "event_type": etype,
            "event_id": self._id("clk"),
            "event_time": self._tick(),
            "channel": channel,
            "session_id": session,
            "device_id": device,
            **fields,
        }
        if ids:
            ev["customer"] = ids
        return ev

    # ------------------------------------------------------------------ journeys
    def _journey(self) -> None:
        r = self.rng.random()
        if r < 0.40:
            self._web_session(logs_in=self.rng.random() < 0.5, buys=self.rng.random() < 0.45)
        elif r < 0.55:
            self._web_session(logs_in=True, buys=self.rng.random() < 0.6, channel="app")
        elif r < 0.80:
            self._store_purchase()
        elif r < 0.85:
            self._return()
        elif r < 0.95:
            self._inventory()
        elif r < 0.985:
            self._offer_feedback()
        else:
            self._consent()

    def _web_session(self, logs_in: bool, buys: bool, channel: str = "web") -> None:
        c = self._customer()
        session = self._id("sess")
        device = c.device if channel == "app" else f"web-{c.cookie}"
        anon = {"cookie_id": c.cookie}
        known = {"account_id": c.account, "email": c.email, "cookie_id": c.cookie}
        ids: dict[str, str] = known if channel == "app" else anon
        key = c.account if channel == "app" else c.cookie
        self._emit(
            "clickstream", key, self._click("page_view", channel, session, ids, device, url="/")
        )
        if self.rng.random() < 0.3:
            self._emit(
                "clickstream",
                key,
                self._click(
                    "search",
                    channel,
                    session,
                    ids,
                    device,
                    query=self.rng.choice(CATEGORIES)
                    + " "
                    + self.rng.choice(("gift", "sale", "new")),
                ),
            )
        viewed = [self._sku() for _ in range(self.rng.randint(1, 8))]
        for i in viewed:
            self._emit(
                "clickstream",
                key,
                self._click(
                    "product_view",
                    channel,
                    session,
                    ids,
                    device,
                    sku=self.skus[i],
                    category=self.categories[i],
                ),
            )
        if logs_in and channel == "web":
            ids, key = known, c.account
            self._emit("clickstream", key, self._click("login", channel, session, ids, device))
        carted: dict[int, int] = {}
        if self.rng.random() < 0.55:
            for i in viewed[: self.rng.randint(1, 3)]:
                q = self.rng.choice((1, 1, 2))
                carted[i] = carted.get(i, 0) + q
                self._emit(
                    "clickstream",
                    key,
                    self._click(
                        "add_to_cart",
                        channel,
                        session,
                        ids,
                        device,
                        sku=self.skus[i],
                        quantity=q,
                        category=self.categories[i],
                    ),
                )
            if len(carted) > 1 and self.rng.random() < 0.2:
                i = next(iter(carted))
                self._emit(
                    "clickstream",
                    key,
                    self._click(
                        "remove_from_cart",
                        channel,
                        session,
                        ids,
                        device,
                        sku=self.skus[i],
                        quantity=carted.pop(i),
                    ),
                )
        if carted and buys and ids is known:
            self._emit(
                "clickstream", key, self._click("checkout_started", channel, session, ids, device)
            )
            lines = [
                {
                    "sku": self.skus[i],
                    "quantity": q,
                    "unit_price_minor": self.prices[i],
                    "category": self.categories[i],
                }
                for i, q in carted.items()
            ]
            if self.rng.random() < 0.5:
                lines.append(
                    {"sku": "POST", "quantity": 1, "unit_price_minor": 395, "kind": "shipping"}
                )
            order = self._id("ord")
            sale: dict[str, Any] = {
                "event_type": "sale",
                "event_id": self._id("txn"),
                "event_time": self._tick(),
                "channel": channel,
                "order_id": order,
                "currency": self.currency,
                "customer": {"account_id": c.account, "email": c.email},
                "lines": lines,
            }
            if self.rng.random() < 0.1:
                sale["coupon_codes"] = ["WELCOME10"]
            self._emit("transaction", c.account, sale)
            c.purchases.append((order, lines, channel))

    def _store_purchase(self) -> None:
        c = self._customer()
        anonymous = self.rng.random() < 0.15
        ids: dict[str, str] = {}
        if not anonymous:
            if c.loyalty:
                ids["loyalty_id"] = c.loyalty
            if self.rng.random() < 0.3 or not c.loyalty:
                ids["email"] = c.email  # e-receipt
            if c.phone and self.rng.random() < 0.2:
                ids["phone"] = c.phone
        order = self._id("rcpt")
        lines = self._lines(self.rng.randint(1, 6))
        sale: dict[str, Any] = {
            "event_type": "sale",
            "event_id": self._id("txn"),
            "event_time": self._tick(),
            "channel": "store",
            "location_id": c.home_store if self.rng.random() < 0.8 else self.rng.choice(STORES),
            "order_id": order,
            "currency": self.currency,
            "lines": lines,
        }
        if ids:
            sale["customer"] = ids
            c.purchases.append((order, lines, "store"))
        self._emit("transaction", c.loyalty or c.account, sale)

    def _return(self) -> None:
        c = self._customer()
        if not c.purchases:
            return self._store_purchase()
        order, lines, channel = self.rng.choice(c.purchases)
        back = [ln for ln in lines if ln.get("kind") is None][:1]
        if not back:
            return None
        ids = (
            {"loyalty_id": c.loyalty}
            if channel == "store" and c.loyalty
            else {"account_id": c.account}
        )
        self._emit(
            "transaction",
            c.loyalty or c.account,
            {
                "event_type": "return",
                "event_id": self._id("txn"),
                "event_time": self._tick(),
                "channel": "store" if self.rng.random() < 0.6 else channel,
                "location_id": c.home_store,
                "original_order_id": order,
                "currency": self.currency,
                "customer": ids,
                "lines": back,
            },
        )
        return None

    def _inventory(self) -> None:
        i = self._sku()
        # "online": the allocation reserved for online (OMNICANAL_STOCK_ONLINE_LOCATIONS)
        store = self.rng.choice((*STORES, "online"))
        r = self.rng.random()
        ev: dict[str, Any] = {
            "event_id": self._id("inv"),
            "event_time": self._tick(),
            "sku": self.skus[i],
        }
        if r < 0.4:
            ev |= {
                "event_type": "stock_snapshot",
                "location_id": store,
                "on_hand": self.rng.randint(0, 200),
            }
        elif r < 0.8:
            ev |= {
                "event_type": "stock_adjustment",
                "location_id": store,
                "delta": self.rng.choice((24, 48, -1, -2)),
                "reason": self.rng.choice(("delivery", "damage", "shrinkage")),
            }
        else:
            ev |= {
                "event_type": "price_update",
                "channel": self.rng.choice(("web", "store")),
                "price_minor": self.prices[i],
                "currency": self.currency,
            }
        self._emit("inventory", self.skus[i], ev)

    def _offer_feedback(self) -> None:
        c = self._customer()
        ids = {"loyalty_id": c.loyalty} if c.loyalty else {"account_id": c.account}
        channel = self.rng.choice(("email", "sms", "app", "web"))
        offer = f"offer-{self.rng.randrange(50):03d}"
        for etype in ("offer_delivered", "offer_opened", "offer_clicked", "offer_redeemed"):
            self._emit(
                "offer_feedback",
                c.loyalty or c.account,
                {
                    "event_type": etype,
                    "event_id": self._id("ofb"),
                    "event_time": self._tick(),
                    "offer_id": offer,
                    "channel": channel,
                    "customer": ids,
                },
            )
            if self.rng.random() < 0.5:
                break

    def _consent(self) -> None:
        c = self._customer()
        channel = self.rng.choice(("web", "app", "store", "email", "sms"))
        ids = (
            {"loyalty_id": c.loyalty}
            if channel == "store" and c.loyalty
            else {
                "account_id": c.account,
                "email": c.email,
            }
        )
        purposes = self.rng.sample(("email", "sms", "push", "in_store"), self.rng.randint(1, 3))
        self._emit(
            "customer",
            c.loyalty or c.account,
            {
                "event_type": "consent_changed",
                "event_id": self._id("cns"),
                "event_time": self._tick(),
                "channel": channel,
                "customer": ids,
                "consents": {p: self.rng.random() < 0.7 for p in purposes},
                # the app and the web know the device's zone (no random draw: the stream
                # of every other event stays the same)
                **(
                    {"time_zone": TIME_ZONES[zlib.crc32(c.account.encode()) % len(TIME_ZONES)]}
                    if channel in ("app", "web")
                    else {}
                ),
            },
        )

    # ------------------------------------------------------------------ bad inputs
    def _bad(self, good: Message) -> Message:
        kind = self.rng.choice(tuple(BAD_KINDS))
        ev = orjson.loads(good.value)
        v: bytes
        if kind == "truncated_json":
            v = good.value[: max(1, len(good.value) // 2)]
        elif kind == "nan":
            v = orjson.dumps(ev).replace(b'"event_time":', b'"event_time":NaN,"x":', 1)
        elif kind == "invalid_utf8":
            v = good.value.replace(b'"event_id":"', b'"event_id":"\xff\xfe', 1)
        elif kind == "wrong_type":
            ev["event_id"] = 12345
            v = orjson.dumps(ev)
        elif kind == "huge_number":
            ev["event_id"] = "x"
            v = orjson.dumps(ev)[:-1] + b',"schema_version":' + b"9" * 5000 + b"}"
        elif kind == "null_field":
            ev["event_id"] = None
            v = orjson.dumps(ev)
        elif kind == "deep_nesting":
            v = orjson.dumps({k: x for k, x in ev.items() if k != "event_id"})[:-1] + (
                b',"event_id":' + b"[" * 5000 + b"]" * 5000 + b"}"
            )
        elif kind == "missing_field":
            ev.pop("event_id")
            v = orjson.dumps(ev)
        elif kind == "unknown_field":
            ev["email_address"] = "someone@example.com"
            v = orjson.dumps(ev)
        elif kind == "unknown_event_type":
            ev["event_type"] = "teleport"
            v = orjson.dumps(ev)
        elif kind == "invalid_id":
            ev["event_id"] = ""
            v = orjson.dumps(ev)
        elif kind == "future_time":
            ev["event_time"] = "2199-01-01T00:00:00Z"
            v = orjson.dumps(ev)
        elif kind == "ancient_time":
            ev["event_time"] = "1970-01-01T00:00:01Z"
            v = orjson.dumps(ev)
        elif kind == "duplicate_key":
            v = good.value[:-1] + b',"event_id":"other"}'
        elif kind == "too_large":
            v = good.value[:-1] + b',"pad":"' + b"x" * 270_000 + b'"}'
        elif kind == "not_an_object":
            v = b"[" + good.value + b"]"
        else:  # wrong_topic: a valid event of another contract
            other = "clickstream" if good.contract != "clickstream" else "transaction"
            return Message(other, good.key, good.value, "wrong_topic")
        return Message(good.contract, good.key, v, BAD_KINDS[kind])

"""The coupon ledger in Redis (``state/lua/coupons.lua``): a code is issued once and redeemed
once, whichever channel it comes from, and every refusal has a reason.

Codes are checked offline first (:class:`operators.coupons.CouponCodec`: typing errors,
forgeries, expiry); only well-formed, signed codes reach Redis, one call per batch.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from typing import Any, Final, Literal, cast, get_args

import orjson
import redis

from operators.coupons import EPOCH, CouponCodec, Refused, day_of

_LUA = (importlib.resources.files("state") / "lua" / "coupons.lua").read_text()
#: How long a code's record outlives its expiry (so that late redemptions are refused as
#: expired, and audits find it), in days.
RETENTION_DAYS: Final = 90

IssueOutcome = Literal["issued", "same", "taken"]
RedeemOutcome = Literal[
    "redeemed",
    "duplicate",
    "unknown",
    "already_redeemed",
    "wrong_customer",
    "expired",
    "malformed",
    "mistyped",
    "bad_signature",
]

REDEEM_OUTCOMES: Final[tuple[str, ...]] = get_args(RedeemOutcome)


class RedeemResults(list[RedeemOutcome]):
    """The outcome of each redemption, in order, and :attr:`campaigns`: the campaign of
    each code ("" when the code is not known)."""

    campaigns: list[str]


@dataclass(frozen=True)
class Issue:
    offer_id: str
    customer_id: str
    campaign: str
    expiry_day: int


@dataclass(frozen=True)
class Redemption:
    code: str
    #: the redeeming customer's id, "" when the channel does not know them (a till without a
    #: loyalty card): the code alone then proves the right
    customer_id: str
    order_id: str
    channel: str
    ts_ms: int
    #: where the redemption came from (``topic:partition:offset``), kept with refusals
    source: str = ""
    #: ids merged into the customer since (a code issued to one of them is theirs too)
    merged_ids: tuple[str, ...] = ()


class CouponLedger:
    """Issues codes for offers and redeems them, atomically, in batches."""

    MAX_SALT = 8

    def __init__(self, client: redis.Redis, prefix: str, codec: CouponCodec) -> None:
        self.r = client
        self.prefix = prefix
        self.codec = codec
        self._script = client.register_script(_LUA)

    #: items per script call (the script refuses more than 10,000): a batch of sales each
    #: with 20 codes is several calls, in order, so later items still see earlier ones
    CHUNK = 5000

    def _call(self, mode: str, items: list[list[object]]) -> list[str]:
        res: list[str] = []
        for i in range(0, len(items), self.CHUNK):
            chunk = items[i : i + self.CHUNK]
            out = self._script(args=[self.prefix, mode, orjson.dumps(chunk)])
            res.extend(x.decode() if isinstance(x, bytes) else str(x) for x in out)
        return res

    def issue(self, offers: list[Issue], now_ms: int) -> list[str]:
        """The code of each offer, issued in Redis (a replay gets the same codes back)."""
        codes: list[str | None] = [None] * len(offers)
        salts = [0] * len(offers)
        todo = list(range(len(offers)))
        while todo:
            items: list[list[object]] = []
            for i in todo:
                o = offers[i]
                code = self.codec.issue(o.offer_id, o.expiry_day, salts[i])
                expire_at = int(EPOCH.timestamp()) + (o.expiry_day + 1 + RETENTION_DAYS) * 86_400
                items.append(
                    [code, o.offer_id, o.customer_id, o.campaign, o.expiry_day, expire_at, now_ms]
                )
            again = []
            for i, item, res in zip(todo, items, self._call("issue", items), strict=True):
                if res == "taken":  # another offer's code: the next salt, the same on replays
                    salts[i] += 1
                    if salts[i] > self.MAX_SALT:
                        raise RuntimeError(f"coupon codes for offer {offers[i].offer_id} taken")
                    again.append(i)
                else:
                    codes[i] = str(item[0])
            todo = again
        return [c for c in codes if c is not None]

    def redeem(self, redemptions: list[Redemption]) -> RedeemResults:
        """The outcome of each redemption, in order (the same code twice: the second sees
        the first), with each code's campaign."""
        out: list[RedeemOutcome | None] = [None] * len(redemptions)
        campaigns = [""] * len(redemptions)
        items: list[list[object]] = []
        where: list[int] = []
        for i, r in enumerate(redemptions):
            checked = self.codec.verify(r.code, today=0)  # expiry: the ledger's, below
            if isinstance(checked, Refused):
                out[i] = checked.reason
                continue
            today = day_of(r.ts_ms)
            items.append(
                [
                    checked.code,
                    r.customer_id,
                    r.order_id,
                    r.channel,
                    today,
                    r.ts_ms,
                    r.source,
                    list(r.merged_ids),
                ]
            )
            where.append(i)
        if items:
            for i, res in zip(where, self._call("redeem", items), strict=True):
                outcome, _, campaigns[i] = res.partition("\t")
                out[i] = cast(RedeemOutcome, outcome)
        results = RedeemResults(o for o in out if o is not None)
        results.campaigns = campaigns
        return results

    def lookup(self, code: str) -> dict[str, str] | None:
        """A code's record (``omnicanal coupons show``), None if unknown."""
        checked = self.codec.verify(code, today=0)
        if isinstance(checked, Refused):
            return None
        raw: dict[Any, Any] = self.r.hgetall(f"{self.prefix}cp:{checked.code}")
        return {_s(k): _s(v) for k, v in raw.items()} or None


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v

"""The registry of profile fields: every field of a customer's profile hash
(``<prefix>p:<customer id>``) with the rule that combines two values of it.

The rule is what makes profiles order-independent and mergeable: a batch's delta and the
stored value combine by it (``state/lua/apply_batch.lua``), and so do two customers' fields
when their identities merge. The batch fold (:mod:`operators.profile`) groups its fields by
these rules, the profile document (:func:`operators.profile.build_profile`) names counters
from it, and the Lua merge receives :func:`lua_rules` with the script, so a field is declared
here once. A merge that would move a stored field no rule matches is refused by the script
before its first write (the event that links the two customers is dead-lettered as
``state_rejected``): such a field is never combined by a guess.

>>> rule_of("web:o").combine, rule_of("store:s:GBP").combine, rule_of("web:lo").combine
('sum', 'sum', 'max')
>>> rule_of("loc:f").combine, rule_of("cs:sms").combine, rule_of("hs").name
('sum', 'latest', 'home_store')
>>> combine("log_add", 3.0, 3.0), combine("latest", "5:1", "7:0"), combine("min", 4, 2)
(4.0, '7:0', 2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Literal

Combine = Literal["sum", "min", "max", "log_add", "latest"]


@dataclass(frozen=True)
class FieldRule:
    """A family of profile-hash fields and how two values of one combine."""

    #: the field's shape: ``{channel}`` and ``{…}`` parts vary, the rest is literal
    pattern: str
    combine: Combine
    #: the name in the profile document (counters) or in docs
    name: str
    meaning: str

    @property
    def head(self) -> str:
        """The literal first part (``loc``, ``cat``, ``cs``, ``hs``), or the code after
        ``{channel}:`` for per-channel fields (``o``, ``s``…)."""
        parts = self.pattern.split(":")
        return parts[1] if parts[0] == "{channel}" else parts[0]

    @property
    def per_channel(self) -> bool:
        return self.pattern.startswith("{channel}:")


PROFILE_FIELDS: Final[tuple[FieldRule, ...]] = (
    FieldRule("{channel}:e", "sum", "events", "events in the channel"),
    FieldRule("{channel}:o", "sum", "orders", "sales (receipts and orders)"),
    FieldRule("{channel}:r", "sum", "returns", "returns"),
    FieldRule("{channel}:i", "sum", "items", "units bought on product lines"),
    FieldRule("{channel}:ir", "sum", "items_returned", "units returned on product lines"),
    FieldRule("{channel}:rsp", "sum", "offer_responses", "offers clicked"),
    FieldRule("{channel}:red", "sum", "offers_redeemed", "offers redeemed"),
    FieldRule("{channel}:s:{currency}", "sum", "spend_minor", "spend in minor units"),
    FieldRule("{channel}:rf:{currency}", "sum", "refund_minor", "refunds in minor units"),
    FieldRule("{channel}:f", "min", "first_seen", "first event time (ms)"),
    FieldRule("{channel}:l", "max", "last_seen", "last event time (ms)"),
    FieldRule("{channel}:lo", "max", "last_order", "last sale time (ms)"),
    FieldRule("loc:{location}", "sum", "store_visits", "store sales per location"),
    FieldRule("cat:{category}", "log_add", "categories", "decayed interest (log2, epoch)"),
    FieldRule("cs:{purpose}", "latest", "consents", '"<event ms>:<1|0>" per purpose'),
    FieldRule("hs", "latest", "home_store", '"<event ms>:<location>" chosen home store'),
    FieldRule("tz", "latest", "time_zone", '"<event ms>:<IANA zone>" the customer\'s time zone'),
)

#: fields with a literal first part, by it; per-channel fields by their code
_BY_HEAD: Final = {r.head: r for r in PROFILE_FIELDS if not r.per_channel}
_BY_CODE: Final = {r.head: r for r in PROFILE_FIELDS if r.per_channel}
#: per-channel counters: code -> name in the profile document
COUNTERS: Final = {
    r.head: r.name
    for r in PROFILE_FIELDS
    if r.per_channel and r.pattern.count(":") == 1 and r.combine == "sum"
}


def rule_of(field: str) -> FieldRule:
    """The rule of a stored field; :class:`KeyError` for a field no rule matches."""
    head, _, rest = field.partition(":")
    rule = _BY_HEAD.get(head)
    if rule is None and rest:
        rule = _BY_CODE.get(rest.partition(":")[0])
    if rule is None:
        raise KeyError(f"no profile field rule matches {field!r}")
    return rule


def combine(how: Combine, a: Any, b: Any) -> Any:
    """Two values of a field combined by its rule (``latest``: ``"<ms>:<value>"`` strings;
    the later time wins, a tie the smaller value: a withdrawn consent)."""
    if how == "sum":
        return a + b
    if how == "min":
        return min(a, b)
    if how == "max":
        return max(a, b)
    if how == "log_add":
        hi, lo = (a, b) if a >= b else (b, a)
        return hi + math.log2(1.0 + 2.0 ** (lo - hi))
    ta, _, va = a.partition(":")
    tb, _, vb = b.partition(":")
    if int(ta) != int(tb):
        return a if int(ta) > int(tb) else b
    return a if va <= vb else b


def lua_rules() -> str:
    """The rules as a Lua table constructor, for the batch script's merge:
    ``{head = {...}, code = {...}}``.

    >>> lua_rules()[:40]
    "{head={loc='sum',cat='log_add',cs='lates"
    """

    def table(rules: dict[str, FieldRule]) -> str:
        return "{" + ",".join(f"{k}='{r.combine}'" for k, r in rules.items()) + "}"

    return f"{{head={table(_BY_HEAD)},code={table(_BY_CODE)}}}"

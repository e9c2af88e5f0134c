"""A worker's batch as one plan for Redis: linked components, each with its profile delta.

The sink hands the plan to one Lua call (``state/lua/apply_batch.lua``) that resolves every
component to its canonical customer (creating or merging customers), applies the deltas and
advances the offsets atomically. Everything here is pure:

- events of erased customers older than their erasure are dropped (:func:`suppress`);
- events are linked into components (:func:`operators.identity.link_batch`);
- a component refused as runaway here, or refused by Redis in an earlier attempt
  (``split``), is applied unlinked: each event counts for the customer of its strongest
  identifier, and the refusal is recorded with the batch.

>>> from operators.identity import IdentityRules
>>> from schemas.envelope import Accepted
>>> from schemas.events import Login
>>> def login(off, ids):
...     return Accepted("t", 0, off, "clickstream", "login", f"e{off}", 1000, "web", None,
...                     ids, Login(event_id="e", event_time=None, channel="web",
...                                session_id="s"))
>>> plan = plan_batch([login(1, {"cookie": "c1"}), login(2, {"cookie": "c1", "account": "A"})],
...                   IdentityRules())
>>> [(r[0], r[1], r[2]) for r in plan.rows]
[(['account:A', 'cookie:c1'], 1, 't:0:2 e2')]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from operators.identity import Component, IdentityRules, link_batch, strength
from operators.profile import CustomerDelta, fold, to_row
from schemas.envelope import Accepted

#: Identifiers quoted in one refusal record (a runaway component can hold thousands).
REFUSAL_IDENTIFIERS = 20


@dataclass
class BatchPlan:
    #: one row per component: [identifiers (strongest first), link 0|1, why, *delta row]
    rows: list[list[Any]] = field(default_factory=list)
    #: component key (strongest identifier) of each row, to map Redis refusals back
    keys: list[str] = field(default_factory=list)
    #: [reason, identifiers, why] to record with the batch
    refusals: list[list[str]] = field(default_factory=list)
    #: customer-facing events with no usable identifier, per topic: counted, not profiled
    anonymous: dict[str, int] = field(default_factory=dict)


def plan_batch(
    events: Sequence[Accepted], rules: IdentityRules, split: Mapping[str, str] | None = None
) -> BatchPlan:
    """Group ``events`` into components and fold each into one delta row.

    ``split`` maps component keys that Redis refused (per-type limits against the stored
    customers) to the reason; those components are applied unlinked.
    """
    split = split or {}
    links = link_batch([a.ids for a in events], rules)
    plan = BatchPlan()
    for i in links.anonymous:
        a = events[i]
        if a.contract != "inventory":
            plan.anonymous[a.topic] = plan.anonymous.get(a.topic, 0) + 1
    for comp in links.components:
        idents = (
            list(comp.identifiers)
            if len(comp.identifiers) == 1
            else sorted(comp.identifiers, key=strength)
        )
        reason = split.get(idents[0]) if split else None
        if reason is None:
            plan.rows.append(
                [idents, 1, _why(events, comp, links.usable), *to_row(_fold(events, comp.events))]
            )
            plan.keys.append(idents[0])
        else:
            _unlinked(plan, events, comp, links.usable, reason)
    for comp in links.runaway:
        _unlinked(plan, events, comp, links.usable, "runaway")
    return plan


def suppress(events: Sequence[Accepted], erased: Mapping[str, int]) -> tuple[list[Accepted], int]:
    """Drop events that carry an erased identifier and are not newer than its erasure, so
    a replay cannot bring an erased customer back. Returns (kept, dropped count). "Newer"
    is judged on the trusted event time (``eff_ms``): a clock running ahead cannot bring
    an erased person back either.

    >>> from schemas.envelope import Accepted
    >>> def ev(ts, ids):
    ...     return Accepted("t", 0, 0, "c", "login", "e", ts, "web", None, ids, None)
    >>> kept, n = suppress([ev(5, {"cookie": "x"}), ev(50, {"cookie": "x"}), ev(5, {})],
    ...                    {"cookie:x": 10})
    >>> [a.ts_ms for a in kept], n
    ([50, 5], 1)

    A clock far ahead does not make an event newer than the erasure:

    >>> ahead = ev(10**12, {"cookie": "x"}); ahead.eff_ms = 8
    >>> suppress([ahead], {"cookie:x": 10})
    ([], 1)
    """
    if not erased:
        return list(events), 0
    kept = []
    for a in events:
        ts = a.eff_ms or a.ts_ms
        if any(erased.get(f"{k}:{v}", -1) >= ts for k, v in a.ids.items()):
            continue
        kept.append(a)
    return kept, len(events) - len(kept)


def _fold(events: Sequence[Accepted], idx: list[int]) -> CustomerDelta:
    return fold(events[i] for i in idx)


def _why(events: Sequence[Accepted], comp: Component, usable: list[list[str]]) -> str:
    """The source position and id of the first event that links two identifiers."""
    first = next((i for i in comp.events if len(usable[i]) > 1), comp.events[0])
    a = events[first]
    return f"{a.topic}:{a.partition}:{a.offset} {a.event_id}"


def _unlinked(
    plan: BatchPlan,
    events: Sequence[Accepted],
    comp: Component,
    usable: list[list[str]],
    reason: str,
) -> None:
    idents = sorted(comp.identifiers, key=strength)
    quoted = " ".join(idents[:REFUSAL_IDENTIFIERS])
    if len(idents) > REFUSAL_IDENTIFIERS:
        quoted += f" (+{len(idents) - REFUSAL_IDENTIFIERS} more)"
    plan.refusals.append([reason, quoted, _why(events, comp, usable)])
    groups: dict[str, list[int]] = {}
    for i in comp.events:
        groups.setdefault(usable[i][0], []).append(i)
    for ident, idx in groups.items():
        plan.rows.append([[ident], 0, "", *to_row(_fold(events, idx))])
        plan.keys.append(ident)

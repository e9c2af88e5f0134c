"""Identity rules and batch-local linking: the pure half of identity resolution.

An event that carries two or more identifiers (a web login: cookie + account; a store
receipt: loyalty card + email) links them. Before anything reaches the identity graph in
Redis, a batch's events are grouped into *components*: events whose identifiers are
connected, directly or through other events of the batch. Each component then needs one
resolution in Redis, however many events it holds.

Guard rails, applied here before any link is made:

- **blocked values** (shared test emails, "0000" cards, the store's generic card) never
  link anyone: they are dropped from the event's identifiers;
- **per-type limits**: how many identifiers of each type one customer may have (one
  loyalty card, one account, ...). They are enforced against the stored customers when a
  component is resolved in Redis; a type limited to 0 never links anyone;
- **runaway components**: a component with more identifiers than ``max_component`` is
  refused: :func:`link_batch` returns it apart (``runaway``) so the caller counts it and
  applies its events unlinked, each under its own strongest identifier.

>>> rules = IdentityRules(blocked={"email:" + "0" * 32})
>>> events = [
...     {"cookie": "c1"},                       # anonymous browsing
...     {"cookie": "c1", "account": "A1"},      # login links cookie and account
...     {"loyalty": "L1", "account": "A1"},     # store purchase with card and account
...     {"loyalty": "L9"},                      # somebody else
... ]
>>> comps = link_batch(events, rules)
>>> [sorted(c.events) for c in comps.components]
[[0, 1, 2], [3]]
>>> comps.components[0].key
'loyalty:L1'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from operators.privacy import PiiHasher
from schemas.envelope import ID_PRIORITY

#: How many identifiers of each type one customer may have (guard rail for linking).
DEFAULT_LIMITS: Final[Mapping[str, int]] = {
    "loyalty": 1,
    "account": 1,
    "email": 3,
    "phone": 3,
    "card": 10,
    "device": 20,
    "cookie": 50,
}
_RANK: Final = {kind: i for i, kind in enumerate(ID_PRIORITY)}


@dataclass(frozen=True)
class IdentityRules:
    """Which identifiers may link customers. Values are ``"<type>:<value>"`` strings."""

    blocked: frozenset[str] | set[str] = frozenset()
    limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    max_component: int = 200


def rules_from_config(
    blocked: Iterable[str],
    limits: Mapping[str, int],
    max_component: int,
    hasher: PiiHasher,
) -> IdentityRules:
    """Rules from settings: blocked values as ``type:value`` with emails and phones in clear
    (hashed here, as the events' are), and limits that override :data:`DEFAULT_LIMITS`.

    >>> h = PiiHasher(b"k" * 16)
    >>> r = rules_from_config(["card:0000", "email:Test@Shop.com"], {"cookie": 10}, 50, h)
    >>> sorted(r.blocked)[0], ("email:" + h.email("test@shop.com")) in r.blocked
    ('card:0000', True)
    >>> r.limits["cookie"], r.limits["loyalty"]
    (10, 1)
    """
    out = set()
    for item in blocked:
        kind, sep, value = item.partition(":")
        if not sep or not value or kind not in _RANK:
            raise ValueError(
                f"blocked identifier {item!r} must be '<type>:<value>' with type one of "
                f"{', '.join(ID_PRIORITY)}"
            )
        if kind == "email":
            value = hasher.email(value)
        elif kind == "phone":
            value = hasher.phone(value)
        out.add(f"{kind}:{value}")
    unknown = set(limits) - set(_RANK)
    if unknown:
        raise ValueError(f"identity limits for unknown types {sorted(unknown)}")
    return IdentityRules(frozenset(out), {**DEFAULT_LIMITS, **limits}, max_component)


def strength(identifier: str) -> tuple[int, str]:
    """Sort key: stronger identifier types first (loyalty, account, email, ...), then value.

    >>> sorted(["cookie:z", "loyalty:b", "email:a"], key=strength)
    ['loyalty:b', 'email:a', 'cookie:z']
    """
    kind, _, value = identifier.partition(":")
    return (_RANK.get(kind, len(_RANK)), value)


@dataclass
class Component:
    """Events of one batch connected by shared identifiers."""

    identifiers: set[str] = field(default_factory=set)
    events: list[int] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The strongest identifier: a stable name for the component within the batch."""
        return min(self.identifiers, key=strength)


@dataclass
class BatchLinks:
    components: list[Component]
    #: components refused because they grew past ``max_component`` identifiers
    runaway: list[Component]
    #: events with no usable identifier (anonymous), by index
    anonymous: list[int]
    #: each event's identifiers that may link, strongest first
    usable: list[list[str]]


def link_batch(events: Sequence[Mapping[str, str]], rules: IdentityRules) -> BatchLinks:
    """Group events (their identifier maps, one value per type) into linked components.
    Pure and deterministic: components come out in the order of their first event, and
    each event's usable identifiers strongest first."""
    blocked = rules.blocked
    never = {k for k, n in rules.limits.items() if n < 1}
    rank = _RANK
    last = len(rank)
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    usable: list[list[str]] = []
    orders: dict[tuple[str, ...], list[str]] = {}  # the few distinct type sets, ranked
    for ids in events:
        types = tuple(ids)
        ranked = orders.get(types)
        if ranked is None:
            ranked = orders[types] = sorted(
                (k for k in types if k not in never), key=lambda k: (rank.get(k, last), k)
            )
        idents = [f"{k}:{ids[k]}" for k in ranked]
        if blocked:
            idents = [i for i in idents if i not in blocked]
        usable.append(idents)
        if not idents:
            continue
        first = idents[0]
        if first not in parent:
            parent[first] = first
        if len(idents) > 1:
            ra = find(first)
            for other in idents[1:]:
                if other not in parent:
                    parent[other] = ra
                else:
                    rb = find(other)
                    if rb != ra:
                        parent[rb] = ra

    by_root: dict[str, Component] = {}
    order: list[Component] = []
    anonymous: list[int] = []
    for i, idents in enumerate(usable):
        if not idents:
            anonymous.append(i)
            continue
        root = find(idents[0])
        comp = by_root.get(root)
        if comp is None:
            comp = by_root[root] = Component()
            order.append(comp)
        comp.identifiers.update(idents)
        comp.events.append(i)
    kept = [c for c in order if len(c.identifiers) <= rules.max_component]
    runaway = [c for c in order if len(c.identifiers) > rules.max_component]
    return BatchLinks(kept, runaway, anonymous, usable)


def components_of(links: Iterable[Iterable[str]]) -> list[set[str]]:
    """Connected components of identifier groups by plain graph search (a slow reference).

    >>> sorted(map(sorted, components_of([["a", "b"], ["c"], ["b", "d"]])))
    [['a', 'b', 'd'], ['c']]
    """
    adj: dict[str, set[str]] = {}
    for group in links:
        g = list(group)
        for x in g:
            adj.setdefault(x, set()).update(g)
    seen: set[str] = set()
    out = []
    for start in adj:
        if start in seen:
            continue
        comp, stack = set(), [start]
        while stack:
            x = stack.pop()
            if x not in comp:
                comp.add(x)
                stack.extend(adj[x] - comp)
        seen |= comp
        out.append(comp)
    return out

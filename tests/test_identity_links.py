"""Batch-local identity linking: the same components as a plain graph search, with the
guard rails applied (blocked values, per-type limits, runaway components)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from operators.identity import IdentityRules, components_of, link_batch

kinds = st.sampled_from(["loyalty", "account", "email", "device", "cookie"])
values = st.sampled_from(["1", "2", "3", "4", "5", "6"])
event = st.dictionaries(kinds, values, max_size=3)


@given(st.lists(event, max_size=40), st.sets(st.sampled_from(["email:1", "cookie:2"])))
def test_components_equal_a_plain_graph_search(
    events: list[dict[str, str]], blocked: set[str]
) -> None:
    rules = IdentityRules(blocked=frozenset(blocked), limits={}, max_component=10**6)
    links = link_batch(events, rules)
    groups = [[f"{k}:{v}" for k, v in e.items() if f"{k}:{v}" not in blocked] for e in events]
    want = sorted(map(sorted, components_of(g for g in groups if g)))
    assert sorted(sorted(c.identifiers) for c in links.components) == want
    # Every event is in exactly one component or anonymous.
    placed = sorted([i for c in links.components for i in c.events] + links.anonymous)
    assert placed == list(range(len(events)))
    assert links.anonymous == [i for i, g in enumerate(groups) if not g]
    assert not links.runaway


@given(st.lists(event, max_size=30), st.permutations(range(30)))
def test_components_do_not_depend_on_event_order(
    events: list[dict[str, str]], perm: list[int]
) -> None:
    rules = IdentityRules(limits={}, max_component=10**6)
    order = [i for i in perm if i < len(events)]
    a = link_batch(events, rules)
    b = link_batch([events[i] for i in order], rules)
    assert sorted(sorted(c.identifiers) for c in a.components) == sorted(
        sorted(c.identifiers) for c in b.components
    )
    assert {c.key for c in a.components} == {c.key for c in b.components}


def test_blocked_identifier_links_nobody() -> None:
    generic_card = {"loyalty": "0000"}
    events = [{"account": "A1"} | generic_card, {"account": "A2"} | generic_card]
    links = link_batch(events, IdentityRules(blocked={"loyalty:0000"}))
    assert sorted(c.key for c in links.components) == ["account:A1", "account:A2"]


def test_two_loyalty_cards_on_one_event_link_nothing_by_loyalty() -> None:
    events = [{"loyalty": "L1", "cookie": "c"}, {"loyalty": "L2", "cookie": "c"}]
    links = link_batch(events, IdentityRules())
    (comp,) = links.components  # the shared cookie links them; the limit is per event here
    assert comp.identifiers == {"loyalty:L1", "loyalty:L2", "cookie:c"}
    rules = IdentityRules(limits={"loyalty": 1, "account": 1, "cookie": 0})
    single = link_batch([{"loyalty": "L1", "account": "A", "cookie": "c"}], rules)
    assert single.components[0].identifiers == {"loyalty:L1", "account:A"}


def test_runaway_component_is_refused() -> None:
    shared_device = [{"device": "kiosk", "account": f"A{i}"} for i in range(300)]
    links = link_batch(shared_device, IdentityRules(max_component=200))
    assert not links.components
    (runaway,) = links.runaway
    assert len(runaway.identifiers) == 301 and len(runaway.events) == 300

"""The identity graph on real Redis: canonical ids are exactly the connected components of
a plain union-find, whatever the batch boundaries; merges are deterministic and recorded;
guard rails refuse runaway and over-limit merges."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnicanal.services import LocalRedis
from operators.identity import IdentityRules, components_of, link_batch
from state.identity import IdentityGraph
from state.profiles import connect

pytestmark = pytest.mark.services
NO_LIMITS = {"loyalty": 99, "account": 99, "email": 99, "device": 99, "cookie": 99}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    srv = LocalRedis(Path(tmp_path_factory.mktemp("redis-id"))).start(persistence=False)
    yield srv.url
    srv.stop()


def graph(url: str, **kw: object) -> IdentityGraph:
    r = connect(url)
    r.flushdb()
    return IdentityGraph(r, **kw)  # type: ignore[arg-type]


kinds = st.sampled_from(["loyalty", "account", "email", "device", "cookie"])
event = st.dictionaries(kinds, st.sampled_from("123456"), max_size=3)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(event, max_size=40), st.lists(st.integers(1, 10), min_size=1, max_size=10),
       st.sets(st.sampled_from(["email:1", "cookie:2"])))  # fmt: skip
def test_canonical_ids_are_the_union_find_components(
    redis_url: str, events: list[dict[str, str]], cuts: list[int], blocked: set[str]
) -> None:
    g = graph(redis_url, limits=NO_LIMITS, max_component=10**6)
    rules = IdentityRules(blocked=frozenset(blocked), limits={}, max_component=10**6)
    i = 0
    for size in [*cuts, len(events)]:  # random batch boundaries
        batch = events[i : i + size]
        i += size
        links = link_batch(batch, rules)
        ids = g.resolve([sorted(c.identifiers) for c in links.components])
        assert all(ids)
    groups = [[f"{k}:{v}" for k, v in e.items() if f"{k}:{v}" not in blocked] for e in events]
    want = sorted(map(sorted, components_of(x for x in groups if x)))
    got: dict[str, set[str]] = {}
    for comp in want:
        for ident in comp:
            got.setdefault(g.canonical(ident) or "?", set()).add(ident)
    assert sorted(map(sorted, got.values())) == want
    for cid, idents in got.items():
        assert g.members(cid) == idents
    assert g.stats()["customers"] == len(want)


def test_merge_keeps_the_oldest_customer_and_records_why(redis_url: str) -> None:
    g = graph(redis_url)
    (store_customer,) = g.resolve([["loyalty:L1"]], why="sale e1")
    (web_customer,) = g.resolve([["account:A1", "cookie:c1"]], why="login e2")
    assert store_customer < web_customer
    (merged,) = g.resolve([["loyalty:L1", "account:A1"]], why="sale e3", ts_ms=42)
    assert merged == store_customer
    assert g.canonical("cookie:c1") == store_customer
    assert g.members(store_customer) == {"loyalty:L1", "account:A1", "cookie:c1"}
    (record,) = g.merges()
    assert record["survivor"] == store_customer and record["merged"] == web_customer
    assert record["why"] == "sale e3" and record["ts"] == "42"
    assert g.stats() == {"customers": 1, "identifiers": 3, "merges": 1, "refused": 0}


def test_same_inputs_same_survivor(redis_url: str) -> None:
    outcomes = []
    for _ in range(2):
        g = graph(redis_url)
        g.resolve([["cookie:x"], ["account:B"], ["loyalty:Z"]])
        outcomes.append(g.resolve([["loyalty:Z", "account:B", "cookie:x"]]))
    assert outcomes[0] == outcomes[1] == ["C000000000001"]


def test_runaway_and_limit_merges_are_refused(redis_url: str) -> None:
    g = graph(redis_url, max_component=5)
    a, b = g.resolve([["account:A", "cookie:1", "cookie:2"], ["account:B", "cookie:3"]])
    assert a and b
    (refused,) = g.resolve([["cookie:2", "cookie:3", "device:kiosk"]])  # would make 6
    assert refused is None and g.canonical("device:kiosk") is None
    (two_accounts,) = g.resolve([["account:A", "account:B"]])  # accounts limited to 1
    assert two_accounts is None
    assert g.canonical("account:B") == b and g.stats()["refused"] == 2

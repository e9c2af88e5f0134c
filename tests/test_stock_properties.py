"""Property: stock levels, counts and shrinkage in Redis do not depend on where batches end.

The same stream of counts, adjustments and sales (one partition, so one arrival order) is
applied one event per batch and in random batches; every location of every SKU must end
with the same level, last count, first count and shrinkage. A kill -9 and resume changes
only batch boundaries, so this is what makes a resumed run equal a clean one."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnicanal.tools.services import LocalRedis
from operators.privacy import PiiHasher
from operators.stock import StockRules, plan_stock
from operators.validate import Validator
from schemas.envelope import Accepted
from state.profiles import ProfileStore, connect

pytestmark = pytest.mark.services
V = Validator({"tx": "transaction", "inv": "inventory"}, PiiHasher(b"stock-property-key-01"))
RULES = StockRules()
T0 = datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProfileStore]:
    srv = LocalRedis(Path(tmp_path_factory.mktemp("redis-stock-prop"))).start(persistence=False)
    yield ProfileStore(connect(srv.url))
    srv.stop()


@st.composite
def event(draw: st.DrawFn) -> dict[str, object]:
    # Few SKUs, locations and times: counts, late movements and ties are common.
    t = (T0 + timedelta(minutes=draw(st.integers(0, 8)))).isoformat()
    sku, loc = draw(st.sampled_from(["A", "A", "B"])), draw(st.sampled_from(["s1", "s2"]))
    kind = draw(st.sampled_from(["stock_snapshot", "stock_adjustment", "sale", "sale"]))
    base = {"event_type": kind, "event_id": "e", "event_time": t, "location_id": loc}
    if kind == "stock_snapshot":
        return base | {"sku": sku, "on_hand": draw(st.integers(0, 20))}
    if kind == "stock_adjustment":
        return base | {"sku": sku, "delta": draw(st.integers(-3, 5)), "reason": "delivery"}
    line = {"sku": sku, "quantity": draw(st.integers(1, 3)), "unit_price_minor": 100}
    return base | {"channel": "store", "currency": "EUR", "lines": [line]}


def apply_in_batches(store: ProfileStore, items: list[Accepted], cuts: list[int]) -> None:
    store.r.flushdb()
    floor = -1
    bounds = [0, *sorted(set(cuts)), len(items)]
    for lo, hi in itertools.pairwise(bounds):
        batch = items[lo:hi]
        if not batch:
            continue
        plan = plan_stock(batch, RULES)
        assert store.apply([("p:0", floor, hi - 1)], [], stock=plan.to_payload()).ok
        floor = hi - 1


def stock_state(store: ProfileStore) -> dict[str, dict[str, str]]:
    out = {}
    for k in store.r.scan_iter(match="oc:sku:*"):
        fields = {f.decode(): v.decode() for f, v in store.r.hgetall(k).items()}
        out[k.decode()] = {f: v for f, v in fields.items() if f[:2] in ("q:", "st", "sf", "sh")}
    return out


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(events=st.lists(event(), min_size=5, max_size=40), data=st.data())
def test_shrinkage_does_not_depend_on_batch_boundaries(
    store: ProfileStore, events: list[dict[str, object]], data: st.DataObject
) -> None:
    items = []
    for i, ev in enumerate(events):
        topic = "tx" if ev["event_type"] == "sale" else "inv"
        a = V.decode(topic, 0, i, None, orjson.dumps(ev), 2_000_000_000_000)
        assert isinstance(a, Accepted), a
        items.append(a)
    apply_in_batches(store, items, list(range(1, len(items))))  # one event at a time
    one_by_one = stock_state(store)
    cuts = data.draw(st.lists(st.integers(1, len(items) - 1), max_size=6))
    apply_in_batches(store, items, cuts)
    assert stock_state(store) == one_by_one


def test_movements_that_cancel_out_leave_the_same_level_in_any_batching(
    store: ProfileStore,
) -> None:
    """Found by the property above on a fresh machine: a delivery and a sale of one unit at
    the same time net to zero in one batch; applied one by one they leave a level of 0."""
    t = T0.isoformat()
    events = [
        {"event_type": "stock_adjustment", "event_id": "e", "event_time": t, "location_id": "s1",
         "sku": "A", "delta": 1, "reason": "delivery"},
        {"event_type": "sale", "event_id": "e", "event_time": t, "location_id": "s1",
         "channel": "store", "currency": "EUR",
         "lines": [{"sku": "A", "quantity": 1, "unit_price_minor": 100}]},
    ]  # fmt: skip
    items = []
    for i, ev in enumerate(events):
        topic = "tx" if ev["event_type"] == "sale" else "inv"
        a = V.decode(topic, 0, i, None, orjson.dumps(ev), 2_000_000_000_000)
        assert isinstance(a, Accepted)
        items.append(a)
    apply_in_batches(store, items, [1])
    one_by_one = stock_state(store)
    apply_in_batches(store, items, [])
    assert stock_state(store) == one_by_one == {"oc:sku:A": {"q:s1": "0"}}

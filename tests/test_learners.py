"""One check suite for every learner of the stream (``operators/learners.py``): found by
discovery, so a new learner is checked without being listed. Each must learn and merge in any
order with the same result, survive its stored form, and match the Redis script where the
script keeps the same model (those are listed in ``LUA_PARITY``; a learner must be there or
in ``NO_LUA``, so that the question is answered for every new one)."""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

import operators
from flows import pipeline
from omnicanal.config import Settings
from omnicanal.wiring import pipeline_setup
from operators.cross_sell import CoPurchase
from operators.identity import IdentityRules
from operators.learners import Learner
from operators.privacy import PiiHasher
from operators.profile import CategoryInterests
from operators.stock import HourOfWeekProfile, Velocity
from operators.validate import Validator
from schemas.envelope import Accepted
from state.cross_sell import CoPurchaseStore
from state.profiles import ProfileStore, connect
from tests.conftest import TEST_PII_KEY, Settled

for _m in pkgutil.iter_modules(operators.__path__):
    importlib.import_module(f"operators.{_m.name}")
LEARNERS: list[type[Learner]] = sorted(Learner.__subclasses__(), key=lambda c: c.__name__)
HASH = PiiHasher(TEST_PII_KEY.encode())


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _learnt(cls: type[Learner], obs: list[tuple[Any, ...]]) -> Learner:
    m = cls.from_state(cls().to_state())  # an empty one, through its stored form too
    for x in obs:
        m.learn_one(*x)
    return m


def test_every_learner_is_discovered() -> None:
    assert {c.__name__ for c in LEARNERS} >= {"Velocity", "HourOfWeekProfile", "CategoryInterests"}


@pytest.mark.parametrize("cls", LEARNERS, ids=lambda c: c.__name__)
def test_learning_and_merging_do_not_depend_on_order(cls: type[Learner]) -> None:
    rng = random.Random(7)
    obs, queries = cls.check_stream(rng)
    whole = _learnt(cls, obs)
    shuffled = obs[:]
    rng.shuffle(shuffled)
    parts = [shuffled[i::3] for i in range(3)]
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        merged = _learnt(cls, [])
        for i in order:
            merged.merge(_learnt(cls, parts[i]))
        for q in queries:
            assert _close(merged.predict_one(*q), whole.predict_one(*q)), (order, q)
    alone = _learnt(cls, shuffled)
    for q in queries:
        assert _close(alone.predict_one(*q), whole.predict_one(*q)), q
    # merging nothing changes nothing; merging into nothing copies
    same = _learnt(cls, obs)
    same.merge(_learnt(cls, []))
    empty = _learnt(cls, [])
    empty.merge(whole)
    for q in queries:
        assert same.predict_one(*q) == whole.predict_one(*q) == empty.predict_one(*q)


@pytest.mark.parametrize("cls", LEARNERS, ids=lambda c: c.__name__)
def test_the_stored_form_round_trips(cls: type[Learner]) -> None:
    obs, queries = cls.check_stream(random.Random(11))
    m = _learnt(cls, obs)
    state = m.to_state()
    again = cls.from_state(orjson.loads(orjson.dumps(state)))
    assert again.to_state() == state
    for q in queries:
        assert again.predict_one(*q) == m.predict_one(*q)


# ------------------------------------------------------------------ parity with the script
T0 = datetime(2024, 5, 6, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)


def _feed(settings: Settings, batches: list[list[dict[str, Any]]], **setup: Any) -> ProfileStore:
    """Each list of events as one batch of the real pipeline stages."""
    v = Validator(settings.topic_contracts(), HASH)
    base = pipeline_setup(settings, identity=IdentityRules(), hasher=HASH)
    part = pipeline.state_sink(dataclasses.replace(base, **setup))
    sink = Settled(part.build("state", 0, 1))
    n = 0
    try:
        for batch in batches:
            items = []
            for e in batch:
                topic = settings.topic_transactions
                if e["event_type"] == "product_view":
                    topic = settings.topic_clickstream
                a = v.decode(topic, 0, n, None, orjson.dumps(e), 2e12)
                assert isinstance(a, Accepted), a
                items.append(a)
                n += 1
            sink.write_batch(items)
    finally:
        sink.close()
    return ProfileStore(connect(settings.redis_url), settings.redis_prefix)


def _sale(i: int, ms: int, qty: int, category: str = "mugs") -> dict[str, Any]:
    return {
        "event_type": "sale", "event_id": f"s{i}", "channel": "store", "currency": "EUR",
        "event_time": datetime.fromtimestamp(ms / 1000, UTC).isoformat(),
        "location_id": "st-1", "customer": {"loyalty_id": "L1"},
        "lines": [{"sku": "MUG", "quantity": qty, "unit_price_minor": 500, "category": category}],
    }  # fmt: skip


def _sales(rng: random.Random) -> list[tuple[int, int, str]]:
    return [
        (T0_MS + rng.randrange(20 * 86_400_000), rng.randint(1, 4), rng.choice(["a", "b", "c"]))
        for _ in range(400)
    ]


def _batches(sales: list[tuple[int, int, str]]) -> list[list[dict[str, Any]]]:
    events = [_sale(i, ms, q, c) for i, (ms, q, c) in enumerate(sales)]
    return [events[:150], events[150:151], events[151:]]  # script merges batch into stored


def _velocity(settings: Settings, sales: list[tuple[int, int, str]]) -> tuple[Learner, Learner]:
    store = _feed(settings, _batches(sales))
    stored = store.r.hget(f"{settings.redis_prefix}sku:MUG", "v:st-1")
    assert stored is not None
    return Velocity.from_state(stored.decode()), _learnt(Velocity, [(ms, q) for ms, q, _ in sales])


def _season(settings: Settings, sales: list[tuple[int, int, str]]) -> tuple[Learner, Learner]:
    store = _feed(settings, _batches(sales))
    h = store.r.hgetall(f"{settings.redis_prefix}season:st-1")
    raw = {k.decode(): v.decode() for k, v in h.items()}
    counts = [float(raw.get(str(h), 0)) for h in range(168)]
    stored = HourOfWeekProfile.from_state(
        {"counts": counts, "t0": int(raw["t0"]), "t1": int(raw["t1"])}
    )
    return stored, _learnt(HourOfWeekProfile, [(ms, q) for ms, q, _ in sales])


def _interests(settings: Settings, sales: list[tuple[int, int, str]]) -> tuple[Learner, Learner]:
    store = _feed(settings, _batches(sales))
    cid = store.resolve("loyalty:L1")
    assert cid is not None
    h = store.r.hgetall(f"{settings.redis_prefix}p:{cid}")
    cats = {k.decode()[4:]: float(v) for k, v in h.items() if k.startswith(b"cat:")}
    return CategoryInterests.from_state(cats), _learnt(
        CategoryInterests, [(c, "sale", ms) for ms, _, c in sales]
    )


def _copurchase(settings: Settings, sales: list[tuple[int, int, str]]) -> tuple[Learner, Learner]:
    """Baskets of 1-5 of the check stream's SKUs (and returns), through the pipeline: the
    counts the workers add to Redis are those the learner has."""
    rng = random.Random(3)
    events, baskets, returned = [], [], []
    for i, (ms, _, cat) in enumerate(sales):
        skus = rng.sample([f"S{k}" for k in range(12)], rng.randint(1, 5))
        ev = _sale(i, ms, 1, cat)
        ev["lines"] = [{"sku": s, "quantity": 1, "unit_price_minor": 100} for s in skus]
        if i % 10 == 0:
            ev["lines"].append({"sku": "FEE", "quantity": 1, "unit_price_minor": 5, "kind": "fee"})
        if i % 7 == 0:
            ev["event_type"], ev["original_order_id"] = "return", f"o{i}"
            returned.append(skus)
        else:
            baskets.append(skus)
        events.append(ev)
    store = _feed(settings, [events[:150], events[150:151], events[151:]], campaigns=lambda: [])
    python = CoPurchase()
    for b in baskets:
        python.learn_one(b)
    for r in returned:
        python.learn_return(r)
    return CoPurchaseStore(store.r, settings.redis_prefix).learnt(), python


LUA_PARITY: dict[type[Learner], Callable[..., tuple[Learner, Learner]]] = {
    CoPurchase: _copurchase,
    Velocity: _velocity,
    HourOfWeekProfile: _season,
    CategoryInterests: _interests,
}
#: learners no script keeps (none yet): each is checked in Python only
NO_LUA: set[type[Learner]] = set()


def test_every_learner_says_whether_a_script_keeps_it() -> None:
    assert set(LEARNERS) == set(LUA_PARITY) | NO_LUA


@pytest.mark.services
@pytest.mark.parametrize("cls", list(LUA_PARITY), ids=lambda c: c.__name__)
def test_the_script_keeps_the_same_model(cls: type[Learner], settings: Settings) -> None:
    sales = _sales(random.Random(5))
    stored, python = LUA_PARITY[cls](settings, sales)
    _, queries = cls.check_stream(random.Random(1))
    queries = [*queries, (T0_MS + 21 * 86_400_000,)]
    for q in queries:
        assert _close(stored.predict_one(*q), python.predict_one(*q)), q

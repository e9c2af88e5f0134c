"""The next-basket model in the pipeline's hands (``flows/preferences.py``) on a real Redis:
it learns each basket marked to learn from exactly once, from the baskets kept before it,
and equals the same model learnt by a plain replay; a basket that arrives while a slice is
being learnt stays due. And the batch script's side: the newest baskets kept, whatever
order they arrive in, and merged with the customer."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import redis

from flows.preferences import NextBasket
from monitoring import metrics as m
from omnicanal.config import Settings
from omnicanal.tools.demo import events_from_jsonl, produce
from omnicanal.tools.services import LocalRedis
from operators.cross_sell import CoPurchase
from operators.preferences import DAY_MS, PreferenceModel, Purchases
from state.cross_sell import CoPurchaseStore
from state.preferences import PreferenceStore
from state.profiles import ProfileStore, connect
from tests.test_faults import cli

P = "nb:"


def _member(ts: int, skus: list[str], learn: bool) -> str:
    """A kept basket as the batch script writes it (state/lua/apply_batch.lua): a line."""
    return f"{ts}|{'L' if learn else '-'}|{orjson.dumps(skus).decode()}"


def _keep(r: Any, cid: str, lines: list[str]) -> None:
    """A customer's kept baskets, as the batch script stores them: one line each."""
    r.set(f"{P}ph:{cid}", "\n".join(lines))


def _history() -> dict[str, list[tuple[int, list[str], bool]]]:
    """Three customers' weekly baskets; some marked to learn from."""
    out: dict[str, list[tuple[int, list[str], bool]]] = {}
    for c, staples in enumerate((["MILK", "TEA"], ["BEER", "CHIPS"], ["MILK", "JAM"])):
        out[f"C{c}"] = [
            (w * 7 * DAY_MS + c, sorted({*staples[: 1 + w % 2], "BREAD"}), w % 3 == 2)
            for w in range(9)
        ]
    return out


def test_each_marked_basket_is_learnt_once_as_a_replay_learns_it(
    redis_server: LocalRedis,
) -> None:
    r = connect(redis_server.url)
    crowd = CoPurchase()
    history = _history()
    for baskets in history.values():
        for _, skus, _ in baskets:
            crowd.learn_one(skus)
    CoPurchaseStore(r, P).add(crowd, "flush-1")
    for cid, baskets in history.items():
        _keep(r, cid, [_member(ts, skus, learn) for ts, skus, learn in baskets])
        r.zincrby(f"{P}pf:due", sum(learn for *_, learn in baskets), cid)

    nb = NextBasket(PreferenceStore(r, P), CoPurchaseStore(r, P))
    nb.SLICE = 2  # two customers per look: one left for the next
    assert nb.learn() == 6 and nb.more  # three marked baskets per customer
    assert m.NEXT_BASKET_PENDING._value.get() == 1
    assert nb.learn() == 3 and not nb.more
    assert m.NEXT_BASKET_PENDING._value.get() == 0

    # the same model, learnt by a plain replay in the same order (customers by count, id)
    view = CoPurchaseStore(r, P).view(["BEER", "BREAD", "CHIPS", "JAM", "MILK", "TEA"], 0)
    replay = PreferenceModel()
    for cid, baskets in history.items():
        for i, (ts, skus, learn) in enumerate(baskets):
            if learn:
                before = Purchases((t, s) for t, s, _ in baskets[:i])
                replay.learn_one(cid, before, (ts, skus), view)
    assert nb.model.weights() == replay.weights() and nb.model.learnt == replay.learnt > 0

    # stored with its baskets marked learnt: a second look (a replay, a restart) learns none
    assert r.zcard(f"{P}pf:due") == 0
    assert b"|L|" not in r.get(f"{P}ph:C0") and r.get(f"{P}ph:C0").count(b"|-|") == 9
    again = NextBasket(PreferenceStore(r, P), CoPurchaseStore(r, P))
    assert again.model.weights() == replay.weights() and again.learn() == 0
    assert again.model.learnt == replay.learnt


def test_a_look_learns_every_slice_due_within_its_budget(redis_server: LocalRedis) -> None:
    """What the offer decider does before it decides (``OMNICANAL_OFFER_LEARN_MS``): slices until
    none is due, so that a win-back ranks with every basket Redis holds; with no time left,
    one slice, the rest at the next look."""
    r = connect(redis_server.url)
    for k, prefix in enumerate(("ld1:", "ld0:")):
        for cid, baskets in _history().items():
            r.set(f"{prefix}ph:{cid}", "\n".join(_member(t, s, learn) for t, s, learn in baskets))
            r.zincrby(f"{prefix}pf:due", sum(learn for *_, learn in baskets), cid)
        nb = NextBasket(PreferenceStore(r, prefix), CoPurchaseStore(r, prefix))
        nb.SLICE = 1  # three slices due
        if k == 0:
            assert nb.learn_due(60.0) == 9 and not nb.more
            assert r.zcard(f"{prefix}pf:due") == 0
        else:
            assert nb.learn_due(0.0) == 3 and nb.more
            assert r.zcard(f"{prefix}pf:due") == 2


def test_a_basket_added_while_a_slice_is_learnt_stays_due(redis_server: LocalRedis) -> None:
    r = connect(redis_server.url)
    store = PreferenceStore(r, P)
    old, new = _member(1, ["MILK"], True), _member(2, ["TEA"], True)
    _keep(r, "C1", [old])
    r.zincrby(f"{P}pf:due", 1, "C1")
    due = store.due(10)
    assert due == [("C1", 1)]
    _keep(r, "C1", [old, new])  # the batch script adds a basket meanwhile
    r.zincrby(f"{P}pf:due", 1, "C1")
    assert store.checkpoint(PreferenceModel().to_state(), [("C1", old)], due) == 1
    assert store.due(10) == [("C1", 1)]  # the new one is still to learn from
    assert r.get(f"{P}ph:C1") == f"{_member(1, ['MILK'], False)}\n{new}".encode()
    # a basket gone meanwhile (merged into another customer, erased) is not written back
    r.delete(f"{P}ph:C1")
    assert store.checkpoint(PreferenceModel().to_state(), [("C1", new)], [("C1", 1)]) == 0
    assert not r.exists(f"{P}ph:C1") and store.due(10) == []


def test_a_stored_basket_this_version_cannot_read_is_left_out_and_the_rest_goes_on(
    redis_server: LocalRedis,
) -> None:
    """Another writer's members (a signed time, a SKU list that is not a list) are not
    learnt from, nor given to the checkpoint script (which would refuse them all); the
    customer's readable baskets are."""
    r = connect(redis_server.url)
    good = [_member(DAY_MS * w, ["MILK"], w == 2) for w in range(3)]
    _keep(r, "C9", [*good, "+5|L|[]", '7|L|"MILK"'])
    r.zincrby(f"{P}pf:due", 3, "C9")
    nb = NextBasket(PreferenceStore(r, P), CoPurchaseStore(r, P))
    assert nb.learn() == 1 and nb.model.learnt > 0
    assert r.zcard(f"{P}pf:due") == 0
    assert b"\n+5|L|[]\n" in r.get(f"{P}ph:C9")  # left as it is


def test_the_batch_script_keeps_the_newest_baskets_whatever_order_they_come_in(
    settings: Settings,
) -> None:
    """ANA's 60 purchases arrive shuffled, over two runs and batches of 7: she keeps the 50
    newest by time. BEN shops with his card and, separately, online; once one sale shows
    both, the merged customer keeps the 50 newest of both sides' 60."""
    t0 = 1_790_000_000_000
    rng = random.Random(4)

    def sale(n: int, who: dict[str, str], minute: int, channel: str = "store") -> dict[str, Any]:
        at = datetime.fromtimestamp((t0 + minute * 60_000) / 1000, UTC).isoformat()
        line = {"sku": f"I{minute:03d}", "quantity": 1, "unit_price_minor": 100}
        return {"event_type": "sale", "event_id": f"nb-{n}", "channel": channel,
                "event_time": at, "currency": "EUR", "customer": who, "lines": [line]}  # fmt: skip

    ana = [sale(i, {"loyalty_id": "ANA"}, i) for i in range(60)]
    rng.shuffle(ana)
    ben = [sale(100 + i, {"loyalty_id": "BEN"}, 2 * i) for i in range(30)]
    ben += [sale(200 + i, {"account_id": "BEN-WEB"}, 2 * i + 1, "web") for i in range(30)]
    rng.shuffle(ben)
    for half in (ana[:30] + ben, ana[30:]):
        produce(settings, events_from_jsonl(orjson.dumps(e) for e in half))
        assert cli(settings, "run", "--until-eof", OMNICANAL_BATCH_SIZE="7").returncode == 0
    store = ProfileStore(connect(settings.redis_url), settings.redis_prefix)
    kept = store.baskets(store.resolve("loyalty:ANA") or "")
    assert [b["skus"] for b in kept] == [[f"I{m:03d}"] for m in range(10, 60)]
    link = sale(300, {"loyalty_id": "BEN", "account_id": "BEN-WEB"}, 70, "web")
    produce(settings, events_from_jsonl([orjson.dumps(link)]))
    assert cli(settings, "run", "--until-eof").returncode == 0
    merged = store.resolve("loyalty:BEN")
    assert merged is not None and merged == store.resolve("account:BEN-WEB")
    kept = store.baskets(merged)
    assert [b["skus"] for b in kept] == [[f"I{m:03d}"] for m in [*range(11, 60), 70]]
    assert sum(len(store.baskets(c)) for c in store.customer_ids()) == 100  # ANA's, BEN's


def test_the_checkpoint_reads_everything_before_it_writes(redis_server: LocalRedis) -> None:
    """A history key another writer made a list: the call fails before any write, so the
    model and the due counts stay as they were (the slice is learnt again later)."""
    r = connect(redis_server.url)
    store = PreferenceStore(r, P)
    r.rpush(f"{P}ph:C5", "not a history")
    r.zincrby(f"{P}pf:due", 1, "C5")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store.checkpoint(PreferenceModel().to_state(), [("C5", _member(1, ["A"], True))],
                         [("C5", 1)])  # fmt: skip
    assert store.load() is None and store.due(10) == [("C5", 1)]

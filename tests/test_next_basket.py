"""The next-basket model in the pipeline's hands (``flows/preferences.py``) on a real Redis:
it learns each basket marked to learn from exactly once, from the baskets kept before it,
and equals the same model learnt by a plain replay; a basket that arrives while a slice is
being learnt stays due."""

from __future__ import annotations

import orjson

from flows.preferences import NextBasket
from omnicanal.tools.services import LocalRedis
from operators.cross_sell import CoPurchase
from operators.preferences import DAY_MS, PreferenceModel, Purchases
from state.cross_sell import CoPurchaseStore
from state.preferences import PreferenceStore
from state.profiles import connect

P = "nb:"


def _member(ts: int, skus: list[str], learn: bool) -> str:
    """A kept basket as the batch script writes it (state/lua/apply_batch.lua)."""
    return f"{ts}|{'L' if learn else '-'}|{orjson.dumps(skus).decode()}"


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
        r.zadd(f"{P}ph:{cid}", {_member(ts, skus, learn): ts for ts, skus, learn in baskets})
        r.zincrby(f"{P}pf:due", sum(learn for *_, learn in baskets), cid)

    nb = NextBasket(PreferenceStore(r, P), CoPurchaseStore(r, P))
    assert nb.learn() == 9 and not nb.more  # three marked baskets per customer

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
    assert not any(b"|L|" in m for m in r.zrange(f"{P}ph:C0", 0, -1))
    again = NextBasket(PreferenceStore(r, P), CoPurchaseStore(r, P))
    assert again.model.weights() == replay.weights() and again.learn() == 0
    assert again.model.learnt == replay.learnt


def test_a_basket_added_while_a_slice_is_learnt_stays_due(redis_server: LocalRedis) -> None:
    r = connect(redis_server.url)
    store = PreferenceStore(r, P)
    old, new = _member(1, ["MILK"], True), _member(2, ["TEA"], True)
    r.zadd(f"{P}ph:C1", {old: 1})
    r.zincrby(f"{P}pf:due", 1, "C1")
    due = store.due(10)
    assert due == [("C1", 1)]
    r.zadd(f"{P}ph:C1", {new: 2})  # the batch script adds a basket meanwhile
    r.zincrby(f"{P}pf:due", 1, "C1")
    assert store.checkpoint(PreferenceModel().to_state(), [("C1", old)], due) == 1
    assert store.due(10) == [("C1", 1)]  # the new one is still to learn from
    assert r.zrange(f"{P}ph:C1", 0, -1) == [_member(1, ["MILK"], False).encode(), new.encode()]
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
    r.zadd(f"{P}ph:C9", {m: i for i, m in enumerate([*good, "+5|L|[]", '7|L|"MILK"'])})
    r.zincrby(f"{P}pf:due", 3, "C9")
    nb = NextBasket(PreferenceStore(r, P), CoPurchaseStore(r, P))
    assert nb.learn() == 1 and nb.model.learnt > 0
    assert r.zcard(f"{P}pf:due") == 0
    assert r.zscore(f"{P}ph:C9", "+5|L|[]") is not None  # left as it is

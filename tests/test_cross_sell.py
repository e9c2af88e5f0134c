"""The co-purchase counts the cross-sell ranker reads, on real services: two worker processes
each learn the baskets of their partitions, and Redis holds exactly the counts one learner
would have from every basket of the input; a run killed with SIGKILL and resumed never
counts a basket twice (it may lose what was learnt since the last flush, by design). The
next-basket model's history is exact in both: every basket kept once, every marked one
learnt."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from msgspec import UNSET

from omnicanal.config import Settings
from omnicanal.tools.datagen import Generator
from omnicanal.tools.demo import DEMO_CAMPAIGNS, produce
from omnicanal.tools.services import LocalKafka, LocalRedis
from omnicanal.wiring import pipeline_setup
from operators.cross_sell import CoPurchase
from operators.preferences import BASKET_ITEMS, HISTORY_BASKETS, basket_json, learns
from schemas.envelope import Accepted
from state.cross_sell import KEEP, CoPurchaseStore
from state.profiles import ProfileStore, connect
from tests.conftest import make_settings
from tests.test_faults import applied, cli, copy_of, kill9, start

pytestmark = pytest.mark.services


def expected(msgs: list[Any]) -> CoPurchase:
    """The counts of one learner fed every sale and return of the input, in order."""
    co = CoPurchase()
    for msg in msgs:
        ev = orjson.loads(msg.value)
        if ev.get("event_type") not in ("sale", "return"):
            continue
        lines = [ln for ln in ev["lines"] if ln.get("kind", "product") == "product"]
        if ev["event_type"] == "return":
            co.learn_return(ln["sku"] for ln in lines)
        elif lines:
            co.learn_one(
                [ln["sku"] for ln in lines],
                {ln["sku"]: ln["category"] for ln in lines if "category" in ln},
            )
    return co


def expected_kept(s: Settings, msgs: list[Any]) -> Counter[str]:
    """Each customer's newest :data:`HISTORY_BASKETS` sales, worked out from the input: the
    pipeline's validator decodes each sale, Redis's identity graph says whose it is (after
    every merge), and an anonymous till sale has no history to keep."""
    validator = pipeline_setup(s).validator
    store = ProfileStore(connect(s.redis_url), s.redis_prefix)
    topic = s.contract_topics()["transaction"]
    now = int(time.time() * 1000)
    per: dict[str, list[tuple[int, str]]] = {}
    for i, msg in enumerate(msgs):
        if msg.contract != "transaction":
            continue
        a = validator.decode(topic, 0, i, msg.key, msg.value, now_ms=now)
        if type(a) is not Accepted or a.event_type != "sale" or a.customer is None:
            continue
        skus = sorted({ln.sku for ln in a.event.lines if ln.kind in (UNSET, "product")})
        cid = store.resolve(a.customer)
        if skus and cid is not None:
            first = skus[:BASKET_ITEMS]
            line = f"{a.ts_ms}|{'L' if learns((a.ts_ms, first)) else '-'}|{basket_json(first)}"
            per.setdefault(cid, []).append((a.ts_ms, line))
    out: Counter[str] = Counter()
    for baskets in per.values():  # the newest kept, ties at the cut by the stored line
        for ts, line in sorted(baskets)[-HISTORY_BASKETS:]:
            out[f"{ts}|{line.split('|', 2)[2]}"] += 1
    return out


def sold(s: Settings) -> int:
    """Transactions applied so far."""
    offsets = ProfileStore(connect(s.redis_url), s.redis_prefix).load_offsets()
    return sum(o + 1 for p, o in offsets.items() if p.startswith(s.topic_transactions + ":"))


def counts(redis_url: str, prefix: str) -> CoPurchase:
    return CoPurchaseStore(connect(redis_url), prefix).learnt()


def kept_baskets(redis_url: str, prefix: str) -> Counter[str]:
    """Every customer's kept baskets (the next-basket model's history), as time and SKUs,
    and checks that none is left to learn from (worker 0 learnt every marked one)."""
    r = connect(redis_url)
    out: Counter[str] = Counter()
    for key in r.scan_iter(match=prefix + "ph:*", count=1000):
        for line in r.get(key).decode().split("\n"):
            ts, flag, skus = line.split("|", 2)
            assert flag == "-", line  # learnt (or history only)
            out[f"{ts}|{skus}"] += 1
    assert r.zcard(prefix + "pf:due") == 0
    return out


def test_two_processes_count_each_basket_once_and_a_kill_never_twice(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    clean_redis = LocalRedis(tmp_path / "clean", appendfsync="always").start()
    crash_redis = LocalRedis(tmp_path / "crash", appendfsync="always").start()
    try:
        base = make_settings(kafka, clean_redis.url, partitions=4).model_copy(
            update={"coupon_key": "test-coupon-key-0123456789",
                    "campaigns_file": str(DEMO_CAMPAIGNS)}
        )  # fmt: skip
        msgs = list(Generator(seed=5, customers=600, bad_share=0.0).messages(12_000))
        produce(base, msgs)
        want = expected(msgs)
        assert want.baskets > 500 and sum(len(r) for r in want.pairs.values()) > 1000

        assert cli(base, "run", "--until-eof", "--processes", "2").returncode == 0
        got = counts(base.redis_url, base.redis_prefix)
        assert (got.baskets, got.items, got.returns) == (want.baskets, want.items, want.returns)
        assert got.categories == want.categories
        # rows that never outgrew what Redis keeps are exact; the others lost only their tail
        small = [a for a, row in want.pairs.items() if len(row) <= KEEP * 1.5]
        assert small and all(got.pairs[a] == want.pairs[a] for a in small)
        assert all(n <= want.pairs[a][b] for a, row in got.pairs.items() for b, n in row.items())
        # every sale's basket is kept once with its customer, whichever worker applied it,
        # and worker 0 learnt every basket marked to learn from
        kept = kept_baskets(base.redis_url, base.redis_prefix)
        assert kept == expected_kept(base, msgs) and sum(kept.values()) > 500
        model = orjson.loads(connect(base.redis_url).get(base.redis_prefix + "pf:model") or b"{}")
        assert model["n"] > 0

        crashed = copy_of(base, crash_redis.url)
        crashed = crashed.model_copy(update={"topic_offers": base.topic_offers + "-crash"})
        log = tmp_path / "crash.log"
        env = {"OMNICANAL_BATCH_SIZE": "200"}  # slower: the kill lands mid-input
        proc = start(crashed, log, "--until-eof", "--processes", "2", **env)
        deadline = time.monotonic() + 90
        sales = sum(1 for x in msgs if x.contract == "transaction")
        while sold(crashed) < sales // 3 and proc.poll() is None:
            assert time.monotonic() < deadline, "timed out waiting for progress"
            time.sleep(0.01)
        kill9(proc)
        assert sold(crashed) < sales, "the run ended before the kill: nothing tested"
        proc = start(crashed, log, "--until-eof", "--processes", "2", **env)
        assert proc.wait(240) == 0, log.read_text()[-3000:]
        assert applied(crashed) == len(msgs)
        after = counts(crashed.redis_url, crashed.redis_prefix)
        assert 0 < after.baskets <= want.baskets, log.read_text()[-5000:]
        assert all(n <= want.items[a] for a, n in after.items.items())
        assert all(n <= want.pairs[a].get(b, 0) for a, row in after.pairs.items()
                   for b, n in row.items() if a in small)  # fmt: skip
        assert all(n <= want.returns[a] for a, n in after.returns.items())
        # the kept baskets are exact across the kill: none twice, none lost, all learnt
        assert kept_baskets(crashed.redis_url, crashed.redis_prefix) == kept
    finally:
        clean_redis.stop()
        crash_redis.stop()


def _snapshot(r: Any, prefix: str) -> dict[bytes, Any]:
    return {k: r.dump(k) for k in sorted(r.keys(prefix + "*"))}


def test_a_flush_is_added_once_and_a_bad_one_writes_nothing(redis_server: LocalRedis) -> None:
    r = connect(redis_server.url)
    store = CoPurchaseStore(r, "t:")
    delta = CoPurchase()
    delta.learn_one(["TENT", "MAT"], {"TENT": "camping"})
    delta.learn_return(["MAT"])
    assert store.add(delta, "w1:0") == 1
    assert store.add(delta, "w1:0") == 0  # the reply was lost, the call retried: not twice
    got = store.learnt()
    assert (got.baskets, got.items, got.pairs, got.returns) == (
        1, {"MAT": 1, "TENT": 1}, {"MAT": {"TENT": 1}, "TENT": {"MAT": 1}}, {"MAT": 1},
    )  # fmt: skip
    before = _snapshot(r, "t:")
    script = r.register_script((Path(__file__).parents[1] / "state/lua/cross_sell.lua").read_text())
    good = {"n": 1, "i": {"A": 1}, "r": {}, "c": {}, "p": {"A": {"B": 1}}}
    bad = [
        {**good, "n": -1},
        {**good, "i": {"A": 0}},
        {**good, "i": {"A": 1.5}},
        {**good, "c": {"A": "x" * 65}},
        {**good, "p": {"A": {"B": 1}, "x" * 129: {"B": 1}}},
        {**good, "p": {"A": {"B": "1"}}},
        {**good, "p": {"A": {"B": 1, "C": 0}}},  # the last entry is bad: nothing before it
    ]
    for k, doc in enumerate(bad):
        with pytest.raises(redis.ResponseError, match="INVALID"):
            script(args=["t:", f"bad:{k}", orjson.dumps(doc), 100])
    with pytest.raises(redis.ResponseError, match="INVALID"):
        script(args=["t:", "bad:json", b"{not json", 100])
    assert _snapshot(r, "t:") == before  # not even the flush id


def test_a_flush_redis_refused_is_kept_and_added_once_later(redis_server: LocalRedis) -> None:
    from flows.cross_sell import CoPurchaseCounts
    from schemas.envelope import Accepted
    from schemas.events import Sale, TransactionLine

    store = CoPurchaseStore(connect(redis_server.url), "t:")
    counts = CoPurchaseCounts(store, interval=3600)
    lines = [TransactionLine(sku=s, quantity=1, unit_price_minor=100) for s in ("TENT", "MAT")]
    sale = Sale(event_id="e", event_time=None, channel="web", currency="EUR", lines=lines)
    ev = Accepted("t", 0, 1, "transactions", "sale", "e", 1, "web", "C1", {}, sale)
    counts.add([ev])
    counts.store = CoPurchaseStore(connect("redis://127.0.0.1:1", socket_timeout=0.2), "t:")
    assert counts.flush() is False  # Redis away: kept, nothing lost
    counts.add([ev])  # a second basket, in a new flush of its own
    counts.store = store
    assert counts.flush() is True
    assert counts.flush() is True  # nothing left: nothing added again
    assert store.learnt().pairs == {"MAT": {"TENT": 2}, "TENT": {"MAT": 2}}
    # a flush the script refuses for good (a SKU no contract allows) is dropped, not retried
    # forever: what comes after it is added
    counts._delta.learn_one(["X" * 200, "TENT"])
    counts._baskets += 1
    assert counts.flush() is True and counts._unsent == []
    counts.add([ev])
    assert counts.flush() is True
    assert store.learnt().pairs == {"MAT": {"TENT": 3}, "TENT": {"MAT": 3}}


def test_a_ranking_first_adds_the_workers_own_counts(redis_server: LocalRedis) -> None:
    """A basket decided soon after the baskets before it (a replay, a day-old feed, the
    demo) is ranked on counts that include them: worker 0 adds its pending counts to Redis
    first. Without that, a cross-sell campaign started on a fresh Redis offered nothing for
    the first 5 seconds of counts (the demo never made a cross-sell offer)."""
    from flows.cross_sell import CoPurchaseCounts, CrossSellRanks
    from schemas.envelope import Accepted
    from schemas.events import Sale, TransactionLine
    from state.cross_sell import RankerStore
    from state.offers import StoredCart

    def sale(i: int, skus: tuple[str, ...]) -> Accepted:
        lines = [TransactionLine(sku=s, quantity=1, unit_price_minor=100) for s in skus]
        ev = Sale(event_id=f"e{i}", event_time=None, channel="web", currency="EUR", lines=lines)
        return Accepted("t", 0, i, "transactions", "sale", f"e{i}", 1, "web", f"C{i}", {}, ev)

    for prefix, flush in (("rk1:", True), ("rk2:", False)):
        r = connect(redis_server.url)
        counts = CoPurchaseCounts(CoPurchaseStore(r, prefix), interval=3600)  # never on its own
        counts.add([sale(i, ("TENT", "MAT", "LAMP")) for i in range(5)])
        ranks = CrossSellRanks(CoPurchaseStore(r, prefix), RankerStore(r, prefix),
                               counts.flush if flush else None)  # fmt: skip
        bought = StoredCart("C9", {}, {}, {"TENT": 1000}, {})
        ranked = ranks.rank([("C9", 1000)], [bought])
        assert {sku for sku, _ in ranked.get("C9", [])} == ({"MAT", "LAMP"} if flush else set())


def test_a_decision_reads_from_redis_what_the_learner_would_give(redis_server: LocalRedis) -> None:
    """``CoPurchaseStore.view`` (one script call) equals ``CoPurchase.view`` on the same
    baskets: the top rows and best sellers, ties at the cut by SKU (many ties here), the
    counts, returns and categories of every SKU named, an unknown SKU and an empty basket."""
    import random

    rng = random.Random(7)
    skus = [f"S{i:03d}" for i in range(40)]
    co = CoPurchase()
    for _ in range(400):
        b = rng.sample(skus, rng.randint(2, 4))
        co.learn_one(b, {s: f"cat-{int(s[1:]) % 5}" for s in b if rng.random() < 0.8})
    co.learn_return(["S001", "S002", "S001"])
    store = CoPurchaseStore(connect(redis_server.url), "vw:")
    assert store.add(co, "f1") >= 1
    for basket in (["S000"], ["S003", "S017", "S039"], ["NEW", "S005"], [], skus[:12]):
        for top in (3, 5, 20):
            want, got = co.view(basket, top), store.view(basket, top)
            assert (got.baskets, got.co, got.popular) == (want.baskets, want.co, want.popular)
            assert dict(got.count) == {s: n for s, n in want.count.items() if n}
            assert (dict(got.returns), dict(got.category)) == (
                dict(want.returns),
                dict(want.category),
            )

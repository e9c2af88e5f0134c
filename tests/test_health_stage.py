"""The channel-health stage on real services: counts from every worker per minute in
Redis, the detectors on worker 0, messages on the topic once, across restarts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
import pytest

from flows import pipeline
from flows.health import ChannelCounts
from flows.kafka import CheckedProducer, read_topic
from monitoring import metrics as m
from omnicanal.config import Settings
from omnicanal.runner import recover_health
from omnicanal.wiring import pipeline_setup
from operators.channel_health import MINUTE_MS, HealthBoard
from schemas.envelope import Accepted
from schemas.events import ProductView, Sale
from state.health import HealthStore
from state.profiles import ProfileStore, connect

pytestmark = pytest.mark.services
WEEK_MIN = 7 * 24 * 60
MONDAY_MIN = 4 * 24 * 60 + 3 * WEEK_MIN  # minutes since the epoch: a Monday 00:00


def sale(channel: str, location: str | None = None) -> Accepted:
    ev = Sale(event_id="e", event_time=None, channel=channel, currency="EUR", lines=[],
              **({"location_id": location} if location else {}))  # type: ignore[arg-type]  # fmt: skip
    return Accepted("t", 0, 0, "transaction", "sale", "e", 0, channel, None, {}, ev)


def busy(minute: int) -> bool:
    day, tod = (minute - MONDAY_MIN) // 1440 % 7, minute % 1440
    return day < 5 and 9 * 60 <= tod < 17 * 60


def trained_board(weeks: int = 2) -> HealthBoard:
    """Detectors that have seen two weeks of 10 web and 6 store sales a minute at opening
    hours, as if the pipeline had run that long."""
    board = HealthBoard()
    for minute in range(MONDAY_MIN - weeks * WEEK_MIN, MONDAY_MIN):
        n = busy(minute)
        assert (
            board.learn_minute(minute * MINUTE_MS, {"sales:web": 10 * n, "store:S1": 6 * n}) == []
        )
    return board


def messages(s: Settings) -> list[dict[str, Any]]:
    return [
        orjson.loads(v or b"") for *_, v in read_topic(s.kafka_config(), s.topic_channel_health)
    ]


def test_a_silent_channel_is_collapsed_then_recovered_once_across_restarts(
    settings: Settings,
) -> None:
    s = settings
    store = HealthStore(connect(s.redis_url), s.redis_prefix)
    store.commit(trained_board().to_state(), MONDAY_MIN + 5 * 60 - 1, [])
    t = MONDAY_MIN + 10 * 60  # Monday 10:00: the web checkout breaks, the store sells on
    now = {"ms": MONDAY_MIN * MINUTE_MS}
    clock = lambda: now["ms"] / 1000  # noqa: E731

    def stage() -> pipeline.ChannelHealthStage:
        p = ProfileStore(connect(s.redis_url), s.redis_prefix)
        producer = CheckedProducer(s.kafka_config(), what="test health")
        return pipeline.health(pipeline_setup(s), p, producer, clock=clock)

    counts = ChannelCounts(HealthStore(connect(s.redis_url), s.redis_prefix), clock=clock)
    h = stage()
    for minute in range(MONDAY_MIN + 5 * 60, t + 20):  # from 05:00: the overnight lull
        now["ms"] = minute * MINUTE_MS + 30_000
        open_ = busy(minute)
        web = 0 if t <= minute < t + 10 else 10 * open_
        counts.add([sale("web")] * web + [sale("store", "S1")] * 6 * open_)
        if minute == t + 5:  # a restart in the middle of the outage
            h.close()
            h = stage()
        now["ms"] = (minute + 1) * MINUTE_MS + 15_000
        h.due()
    h.close()
    got = [(msg["key"], msg["status"]) for msg in messages(s)]
    assert got == [("sales:web", "collapsed"), ("sales:web", "recovered")]
    first, last = messages(s)
    assert first["channel"] == "web" and first["expected_per_minute"] == pytest.approx(10, abs=1)
    at = lambda msg: datetime.fromisoformat(msg["at"]).timestamp() // 60  # noqa: E731
    assert 0 <= at(first) - t < 5  # seen within 5 minutes
    assert 0 <= at(last) - (t + 10) < 5  # and its return too
    assert m.CHANNEL_HEALTH.labels("store:S1")._value.get() == 0
    assert recover_health(s) == (0, 0)  # nothing left in the outbox


def test_minutes_the_pipeline_did_not_run_are_not_silence(settings: Settings) -> None:
    s = settings
    store = HealthStore(connect(s.redis_url), s.redis_prefix)
    store.commit(trained_board().to_state(), MONDAY_MIN + 9 * 60, [])  # stopped at 09:00
    p = ProfileStore(connect(s.redis_url), s.redis_prefix)
    producer = CheckedProducer(s.kafka_config(), what="test health")
    noon = (MONDAY_MIN + 12 * 60) * MINUTE_MS + 15_000
    h = pipeline.health(pipeline_setup(s), p, producer, clock=lambda: noon / 1000)
    h.due()  # three hours without counts: skipped, not three hours of silence
    h.close()
    assert messages(s) == []
    assert store.load()[1] == MONDAY_MIN + 12 * 60 - 1


def trained_stage(
    s: Settings, usual: Callable[[int], dict[str, int]]
) -> tuple[HealthStore, dict[str, int], Callable[[], float], pipeline.ChannelHealthStage]:
    """The stage of a pipeline whose detectors learnt two weeks of ``usual(open)`` counts
    a minute (``open``: 1 at opening hours, else 0), stopped on Monday at 09:59; its clock
    reads ``now["ms"]``."""
    board = HealthBoard()
    for minute in range(MONDAY_MIN - 2 * WEEK_MIN, MONDAY_MIN):
        board.learn_minute(minute * MINUTE_MS, usual(int(busy(minute))))
    store = HealthStore(connect(s.redis_url), s.redis_prefix)
    store.commit(board.to_state(), MONDAY_MIN + 10 * 60 - 1, [])
    now = {"ms": 0}
    clock = lambda: now["ms"] / 1000  # noqa: E731
    p = ProfileStore(connect(s.redis_url), s.redis_prefix)
    producer = CheckedProducer(s.kafka_config(), what="test health")
    return store, now, clock, pipeline.health(pipeline_setup(s), p, producer, clock=clock)


def view(channel: str) -> Accepted:
    ev = ProductView(event_id="v", event_time=None, channel=channel, session_id="s", sku="A")  # type: ignore[arg-type]
    return Accepted("c", 0, 0, "clickstream", "product_view", "v", 0, channel, None, {}, ev)


def test_app_browsing_that_stops_is_a_collapse_and_offers_avoid_the_app(
    settings: Settings,
) -> None:
    """The app stops sending events while its few sales trickle in from earlier sessions:
    browsing (views) is the signal that sees it."""
    s = settings
    store, now, clock, h = trained_stage(s, lambda n: {"activity:app": 40 * n, "sales:app": n})
    counts = ChannelCounts(store, clock=clock)
    t = MONDAY_MIN + 10 * 60
    for minute in range(t, t + 4):
        now["ms"] = minute * MINUTE_MS + 30_000
        counts.add([sale("app")])  # no views at all: the app's tracking is dead
        now["ms"] = (minute + 1) * MINUTE_MS + 15_000
        h.due()
    h.close()
    assert [(msg["key"], msg["status"]) for msg in messages(s)] == [("activity:app", "collapsed")]
    assert messages(s)[0]["channel"] == "app"
    assert "app" in h.down() and "web" not in h.down()


def test_made_up_store_ids_do_not_grow_the_minute_counts(settings: Settings) -> None:
    s = settings
    store = HealthStore(connect(s.redis_url), s.redis_prefix)
    minute = MONDAY_MIN
    cap = 50
    before = m.CHANNEL_HEALTH_UNCOUNTED._value.get()
    counts = ChannelCounts(store, clock=lambda: minute * 60.0)
    counts.add([sale("store", "S0")] * 3)  # a real store, counted first
    fake = [sale("store", f"X{i}") for i in range(HealthBoard.MAX_KEYS + 500)]
    counts.add([*fake, sale("web"), view("web")])
    got = store.minutes(minute, minute)[minute]
    stores = [k for k in got if k.startswith("store:")]
    # the cap counts the minute's keys; channel keys (3 here) always get in
    assert len(got) <= HealthBoard.MAX_KEYS + 2 and len(stores) >= HealthBoard.MAX_KEYS - 3
    assert got["sales:store"] == 3 + len(fake) and got["sales:web"] == 1
    assert got["activity:web"] == 1 and got["store:S0"] == 3
    uncounted = len(fake) - (len(stores) - 1)
    assert m.CHANNEL_HEALTH_UNCOUNTED._value.get() - before == uncounted >= 500
    counts.add([sale("store", "S0"), sale("store", "Y")])  # a known store still counts
    got = store.minutes(minute, minute)[minute]
    assert got["store:S0"] == 4 and "store:Y" not in got
    # with a smaller cap, channel keys always get in
    assert store.add(minute + 1, {f"store:Z{i}": 1 for i in range(cap + 5)}, cap) == 5
    assert store.add(minute + 1, {"sales:app": 2, "activity:app": 7}, cap) == 0
    assert len(store.minutes(minute + 1, minute + 1)[minute + 1]) == cap + 2


def test_a_regions_tills_going_down_is_that_regions_collapse(settings: Settings) -> None:
    """Twenty small stores per region, each too quiet to judge alone within minutes: the
    north's network goes down, its region collapses; the south and the channel sell on."""
    s = settings.model_copy(
        update={"store_regions": {f"{r}{i}": r for r in ("north", "south") for i in range(20)}}
    )
    stores = [f"{r}{i}" for r in ("north", "south") for i in range(20)]
    store, now, clock, h = trained_stage(s, lambda n: {
        "sales:store": 40 * n, "region:north": 20 * n, "region:south": 20 * n,
        **{f"store:{k}": n for k in stores}})  # fmt: skip
    counts = ChannelCounts(store, clock=clock, regions=pipeline_setup(s).store_regions)
    t = MONDAY_MIN + 10 * 60
    for minute in range(t, t + 4):
        now["ms"] = minute * MINUTE_MS + 30_000
        counts.add([sale("store", f"south{i}") for i in range(20)])  # the north sells nothing
        now["ms"] = (minute + 1) * MINUTE_MS + 15_000
        h.due()
    h.close()
    got = [(msg["key"], msg["status"]) for msg in messages(s)]
    assert ("region:north", "collapsed") in got
    assert not [k for k, _ in got if k in ("region:south", "sales:store")]
    north = next(msg for msg in messages(s) if msg["key"] == "region:north")
    assert north["channel"] == "store" and north["region"] == "north"
    assert "store" not in h.down()  # the channel still sells: offers still go to stores


def test_a_new_channel_shows_on_the_health_gauge_before_its_first_minute(
    settings: Settings,
) -> None:
    s = settings
    p = ProfileStore(connect(s.redis_url), s.redis_prefix)
    producer = CheckedProducer(s.kafka_config(), what="test health")
    now = {"s": MONDAY_MIN * 60.0 + 5}
    h = pipeline.health(pipeline_setup(s), p, producer, clock=lambda: now["s"])
    counts = ChannelCounts(HealthStore(p.r, p.prefix), clock=lambda: now["s"])
    m.CHANNEL_HEALTH.labels("sales:call_centre").set(7)  # (whatever an earlier test left)
    h.seen(counts.add([sale("call_centre"), sale("store", "S-new")]))
    assert m.CHANNEL_HEALTH.labels("sales:call_centre")._value.get() == 0
    # one store's key waits for its detector (ids come from events: no gauge per made-up id)
    assert "store:S-new" not in {s.labels["key"] for s in m.CHANNEL_HEALTH.collect()[0].samples}
    h.close()


def test_the_count_script_checks_every_count_before_its_first_write(settings: Settings) -> None:
    import redis

    store = HealthStore(connect(settings.redis_url), settings.redis_prefix)
    key = f"{settings.redis_prefix}ch:min:1"
    for bad in (["store:a", 1, "store:b", "x"], ["store:a", 1, "store:b", 0],
                ["store:a", 1, "s" * 300, 1], ["store:a"]):  # fmt: skip
        with pytest.raises(redis.ResponseError, match="INVALID"):
            store._add(keys=[key], args=[10, 100, *bad])
        assert store.r.exists(key) == 0, bad

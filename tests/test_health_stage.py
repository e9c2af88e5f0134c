"""The channel-health stage on real services: counts from every worker per minute in
Redis, the detectors on worker 0, messages on the topic once, across restarts."""

from __future__ import annotations

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
from schemas.events import Sale
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
    store.commit(trained_board().to_state(), MONDAY_MIN - 1, [])
    t = MONDAY_MIN + 10 * 60  # Monday 10:00: the web checkout breaks, the store sells on
    now = {"ms": MONDAY_MIN * MINUTE_MS}
    clock = lambda: now["ms"] / 1000  # noqa: E731

    def stage() -> pipeline.ChannelHealthStage:
        p = ProfileStore(connect(s.redis_url), s.redis_prefix)
        producer = CheckedProducer(s.kafka_config(), what="test health")
        return pipeline.health(pipeline_setup(s), p, producer, clock=clock)

    counts = ChannelCounts(HealthStore(connect(s.redis_url), s.redis_prefix), clock=clock)
    h = stage()
    for minute in range(MONDAY_MIN + 9 * 60, t + 20):
        now["ms"] = minute * MINUTE_MS + 30_000
        web = 0 if t <= minute < t + 10 else 10
        counts.add([sale("web")] * web + [sale("store", "S1")] * 6)
        if minute == t + 5:  # a restart in the middle of the outage
            h.close()
            h = stage()
        now["ms"] = (minute + 1) * MINUTE_MS + 15_000
        h.due()
    h.close()
    got = [(msg["key"], msg["status"]) for msg in messages(s)]
    assert got == [("sales:web", "collapsed"), ("sales:web", "recovered")]
    first = messages(s)[0]
    assert first["channel"] == "web" and first["expected_per_minute"] == pytest.approx(10, abs=1)
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

"""Channel-collapse detection: the detector on streams whose answer is known, and its
evaluation on simulated traffic with a real retailer's shape."""

from __future__ import annotations

import random

import numpy as np

from omnicanal.tools import health_eval
from operators.channel_health import ChannelHealth, hour_of_week

WEEK = 7 * 24 * 60
MONDAY = 4 * 24 * 60  # minutes: the epoch was a Thursday


def shop(h: ChannelHealth, weeks: int, rate: float = 20.0, seed: int = 1) -> list[str]:
    """Open 9:00-17:00 on weekdays, Poisson traffic; returns the events raised."""
    rng = np.random.default_rng(seed)
    events = []
    for minute in range(MONDAY, MONDAY + weeks * WEEK):
        day, tod = (minute - MONDAY) // 1440 % 7, minute % 1440
        lam = rate if day < 5 and 9 * 60 <= tod < 17 * 60 else 0.0
        e = h.learn_one(minute * 60_000, int(rng.poisson(lam)))
        if e:
            events.append(e)
    return events


def test_normal_weeks_with_closed_nights_and_weekends_raise_nothing() -> None:
    assert shop(ChannelHealth(), weeks=6) == []


def test_an_outage_is_not_learnt_as_the_new_normal() -> None:
    h = ChannelHealth()
    shop(h, weeks=3)
    t = MONDAY + 3 * WEEK + 10 * 60  # Monday 10:00
    slot = hour_of_week(t * 60_000)
    before = h.expected[slot]
    events = [h.learn_one((t + i) * 60_000, 0) for i in range(120)]  # two hours of nothing
    assert events.count("collapsed") == 1 and "recovered" not in events
    assert h.expected[slot] == before and h.state == "collapsed"
    back = [h.learn_one((t + 120 + i) * 60_000, 20) for i in range(5)]
    assert "recovered" in back and h.state == "normal"


def test_a_partial_drop_is_a_degradation_then_a_recovery() -> None:
    h = ChannelHealth()
    shop(h, weeks=3)
    t = MONDAY + 3 * WEEK + 11 * 60
    rng = random.Random(2)
    events = [h.learn_one((t + i) * 60_000, sum(rng.random() < 0.3 for _ in range(20)))
              for i in range(30)]  # fmt: skip
    assert "degraded" in events and "collapsed" not in events
    assert events.index("degraded") <= 10  # within ten minutes at 20 events a minute


def test_the_evaluation_meets_its_collapse_and_night_targets() -> None:
    r = health_eval.run(seed=0, weeks=4)
    assert r["detected_share"]["1.0"] == 1.0 and r["detected_share"]["0.8"] >= 0.8
    assert r["delay_minutes_p95"]["1.0"] <= 5  # sales and browsing: the pipeline's signals
    assert r["delay_minutes_p95"]["0.8"] <= 10
    assert r["false_alarms_at_night_or_closed"] == 0
    assert r["false_alarms_per_channel_week"] <= 0.5
    assert sum(r["outages_seeable"].values()) >= 20  # the test measured something


def test_an_alarm_that_lasts_days_ends_in_relearning_the_new_level() -> None:
    """A store closed for good: after ``relearn_minutes`` in alarm the detector forgets the
    old level, stops alarming, and learns whatever comes next from scratch."""
    h = ChannelHealth(relearn_minutes=3 * 1440)
    week = 7 * 1440
    for minute in range(2 * week):
        _ = h.learn_one(minute * 60_000, 20)
    events = [h.learn_one((2 * week + i) * 60_000, 0) for i in range(3 * 1440 + 10)]
    raised = [(i, e) for i, e in enumerate(events) if e]
    assert [e for _, e in raised] == ["collapsed", "relearning"]
    assert raised[1][0] - raised[0][0] + 1 == 3 * 1440  # the collapse is its first minute
    assert h.state == "normal" and max(h.expected) == 0.0
    # silence after relearning is not an alarm; new sales are learnt again
    later = 2 * week + 3 * 1440 + 10
    assert all(h.learn_one((later + i) * 60_000, 0) is None for i in range(week))
    assert ChannelHealth.from_state(h.to_state()).to_state() == h.to_state()

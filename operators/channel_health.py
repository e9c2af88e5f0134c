"""Channel health: is a sales channel (or one store) collapsing right now? Pure logic, no
I/O; one :class:`ChannelHealth` per channel (or store), fed one count per minute.

It learns the channel's expected events per minute for each hour of the week (a running
mean over the first weeks, then an exponential average: the profile follows slow change),
and compares the last 1, 2, 5, 10 and 20 minutes with what was expected:

- **collapsed**: a window expecting at least :attr:`ChannelHealth.min_expected` events saw
  at most 10% of them, and so few that Poisson noise would explain it less than once in
  10^5 (short windows catch a busy channel's silence within minutes, long ones a quiet
  channel's);
- **degraded**: a window of 5 minutes or more saw under half, as improbably;
- **recovered**: back from either, once the last two minutes saw 70% of what they
  expected, for :attr:`confirm` minutes (the long windows remember the outage longer).

A state changes after :attr:`confirm` consecutive minutes agree. Expected quiet (a closed
store at night: nothing expected) raises nothing. The outage does not become the new
normal: minutes that look abnormal, and every minute while an alarm is on, are not learnt.

>>> h = ChannelHealth()
>>> week = 7 * 24 * 60
>>> for minute in range(2 * week):   # two weeks: 30 events a minute from 9:00 to 17:00
...     busy = 9 * 60 <= minute % (24 * 60) < 17 * 60
...     _ = h.learn_one(minute * 60_000, 30 if busy else 0)
>>> t = 2 * week + 10 * 60          # a Monday, 10:00: the tills stop
>>> [h.learn_one((t + i) * 60_000, 0) for i in range(3)]
[None, 'collapsed', None]
>>> [h.learn_one((t + 3 + i) * 60_000, 30) for i in range(4)]  # two good minutes, twice
[None, None, 'recovered', None]
>>> h.learn_one((2 * week + 22 * 60) * 60_000, 0) is None   # 22:00: nothing expected
True
"""

from __future__ import annotations

from collections import deque
from typing import Final, Literal

from scipy.stats import poisson

State = Literal["normal", "degraded", "collapsed"]
Event = Literal["collapsed", "degraded", "recovered"]
MINUTE_MS: Final = 60_000
HOURS_OF_WEEK: Final = 168
#: epoch (1970-01-01) was a Thursday: hour-of-week 0 is Monday 00:00 UTC
_MONDAY_OFFSET_H: Final = 3 * 24
WINDOWS: Final = (1, 2, 5, 10, 20)


def hour_of_week(ms: int) -> int:
    """
    >>> hour_of_week(0), hour_of_week(4 * 86_400_000)   # Thursday 00:00, Monday 00:00
    (72, 0)
    """
    return (ms // 3_600_000 + _MONDAY_OFFSET_H) % HOURS_OF_WEEK


class ChannelHealth:
    """One channel's expected rate per hour of the week, and its health."""

    def __init__(
        self,
        *,
        min_expected: float = 8.0,
        p_value: float = 1e-5,
        confirm: int = 2,
        warm_minutes: int = 120,
        alpha: float = 0.02,
    ) -> None:
        self.min_expected = min_expected
        self.p_value = p_value
        self.confirm = confirm
        #: minutes of each hour-of-week slot averaged plainly before the exponential average
        self.warm_minutes = warm_minutes
        self.alpha = alpha
        self.expected: list[float] = [0.0] * HOURS_OF_WEEK
        self.seen: list[int] = [0] * HOURS_OF_WEEK
        self.state: State = "normal"
        self._recent: deque[tuple[int, float]] = deque(maxlen=max(WINDOWS))
        self._streak: tuple[str, int] = ("normal", 0)

    def _verdict(self) -> State:
        """What the recent windows say, whatever the current state."""
        observed = expected = 0.0
        worst: State = "normal"
        for i, (o, e) in enumerate(reversed(self._recent), start=1):
            observed += o
            expected += e
            if i not in WINDOWS or expected < self.min_expected or observed >= 0.5 * expected:
                continue  # (the cheap tests first: most minutes stop here)
            if poisson.cdf(observed, expected) >= self.p_value:
                continue
            if observed <= 0.1 * expected:
                return "collapsed"
            if i >= 5 and observed < 0.5 * expected:
                worst = "degraded"
        return worst

    def _recovering(self) -> bool:
        """The last two minutes saw at least 70% of what they expected (something was)."""
        last = list(self._recent)[-2:]
        expected = sum(e for _, e in last)
        return expected > 0 and sum(o for o, _ in last) >= 0.7 * expected

    def learn_one(self, minute_ms: int, count: int) -> Event | None:
        """Count one minute (in order; a minute without events is a 0), return the health
        event it causes, if any."""
        slot = hour_of_week(minute_ms)
        known = self.seen[slot] >= 60  # an hour of that slot seen: its expectation counts
        self._recent.append((count, self.expected[slot] if known else 0.0))
        verdict = self._verdict()
        if self.state != "normal" and self._recovering():
            verdict = "normal"  # the long windows still remember the outage: not the minute
        kind, n = self._streak
        self._streak = (verdict, n + 1 if verdict == kind else 1)
        event: Event | None = None
        if self._streak[1] >= self.confirm and verdict != self.state:
            if verdict == "normal":
                event = "recovered"
                # the windows start again: the outage's minutes would raise it again
                keep = list(self._recent)[-self.confirm :]
                self._recent.clear()
                self._recent.extend(keep)
            elif verdict == "collapsed" or self.state == "normal":
                event = verdict
            # collapsed -> degraded: still an alarm; the state follows, no new event
            self.state = verdict
        if self.state == "normal" and verdict == "normal":
            n_seen = self.seen[slot] + 1
            self.seen[slot] = n_seen
            a = 1.0 / n_seen if n_seen <= self.warm_minutes else self.alpha
            self.expected[slot] += a * (count - self.expected[slot])
        return event

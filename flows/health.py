"""Stage "channel health": every worker counts the sales it applies per channel and store,
and the browsing events per digital channel, per wall-clock minute in Redis; worker 0, once
a minute is complete, feeds the counts of all workers to the detectors
(``operators/channel_health.py``) and sends what they raise (collapsed, degraded,
recovered, relearning) to the channel-health topic with an outbox.

Wall-clock minutes, not event time: a channel is down when its events stop arriving. The
detectors' state is written with the minute it reached and the messages, in one
transaction, so a restart goes on where it stopped and never sends a message twice. The
minutes the pipeline did not run at all are skipped, not read as silence (the events of
those minutes are applied late, all at once, when it starts again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

import msgspec
import redis

from flows.outbox import OutboxSender
from monitoring import metrics as m
from operators.channel_health import (
    MINUTE_MS,
    HealthBoard,
    channel_key,
    closes_channel,
    health_counts,
)
from operators.offers import down_channels
from state.connection import StateError, transient
from state.health import HealthStore

log = logging.getLogger(__name__)
#: a minute is read this long after it ends (batches applied at its very end included)
GRACE_MS: Final = 10_000
#: more minutes missing than this: the pipeline was not running; they are skipped
MAX_GAP: Final = 10
#: seconds between reads of the channels Prometheus alerts mark down (``omnicanal webhook``)
EXTERNAL_EVERY: Final = 15.0
_LEVEL: Final = {"normal": 0, "degraded": 1, "collapsed": 2}


class ChannelCounts:
    """Every worker: adds the sales and browsing of each applied batch to its minute's
    counts (at most :attr:`HealthBoard.MAX_KEYS` store keys a minute: see
    :meth:`HealthStore.add`)."""

    def __init__(
        self,
        store: HealthStore,
        clock: Callable[[], float] = time.time,
        regions: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self._clock = clock
        self._regions = regions or {}

    def add(self, applied: Sequence[object]) -> Iterable[str]:
        """Count a batch; the keys it counted."""
        counts = health_counts(applied, self._regions)
        if not counts:
            return ()
        try:
            dropped = self.store.add(
                int(self._clock() * 1000) // MINUTE_MS, counts, HealthBoard.MAX_KEYS
            )
        except (StateError, redis.RedisError) as e:
            why = transient(e)
            if why is None:
                raise
            m.REDIS_WAITS.labels(why).inc()  # a minute short: the detectors see a dip
            return ()
        if dropped:
            m.CHANNEL_HEALTH_UNCOUNTED.inc(dropped)
        return counts.keys()


class ChannelHealthStage:
    """Worker 0: the detectors, one complete minute at a time."""

    def __init__(
        self,
        store: HealthStore,
        sender: OutboxSender,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.out = sender
        self._clock = clock
        state, self._minute = store.load()
        self.board = HealthBoard.from_state(state) if state else HealthBoard()
        #: keys whose gauge this process exports already
        self._exported: set[str] = set()
        for key, st in self.board.states().items():  # restored: shown from the start
            self._export(key, st)
        #: sales channels a Prometheus alert marks down, and when they were read
        self._external: frozenset[str] = frozenset()
        self._external_at = float("-inf")

    def down(self) -> frozenset[str]:
        """Delivery channels offers must avoid now: their sales, or their browsing, collapsed
        (one store's or region's collapse does not close the store channel), or a Prometheus alert
        says their sales stopped (``omnicanal webhook``)."""
        return closed_channels(self.board.states(), self._external)

    def _export(self, key: str, state: str) -> None:
        m.CHANNEL_HEALTH.labels(key).set(_LEVEL[state])
        self._exported.add(key)

    def seen(self, keys: Iterable[str]) -> None:
        """Keys this worker just counted: one the detectors do not know yet is watched from
        its first complete minute, and shown as normal (nothing is expected of it yet)."""
        for key in keys:
            if key not in self._exported and channel_key(key):
                self._export(key, "normal")

    def _read_external(self) -> None:
        now = self._clock()
        if now - self._external_at < EXTERNAL_EVERY:
            return
        self._external_at = now
        try:
            external = self.store.external_down(int(now * 1000))
        except (StateError, redis.RedisError) as e:
            if transient(e) is None:
                raise
            return  # the last figure stands; the next batch tries again
        for channel in external - self._external:
            log.warning("channel health: %s marked down by a Prometheus alert", channel)
        for channel in self._external - external:
            log.info("channel health: %s no longer marked down by a Prometheus alert", channel)
        self._external = external

    def recover(self) -> tuple[int, int]:
        return self.out.recover()

    def due(self) -> None:
        """Learn the minutes completed since the last call."""
        self.out.retry()
        self._read_external()
        done = (int(self._clock() * 1000) - GRACE_MS) // MINUTE_MS - 1
        if self._minute is None or done - self._minute > MAX_GAP:
            if self._minute is not None:
                log.info(
                    "step 'state' (channel health): %d minute(s) without the pipeline "
                    "skipped, not read as silence",
                    done - self._minute,
                )
            self.board.restart()  # the windows start again: the gap is not silence
            if self.out.attempt(self.store.commit, self.board.to_state(), done, []):
                self._minute = done
            return
        if done <= self._minute:
            return
        self.out.attempt(self._learn, self._minute + 1, done)

    def _learn(self, first: int, last: int) -> None:
        counts = self.store.minutes(first, last)
        messages = []
        unwatched = self.board.unwatched
        for minute in range(first, last + 1):
            messages += self.board.learn_minute(minute * MINUTE_MS, counts.get(minute, {}))
        if self.board.unwatched > unwatched:
            log.warning(
                "step 'state' (channel health): %d key(s) not watched, past the cap of %d "
                "(sales from more stores than that, or made-up location ids)",
                self.board.unwatched - unwatched, self.board.max_keys,
            )  # fmt: skip
        raw = [msgspec.json.encode(msg) for msg in messages]
        ids = self.store.commit(self.board.to_state(), last, raw)
        self._minute = last
        if messages:
            self.out.send(ids, [msgspec.to_builtins(msg) for msg in messages])
            for msg in messages:
                m.CHANNEL_HEALTH_EVENTS.labels(msg.status).inc()
                log.warning(
                    "channel health: %s %s (%.1f events/min, usually %.1f)",
                    msg.key, msg.status, msg.observed_per_minute, msg.expected_per_minute,
                )  # fmt: skip
        for key, state in self.board.states().items():
            self._export(key, state)

    def ack(self) -> None:
        self.out.ack()

    def close(self) -> None:
        self.out.flush()


def closed_channels(states: Mapping[str, str], external: Iterable[str]) -> frozenset[str]:
    """The delivery channels to avoid, given the detectors' states and the sales channels a
    Prometheus alert marks down.

    >>> sorted(closed_channels({"sales:web": "collapsed", "store:s1": "collapsed",
    ...     "sales:app": "degraded"}, ["store"]))
    ['store', 'web']
    """
    return down_channels(
        [k.partition(":")[2] for k, st in states.items() if st == "collapsed" and closes_channel(k)]
        + list(external)
    )


class StoredDown:
    """The channels offers must avoid, as the detectors (worker 0) last stored them and the
    alerts ``omnicanal webhook`` marked: for an offer decider that runs apart from the
    workers. Read at most every ``every`` seconds; a Redis that does not answer leaves the
    last answer standing (the decider's own next Redis call then says what is wrong)."""

    def __init__(
        self, store: HealthStore, every: float = 5.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self._every = every
        self._clock = clock
        self._at = float("-inf")
        self._down: frozenset[str] = frozenset()

    def __call__(self) -> frozenset[str]:
        now = self._clock()
        if now - self._at >= self._every:
            self._at = now
            try:
                state, _ = self.store.load()
                external = self.store.external_down(int(now * 1000))
            except (StateError, redis.RedisError) as e:
                if transient(e) is None:
                    raise
                return self._down
            states = HealthBoard.from_state(state).states() if state else {}
            self._down = closed_channels(states, external)
        return self._down

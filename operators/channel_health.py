"""Channel health: is a sales channel (or one store) collapsing right now? Pure logic, no
I/O; one :class:`ChannelHealth` per channel (or store), fed one count per minute.

It learns the channel's expected events per minute for each hour of the week (a running
mean over the first weeks, then an exponential average: the profile follows slow change),
and compares the last 1, 2, 3, 4, 5, 10 and 20 minutes with what was expected:

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
Only an alarm that lasts :attr:`ChannelHealth.relearn_minutes` (3 days) ends in
**relearning**: the old level is forgotten and the new one learnt from scratch (a store
closed for good stops alarming; if its sales come back, they are learnt again).

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
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal

from msgspec import UNSET
from scipy.special import pdtr  # the Poisson CDF (scipy.stats.poisson.cdf's own kernel)

from schemas.envelope import Accepted
from schemas.health import ChannelHealthMessage

State = Literal["normal", "degraded", "collapsed"]
Event = Literal["collapsed", "degraded", "recovered", "relearning"]
MINUTE_MS: Final = 60_000
HOURS_OF_WEEK: Final = 168
#: epoch (1970-01-01) was a Thursday: hour-of-week 0 is Monday 00:00 UTC
_MONDAY_OFFSET_H: Final = 3 * 24
#: the windows tested, in minutes (3 and 4: a channel selling 5 a minute is seen in 4)
WINDOWS: Final = (1, 2, 3, 4, 5, 10, 20)


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
        relearn_minutes: int = 3 * 24 * 60,
    ) -> None:
        self.min_expected = min_expected
        self.p_value = p_value
        self.confirm = confirm
        #: minutes of each hour-of-week slot averaged plainly before the exponential average
        self.warm_minutes = warm_minutes
        self.alpha = alpha
        self.relearn_minutes = relearn_minutes
        #: minutes learnt since the current alarm started (0: no alarm)
        self.alarm_minutes = 0
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
            if pdtr(observed, expected) >= self.p_value:
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
        if self.state == "normal":
            self.alarm_minutes = 0
        else:
            self.alarm_minutes += 1
            if self.alarm_minutes >= self.relearn_minutes:
                self.expected = [0.0] * HOURS_OF_WEEK
                self.seen = [0] * HOURS_OF_WEEK
                self.state, self.alarm_minutes = "normal", 0
                self._recent.clear()
                self._streak = ("normal", 0)
                return "relearning"
        if self.state == "normal" and verdict == "normal":
            n_seen = self.seen[slot] + 1
            self.seen[slot] = n_seen
            a = 1.0 / n_seen if n_seen <= self.warm_minutes else self.alpha
            self.expected[slot] += a * (count - self.expected[slot])
        return event

    def to_state(self) -> dict[str, Any]:
        """JSON-able: :meth:`from_state` restores an equal detector (never pickled)."""
        return {
            "e": [round(x, 4) for x in self.expected],
            "n": self.seen,
            "s": self.state,
            "r": list(self._recent),
            "k": list(self._streak),
            "a": self.alarm_minutes,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **params: Any) -> ChannelHealth:
        """A detector with ``params`` (as given to the constructor) and the learnt ``state``.

        >>> h = ChannelHealth(); _ = h.learn_one(0, 3)
        >>> ChannelHealth.from_state(h.to_state()).to_state() == h.to_state()
        True
        """
        h = cls(**params)
        h.expected = [float(x) for x in state["e"]]
        h.seen = [int(x) for x in state["n"]]
        h.state = state["s"]
        h._recent.extend((int(o), float(e)) for o, e in state["r"])
        h._streak = (str(state["k"][0]), int(state["k"][1]))
        h.alarm_minutes = int(state.get("a", 0))
        return h

    def rates(self) -> tuple[float, float]:
        """Observed and expected events per minute over the last 5 minutes."""
        last = list(self._recent)[-5:]
        n = max(1, len(last))
        return sum(o for o, _ in last) / n, sum(e for _, e in last) / n


#: clickstream events that show a digital channel is in use (``activity:<channel>``)
ACTIVITY: Final = frozenset(
    {"page_view", "product_view", "search", "add_to_cart", "checkout_started"}
)


def health_counts(
    items: Iterable[object], regions: Mapping[str, str] | None = None
) -> dict[str, int]:
    """What :class:`HealthBoard` watches in a batch of applied items: sales per channel
    (``sales:<channel>``), per store (``store:<location>``) and per region of the stores
    (``region:<region>``, for the stores ``regions`` maps), and browsing per channel
    (``activity:<channel>``: views, searches, cart adds, checkouts), a second signal that
    moves long before sales do.

    >>> from schemas.events import ProductView, Sale
    >>> def sale(ch, loc=UNSET):
    ...     return Accepted("t", 0, 0, "transaction", "sale", "e", 0, ch, None, {}, Sale(
    ...         event_id="e", event_time=None, channel=ch, currency="EUR", lines=[],
    ...         location_id=loc))
    >>> view = Accepted("c", 0, 0, "clickstream", "product_view", "v", 0, "app", None, {},
    ...     ProductView(event_id="v", event_time=None, channel="app", session_id="s", sku="A"))
    >>> health_counts([sale("web"), sale("store", "S1"), sale("store", "S1"), view])
    {'sales:web': 1, 'sales:store': 2, 'store:S1': 2, 'activity:app': 1}
    >>> health_counts([sale("store", "S1"), sale("store", "S2")], {"S1": "north"})
    {'sales:store': 2, 'store:S1': 1, 'region:north': 1, 'store:S2': 1}
    """
    regions = regions or {}
    out: dict[str, int] = {}
    for a in items:
        if type(a) is not Accepted or a.channel is None:
            continue
        if a.event_type in ACTIVITY:
            k = "activity:" + a.channel
            out[k] = out.get(k, 0) + 1
            continue
        if a.event_type != "sale":
            continue
        k = "sales:" + a.channel
        out[k] = out.get(k, 0) + 1
        loc = getattr(a.event, "location_id", UNSET)
        if a.channel == "store" and isinstance(loc, str):
            k = "store:" + loc
            out[k] = out.get(k, 0) + 1
            region = regions.get(loc)
            if region is not None:
                k = "region:" + region
                out[k] = out.get(k, 0) + 1
    return out


#: browsing counts are 10-50 times the sales and wider than Poisson (their noise does not
#: shrink with the rate): their detector asks for a far smaller p-value (measured in
#: ``omnicanal evaluate channel-health``: at 1e-5 it tripled the false alarms, at 1e-9 it
#: adds none and still sees a full collapse in 2-3 minutes)
ACTIVITY_P_VALUE: Final = 1e-9


def detector_params(key: str) -> dict[str, Any]:
    """The parameters of a key's detector.

    >>> detector_params("activity:web"), detector_params("sales:web")
    ({'p_value': 1e-09}, {})
    """
    return {"p_value": ACTIVITY_P_VALUE} if key.startswith("activity:") else {}


def channel_key(key: str) -> bool:
    """A key bounded by the contracts or the configuration (channels, regions), not one
    store's (location ids come from events: unbounded)."""
    return not key.startswith("store:")


def closes_channel(key: str) -> bool:
    """A collapse of this key is a whole channel's: its sales or its browsing."""
    return key.startswith(("sales:", "activity:"))


class HealthBoard:
    """One detector per key (``sales:<channel>``, ``store:<location>``,
    ``region:<region>``, ``activity:<channel>``), fed minute by minute; a key seen once is
    watched from then on (a minute without it counts 0).

    At most :attr:`MAX_KEYS` keys are watched: location ids come from events, and a
    producer sending sales from thousands of made-up stores must not grow the detectors'
    state, written every minute, without bound. Keys past the cap are counted in
    :attr:`unwatched`, not watched.

    >>> b = HealthBoard(max_keys=2)
    >>> _ = b.learn_minute(0, {"sales:store": 3, "store:S1": 2, "store:S2": 1})
    >>> sorted(b.detectors), b.unwatched
    (['sales:store', 'store:S1'], 1)
    """

    #: keys watched at most: every sales channel and this many stores, about 3 KB each
    MAX_KEYS: Final = 2000

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self.detectors: dict[str, ChannelHealth] = {}
        self.max_keys = max_keys
        #: keys seen and not watched because of the cap (since this process started)
        self.unwatched = 0

    def learn_minute(self, minute_ms: int, counts: Mapping[str, int]) -> list[ChannelHealthMessage]:
        """Feed one minute's counts; the health messages it causes."""
        # channels before stores: a flood of store keys never pushes a channel out
        for key in sorted(counts, key=lambda k: (not channel_key(k), k)):
            if key in self.detectors:
                continue
            if len(self.detectors) >= self.max_keys:
                self.unwatched += 1
                continue
            self.detectors[key] = ChannelHealth(**detector_params(key))
        out = []
        for key, h in sorted(self.detectors.items()):
            event = h.learn_one(minute_ms, counts.get(key, 0))
            if event is None:
                continue
            observed, expected = h.rates()
            kind, _, name = key.partition(":")
            at = datetime.fromtimestamp(minute_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
            out.append(
                ChannelHealthMessage(
                    message_id=f"{key}:{minute_ms // MINUTE_MS}:{event}",
                    key=key,
                    channel="store" if kind in ("store", "region") else name,
                    location_id=name if kind == "store" else UNSET,
                    region=name if kind == "region" else UNSET,
                    status=event,
                    at=at,
                    observed_per_minute=round(observed, 2),
                    expected_per_minute=round(expected, 2),
                )
            )
        return out

    def restart(self) -> None:
        """Minutes were not observed (the pipeline did not run): the windows start again,
        what was learnt stays."""
        for h in self.detectors.values():
            h._recent.clear()
            h._streak = ("normal", 0)

    def states(self) -> dict[str, str]:
        return {k: h.state for k, h in sorted(self.detectors.items())}

    def to_state(self) -> dict[str, Any]:
        return {k: h.to_state() for k, h in self.detectors.items()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> HealthBoard:
        b = cls()
        b.detectors = {
            k: ChannelHealth.from_state(v, **detector_params(k)) for k, v in state.items()
        }
        return b

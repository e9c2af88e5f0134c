"""The stages of the pipeline after validation, each a unit with one job; ``flows/pipeline.py``
composes them per worker, in order (:class:`flows.pipeline.WorkerPipeline`).

- :class:`Fence` drops what Redis has applied already (offset floors per partition);
- :class:`DeadLetters` sends rejected inputs to the dead-letter topic and waits until the
  broker confirms them;
- :class:`FencedApply` plans the batch (duplicates, erasure suppression, identities, profile
  deltas, stock moves) and applies it with its offsets in one fenced Redis call, retrying
  what Redis reports stale and isolating an event Redis refuses;
- :func:`count_applied` exports the batch's metrics;
- :class:`WitnessCommit` copies the applied offsets to the consumer group, for lag tools.

Stock alerts, the stage between apply and commit, are in ``flows/alerts.py``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

import redis
from confluent_kafka import KafkaError
from msgspec import UNSET

from flows.kafka import CheckedProducer, DeliveryError, Failure, GroupOffsets
from flows.source import STOP
from monitoring import metrics as m
from operators.batch import BatchPlan, plan_batch, suppress
from operators.dedupe import event_key, first_copies
from operators.privacy import PiiHasher
from operators.stock import StockPlan, StockRules, plan_stock
from operators.validate import state_rejected, without_payload
from schemas.envelope import Accepted, Rejected
from schemas.events import line_amount
from state.profiles import (
    ApplyResult,
    ProfileStore,
    ScriptRejectedError,
    StateError,
    StateUnavailableError,
    transient,
)

log = logging.getLogger(__name__)

#: Benchmark instrumentation only. When set, each worker appends to this path (+ ".<pid>")
#: one line per batch, "B <first received ms> <written ms> <events>", and, if
#: OMNICANAL_LATENCY_LOG_EVENTS=1, one line per event, "E <pipeline ms> <end-to-end ms>".
#: Off in production: one check per batch.
LATENCY_LOG_ENV = "OMNICANAL_LATENCY_LOG"
#: Events of one batch that Redis may refuse one by one before the run stops: more is not a
#: bad event but a Redis or omnicanal problem, and would dead-letter good events.
MAX_REJECTED_PER_BATCH = 3
#: Calls of the batch script for one batch before giving up (stale offsets, new erasures,
#: refused links and duplicates each cost one more; Redis waits do not count).
MAX_ATTEMPTS = 10
T = TypeVar("T")
Item = Accepted | Rejected


def count_dropped(counter: Any, before: list[Any], after: list[Any]) -> None:
    """Count, per topic, the items of ``before`` that are not in ``after`` (a subset)."""
    counts: dict[str, int] = {}
    for i in before:
        counts[i.topic] = counts.get(i.topic, 0) + 1
    for i in after:
        counts[i.topic] -= 1
    for topic, n in counts.items():
        if n:
            counter.labels(topic).inc(n)


class RedisWait:
    """How a stage waits for Redis: out of memory, it pauses (doubling up to 30 s) for as
    long as it takes; busy or unreachable, for at most ``budget`` seconds in all, then the
    run stops with the cause. Nothing was written meanwhile, so nothing is lost."""

    def __init__(self, budget: float, where: str) -> None:
        self.budget = budget
        self.where = where
        self._since: float | None = None
        self._delay = 0.5

    def __call__(self, cause: str, e: Exception) -> None:
        now = time.monotonic()
        if self._since is None:
            self._since = now
        waited = now - self._since
        if STOP.is_set():
            raise StateUnavailableError(
                f"step 'state': stopped while waiting for Redis ({cause}: {e}); nothing of "
                "the batch was written, it is read again at the next start"
            ) from e
        if cause != "out_of_memory" and waited > self.budget:
            raise StateUnavailableError(
                f"step 'state': Redis at {self.where} {cause} for {waited:.0f}s "
                f"(OMNICANAL_REDIS_RETRY_SECONDS={self.budget:.0f}): {e}. Stopping; nothing "
                "of the batch was written, so restarting once Redis is back loses nothing."
            ) from e
        m.REDIS_WAITS.labels(cause).inc()
        m.REDIS_WAITING.set(1)
        log.warning(
            "step 'state': Redis %s (%s); waiting %.1fs before trying the batch again",
            cause.replace("_", " "),
            e,
            self._delay,
        )
        time.sleep(self._delay)
        self._delay = min(30.0, self._delay * 2)

    def reset(self) -> None:
        if self._since is not None:
            m.REDIS_WAITING.set(0)
        self._since = None
        self._delay = 0.5

    def run(self, call: Callable[[], T]) -> T:
        """Run a Redis call, waiting out Redis being busy, full or briefly unreachable."""
        while True:
            try:
                out = call()
            except (StateError, redis.RedisError) as e:
                why = transient(e)
                if why is None:
                    raise
                self(why, e)
            else:
                self.reset()
                return out


class Fence:
    """Stage "fence": the last offset Redis has applied per partition (its floor), and the
    items of a batch above it. Floors come from the run's plan (so that Redis going back in
    time between the plan and a partition's first batch is caught), else from Redis when a
    partition is first seen (a partition the plan starts at the earliest or latest offset,
    or one added since the plan); each applied batch raises them. What is at or below its
    floor was applied before a crash: it is dropped, counted as replayed, never applied
    twice.

    ``later``: the plan's partitions without a floor. All of their floors are read with the
    first one needed, in one call: that first batch has no script in Redis yet, whereas a
    partition first seen a few batches later would wait for the script sent ahead."""

    def __init__(
        self,
        store: ProfileStore,
        wait: RedisWait,
        floors: dict[str, int],
        later: Iterable[str] = (),
    ) -> None:
        self._store = store
        self._wait = wait
        #: last offset known applied in Redis per ``topic:partition`` (-1: none)
        self.floors: dict[str, int] = dict(floors)
        self._later = [p for p in later if p not in self.floors]

    def fresh(self, items: list[Item]) -> list[Item]:
        """The items not applied yet (loading the floors of partitions seen first)."""
        parts = {f"{i.topic}:{i.partition}" for i in items}
        unknown = [p for p in parts if p not in self.floors]
        if unknown:
            unknown += [p for p in self._later if p not in self.floors and p not in parts]
            self._later = []
            stored = self._wait.run(lambda: self._store.load_offsets(unknown))
            for p in unknown:
                self.floors[p] = stored.get(p, -1)
        return self.keep_fresh(items)

    def keep_fresh(self, items: list[Item]) -> list[Item]:
        floors = self.floors
        fresh = [i for i in items if i.offset > floors[f"{i.topic}:{i.partition}"]]
        if len(fresh) != len(items):
            count_dropped(m.REPLAYED, items, fresh)
        return fresh


class DeadLetters:
    """Stage "dead letters": produce the batch's rejected inputs and wait until the broker
    confirms every one. What it does not confirm is sent again (on a fresh producer, with
    backoff) until it is, or until the run is stopped; a record the broker refuses as too
    large is sent again without its payload."""

    def __init__(self, producer: CheckedProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    def send(self, rejected: list[Rejected]) -> None:
        if not rejected:
            return
        t0 = time.perf_counter()
        todo: list[tuple[Rejected, bytes]] = [(r, r.record) for r in rejected]
        delay = 0.5
        while todo:
            failed: list[tuple[Rejected, bytes]] = []
            for r, record in todo:

                def lost(
                    f: Failure,
                    r: Rejected = r,
                    record: bytes = record,
                    failed: list[tuple[Rejected, bytes]] = failed,
                ) -> None:
                    code, text = f
                    if code == KafkaError.MSG_SIZE_TOO_LARGE and b'"payload_b64":""' not in record:
                        failed.append((r, without_payload(record, text)))
                    else:
                        failed.append((r, record))

                self._producer.produce(self._topic, record, r.dlq_key, on_failed=lost)
            self._producer.flush()
            if not failed:
                break
            m.BROKER_RETRIES.labels("dead_letters").inc(len(failed))
            if STOP.is_set():
                raise DeliveryError(
                    f"step 'state': stopped with {len(failed)} dead letter(s) the broker did "
                    "not confirm; their offsets were not stored, they are read again at the "
                    "next start"
                )
            log.warning(
                "step 'state': the broker did not confirm %d dead letter(s); sending them "
                "again in %.1fs",
                len(failed),
                delay,
            )
            time.sleep(delay)
            delay = min(30.0, delay * 2)
            self._producer.reset()
            todo = failed
        m.BATCH_SECONDS.labels("dead_letters").observe(time.perf_counter() - t0)


@dataclass
class Applied:
    """What :class:`FencedApply` did with a batch."""

    #: the items applied (duplicates left out), dead letters included
    items: list[Item] = field(default_factory=list)
    #: SKUs whose stock moved: the stock-alerts stage evaluates them
    moved: list[str] = field(default_factory=list)
    #: next offset per partition now covered by Redis (for the witness commit)
    offsets: dict[str, int] = field(default_factory=dict)
    #: when Redis had it all (epoch ms; 0: nothing to apply)
    at_ms: float = 0.0


class FencedApply:
    """Stage "plan and apply": the batch's effects and its offsets in one Redis call.

    Each attempt plans the batch with the operators (first copies of duplicated event ids,
    events of erased people suppressed, identities linked, one profile delta per customer,
    stock moves) and runs the batch script, which checks the offsets against Redis's before
    its first write. Redis may answer that it is ahead for a partition (another writer, or a
    reply lost after the script ran: the items it has are dropped), that someone was erased
    since the tombstones were loaded, that an identity link is refused, or that events are
    duplicates: the batch is planned again, at most :data:`MAX_ATTEMPTS` times. A batch the
    script refuses is split in halves down to the one event Redis refuses, which becomes a
    ``state_rejected`` dead letter: one event never stops the pipeline.

    A batch goes through :meth:`plan` (pure), :meth:`start` (the first call is sent from a
    thread of its own, and Redis runs it while the worker reads the next batch) and
    :meth:`finish` (the reply, and every further attempt, on the worker's thread).
    """

    def __init__(
        self,
        store: ProfileStore,
        fence: Fence,
        dead_letters: DeadLetters,
        wait: RedisWait,
        stock_rules: StockRules,
        hasher: PiiHasher | None = None,
    ) -> None:
        self._store = store
        self._fence = fence
        self._dead_letters = dead_letters
        self._wait = wait
        self._stock_rules = stock_rules
        self._hasher = hasher
        #: events of the current batch Redis refused one by one (see :meth:`_apply_or_split`)
        self._rejected_in_batch = 0
        #: erasure tombstones (identifier -> erasure ms) and the version they belong to
        self._erasures, self._erased = wait.run(store.erased)
        #: the thread that sends a batch's first call ahead (:meth:`start`), made on first use
        self._executor: ThreadPoolExecutor | None = None

    def _apply_or_split(
        self, batch: list[Item], done: Applied, first: _FirstCall | None = None
    ) -> list[Item]:
        """Apply ``batch``; if the script refuses it, apply each half (list order keeps every
        partition's offsets in order), down to the one event that Redis refuses."""
        try:
            return self._apply(batch, done, first)
        except ScriptRejectedError as e:
            accepted = [i for i in batch if type(i) is Accepted]
            if len(accepted) <= 1 and len(batch) >= 1:
                if not accepted:
                    raise  # only offsets and dead letters: not an event's fault
                self._rejected_in_batch += 1
                if self._rejected_in_batch > MAX_REJECTED_PER_BATCH:
                    raise ScriptRejectedError(
                        f"step 'state': Redis refused {self._rejected_in_batch} events of one "
                        f"batch one by one ({e}). That is not a bad event but Redis or "
                        "omnicanal (a Redis older than 6.2? a script error?): stopping rather "
                        "than dead-lettering good events."
                    ) from e
                a = accepted[0]
                log.error(
                    "step 'state': Redis refused event %s:%d:%d (%s); dead-lettered",
                    a.topic,
                    a.partition,
                    a.offset,
                    e,
                )
                dead = state_rejected(a, str(e), self._hasher)
                self._dead_letters.send([dead])
                return self._apply([dead if i is a else i for i in batch], done)
            half = len(batch) // 2
            return self._apply_or_split(batch[:half], done) + self._apply_or_split(
                batch[half:], done
            )

    def plan(self, batch: list[Item]) -> _Attempt:
        """Plan the first attempt of ``batch`` (no Redis): done while Redis still works on
        the previous batch, and given to :meth:`start`."""
        t0 = time.perf_counter()
        a = _Attempt()
        self._plan(batch, a)
        a.plan_s = time.perf_counter() - t0
        return a

    def start(self, batch: list[Item], planned: _Attempt | None = None) -> Pending:
        """Send the first call of the batch script for ``batch`` without waiting for the
        reply: Redis works on it (on its own core) while this thread goes on to read,
        validate and plan the next batch. :meth:`finish` it before the next :meth:`start`
        and before anything that must see this batch.

        The call carries the current floors, so the previous batch must be finished first;
        ``planned`` (:meth:`plan`) is planned again if that batch changed what it depends
        on (floors raised by a stale reply, new erasures). Only the first call is sent
        ahead: a reply that asks for another attempt (stale offsets, new erasures, refused
        links, duplicates), a Redis error or a refusal is handled by :meth:`finish`, on this
        thread, exactly as without the overlap."""
        self._rejected_in_batch = 0
        fresh = self._fence.keep_fresh(batch)
        if planned is None or len(fresh) != len(batch) or planned.erasures != self._erasures:
            planned = self.plan(fresh)
        parts = self._parts(fresh)
        if not parts:
            return Pending(fresh, None)
        first = _FirstCall(parts, planned)
        first.future = self._ahead().submit(self._timed_call, parts, planned)
        return Pending(fresh, first)

    def finish(self, pending: Pending) -> Applied:
        """Wait for :meth:`start`'s call and complete the batch (retries, refusals)."""
        done = Applied()
        first = pending.first
        call_s = 0.0
        f = first.future if first is not None else None
        if f is not None and f.exception() is None:  # (waits for the reply)
            call_s = f.result()[1]
        t0 = time.perf_counter()
        done.items = self._apply_or_split(pending.batch, done, first)
        # the stage's own time: planning, the script's call, and what the reply asked for
        # (not the time this thread spent on other stages meanwhile)
        plan_s = first.attempt.plan_s if first is not None else 0.0
        m.BATCH_SECONDS.labels("state").observe(plan_s + call_s + time.perf_counter() - t0)
        return done

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _ahead(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="omnicanal-apply")
        return self._executor

    def _parts(self, batch: list[Item]) -> list[tuple[str, int, int, int]]:
        """(``topic:partition``, floor, highest offset, its Kafka time) per partition."""
        floors = self._fence.floors
        ranges: dict[str, Item] = {}
        for i in batch:
            name = f"{i.topic}:{i.partition}"
            top = ranges.get(name)
            if top is None or i.offset > top.offset:
                ranges[name] = i
        return [(name, floors[name], i.offset, i.kafka_ts_ms) for name, i in ranges.items()]

    def _plan(self, batch: list[Item], a: _Attempt) -> None:
        """Plan one attempt of ``batch`` into ``a`` (pure: no Redis)."""
        accepted = [i for i in batch if type(i) is Accepted and id(i) not in a.dropped]
        dedupe: list[tuple[int, int]] = []
        if self._store.dedupe_window_ms:
            keys = a.keys
            for e in accepted:
                k = keys.get(id(e))
                if k is None:
                    k = keys[id(e)] = event_key(e.contract, e.event_id, e.ts_ms)
                dedupe.append(k)
            first, later = first_copies(dedupe)
            if later:
                _drop_duplicates([accepted[j] for j in later], a.dropped)
                accepted = [accepted[j] for j in first]
                dedupe = [dedupe[j] for j in first]
        a.accepted = accepted
        a.dedupe = dedupe
        a.kept, a.suppressed = suppress(accepted, self._erased)
        a.erasures = self._erasures
        a.plan = plan_batch(a.kept, self._store.rules, a.split)
        # Stock counts every sale, an erased customer's too: the goods left the shelf.
        a.stock = plan_stock(accepted, self._stock_rules)

    def _call(self, parts: list[tuple[str, int, int, int]], a: _Attempt) -> ApplyResult:
        return self._store.apply(
            parts,
            a.plan.rows,
            refusals=a.plan.refusals,
            erasures=a.erasures,
            suppressed=a.suppressed,
            stock=a.stock.to_payload() if a.stock else None,
            dedupe=a.dedupe,
        )

    def _timed_call(
        self, parts: list[tuple[str, int, int, int]], a: _Attempt
    ) -> tuple[ApplyResult, float, float]:
        """The call, its seconds, and when its reply came (epoch ms)."""
        t0 = time.perf_counter()
        res = self._call(parts, a)
        return res, time.perf_counter() - t0, time.time() * 1000

    def _apply(
        self, batch: list[Item], done: Applied, first: _FirstCall | None = None
    ) -> list[Item]:
        """Apply ``batch`` with as many attempts as Redis asks for; ``first``: the first
        attempt, planned and sent already (its reply is awaited here)."""
        floors = self._fence.floors
        a = first.attempt if first is not None else _Attempt()
        retried = False  # a transport error may hide a call that went through
        attempts = 0
        while attempts < MAX_ATTEMPTS:
            replied_ms = 0.0  # (when the reply came, for a call sent ahead)
            try:
                if first is not None:
                    parts, future, first = first.parts, first.future, None
                    assert future is not None
                    res, _, replied_ms = future.result()
                else:
                    parts = self._parts(batch)
                    if not parts:
                        return []
                    self._plan(batch, a)
                    res = self._call(parts, a)
            except (StateError, redis.RedisError) as e:
                why = transient(e)
                if why is None:
                    raise
                self._wait(why, e)
                retried = retried or why == "unreachable"
                continue
            self._wait.reset()
            attempts += 1
            plan, stock, accepted = a.plan, a.stock, a.accepted
            if res.ok:
                for name, _, hi, _ in parts:
                    floors[name] = hi
                    done.offsets[name] = hi + 1
                    topic, p = name.rsplit(":", 1)
                    m.APPLIED_OFFSET.labels(topic, p).set(hi)
                _count_identity(res.new_customers, res.merges, res.linked, plan.refusals)
                for topic, n in plan.anonymous.items():
                    m.ANONYMOUS_EVENTS.labels(topic).inc(n)
                if a.suppressed:
                    count_dropped(m.SUPPRESSED_EVENTS, accepted, a.kept)
                count_stock(stock, res.shrinkage, res.late_counts)
                done.moved = list(res.to_evaluate)
                done.at_ms = replied_ms or time.time() * 1000
                return [i for i in batch if id(i) not in a.dropped]
            if res.stale is not None:
                if retried and all(res.stale.get(n, -1) >= hi for n, _, hi, _ in parts):
                    # Our own call went through before its reply was lost: it is applied.
                    floors.update(res.stale)
                    done.moved = list(stock.touched)
                    done.at_ms = time.time() * 1000
                    return [i for i in batch if id(i) not in a.dropped]
                # Redis is ahead for some parts (another writer, or a reply lost in a
                # reconnect after the script ran): drop what it already has and retry.
                floors.update(res.stale)
                batch = self._fence.keep_fresh(batch)
            elif res.erasures is not None:
                # A customer was erased since the tombstones were loaded.
                self._erasures, self._erased = self._wait.run(self._store.erased)
            elif res.refused:
                for row, reason in res.refused.items():
                    a.split[plan.keys[row]] = reason
            elif res.duplicates:
                _drop_duplicates(
                    [e for e, k in zip(accepted, a.dedupe, strict=True) if k[1] in res.duplicates],
                    a.dropped,
                )
        raise RuntimeError(
            f"step 'state': the batch could not be applied in {MAX_ATTEMPTS} attempts: Redis "
            "kept reporting newer offsets, new erasures, refused links or duplicates. Is "
            "another omnicanal pipeline with the same Redis prefix reading the same "
            "partitions?"
        )


@dataclass
class _Attempt:
    """One planned call of the batch script, and what carries over to the next attempt."""

    #: component key -> reason Redis refused its link (applied unlinked next time)
    split: dict[str, str] = field(default_factory=dict)
    #: id() of duplicates: their offsets count, not their effects
    dropped: set[int] = field(default_factory=set)
    #: id() of an event -> its dedupe key (computed once per batch)
    keys: dict[int, tuple[int, int]] = field(default_factory=dict)
    accepted: list[Accepted] = field(default_factory=list)
    dedupe: list[tuple[int, int]] = field(default_factory=list)
    kept: list[Accepted] = field(default_factory=list)
    suppressed: int = 0
    erasures: int = 0
    plan: BatchPlan = field(default_factory=BatchPlan)
    stock: StockPlan = field(default_factory=StockPlan)
    #: seconds spent planning the first attempt
    plan_s: float = 0.0


@dataclass
class _FirstCall:
    """The first attempt of a batch, planned; ``future``: its call, when sent ahead."""

    parts: list[tuple[str, int, int, int]]
    attempt: _Attempt
    future: Future[tuple[ApplyResult, float, float]] | None = None


@dataclass
class Pending:
    """A batch whose first call of the batch script was sent (:meth:`FencedApply.start`)."""

    batch: list[Item]
    first: _FirstCall | None


def _drop_duplicates(copies: list[Accepted], dropped: set[int]) -> None:
    counts: dict[str, int] = {}
    for a in copies:
        dropped.add(id(a))
        counts[a.topic] = counts.get(a.topic, 0) + 1
    for topic, n in counts.items():
        m.DUPLICATE_EVENTS.labels(topic).inc(n)


def _count_identity(new: int, merges: int, linked: int, refusals: list[list[str]]) -> None:
    if new:
        m.NEW_CUSTOMERS.inc(new)
    if merges:
        m.IDENTITY_MERGES.inc(merges)
    if linked:
        m.IDENTITY_LINKS.inc(linked)
    for reason, *_ in refusals:
        m.IDENTITY_REFUSALS.labels(reason).inc()


def count_stock(plan: StockPlan, shrinkage: int, late: int) -> None:
    """Metrics of the stock moves of an applied batch."""
    for t, n in plan.counts.items():
        m.STOCK_EVENTS.labels(t).inc(n)
    if plan.unlocated:
        m.STOCK_UNLOCATED.inc(plan.unlocated)
    if shrinkage > 0:
        m.STOCK_SHRINKAGE_UNITS.inc(shrinkage)
    if late:
        m.STOCK_LATE_COUNTS.inc(late)


def count_applied(applied: list[Item]) -> None:
    """Stage "metrics": events by topic, channel and type; dead letters by reason; orders,
    revenue and units sold by channel; the event-time lag of each topic's newest applied
    event, and every applied event's latency (event time to now) in a histogram."""
    events: dict[tuple[str, str, str], int] = {}
    dead: dict[tuple[str, str], int] = {}
    newest: dict[str, int] = {}
    orders: dict[str, int] = {}
    revenue: dict[tuple[str, str], int] = {}
    units: dict[str, int] = {}
    latency: dict[str, list[float]] = {}
    now_ms = time.time() * 1000
    for i in applied:
        if isinstance(i, Accepted):
            lat = latency.get(i.topic)
            if lat is None:
                lat = latency[i.topic] = []
            lat.append(max(0.0, now_ms - i.ts_ms) / 1000)
            k = (i.topic, i.channel or "none", i.event_type)
            events[k] = events.get(k, 0) + 1
            if i.event_type == "sale" and i.channel is not None:
                ch = i.channel
                orders[ch] = orders.get(ch, 0) + 1
                kr = (ch, i.event.currency)
                revenue[kr] = revenue.get(kr, 0) + sum(line_amount(x) for x in i.event.lines)
                units[ch] = units.get(ch, 0) + sum(
                    x.quantity for x in i.event.lines if x.kind == "product" or x.kind is UNSET
                )
            if i.ts_ms > newest.get(i.topic, 0):
                newest[i.topic] = i.ts_ms
        else:
            kd = (i.topic, i.reason)
            dead[kd] = dead.get(kd, 0) + 1
    for k, n in events.items():
        m.EVENTS.labels(*k).inc(n)
    for kd, n in dead.items():
        m.DEAD_LETTERS.labels(*kd).inc(n)
    for ch, n in orders.items():
        m.ORDERS.labels(ch).inc(n)
        m.ITEMS_SOLD.labels(ch).inc(units[ch])
    for kr, amount in revenue.items():
        if amount > 0:  # a counter only goes up (refund lines may make a sale negative)
            m.REVENUE.labels(*kr).inc(amount)
    for topic, ts in newest.items():
        m.EVENT_LAG_SECONDS.labels(topic).set((now_ms - ts) / 1000)
    for topic, values in latency.items():
        m.observe_many(m.EVENT_LATENCY.labels(topic), values)


class WitnessCommit:
    """Stage "commit": copies the offsets Redis covers to the consumer group, at most once
    per ``interval``. Redis is the source of truth (a restart reads its offsets); the
    group's copy is a witness for lag tools (``kafka-consumer-groups``, Burrow, exporters),
    so a commit that fails loses nothing."""

    def __init__(self, group: GroupOffsets, interval: float = 1.0) -> None:
        self._group = group
        self._interval = interval
        self._last = -math.inf  # the first commit goes at once, whatever the uptime
        self._pending: dict[str, int] = {}

    def after(self, offsets: dict[str, int], *, force: bool = False) -> None:
        self._pending.update(offsets)
        now = time.monotonic()
        if self._pending and (force or now - self._last >= self._interval):
            self._group.commit(self._pending, asynchronous=not force)
            self._pending = {}
            self._last = now

    def close(self) -> None:
        self.after({}, force=True)
        self._group.close()


class LatencyLog:
    """Benchmark instrumentation (:data:`LATENCY_LOG_ENV`): None unless asked for."""

    def __init__(self, out: IO[str], events: bool) -> None:
        self._out = out
        self._events = events

    @classmethod
    def from_env(cls) -> LatencyLog | None:
        path = os.environ.get(LATENCY_LOG_ENV)
        if not path:
            return None
        events = os.environ.get("OMNICANAL_LATENCY_LOG_EVENTS") == "1"
        return cls(open(f"{path}.{os.getpid()}", "a"), events)

    def write(self, applied: list[Item], at_ms: float | None = None) -> None:
        """Log a batch Redis had all of at ``at_ms`` (default: now)."""
        now = at_ms or time.time() * 1000
        accepted = [a for a in applied if isinstance(a, Accepted)]
        if not accepted:
            return
        first = min(a.received_ms for a in accepted)
        lines = [f"B {first:.3f} {now:.3f} {len(applied)}\n"]
        if self._events:
            lines += [f"E {now - a.received_ms:.3f} {now - a.kafka_ts_ms:.3f}\n" for a in accepted]
        self._out.write("".join(lines))
        self._out.flush()

    def close(self) -> None:
        self._out.close()

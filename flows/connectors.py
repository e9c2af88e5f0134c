"""Bytewax connectors of the pipeline: an offset-fenced Kafka source and the state sink.

The source reads each topic-partition with ``assign()`` from an explicit start offset
(resolved from Redis before the flow starts) and can stop at the end of the input.
The sink applies a worker's whole batch: dead letters first (confirmed by the broker),
then one fenced Redis call that resolves the batch's identities, applies the profile
deltas and moves stock with the offsets they cover (``operators/batch.py`` and
``operators/stock.py`` plan it); then the SKUs whose stock moved are evaluated for stock
alerts (:class:`StockAlerts`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import orjson
import redis
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from monitoring import metrics as m
from omnicanal.kafka import CheckedProducer, DeliveryError, Failure, GroupOffsets, split_part
from operators.batch import plan_batch, suppress
from operators.dedupe import event_key, first_copies
from operators.privacy import PiiHasher
from operators.stock import StockPlan, StockRules, evaluate, plan_stock, warm_up
from operators.validate import Accepted, Rejected, state_rejected, without_payload
from state.profiles import (
    ProfileStore,
    ScriptRejectedError,
    StateError,
    StateUnavailableError,
    redact_url,
    transient,
)
from state.stock import StockStore

log = logging.getLogger(__name__)

#: Benchmark instrumentation only. When set, each sink appends to this path (+ ".<pid>")
#: one line per batch, "B <first received ms> <written ms> <events>", and, if
#: OMNICANAL_LATENCY_LOG_EVENTS=1, one line per event, "E <pipeline ms> <end-to-end ms>".
#: Off in production: one check per batch.
LATENCY_LOG_ENV = "OMNICANAL_LATENCY_LOG"

#: Set by the SIGTERM/SIGINT handler: sources end their partitions and the flow drains.
STOP = threading.Event()
#: Events of one batch that Redis may refuse one by one before the run stops: more is not a
#: bad event but a Redis or omnicanal problem, and would dead-letter good events.
MAX_REJECTED_PER_BATCH = 3
#: Calls of the batch script for one batch before giving up (stale offsets, new erasures,
#: refused links and duplicates each cost one more; Redis waits do not count).
MAX_ATTEMPTS = 10
T = TypeVar("T")
_IDLE = timedelta(milliseconds=5)
_FULL = timedelta(milliseconds=1)


class InFlight:
    """Backpressure Bytewax lacks: events consumed by this worker's sources and not yet
    written by its sink. Sources pause above ``limit``, so memory stays bounded whatever
    the backlog. Source and sink of a worker run in one thread (nothing is exchanged
    between workers), so a plain counter is enough."""

    limit = 20_000
    count = 0


class IdleWork:
    """Work a worker's sink defers while input flows (e.g. alert evaluation, at most once
    per interval), run by the worker's sources when their input is idle, so that nothing
    waits for the next event. Sources and sink of a worker share its thread: per thread."""

    _local = threading.local()

    @classmethod
    def register(cls, hook: Callable[[], None]) -> None:
        hooks = getattr(cls._local, "hooks", None)
        if hooks is None:
            hooks = cls._local.hooks = []
        hooks.append(hook)

    @classmethod
    def unregister(cls, hook: Callable[[], None]) -> None:
        hooks = getattr(cls._local, "hooks", [])
        if hook in hooks:
            hooks.remove(hook)

    @classmethod
    def run(cls) -> None:
        for hook in list(getattr(cls._local, "hooks", ())):
            hook()


EARLIEST = OFFSET_BEGINNING
LATEST = OFFSET_END


def _count_dropped(counter: Any, before: list[Any], after: list[Any]) -> None:
    """Count, per topic, the items of ``before`` that are not in ``after`` (a subset)."""
    counts: dict[str, int] = {}
    for i in before:
        counts[i.topic] = counts.get(i.topic, 0) + 1
    for i in after:
        counts[i.topic] -= 1
    for topic, n in counts.items():
        if n:
            counter.labels(topic).inc(n)


def owner(part: str, worker_count: int) -> int:
    """The worker that reads a ``topic:partition``: a topic's partitions go round the
    workers from a start of the topic's own, so that each topic spreads evenly and a
    partition added later never moves an existing one to another worker.

    >>> [owner(f"clicks:{p}", 3) for p in range(6)]
    [0, 1, 2, 0, 1, 2]
    """
    topic, partition = split_part(part)
    return (zlib.crc32(topic.encode()) + partition) % worker_count


def worker_share(parts: Iterable[str], worker_index: int, worker_count: int) -> list[str]:
    """The input partitions one worker reads (:func:`owner`), in topic and partition order.

    >>> parts = [f"{t}:{p}" for t in ("clicks", "sales") for p in range(4)]
    >>> worker_share(parts, 0, 2), worker_share(parts, 1, 2)
    (['clicks:1', 'clicks:3', 'sales:0', 'sales:2'], ['clicks:0', 'clicks:2', 'sales:1', 'sales:3'])
    >>> worker_share(["t:10", "t:9", "t:2"], 0, 1)
    ['t:2', 't:9', 't:10']
    """
    return sorted((p for p in parts if owner(p, worker_count) == worker_index), key=split_part)


def describe_share(parts: Iterable[str]) -> str:
    """A short description of a worker's partitions for its start-up log line.

    >>> describe_share(["omnicanal.sales:2", "omnicanal.sales:0", "omnicanal.sales:1", "x:5"])
    '4 partitions: omnicanal.sales 0-2, x 5'
    >>> describe_share([])
    'no partitions'
    """
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(map(split_part, parts)):
        by_topic.setdefault(topic, []).append(partition)
    if not by_topic:
        return "no partitions"
    shown = []
    for topic, ps in by_topic.items():
        runs: list[list[int]] = []
        for p in ps:
            if runs and p == runs[-1][-1] + 1:
                runs[-1].append(p)
            else:
                runs.append([p])
        shown.append(
            topic + " " + ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
        )
    n = sum(map(len, by_topic.values()))
    return f"{n} partition{'s' if n != 1 else ''}: " + ", ".join(shown)


class InputError(RuntimeError):
    """An input partition cannot be read on from where the pipeline is: stop, say why."""


class _KafkaWorkerPart(StatelessSourcePartition[Any]):
    """One librdkafka consumer for all of a worker's partitions (``assign()``, never a
    group join). A consumer per partition cost memory (threads, buffers and a prefetch
    queue each) and a poll per partition per activation.

    Every ``check_every`` seconds it looks for partitions added to its topics and reads
    those in its share from ``new_start``. A position that Kafka no longer holds (retention
    passed, topic recreated) and a topic that disappears stop the run with the cause: the
    consumer never jumps to another offset by itself (``auto.offset.reset=error``)."""

    def __init__(
        self,
        config: dict[str, Any],
        starts: dict[str, int],
        batch_size: int,
        until_eof: bool,
        *,
        share: Callable[[Iterable[str]], list[str]] | None = None,
        topics: Iterable[str] = (),
        new_start: int = EARLIEST,
        check_every: float = 30.0,
    ) -> None:
        self._until_eof = until_eof
        self._parts = set(starts)
        #: with ``until_eof``, partitions closed at their end: what arrives after it is left
        #: for the next run; the worker's input ends when all its partitions are closed
        self._closed: set[str] = set()
        self._batch_size = batch_size
        self._idle_until: datetime | None = None
        self._share = share
        self._topics = sorted(set(topics))
        self._new_start = new_start
        self._check_every = check_every
        self._next_check = time.monotonic() + check_every
        self._c: Consumer | None = None
        if not starts and not (share and self._topics):
            return
        self._c = Consumer(
            {
                # Latency defaults (overridable through OMNICANAL_KAFKA_OPTIONS): an empty
                # fetch otherwise triggers fetch.error.backoff.ms (500 ms by default), which
                # dominates end-to-end latency on quiet partitions. A short fetch wait
                # matters now that one fetch carries all of a worker's partitions: with the
                # local broker, 100 ms gave batches every ~40 ms and an end-to-end p50 of
                # 45-50 ms at 5,000 events/s, 25 ms halves it (it slows the draining of a
                # deep backlog on that broker: README, Performance).
                "fetch.wait.max.ms": 25,
                "fetch.error.backoff.ms": 10,
                # Bounded prefetch: librdkafka queues up to 64 MB and fetches up to 50 MB at
                # a time by default, so memory grew with the backlog. This consumer has one
                # queue for all its partitions; 4 MB keeps the worker fed.
                "queued.max.messages.kbytes": 4096,
                "fetch.max.bytes": 2 * 1048576,
                **config,
                "group.id": "omnicanal-reader",  # required by librdkafka; never joined
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": until_eof,
                # Never jump silently: an offset Kafka no longer holds is an error.
                "auto.offset.reset": "error",
            }
        )
        if starts:
            self._c.assign([TopicPartition(*split_part(p), s) for p, s in starts.items()])

    def next_batch(self) -> list[Any]:
        if STOP.is_set() or (
            self._until_eof and self._parts and len(self._closed) == len(self._parts)
        ):
            raise StopIteration
        if self._c is None:
            raise StopIteration
        if InFlight.count >= InFlight.limit:
            self._idle_until = datetime.now().astimezone() + _FULL
            return []
        if self._share is not None and time.monotonic() >= self._next_check:
            self._check_partitions()
        if self._until_eof and not self._parts:
            raise StopIteration
        msgs = self._c.consume(self._batch_size, 0.0)
        out = []
        closed = self._closed
        for msg in msgs:
            err = msg.error()
            if err is None:
                if not closed or f"{msg.topic()}:{msg.partition()}" not in closed:
                    out.append(msg)
                continue
            part = f"{msg.topic()}:{msg.partition()}"
            code = err.code()
            if code == KafkaError._PARTITION_EOF:
                if part in self._parts and part not in closed:
                    closed.add(part)
                    self._c.pause([TopicPartition(*split_part(part))])
            elif code in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
                raise InputError(
                    f"step 'input', partition {part}: the next offset to read is not in Kafka "
                    f"({err.str()}). Retention removed events this pipeline had not read, or "
                    "the topic was deleted and recreated. Nothing was skipped: the run stops. "
                    "If you accept the loss (or the topic was recreated on purpose), run "
                    f"`omnicanal offsets forget {split_part(part)[0]} --yes` and start again."
                )
            elif code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION):
                raise InputError(
                    f"step 'input', partition {part}: {err.str()}. The topic was deleted (or "
                    "the partition is gone) while the pipeline read it. If it is recreated, "
                    "its new events start again at offset 0: run `omnicanal offsets forget "
                    f"{split_part(part)[0]} --yes` before starting again."
                )
            elif err.fatal() or code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                raise InputError(f"step 'input', partition {part}: {err.str()}")
            else:
                log.warning("step 'input', partition %s: %s", part, err.str())
        # Back off briefly when idle instead of spinning on empty partitions.
        self._idle_until = None if out else datetime.now().astimezone() + _IDLE
        if not out:
            IdleWork.run()
        InFlight.count += len(out)
        return out

    def _check_partitions(self) -> None:
        """Read partitions added to the topics since the start (those of this worker), and
        stop if a topic or partition this worker reads has disappeared (a deleted topic:
        some brokers report nothing to the consumer itself)."""
        assert self._c is not None and self._share is not None
        self._next_check = time.monotonic() + self._check_every
        try:
            md = self._c.list_topics(timeout=5)
        except KafkaException as e:
            log.warning("step 'input': could not look for new partitions: %s", e)
            return
        present: set[str] = set()
        for t in self._topics:
            tm = md.topics.get(t)
            if tm is None:
                continue  # deleted
            if tm.error is not None:
                if tm.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue  # deleted
                present.update(p for p in self._parts if split_part(p)[0] == t)  # unsure
            present.update(f"{t}:{p}" for p in tm.partitions)
        gone = sorted(p for p in self._parts if p not in present)
        if gone:
            topics = " ".join(sorted({split_part(p)[0] for p in gone}))
            raise InputError(
                f"step 'input': {describe_share(gone)} no longer exist: the topic was deleted "
                "while the pipeline read it. If it is recreated, its new events start again at "
                f"offset 0: run `omnicanal offsets forget {topics} --yes` before starting again."
            )
        new = [p for p in self._share(present) if p not in self._parts]
        if new:
            log.info(
                "step 'input': reading %s added since the start (%s)",
                describe_share(new),
                "from the beginning" if self._new_start == EARLIEST else "from the end",
            )
            self._c.incremental_assign(
                [TopicPartition(*split_part(p), self._new_start) for p in new]
            )
            self._parts.update(new)

    def next_awake(self) -> datetime | None:
        return self._idle_until

    def close(self) -> None:
        if self._c is not None:
            self._c.close()


class KafkaWorkerSource(DynamicSource[Any]):
    """Reads the given ``topic:partition`` parts from explicit start offsets, each worker
    its share (:func:`worker_share`) with one consumer, and the partitions added to those
    topics while it runs (from ``new_start``, checked every ``check_every`` seconds).

    ``until_eof`` ends each partition at its end (demo, tests, batch replays); otherwise
    the source runs until :data:`STOP` is set.
    """

    def __init__(
        self,
        config: dict[str, Any],
        starts: dict[str, int],
        *,
        batch_size: int = 5000,
        until_eof: bool = False,
        new_start: int = EARLIEST,
        check_every: float = 30.0,
    ) -> None:
        self._config = config
        self._starts = starts
        self._batch_size = batch_size
        self._until_eof = until_eof
        self._new_start = new_start
        self._check_every = check_every

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KafkaWorkerPart:
        share = worker_share(self._starts, worker_index, worker_count)
        log.info(
            "step %r, worker %d of %d reads %s",
            step_id,
            worker_index,
            worker_count,
            describe_share(share),
        )
        return _KafkaWorkerPart(
            self._config,
            {p: self._starts[p] for p in share},
            self._batch_size,
            self._until_eof,
            share=lambda parts: worker_share(parts, worker_index, worker_count),
            topics={split_part(p)[0] for p in self._starts},
            new_start=self._new_start,
            check_every=self._check_every,
        )


class StateSink(DynamicSink[Accepted | Rejected]):
    """Writes a worker's batch: dead letters (confirmed), then one fenced Redis call that
    resolves identities, applies the profile updates and moves stock; then the alerts of
    the SKUs whose stock changed."""

    def __init__(
        self,
        make_stores: Callable[[], tuple[ProfileStore, StockStore]],
        stock_rules: StockRules,
        kafka_config: dict[str, Any],
        dead_letter_topic: str,
        alerts_topic: str,
        group_id: str,
        *,
        commit_interval: float = 1.0,
        alert_interval: float = 1.0,
        starts: dict[str, int] | None = None,
        hasher: PiiHasher | None = None,
        redis_retry_seconds: float = 60.0,
    ) -> None:
        self._make_stores = make_stores
        self._stock_rules = stock_rules
        self._kafka_config = kafka_config
        self._dlq_topic = dead_letter_topic
        self._alerts_topic = alerts_topic
        self._group_id = group_id
        self._commit_interval = commit_interval
        self._alert_interval = alert_interval
        self._starts = starts or {}
        self._hasher = hasher
        self._redis_retry_seconds = redis_retry_seconds

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StateSinkPart:
        store, stock = self._make_stores()
        producer = CheckedProducer(
            self._kafka_config, what=f"step {step_id!r} (dead letters, stock alerts)"
        )
        return _StateSinkPart(
            store,
            producer,
            self._dlq_topic,
            GroupOffsets(self._kafka_config, self._group_id),
            self._commit_interval,
            StockAlerts(
                stock,
                self._stock_rules,
                producer,
                self._alerts_topic,
                self._alert_interval,
                kafka_config=self._kafka_config,
            ),
            floors=plan_floors(self._starts),
            hasher=self._hasher,
            redis_retry_seconds=self._redis_retry_seconds,
        )


def plan_floors(starts: dict[str, int]) -> dict[str, int]:
    """The last offset Redis had applied per partition when the run was planned: what the
    sink's first batch of each partition is fenced against, so that Redis going back in
    time between the plan and that batch is caught too. A start that is not an offset
    (earliest or latest: a partition Redis never saw, or a full replay) is left out: the
    sink reads Redis's position before the partition's first batch.

    >>> plan_floors({"t:0": 42, "t:1": EARLIEST, "t:2": 0})
    {'t:0': 41, 't:2': -1}
    """
    return {p: s - 1 for p, s in starts.items() if s >= 0}


def unsent_alerts(
    config: dict[str, Any], topic: str, sent: dict[int, int], message_ids: set[str]
) -> set[str]:
    """Which of ``message_ids`` are not on the alerts topic yet. Reads only what follows
    the last acknowledged offset of each partition (``sent``): a message confirmed by the
    broker but not yet acknowledged in Redis (a crash in between) is found there."""
    from omnicanal.kafka import read_topic

    if not message_ids:
        return set()
    seen: set[str] = set()
    starts = {p: o + 1 for p, o in sent.items()}
    for _, _, _, value in read_topic(config, topic, starts=starts):
        try:
            mid = orjson.loads(value or b"null").get("message_id")
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if mid in message_ids:
            seen.add(mid)
    return message_ids - seen


class StockAlerts:
    """Evaluates SKUs whose stock changed and sends their alert messages.

    SKUs moved by batches are evaluated in rounds, at most one round per interval (a hot SKU
    once per round, not once per batch), a slice of :attr:`SLICE` SKUs per batch or idle
    poll so that a round never stalls the pipeline for long.

    Decisions and messages are written to Redis together (version-fenced, with an outbox);
    messages leave the outbox once the broker confirms them: confirmations are collected
    asynchronously and acknowledged with a later batch (or at close), so a batch never
    waits for the broker because of alerts. A message the broker did not confirm (down,
    paused) stays in the outbox and is sent again once it answers, unless it turns out to
    be on the topic already. :meth:`recover` (run once, before the workers start) sends
    what a crashed run left in the outbox, except what the broker already has, and
    evaluates the SKUs it left unevaluated: no alert is lost, none is sent twice.
    """

    #: SKUs evaluated per call: about 50 µs each (read, evaluate, write)
    SLICE = 128
    #: seconds between attempts to send again what the broker did not confirm
    RETRY_SECONDS = 5.0

    def __init__(
        self,
        store: StockStore,
        rules: StockRules,
        producer: CheckedProducer,
        topic: str,
        interval: float = 0.0,
        *,
        kafka_config: dict[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.rules = rules
        #: SKUs moved since the current round started; a round starts at most every
        #: ``interval`` seconds and works through its SKUs a slice at a time
        self._pending: set[str] = set()
        self._round: list[str] = []
        self._interval = interval
        self._last = 0.0
        warm_up()  # the prediction's first use would otherwise stall a batch
        self._producer = producer
        self._topic = topic
        self._kafka_config = kafka_config
        #: outbox ids the broker confirmed, not yet removed from the outbox
        self._confirmed: list[str] = []
        #: highest offset confirmed per partition of the alerts topic, not yet recorded
        self._sent: dict[int, int] = {}
        #: messages the broker did not confirm: outbox id -> message, sent again later
        self._failed: dict[str, dict[str, Any]] = {}
        self._retry_at = 0.0
        self._warned = 0.0

    def recover(self) -> tuple[int, int, int]:
        """After a crash: send what the outbox still holds (all of it, a page at a time)
        unless the broker has it already, and evaluate every SKU left dirty. Returns
        (messages sent, messages found already sent, SKUs evaluated)."""
        sent = found = 0
        for page in self.store.outbox():
            msgs = {i: orjson.loads(m) for i, m in page}
            ids = {m["message_id"]: i for i, m in msgs.items()}
            missing = (
                unsent_alerts(self._kafka_config, self._topic, self.store.sent_offsets(), set(ids))
                if self._kafka_config is not None
                else set(ids)
            )
            already = [i for mid, i in ids.items() if mid not in missing]
            if already:
                self.store.ack(already)
                found += len(already)
            todo = [i for i in msgs if i not in already]
            self._send(todo, [msgs[i] for i in todo])
            self._producer.flush()
            self.ack()
            sent += len(todo)
        skus = 0
        for dirty in self.store.dirty():
            self.evaluate(dirty)
            skus += len(dirty)
        self._producer.flush()
        self.ack()
        return sent, found, skus

    def moved(self, skus: Iterable[str]) -> None:
        """SKUs whose stock a batch moved: evaluated in the next round (:meth:`due`)."""
        self._pending.update(skus)
        self.due()

    def due(self) -> None:
        """Work on the current round, a slice at a time: a round starts once the interval
        has passed with SKUs pending, and evaluates at most :attr:`SLICE` SKUs per call
        (per batch, or per idle poll), so that it never stalls the pipeline for long."""
        if self._failed and time.monotonic() >= self._retry_at:
            self._send_again()
        if not self._round:
            if not self._pending or time.monotonic() - self._last < self._interval:
                return
            self._round = sorted(self._pending, reverse=True)  # popped from the end
            self._pending.clear()
            self._last = time.monotonic()
        t0 = time.perf_counter()
        batch = [self._round.pop() for _ in range(min(self.SLICE, len(self._round)))]
        if not self._try(self._evaluate, batch):
            self._pending.update(batch)  # Redis full or away: evaluated in a later round
            self._pending.update(self._round)
            self._round = []
        m.BATCH_SECONDS.labels("stock_alerts").observe(time.perf_counter() - t0)

    def _try(self, call: Callable[..., None], *args: Any) -> bool:
        """Run a Redis step of the alerts; False (logged, counted) when Redis is full, busy
        or away: alerts wait, batches go on (the pipeline's own writes wait for Redis)."""
        try:
            call(*args)
            return True
        except (StateError, redis.RedisError) as e:
            why = transient(e)
            if why is None:
                raise
            m.REDIS_WAITS.labels(why).inc()
            now = time.monotonic()
            if now - self._warned > 10:
                self._warned = now
                log.warning("step 'state': stock alerts wait, Redis %s: %s", why, e)
            return False

    def evaluate(self, skus: list[str]) -> None:
        """Evaluate ``skus`` now, all of them."""
        for i in range(0, len(skus), 1000):
            self._evaluate(skus[i : i + 1000])

    def _evaluate(self, skus: list[str]) -> None:
        states = self.store.read(skus)
        seasons = self.store.seasons({loc for s, _ in states for loc in s.velocity})
        evals = [evaluate(s, alerts, self.rules, seasons) for s, alerts in states]
        skipped, ids = self.store.reconcile(evals)
        skip = set(skipped)
        msgs = [m for e in evals if e.sku not in skip for m in e.messages]
        if len(msgs) != len(ids):  # the script and this code disagree: a bug, say so
            raise RuntimeError(
                f"step 'state' (stock alerts): {len(msgs)} messages but {len(ids)} outbox ids"
            )
        if msgs:
            self._send(ids, msgs)
            counts: dict[tuple[str, str, str], int] = {}
            for msg in msgs:
                k = (msg["type"], msg["severity"], msg["status"])
                counts[k] = counts.get(k, 0) + 1
            for k, n in counts.items():
                m.STOCK_ALERTS.labels(*k).inc(n)
        stats = self.store.alert_stats()
        for t, n in stats["open"].items():
            m.OPEN_STOCK_ALERTS.labels(t).set(n)
        m.SKUS_AT_RISK.set(stats["skus_at_risk"])

    def _send(self, ids: list[str], msgs: list[dict[str, Any]]) -> None:
        confirmed, sent, failed = self._confirmed, self._sent, self._failed
        for outbox_id, msg in zip(ids, msgs, strict=True):

            def done(partition: int, offset: int, i: str = outbox_id) -> None:
                confirmed.append(i)
                if offset > sent.get(partition, -1):
                    sent[partition] = offset

            def lost(failure: Failure, i: str = outbox_id, msg: dict[str, Any] = msg) -> None:
                failed[i] = msg

            self._producer.produce(
                self._topic, orjson.dumps(msg), msg["sku"].encode(), on_delivered=done,
                on_failed=lost,
            )  # fmt: skip
        self.ack()

    def _send_again(self) -> None:
        """Send what the broker did not confirm, on a fresh producer, except what turns out
        to be on the topic already (a confirmation lost on the way)."""
        todo, self._failed = self._failed, {}
        m.BROKER_RETRIES.labels("stock_alerts").inc(len(todo))
        self._producer.reset()
        self._retry_at = time.monotonic() + self.RETRY_SECONDS
        try:
            missing = (
                unsent_alerts(
                    self._kafka_config,
                    self._topic,
                    self.store.sent_offsets(),
                    {msg["message_id"] for msg in todo.values()},
                )
                if self._kafka_config is not None
                else {msg["message_id"] for msg in todo.values()}
            )
        except Exception as e:  # the broker is still away: try later
            log.warning("step 'state': stock alerts not confirmed, broker unreachable: %s", e)
            self._failed.update(todo)
            return
        already = [i for i, msg in todo.items() if msg["message_id"] not in missing]
        self._confirmed.extend(already)
        again = [i for i in todo if i not in already]
        log.warning(
            "step 'state': sending %d stock alert(s) again that the broker did not confirm "
            "(%d found on the topic already)",
            len(again),
            len(already),
        )
        self._send(again, [todo[i] for i in again])

    def ack(self) -> None:
        """Serve delivery reports and remove what the broker confirmed from the outbox
        (kept for a later call while Redis cannot take it)."""
        self._producer.poll()
        if self._confirmed:
            done = list(self._confirmed)
            sent = dict(self._sent)
            if self._try(self.store.ack, done, sent):
                del self._confirmed[: len(done)]
                for p, o in sent.items():
                    if self._sent.get(p) == o:
                        del self._sent[p]

    def close(self) -> None:
        """Evaluate what is pending, wait for every message sent, and acknowledge them.
        What the broker still did not confirm stays in the outbox for the next start."""
        rest = sorted(set(self._round) | self._pending)
        self._round, self._pending = [], set()
        if rest:
            self.evaluate(rest)
        self._producer.flush()
        self.ack()

    def count(self, plan: StockPlan, shrinkage: int, late: int) -> None:
        for t, n in plan.counts.items():
            m.STOCK_EVENTS.labels(t).inc(n)
        if plan.unlocated:
            m.STOCK_UNLOCATED.inc(plan.unlocated)
        if shrinkage > 0:
            m.STOCK_SHRINKAGE_UNITS.inc(shrinkage)
        if late:
            m.STOCK_LATE_COUNTS.inc(late)


class _RedisWait:
    """How a batch waits for Redis: out of memory, it pauses (doubling up to 30 s) for as
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


class _StateSinkPart(StatelessSinkPartition[Accepted | Rejected]):
    def __init__(
        self,
        store: ProfileStore,
        producer: CheckedProducer,
        dlq_topic: str,
        group: GroupOffsets,
        commit_interval: float,
        alerts: StockAlerts,
        *,
        floors: dict[str, int] | None = None,
        hasher: PiiHasher | None = None,
        redis_retry_seconds: float = 60.0,
    ) -> None:
        self._store = store
        self._alerts = alerts
        IdleWork.register(alerts.due)
        #: SKUs whose stock the last applied batch moved
        self._moved: list[str] = []
        self._producer = producer
        self._dlq_topic = dlq_topic
        self._group = group
        self._commit_interval = commit_interval
        self._last_commit = 0.0
        self._pending_commit: dict[str, int] = {}
        #: last offset known applied in Redis per part (-1: none): the plan's, else
        #: loaded on first sight (partitions added since the plan)
        self._floors: dict[str, int] = dict(floors or {})
        self._hasher = hasher
        #: events of the current batch Redis refused one by one (see _apply_or_split)
        self._rejected_in_batch = 0
        self._wait = _RedisWait(redis_retry_seconds, redact_url(_client_url(store)))
        #: erasure tombstones (identifier -> erasure ms) and the version they belong to
        self._erasures, self._erased = self._with_redis(store.erased)
        log_path = os.environ.get(LATENCY_LOG_ENV)
        self._latency_log = open(f"{log_path}.{os.getpid()}", "a") if log_path else None  # noqa: SIM115
        self._latency_events = os.environ.get("OMNICANAL_LATENCY_LOG_EVENTS") == "1"

    def _with_redis(self, call: Callable[[], T]) -> T:
        """Run a Redis call, waiting out Redis being busy, full or briefly unreachable."""
        while True:
            try:
                out = call()
            except (StateError, redis.RedisError) as e:
                why = transient(e)
                if why is None:
                    raise
                self._wait(why, e)
            else:
                self._wait.reset()
                return out

    def _load_floors(self, parts: set[str]) -> None:
        unknown = [p for p in parts if p not in self._floors]
        if unknown:
            stored = self._with_redis(lambda: self._store.load_offsets(unknown))
            for p in unknown:
                self._floors[p] = stored.get(p, -1)

    def write_batch(self, items: list[Accepted | Rejected]) -> None:
        if not items:
            return
        try:
            self._write(items)
        finally:
            InFlight.count = max(0, InFlight.count - len(items))

    def _write(self, items: list[Accepted | Rejected]) -> None:
        m.BATCH_EVENTS.observe(len(items))
        self._rejected_in_batch = 0
        self._load_floors({f"{i.topic}:{i.partition}" for i in items})
        floors = self._floors
        fresh = [i for i in items if i.offset > floors[f"{i.topic}:{i.partition}"]]
        if len(fresh) != len(items):
            self._count_replayed(items, fresh)
        # 1. Dead letters, confirmed by the broker before the offsets that cover them are
        #    stored in Redis: once an offset is stored, its message is never read again, so
        #    a dead letter not yet on the topic then would be lost.
        self._send_dead_letters([i for i in fresh if type(i) is Rejected])
        # 2. Profile deltas + stock + offsets in one fenced Redis call; a batch the script
        #    refuses is split until the event behind it is found and dead-lettered.
        t0 = time.perf_counter()
        applied = self._apply_or_split(fresh)
        m.BATCH_SECONDS.labels("state").observe(time.perf_counter() - t0)
        if self._latency_log is not None:
            self._log_latency(applied)
        self._count(applied)
        # 3. Alerts of the SKUs whose stock moved (decisions + outbox, then sent), at most
        #    once per interval.
        if self._moved:
            self._alerts.moved(self._moved)
            self._moved = []
        else:
            self._alerts.due()
        self._alerts.ack()  # confirmations of earlier alerts
        self._commit_witness()

    def _send_dead_letters(self, rejected: list[Rejected]) -> None:
        """Produce and confirm dead letters; what the broker does not confirm is sent again
        (on a fresh producer, with backoff) until it is, or until the run is stopped. A
        record the broker refuses as too large is sent again without its payload."""
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

                self._producer.produce(self._dlq_topic, record, r.dlq_key, on_failed=lost)
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

    def _apply_or_split(self, batch: list[Accepted | Rejected]) -> list[Accepted | Rejected]:
        """Apply ``batch``; if the script refuses it, apply each half (list order keeps every
        partition's offsets in order), down to the one event that Redis refuses, which
        becomes a ``state_rejected`` dead letter: one event never stops the pipeline."""
        try:
            return self._apply(batch)
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
                self._send_dead_letters([dead])
                return self._apply([dead if i is a else i for i in batch])
            half = len(batch) // 2
            return self._apply_or_split(batch[:half]) + self._apply_or_split(batch[half:])

    def _apply(self, batch: list[Accepted | Rejected]) -> list[Accepted | Rejected]:
        split: dict[str, str] = {}  # component key -> reason Redis refused its link
        dropped: set[int] = set()  # id() of duplicates: their offsets count, not effects
        keys: dict[int, tuple[int, int]] = {}
        window = self._store.dedupe_window_ms
        retried = False  # a transport error may hide a call that went through
        attempts = 0
        while attempts < MAX_ATTEMPTS:
            ranges: dict[str, Accepted | Rejected] = {}
            for i in batch:
                name = f"{i.topic}:{i.partition}"
                top = ranges.get(name)
                if top is None or i.offset > top.offset:
                    ranges[name] = i
            if not ranges:
                return []
            parts = [
                (name, self._floors[name], i.offset, i.kafka_ts_ms) for name, i in ranges.items()
            ]
            accepted = [i for i in batch if type(i) is Accepted and id(i) not in dropped]
            dedupe: list[tuple[int, int]] = []
            if window:
                for a in accepted:
                    k = keys.get(id(a))
                    if k is None:
                        k = keys[id(a)] = event_key(a.contract, a.event_id, a.ts_ms)
                    dedupe.append(k)
                first, later = first_copies(dedupe)
                if later:
                    self._drop_duplicates([accepted[j] for j in later], dropped)
                    accepted = [accepted[j] for j in first]
                    dedupe = [dedupe[j] for j in first]
            kept, suppressed = suppress(accepted, self._erased)
            plan = plan_batch(kept, self._store.rules, split)
            # Stock counts every sale, an erased customer's too: the goods left the shelf.
            stock = plan_stock(accepted, self._alerts.rules)
            try:
                res = self._store.apply(
                    parts,
                    plan.rows,
                    refusals=plan.refusals,
                    erasures=self._erasures,
                    suppressed=suppressed,
                    stock=stock.to_payload() if stock else None,
                    dedupe=dedupe,
                )
            except (StateError, redis.RedisError) as e:
                why = transient(e)
                if why is None:
                    raise
                self._wait(why, e)
                retried = retried or why == "unreachable"
                continue
            self._wait.reset()
            attempts += 1
            if res.ok:
                for name, _, hi, _ in parts:
                    self._floors[name] = hi
                    self._pending_commit[name] = hi + 1
                    topic, p = name.rsplit(":", 1)
                    m.APPLIED_OFFSET.labels(topic, p).set(hi)
                self._count_identity(res.new_customers, res.merges, res.linked, plan.refusals)
                for topic, n in plan.anonymous.items():
                    m.ANONYMOUS_EVENTS.labels(topic).inc(n)
                if suppressed:
                    _count_dropped(m.SUPPRESSED_EVENTS, accepted, kept)
                self._alerts.count(stock, res.shrinkage, res.late_counts)
                self._moved = list(res.to_evaluate)
                return [i for i in batch if id(i) not in dropped]
            if res.stale is not None:
                if retried and all(res.stale.get(n, -1) >= hi for n, _, hi, _ in parts):
                    # Our own call went through before its reply was lost: it is applied.
                    self._floors.update(res.stale)
                    self._moved = list(stock.touched)
                    return [i for i in batch if id(i) not in dropped]
                # Redis is ahead for some parts (another writer, or a reply lost in a
                # reconnect after the script ran): drop what it already has and retry.
                self._floors.update(res.stale)
                kept_items = [
                    i for i in batch if i.offset > self._floors[f"{i.topic}:{i.partition}"]
                ]
                self._count_replayed(batch, kept_items)
                batch = kept_items
            elif res.erasures is not None:
                # A customer was erased since the tombstones were loaded.
                self._erasures, self._erased = self._with_redis(self._store.erased)
            elif res.refused:
                for row, reason in res.refused.items():
                    split[plan.keys[row]] = reason
            elif res.duplicates:
                self._drop_duplicates(
                    [a for a, k in zip(accepted, dedupe, strict=True) if k[1] in res.duplicates],
                    dropped,
                )
        raise RuntimeError(
            f"step 'state': the batch could not be applied in {MAX_ATTEMPTS} attempts: Redis "
            "kept reporting newer offsets, new erasures, refused links or duplicates. Is "
            "another omnicanal pipeline with the same Redis prefix reading the same "
            "partitions?"
        )

    @staticmethod
    def _drop_duplicates(copies: list[Accepted], dropped: set[int]) -> None:
        counts: dict[str, int] = {}
        for a in copies:
            dropped.add(id(a))
            counts[a.topic] = counts.get(a.topic, 0) + 1
        for topic, n in counts.items():
            m.DUPLICATE_EVENTS.labels(topic).inc(n)

    @staticmethod
    def _count_identity(new: int, merges: int, linked: int, refusals: list[list[str]]) -> None:
        if new:
            m.NEW_CUSTOMERS.inc(new)
        if merges:
            m.IDENTITY_MERGES.inc(merges)
        if linked:
            m.IDENTITY_LINKS.inc(linked)
        for reason, *_ in refusals:
            m.IDENTITY_REFUSALS.labels(reason).inc()

    def _count(self, applied: list[Accepted | Rejected]) -> None:
        events: dict[tuple[str, str, str], int] = {}
        dead: dict[tuple[str, str], int] = {}
        newest: dict[str, int] = {}
        for i in applied:
            if isinstance(i, Accepted):
                k = (i.topic, i.channel or "none", i.event_type)
                events[k] = events.get(k, 0) + 1
                if i.ts_ms > newest.get(i.topic, 0):
                    newest[i.topic] = i.ts_ms
            else:
                kd = (i.topic, i.reason)
                dead[kd] = dead.get(kd, 0) + 1
        for k, n in events.items():
            m.EVENTS.labels(*k).inc(n)
        for kd, n in dead.items():
            m.DEAD_LETTERS.labels(*kd).inc(n)
        now_ms = time.time() * 1000
        for topic, ts in newest.items():
            m.EVENT_LAG_SECONDS.labels(topic).set((now_ms - ts) / 1000)

    def _log_latency(self, applied: list[Accepted | Rejected]) -> None:
        assert self._latency_log is not None
        now = time.time() * 1000
        accepted = [a for a in applied if isinstance(a, Accepted)]
        if not accepted:
            return
        first = min(a.received_ms for a in accepted)
        lines = [f"B {first:.3f} {now:.3f} {len(applied)}\n"]
        if self._latency_events:
            lines += [f"E {now - a.received_ms:.3f} {now - a.kafka_ts_ms:.3f}\n" for a in accepted]
        self._latency_log.write("".join(lines))
        self._latency_log.flush()

    @staticmethod
    def _count_replayed(before: list[Any], after: list[Any]) -> None:
        _count_dropped(m.REPLAYED, before, after)

    def _commit_witness(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._pending_commit and (force or now - self._last_commit >= self._commit_interval):
            self._group.commit(self._pending_commit, asynchronous=not force)
            self._pending_commit = {}
            self._last_commit = now

    def close(self) -> None:
        """Finish the alerts and the witness commit. Never raises: Bytewax calls it while
        unwinding an error too, and an exception here would abort the process before the
        first error is reported (what is left undone is picked up at the next start)."""
        if self._latency_log is not None:
            self._latency_log.close()
        IdleWork.unregister(self._alerts.due)
        for what, step in (
            ("stock alerts", self._alerts.close),
            ("consumer group commit", lambda: self._commit_witness(force=True)),
            ("consumer group", self._group.close),
        ):
            try:
                step()
            except Exception as e:
                log.warning("step 'state': %s not finished at close (%s): next start", what, e)


def _client_url(store: ProfileStore) -> str:
    kw = store.r.connection_pool.connection_kwargs
    return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"

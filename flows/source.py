"""The pipeline's input: each worker reads its share of the topic-partitions with one
Kafka consumer (``assign()`` from explicit start offsets, never a consumer-group join),
and can stop at the end of the input (demo, tests, batch replays).

Also the worker-wide coordination the source and the sink share (they run in one thread
per worker): :data:`STOP`, :class:`InFlight` (backpressure) and :class:`IdleWork`.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from bytewax.inputs import DynamicSource, StatelessSourcePartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from flows.kafka import split_part
from monitoring import metrics as m

log = logging.getLogger(__name__)

#: Set by the SIGTERM/SIGINT handler: sources end their partitions and the flow drains.
STOP = threading.Event()
EARLIEST = OFFSET_BEGINNING
LATEST = OFFSET_END
_IDLE = timedelta(milliseconds=5)
_FULL = timedelta(milliseconds=1)
#: seconds between consumer-lag reports
LAG_EVERY = 5.0


class Backlog:
    """This process's consumer lag, as its source last measured it (every
    :data:`LAG_EVERY` s), for the sink to store: the offer decider waits while the workers
    are behind (``operators.offers.BacklogHold``). Source and sink run in one thread."""

    #: events behind, summed over this worker's partitions (None: nothing new to report)
    events: int | None = None

    @classmethod
    def take(cls) -> int | None:
        """The newest figure not yet taken, or None."""
        n, cls.events = cls.events, None
        return n


class InFlight:
    """Backpressure Bytewax lacks: events consumed by this worker's sources and not yet
    written by its sink. Sources pause above ``limit``, so memory stays bounded whatever
    the backlog. Source and sink of a worker run in one thread (nothing is exchanged
    between workers), so a plain counter is enough."""

    limit = 20_000
    count = 0


class IdleWork:
    """Work a worker's sink defers while input flows (finishing the batch whose script is in
    Redis, with the stages after it; alert evaluation, at most once per interval), run by
    the worker's sources when their input is idle or has ended, so that nothing waits for
    the next event. Sources and sink of a worker share its thread: per thread."""

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
        self._starts = dict(starts)
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
        # the first report at the first call: the backlog a start faces is the figure ops
        # look for first (a run shorter than LAG_EVERY reported none)
        self._next_lag = time.monotonic()
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
                # queue for all its partitions. 4 MB (2 MB fetches) starved the worker while
                # it drained a backlog: 25 to 207 empty polls per 200,000 events, each a
                # 5 ms pause; 16 MB (8 MB fetches) gave none, for 55-80 MB more RSS.
                "queued.max.messages.kbytes": 16384,
                "fetch.max.bytes": 8 * 1048576,
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
        if STOP.is_set():
            raise StopIteration
        if self._until_eof and self._parts and len(self._closed) == len(self._parts):
            # The end of the input: the sink's deferred work (the last batch's later
            # stages) is done here, where an error still fails the run, not at close.
            Backlog.events = 0  # all read: nothing holds the offers back any more
            IdleWork.run()
            raise StopIteration
        if self._c is None:
            raise StopIteration
        if InFlight.count >= InFlight.limit:
            self._idle_until = datetime.now().astimezone() + _FULL
            return []
        if self._share is not None and time.monotonic() >= self._next_check:
            self._check_partitions()
        if time.monotonic() >= self._next_lag:
            self._report_lag()
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

    def _report_lag(self) -> None:
        """Consumer lag per partition of this worker: the broker's high watermark (as of
        the last fetch: no request) minus the next offset to read."""
        assert self._c is not None
        self._next_lag = time.monotonic() + LAG_EVERY
        lag: dict[tuple[str, str], int] = {}
        assigned = self._c.assignment()
        try:
            positions = self._c.position(assigned) if assigned else []
        except KafkaException:
            return
        for tp in positions:
            _, high = self._c.get_watermark_offsets(tp, cached=True) or (-1, -1)
            if high < 0:  # not fetched yet: ask the broker (once, until the first fetch)
                try:
                    _, high = self._c.get_watermark_offsets(tp, timeout=1.0) or (-1, -1)
                except KafkaException:
                    return  # no complete figure: keep the last one
            if tp.offset < 0:  # nothing read yet: from where the partition starts
                start = self._starts.get(f"{tp.topic}:{tp.partition}", EARLIEST)
                if start == LATEST:
                    start = high
                elif start < 0:
                    low, _ = self._c.get_watermark_offsets(tp, cached=True) or (0, 0)
                    start = max(low, 0)
                tp.offset = start
            lag[(tp.topic, str(tp.partition))] = max(0, high - tp.offset)
        for (topic, partition), n in lag.items():
            m.CONSUMER_LAG.labels(topic, partition).set(n)
        Backlog.events = sum(lag.values())

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

"""Kafka plumbing shared by the flow and the tools: a producer that never loses a message
silently, topic administration, and the consumer-group offsets used as a progress witness."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """A message could not be delivered to Kafka; the run must stop."""


#: A send that failed: the librdkafka error code (``KafkaError.code()``) and its text.
Failure = tuple[int, str]


class CheckedProducer:
    """Batches (linger) and checks every delivery report.

    Each message either has an ``on_failed`` callback, which receives the failure
    (the caller decides: send again, shrink, keep it for later), or none, in which case
    ``flush()``/``poll()`` raise :class:`DeliveryError` for it: nothing vanishes silently,
    unlike Bytewax's own ``KafkaSink``. ``flush()`` waits long enough for every message
    to be delivered or to fail (``message.timeout.ms``), so a message is never both
    pending and sent again. :meth:`reset` replaces the librdkafka producer after
    failures (an idempotent producer can stay fenced after a timed-out request).
    """

    def __init__(self, config: dict[str, Any], *, what: str = "producer") -> None:
        self._conf = {
            "linger.ms": 5,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500_000,
            "message.timeout.ms": 30_000,
            **config,
        }
        #: seconds after which librdkafka has reported on every queued message
        self.message_timeout = float(self._conf["message.timeout.ms"]) / 1000
        self._p = Producer(self._conf)
        self._what = what
        self._lock = threading.Lock()
        self._errors: list[str] = []
        self._failed: list[tuple[Callable[[Failure], None], Failure]] = []
        self.delivered = 0

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            with self._lock:
                self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")
        else:
            self.delivered += 1

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        on_delivered: Callable[[int, int], None] | None = None,
        on_failed: Callable[[Failure], None] | None = None,
    ) -> None:
        """Queue a message; ``on_delivered(partition, offset)`` runs once the broker
        confirms it and
        ``on_failed`` once it cannot be delivered (both from :meth:`poll` or :meth:`flush`,
        or at once when the message is refused locally, e.g. too large)."""
        if on_delivered is None and on_failed is None:
            cb = self._on_delivery
        else:

            def cb(err: KafkaError | None, msg: Any) -> None:
                if err is None:
                    self.delivered += 1
                    if on_delivered is not None:
                        on_delivered(msg.partition(), msg.offset())
                elif on_failed is not None:
                    # run later, outside librdkafka's callback (the caller may produce)
                    self._failed.append((on_failed, (err.code(), err.str())))
                else:
                    self._on_delivery(err, msg)

        while True:
            try:
                self._p.produce(topic, value, key, on_delivery=cb)
                return
            except BufferError:  # local queue full: serve delivery reports, then retry
                self._p.poll(0.05)
                self._raise_errors()
            except KafkaException as e:
                err = e.args[0]
                if on_failed is None:
                    raise DeliveryError(
                        f"{self._what}: a message to {topic} was refused: {err.str()}"
                    ) from None
                on_failed((err.code(), err.str()))
                return

    def poll(self) -> None:
        self._p.poll(0)
        self._run_failed()
        self._raise_errors()

    def flush(self, timeout: float | None = None) -> int:
        """Wait for every delivery report (by default as long as librdkafka may take to
        give one: the message timeout) and run the callbacks. Raises
        :class:`DeliveryError` for failures without ``on_failed`` and when messages are
        still queued at the end. Returns 0."""
        wait = self.message_timeout + 5 if timeout is None else timeout
        left = int(self._p.flush(wait))
        self._run_failed()
        self._raise_errors()
        if left:
            raise DeliveryError(
                f"{self._what}: {left} message(s) not delivered within {wait:.0f}s "
                "(is the broker reachable?)"
            )
        return 0

    def reset(self) -> None:
        """A fresh librdkafka producer (after delivery failures). Messages still queued in
        the old one are reported failed to their callbacks."""
        old, self._p = self._p, Producer(self._conf)
        old.flush(0)
        old.purge()
        old.flush(0)
        self._run_failed()

    def _run_failed(self) -> None:
        while self._failed:
            callback, failure = self._failed.pop(0)
            callback(failure)

    def _raise_errors(self) -> None:
        if self._errors:
            with self._lock:
                errors, self._errors = self._errors, []
            raise DeliveryError(
                f"{self._what}: {len(errors)} message(s) could not be delivered; first: {errors[0]}"
            )


def create_topics(
    config: dict[str, Any], topics: Iterable[str], partitions: int, replication: int = 1
) -> dict[str, str]:
    """Create topics; returns topic -> 'created' | 'exists'. Raises on any other error."""
    admin = AdminClient(config)
    futures = admin.create_topics(
        [NewTopic(t, partitions, replication) for t in topics], operation_timeout=30
    )
    out: dict[str, str] = {}
    for topic, fut in futures.items():
        try:
            fut.result()
            out[topic] = "created"
        except KafkaException as e:
            if e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                out[topic] = "exists"
            else:
                raise
    return out


def partitions_of(
    config: dict[str, Any], topics: Sequence[str], timeout: float = 10
) -> dict[str, int]:
    """Partition count per topic; raises if a topic does not exist."""
    admin = AdminClient(config)
    md = admin.list_topics(timeout=timeout)
    out = {}
    missing = []
    for t in topics:
        tm = md.topics.get(t)
        if tm is None or tm.error is not None or not tm.partitions:
            missing.append(t)
        else:
            out[t] = len(tm.partitions)
    if missing:
        raise RuntimeError(
            f"topics missing on {config.get('bootstrap.servers')}: {', '.join(missing)} "
            "(create them with `omnicanal topics create`)"
        )
    return out


def part_name(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def split_part(name: str) -> tuple[str, int]:
    topic, _, p = name.rpartition(":")
    return topic, int(p)


class GroupOffsets:
    """The consumer group's committed offsets: a witness of how far the stream has gone.

    Uses explicit commits without joining the group (no rebalances, works with ``assign``).
    """

    def __init__(self, config: dict[str, Any], group_id: str) -> None:
        self._c = Consumer({**config, "group.id": group_id, "enable.auto.commit": False})

    def committed(self, parts: Sequence[str], timeout: float = 10) -> dict[str, int]:
        """Next offset to read per part, for parts with a commit."""
        tps = [TopicPartition(*split_part(p)) for p in parts]
        res = self._c.committed(tps, timeout=timeout)
        return {part_name(tp.topic, tp.partition): tp.offset for tp in res if tp.offset >= 0}

    def commit(self, next_offsets: dict[str, int], *, asynchronous: bool = True) -> None:
        if not next_offsets:
            return
        tps = [TopicPartition(*split_part(p), o) for p, o in next_offsets.items()]
        try:
            if asynchronous:
                self._c.commit(offsets=tps, asynchronous=True)
            else:
                self._c.commit(offsets=tps, asynchronous=False)
        except KafkaException as e:  # a witness only: state is already safe in Redis
            log.warning("could not commit offsets to the consumer group: %s", e)

    def close(self) -> None:
        self._c.close()


def end_offsets(
    config: dict[str, Any], topic: str, *, starts: dict[int, int] | None = None
) -> dict[int, int]:
    """Each partition's end (the offset the next message will get), found by reading it to
    its end (partition EOF) from ``starts`` (partition -> offset; the beginning otherwise),
    not from the watermarks, which Tansu can report wrong."""
    return scan_topic(config, topic, starts=starts)[1]


def read_topic(
    config: dict[str, Any],
    topic: str,
    *,
    idle_timeout: float = 5.0,
    starts: dict[int, int] | None = None,
) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Every message of a topic from the beginning (or from ``starts``, partition -> first
    offset) to its current end: (partition, offset, key, value). For tools, tests and
    recoveries, not the hot path."""
    return scan_topic(config, topic, idle_timeout=idle_timeout, starts=starts)[0]


def scan_topic(
    config: dict[str, Any],
    topic: str,
    *,
    idle_timeout: float = 5.0,
    starts: dict[int, int] | None = None,
) -> tuple[list[tuple[int, int, bytes | None, bytes | None]], dict[int, int]]:
    """:func:`read_topic`'s messages, and each partition's end as its end-of-partition
    event gives it (the offset after the last message)."""
    parts = partitions_of(config, [topic])[topic]
    starts = starts or {}
    c = Consumer(
        {
            **config,
            "group.id": "omnicanal-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            # a start past the end (a bound recorded from a wrong watermark) reads from the end
            "auto.offset.reset": "latest",
        }
    )
    try:
        if starts:  # a start past the end never reaches an end (Tansu): the high watermark
            # bounds it (a watermark too high leaves the start as it is, one too low only
            # reads a few messages more)
            starts = {
                p: min(o, c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
                for p, o in starts.items()
            }
        c.assign([TopicPartition(topic, p, starts.get(p, OFFSET_BEGINNING)) for p in range(parts)])
        out = []
        ends: dict[int, int] = {}
        deadline = time.monotonic() + idle_timeout
        while len(ends) < parts:
            msgs = c.consume(1000, 0.05)
            if msgs:
                deadline = time.monotonic() + idle_timeout
            elif time.monotonic() > deadline:
                raise RuntimeError(f"reading {topic}: no end of partition after {idle_timeout}s")
            for msg in msgs:
                err = msg.error()
                part, offset = msg.partition() or 0, msg.offset() or 0
                if err is None:
                    out.append((part, offset, msg.key(), msg.value()))
                elif err.code() == KafkaError._PARTITION_EOF:
                    ends[part] = offset
                else:
                    raise RuntimeError(f"reading {topic}: {err.str()}")
        return out, ends
    finally:
        c.close()

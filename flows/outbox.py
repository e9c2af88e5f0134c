"""Sending an outbox to its topic: nothing lost, nothing sent twice.

The decisions and their messages are written to Redis together (``state/outbox.py``); the
messages leave the outbox once the broker confirms them. Confirmations are collected
asynchronously and acknowledged with a later batch (or at close), so a batch never waits for
the broker. A message the broker did not confirm (down, paused) stays in the outbox and is
sent again once it answers, unless it turns out to be on the topic already.
:meth:`OutboxSender.recover` (once, before the workers start) sends what a crashed run left
in the outbox, except what the broker already has. Stock alerts and offers use it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis

from flows.kafka import CheckedProducer, Failure, end_offsets, read_topic
from monitoring import metrics as m
from state.connection import StateError, transient
from state.outbox import Outbox

log = logging.getLogger(__name__)


def unsent(
    config: dict[str, Any],
    topic: str,
    sent: dict[int, int],
    ids: set[str],
    id_field: str = "message_id",
) -> set[str]:
    """Which of ``ids`` (the ``id_field`` of the messages) are not on ``topic`` yet. Reads
    only what follows the last acknowledged offset of each partition (``sent``): a message
    confirmed by the broker but not yet acknowledged in Redis (a crash in between) is found
    there."""
    if not ids:
        return set()
    seen: set[str] = set()
    starts = {p: o + 1 for p, o in sent.items()}
    for _, _, _, value in read_topic(config, topic, starts=starts):
        try:
            mid = orjson.loads(value or b"null").get(id_field)
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if mid in ids:
            seen.add(mid)
    return ids - seen


class OutboxSender:
    """Sends one outbox's messages to ``topic``, keyed by their ``key_field``, and
    acknowledges what the broker confirmed. ``what`` names it in logs and metrics."""

    #: seconds between attempts to send again what the broker did not confirm
    RETRY_SECONDS = 5.0

    def __init__(
        self,
        outbox: Outbox,
        producer: CheckedProducer,
        topic: str,
        *,
        what: str,
        id_field: str,
        key_field: str,
        kafka_config: dict[str, Any] | None = None,
        shared: bool = False,
    ) -> None:
        self.outbox = outbox
        self._producer = producer
        self._topic = topic
        self._what = what
        self._id_field = id_field
        self._key_field = key_field
        self._kafka_config = kafka_config
        #: several senders (workers) share the outbox: a sender's confirmed offsets say
        #: nothing of another's unacknowledged messages at lower offsets, so they are not
        #: recorded; the recovery's bound (the topic's end when it finished) stands
        self._shared = shared
        #: outbox ids the broker confirmed, not yet removed from the outbox
        self._confirmed: list[str] = []
        #: highest offset confirmed per partition of the topic, not yet recorded
        self._sent: dict[int, int] = {}
        #: messages the broker did not confirm: outbox id -> message, sent again later
        self._failed: dict[str, dict[str, Any]] = {}
        self._retry_at = 0.0
        self._warned = 0.0

    def _missing(self, ids: set[str]) -> set[str]:
        if self._kafka_config is None:
            return ids
        sent = self.outbox.sent_offsets()
        return unsent(self._kafka_config, self._topic, sent, ids, self._id_field)

    def recover(self) -> tuple[int, int]:
        """After a crash: send what the outbox still holds (all of it, a page at a time)
        unless the broker has it already. Returns (messages sent, found already sent)."""
        sent = found = 0
        for page in self.outbox.pages():
            msgs = {i: orjson.loads(raw) for i, raw in page}
            ids = {msg[self._id_field]: i for i, msg in msgs.items()}
            missing = self._missing(set(ids))
            already = [i for mid, i in ids.items() if mid not in missing]
            if already:
                self.outbox.ack(already)
                found += len(already)
            todo = [i for i in msgs if i not in already]
            self.send(todo, [msgs[i] for i in todo])
            self.flush()
            sent += len(todo)
        if self._kafka_config is not None and (sent or found):
            # Everything on the topic now is resolved: a later recovery looks after it only
            # (no sender runs during a recovery, so none has a message in flight). With an
            # empty outbox the bound stays: still safe, only older.
            starts = {p: o + 1 for p, o in self.outbox.sent_offsets().items()}
            ends = end_offsets(self._kafka_config, self._topic, starts=starts)
            self.outbox.set_sent({p: end - 1 for p, end in ends.items()})
        return sent, found

    def send(self, ids: list[str], msgs: list[dict[str, Any]]) -> None:
        """Produce messages written to the outbox under ``ids``."""
        confirmed, sent, failed = self._confirmed, self._sent, self._failed
        for outbox_id, msg in zip(ids, msgs, strict=True):

            def done(partition: int, offset: int, i: str = outbox_id) -> None:
                confirmed.append(i)
                if offset > sent.get(partition, -1):
                    sent[partition] = offset

            def lost(failure: Failure, i: str = outbox_id, msg: dict[str, Any] = msg) -> None:
                failed[i] = msg

            self._producer.produce(
                self._topic, orjson.dumps(msg), str(msg[self._key_field]).encode(),
                on_delivered=done, on_failed=lost,
            )  # fmt: skip
        self.ack()

    def retry(self) -> None:
        """Send again what the broker did not confirm, once :attr:`RETRY_SECONDS` passed."""
        if self._failed and time.monotonic() >= self._retry_at:
            self._send_again()

    def _send_again(self) -> None:
        """On a fresh producer, except what turns out to be on the topic already (a
        confirmation lost on the way)."""
        todo, self._failed = self._failed, {}
        m.BROKER_RETRIES.labels(self._what.replace(" ", "_")).inc(len(todo))
        self._producer.reset()
        self._retry_at = time.monotonic() + self.RETRY_SECONDS
        try:
            missing = self._missing({msg[self._id_field] for msg in todo.values()})
        except Exception as e:  # the broker is still away: try later
            log.warning("step 'state': %s not confirmed, broker unreachable: %s", self._what, e)
            self._failed.update(todo)
            return
        already = [i for i, msg in todo.items() if msg[self._id_field] not in missing]
        self._confirmed.extend(already)
        again = [i for i in todo if i not in already]
        log.warning(
            "step 'state': sending %d %s again that the broker did not confirm "
            "(%d found on the topic already)",
            len(again),
            self._what,
            len(already),
        )
        self.send(again, [todo[i] for i in again])

    def attempt(self, call: Callable[..., Any], *args: Any) -> bool:
        """Run a Redis step; False (logged, counted) when Redis is full, busy or away: the
        messages wait, batches go on (the pipeline's own writes wait for Redis)."""
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
                log.warning("step 'state': %s wait, Redis %s: %s", self._what, why, e)
            return False

    def ack(self) -> None:
        """Serve delivery reports and remove what the broker confirmed from the outbox
        (kept for a later call while Redis cannot take it)."""
        self._producer.poll()
        if self._confirmed:
            done = list(self._confirmed)
            sent = {} if self._shared else dict(self._sent)
            if self.attempt(self.outbox.ack, done, sent):
                del self._confirmed[: len(done)]
                if self._shared:
                    self._sent.clear()
                for p, o in sent.items():
                    if self._sent.get(p) == o:
                        del self._sent[p]

    def flush(self) -> None:
        """Wait for every message sent, and acknowledge them."""
        self._producer.flush()
        self.ack()

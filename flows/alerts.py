"""Stage "stock alerts": the SKUs whose stock a batch moved are evaluated
(``operators/stock.py``), their decisions and messages written to Redis with an outbox,
and the messages sent to the stock-alerts topic; nothing lost, nothing sent twice.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import redis

from flows.kafka import CheckedProducer, Failure, read_topic
from monitoring import metrics as m
from operators.stock import StockRules
from operators.stock_alerts import ALERT_TYPES, evaluate, warm_up
from state.profiles import StateError, transient
from state.stock import StockStore

log = logging.getLogger(__name__)


def unsent_alerts(
    config: dict[str, Any], topic: str, sent: dict[int, int], message_ids: set[str]
) -> set[str]:
    """Which of ``message_ids`` are not on the alerts topic yet. Reads only what follows
    the last acknowledged offset of each partition (``sent``): a message confirmed by the
    broker but not yet acknowledged in Redis (a crash in between) is found there."""
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
        report_totals: bool = True,
    ) -> None:
        self.store = store
        #: whether this worker exports the Redis-wide gauges (open alerts, SKUs at risk): one
        #: worker does, so that a sum over processes does not count them once per process
        self._report_totals = report_totals
        self.rules = rules
        #: SKUs moved since the current round started; a round starts at most every
        #: ``interval`` seconds and works through its SKUs a slice at a time
        self._pending: set[str] = set()
        self._round: list[str] = []
        self._interval = interval
        self._last = -math.inf  # the first round starts at once, whatever the uptime
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
        if self._report_totals:  # Redis-wide figures: one worker exports them
            stats = self.store.alert_stats()
            for t in ALERT_TYPES:  # every type, so that a gauge returns to 0
                m.OPEN_STOCK_ALERTS.labels(t).set(stats["open"].get(t, 0))
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

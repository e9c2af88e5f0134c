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

from flows.kafka import CheckedProducer
from flows.outbox import OutboxSender
from monitoring import metrics as m
from operators.stock import StockRules
from operators.stock_alerts import ALERT_TYPES, evaluate, warm_up
from state.stock import StockStore

log = logging.getLogger(__name__)


class StockAlerts:
    """Evaluates SKUs whose stock changed and sends their alert messages.

    SKUs moved by batches are evaluated in rounds, at most one round per interval (a hot SKU
    once per round, not once per batch), a slice of :attr:`SLICE` SKUs per batch or idle
    poll so that a round never stalls the pipeline for long.

    Decisions and messages are written to Redis together (version-fenced, with an outbox)
    and sent by an :class:`~flows.outbox.OutboxSender`. :meth:`recover` (run once, before
    the workers start) sends what a crashed run left in the outbox, except what the broker
    already has, and evaluates the SKUs it left unevaluated: no alert is lost, none is sent
    twice.
    """

    #: SKUs evaluated per call: about 50 µs each (read, evaluate, write)
    SLICE = 128

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
        self.out = OutboxSender(
            store.alerts_outbox,
            producer,
            topic,
            what="stock alerts",
            id_field="message_id",
            key_field="sku",
            kafka_config=kafka_config,
            shared=True,  # every worker sends stock alerts
        )

    def recover(self) -> tuple[int, int, int]:
        """After a crash: send what the outbox still holds (all of it, a page at a time)
        unless the broker has it already, and evaluate every SKU left dirty. Returns
        (messages sent, messages found already sent, SKUs evaluated)."""
        sent, found = self.out.recover()
        skus = 0
        for dirty in self.store.dirty():
            self.evaluate(dirty)
            skus += len(dirty)
        self.out.flush()
        return sent, found, skus

    def moved(self, skus: Iterable[str]) -> None:
        """SKUs whose stock a batch moved: evaluated in the next round (:meth:`due`)."""
        self._pending.update(skus)
        self.due()

    def due(self) -> None:
        """Work on the current round, a slice at a time: a round starts once the interval
        has passed with SKUs pending, and evaluates at most :attr:`SLICE` SKUs per call
        (per batch, or per idle poll), so that it never stalls the pipeline for long."""
        self.out.retry()
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
        return self.out.attempt(call, *args)

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
            self.out.send(ids, msgs)
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

    def ack(self) -> None:
        """Confirmations of earlier alerts (see :meth:`OutboxSender.ack`)."""
        self.out.ack()

    def close(self) -> None:
        """Evaluate what is pending, wait for every message sent, and acknowledge them.
        What the broker still did not confirm stays in the outbox for the next start."""
        rest = sorted(set(self._round) | self._pending)
        self._round, self._pending = [], set()
        if rest:
            self.evaluate(rest)
        self.out.flush()

"""The omnicanal pipeline, every stage in order.

    Bytewax dataflow (per worker: its share of the topic-partitions, no exchange)

    input      Kafka, assign() from the plan's start offsets          flows/source.py
    validate   bytes -> Accepted | Rejected (dead letter)             operators/validate.py
    state      the worker's stages, per batch (WorkerPipeline):
      1 fence          drop what Redis applied already (offset floors)    flows/stages.py
      2 dead letters   send the batch's rejects, wait for the broker     flows/stages.py
        coupons        redeem the coupon codes presented, once           flows/coupons.py
      3 plan + apply   duplicates, erasures, identities, profile deltas,  flows/stages.py
                       stock moves and offsets: one fenced Redis call,    operators/, state/
                       sent ahead: Redis runs it while the worker reads,
                       validates and plans the next batch; stages 4-6
                       follow once its reply is in (next batch, idle
                       input or end of input)
      4 metrics        events, dead letters, lag                         flows/stages.py
      5 stock alerts   evaluate the SKUs that moved, outbox, send        flows/alerts.py
        cross-sell     learn which items sell together from the applied  flows/cross_sell.py
                       sales; add the counts to Redis every 5 s
        offers         the offer decider process (flows/decider.py), or  flows/offers.py
                       worker 0: fire due timers, rank cross-sell items,
                       decide, coupons, outbox, send (timers were
                       written by the apply)
        health         count sales per channel and store per minute;     flows/health.py
                       worker 0: detectors per complete minute, outbox
      6 commit         copy the applied offsets to the consumer group    flows/stages.py

State lives in Redis, not in Bytewax, so no exchange between workers is needed: profile
updates are commutative, merges deterministic, and everything is fenced by offsets (see
``state/lua/apply_batch.lua``). One ``flat_map_batch`` step validates a worker's whole
batch (cheaper than a chain of maps); the Bytewax sink only hands batches to the stages
(``flows/sink.py``). What each stage needs (rules, stores, topics) is given by the
application as a :class:`PipelineSetup`; this module only wires.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
import redis
from bytewax.dataflow import Dataflow

from flows.alerts import StockAlerts
from flows.coupons import CouponRedemptions
from flows.cross_sell import CoPurchaseCounts, CrossSellRanks
from flows.health import ChannelCounts, ChannelHealthStage
from flows.kafka import CheckedProducer, GroupOffsets
from flows.offers import Offers
from flows.outbox import OutboxSender
from flows.preferences import NextBasket
from flows.sink import StagesSink
from flows.source import EARLIEST, Backlog, KafkaWorkerSource
from flows.stages import (
    Applied,
    DeadLetters,
    Fence,
    FencedApply,
    LatencyLog,
    Pending,
    RedisWait,
    WitnessCommit,
    count_applied,
)
from monitoring import metrics as m
from operators.coupons import CouponCodec
from operators.guardrails import DEFAULT_HOLDOUT_SHARE, FrequencyCaps, QuietHours
from operators.offers import BacklogHold
from operators.privacy import PiiHasher
from operators.stock import StockRules
from operators.validate import Validator
from schemas.campaigns import Campaign
from schemas.envelope import Accepted, Rejected
from state.connection import StateError, transient
from state.coupons import CouponLedger
from state.cross_sell import CoPurchaseStore, RankerStore
from state.health import HealthStore
from state.offers import BacklogStore, OfferStore, PolicyStore
from state.preferences import PreferenceStore
from state.profiles import ProfileStore
from state.stock import StockStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineSetup:
    """Everything the stages need, built by the application from its settings."""

    kafka: dict[str, Any]
    validator: Validator
    stock_rules: StockRules
    #: a worker's Redis stores (one client each); ``where`` names Redis in errors
    stores: Callable[[], tuple[ProfileStore, StockStore]]
    redis_where: str
    dead_letter_topic: str
    alerts_topic: str
    #: the consumer group the applied offsets are copied to (a witness for lag tools)
    group_id: str
    hasher: PiiHasher | None = None
    #: signs and checks coupon codes; None: codes in events are not redeemed
    coupon_codec: CouponCodec | None = None
    batch_size: int = 5000
    #: where partitions added while running are read from
    new_start: int = EARLIEST
    partition_check_seconds: float = 30.0
    alert_interval_seconds: float = 1.0
    commit_interval_seconds: float = 1.0
    redis_retry_seconds: float = 60.0
    #: the campaigns in force (reloaded by the application); offers are decided when this,
    #: the coupon codec and the offers topic are set
    campaigns: Callable[[], Sequence[Campaign]] | None = None
    offers_topic: str = ""
    offer_caps: FrequencyCaps = field(default_factory=FrequencyCaps)
    holdout_share: float = DEFAULT_HOLDOUT_SHARE
    offer_interval_seconds: float = 1.0
    offer_learn_seconds: float = 0.2
    #: offer timers wait while the workers are more than this many events behind (0: never;
    #: ``operators.offers.BacklogHold``), at most this long in a row
    offer_hold_backlog: int = 50_000
    offer_hold_max_seconds: float = 900.0
    #: worker 0 decides the offers between its batches; False: an offer decider process
    #: does (``flows/decider.py``), and the workers only ingest
    offers_in_worker: bool = True
    #: choose among eligible offers with the learnt model (ε-greedy), learning from their
    #: outcomes; False: the rules (the first eligible campaign)
    offer_learning: bool = True
    #: quiet hours of intrusive channels (None: none), in the customers' time zone
    offer_quiet_hours: QuietHours | None = None
    offer_timezone: str = "UTC"
    #: where channel-health messages go ("": channel health not watched)
    health_topic: str = ""
    #: store location id -> region, for the per-region channel-health detectors
    store_regions: dict[str, str] = field(default_factory=dict)


class WorkerPipeline:
    """One worker's stages after validation, run in order on each batch.

    Why dead letters come before apply: the apply stores the batch's offsets in Redis, and
    a stored offset is never read again. A dead letter not yet confirmed by the broker at
    that point would be lost if the process died, so the stage waits for the broker first;
    a crash before the apply reads the batch again and re-sends its dead letters (same
    key: ``topic:partition:offset``, so consumers can recognise the copy).
    """

    def __init__(
        self,
        fence: Fence,
        dead_letters: DeadLetters,
        apply: FencedApply,
        alerts: StockAlerts,
        commit: WitnessCommit,
        latency: LatencyLog | None = None,
        coupons: CouponRedemptions | None = None,
        offers: Offers | None = None,
        counts: ChannelCounts | None = None,
        health: ChannelHealthStage | None = None,
        copurchase: CoPurchaseCounts | None = None,
        backlog: BacklogStore | None = None,
        worker: int = 0,
    ) -> None:
        self.copurchase = copurchase
        #: where this worker reports its consumer lag for the offer decider (None: nobody
        #: waits for it)
        self.backlog, self.worker = backlog, worker
        self.fence = fence
        self.dead_letters = dead_letters
        self.coupons = coupons
        self.apply = apply
        self.alerts = alerts
        self.offers = offers
        self.counts = counts
        self.health = health
        self.commit = commit
        self._latency = latency
        #: the batch whose script call Redis is running (see :meth:`write`)
        self._pending: Pending | None = None

    def write(self, items: list[Accepted | Rejected]) -> None:
        """Send a batch to Redis, and finish the previous one.

        A batch's script runs in Redis while this thread reads, validates and plans the next
        batch: Redis and Python work side by side instead of in turn. The previous batch's
        later stages (they read Redis too) run once its reply is in, before the next call is
        sent, so that their reads never queue behind a batch script. A batch is therefore
        finished at the next batch, as soon as the input is idle (:meth:`idle`), or at the
        end of the input."""
        m.BATCH_EVENTS.observe(len(items))
        fresh = self.fence.fresh(items)  # 1
        self.dead_letters.send([i for i in fresh if type(i) is Rejected])  # 2
        planned = self.apply.plan(fresh)  # 3, planned while Redis has the previous batch
        self.flush()
        if self.coupons is not None:
            self.coupons.redeem(fresh)  # idempotent per code and order: safe on a replay
        self._pending = self.apply.start(fresh, planned)

    def _finish(self) -> Applied | None:
        """Wait for the batch in Redis, if any, and complete it."""
        pending, self._pending = self._pending, None
        return self.apply.finish(pending) if pending is not None else None

    def _after(self, done: Applied) -> None:
        """The stages after a batch's apply."""
        if self._latency is not None:
            self._latency.write(done.items, done.at_ms)
        count_applied(done.items)  # 4
        if self.copurchase is not None:
            self.copurchase.add(done.items)
        if done.moved:  # 5: at most one round of evaluations per interval
            self.alerts.moved(done.moved)
        else:
            self.alerts.due()
        self.alerts.ack()  # confirmations of earlier alerts
        if self.offers is not None:
            self.offers.due()  # timers are in Redis: firing needs nothing from the batch
            self.offers.ack()
        if self.counts is not None:
            seen = self.counts.add(done.items)
            if self.health is not None:
                self.health.seen(seen)  # a new key shows on the dashboard at once
        if self.health is not None:
            self.health.due()
            self.health.ack()
        self.commit.after(done.offsets)  # 6
        self._report_backlog()

    def _report_backlog(self) -> None:
        """This worker's consumer lag, when its source measured it again: the offer timers
        wait while the workers are behind (``operators.offers.BacklogHold``)."""
        events = Backlog.take()
        if self.backlog is None or events is None:
            return
        try:
            self.backlog.report(self.worker, events, int(time.time() * 1000))
        except (StateError, redis.RedisError) as e:
            why = transient(e)
            if why is None:
                raise
            m.REDIS_WAITS.labels(why).inc()  # a report missed: the next one is 5 s away

    def flush(self) -> None:
        """Finish the batch in Redis and its later stages (input idle, or ending)."""
        previous = self._finish()
        if previous is not None:
            self._after(previous)

    def idle(self) -> None:
        """Input is idle: finish the batch in Redis, evaluate the alerts that wait for their
        interval, fire the offer timers that are due."""
        self.flush()
        self.alerts.due()
        if self.copurchase is not None:
            self.copurchase.add(())  # flushes when it is time
        if self.offers is not None:
            self.offers.due()
            self.offers.ack()
        if self.health is not None:  # a silent channel is seen while the input is idle too
            self.health.due()
            self.health.ack()
        self._report_backlog()

    def close(self) -> None:
        """Finish the batch in Redis and its later stages, the alerts and the witness
        commit. Never raises: Bytewax calls it while
        unwinding an error too, and an exception here would abort the process before the
        first error is reported (what is left undone is picked up at the next start)."""
        try:
            self.flush()
        except Exception as e:
            log.error(
                "step 'state': the last batch was not finished at close (%s); what Redis did "
                "not store is read again at the next start",
                e,
            )
        self.apply.close()
        if self._latency is not None:
            self._latency.close()
        steps = [("stock alerts", self.alerts.close), ("commit", self.commit.close)]
        if self.offers is not None:
            steps.insert(1, ("offers", self.offers.close))
        if self.health is not None:
            steps.insert(1, ("channel health", self.health.close))
        if self.copurchase is not None:
            steps.insert(0, ("cross-sell counts", self.copurchase.close))
        for what, step in steps:
            try:
                step()
            except Exception as e:
                log.warning("step 'state': %s not finished at close (%s): next start", what, e)


def plan_floors(starts: dict[str, int]) -> dict[str, int]:
    """The last offset Redis had applied per partition when the run was planned: what the
    first batch of each partition is fenced against, so that Redis going back in time
    between the plan and that batch is caught too. A start that is not an offset (earliest
    or latest: a partition Redis never saw, or a full replay) is left out: the fence reads
    Redis's position before the partition's first batch.

    >>> plan_floors({"t:0": 42, "t:1": EARLIEST, "t:2": 0})
    {'t:0': 41, 't:2': -1}
    """
    return {p: s - 1 for p, s in starts.items() if s >= 0}


def worker_pipeline(
    setup: PipelineSetup, starts: dict[str, int], worker_index: int = 0
) -> WorkerPipeline:
    """Build one worker's stages: its own Redis client, producer and consumer group. Worker
    0 also exports the Redis-wide gauges and fires the offer timers."""
    store, stock = setup.stores()
    producer = CheckedProducer(setup.kafka, what="step 'state' (dead letters, alerts, offers)")
    wait = RedisWait(setup.redis_retry_seconds, setup.redis_where)
    floors = plan_floors(starts)
    fence = Fence(store, wait, floors, later=[p for p in starts if p not in floors])
    dead_letters = DeadLetters(producer, setup.dead_letter_topic)
    watch = health(setup, store, producer) if worker_index == 0 and setup.health_topic else None
    counts = (
        CoPurchaseCounts(CoPurchaseStore(store.r, store.prefix))
        if setup.campaigns is not None
        else None
    )
    return WorkerPipeline(
        fence,
        dead_letters,
        FencedApply(store, fence, dead_letters, wait, setup.stock_rules, setup.hasher),
        StockAlerts(
            stock,
            setup.stock_rules,
            producer,
            setup.alerts_topic,
            setup.alert_interval_seconds,
            kafka_config=setup.kafka,
            report_totals=worker_index == 0,
        ),
        WitnessCommit(GroupOffsets(setup.kafka, setup.group_id), setup.commit_interval_seconds),
        LatencyLog.from_env(),
        CouponRedemptions(
            CouponLedger(store.r, store.prefix, setup.coupon_codec),
            store,
            wait,
            setup.hasher,
            PolicyStore(store.r, store.prefix) if setup.offer_learning else None,
        )
        if setup.coupon_codec is not None and setup.hasher is not None
        else None,
        offers(
            setup,
            store,
            producer,
            stock=stock,
            down=watch.down if watch else None,
            counted=counts.flush if counts is not None else None,
        )
        if worker_index == 0 and setup.offers_in_worker
        else None,
        ChannelCounts(HealthStore(store.r, store.prefix), regions=setup.store_regions)
        if setup.health_topic
        else None,
        watch,
        counts,
        BacklogStore(store.r, store.prefix)
        if setup.campaigns is not None and setup.offer_hold_backlog > 0
        else None,
        worker_index,
    )


def health(
    setup: PipelineSetup,
    store: ProfileStore,
    producer: CheckedProducer,
    clock: Callable[[], float] = time.time,
) -> ChannelHealthStage:
    """The channel-health detectors (worker 0), restored from their last state."""
    hs = HealthStore(store.r, store.prefix)
    return ChannelHealthStage(
        hs,
        OutboxSender(
            hs.outbox, producer, setup.health_topic, what="channel health",
            id_field="message_id", key_field="key", kafka_config=setup.kafka,
        ),
        clock,
    )  # fmt: skip


def offers(
    setup: PipelineSetup,
    store: ProfileStore,
    producer: CheckedProducer,
    clock: Callable[[], float] = time.time,
    stock: StockStore | None = None,
    down: Callable[[], frozenset[str]] | None = None,
    counted: Callable[[], object] | None = None,
) -> Offers | None:
    """The offers stage, when the setup has campaigns, a coupon codec and a topic
    (``clock``: the wall clock the timers are compared with; ``counted``: adds this
    worker's co-purchase counts to Redis, before cross-sell ranks)."""
    if setup.campaigns is None or setup.coupon_codec is None or not setup.offers_topic:
        return None
    offer_store = OfferStore(store.r, store.prefix)
    co = CoPurchaseStore(store.r, store.prefix)
    return Offers(
        offer_store,
        CouponLedger(store.r, store.prefix, setup.coupon_codec),
        OutboxSender(
            offer_store.outbox,
            producer,
            setup.offers_topic,
            what="offers",
            id_field="offer_id",
            key_field="customer_id",
            kafka_config=setup.kafka,
        ),
        setup.campaigns,
        interval=setup.offer_interval_seconds,
        learn_seconds=setup.offer_learn_seconds,
        caps=setup.offer_caps,
        holdout_share=setup.holdout_share,
        clock=clock,
        policy=PolicyStore(store.r, store.prefix) if setup.offer_learning else None,
        quiet=setup.offer_quiet_hours,
        tz=setup.offer_timezone,
        stock=(stock or StockStore(store.r, store.prefix), setup.stock_rules),
        down=down,
        xsell=CrossSellRanks(co, RankerStore(store.r, store.prefix), counted),
        prefs=NextBasket(PreferenceStore(store.r, store.prefix), co),
        backlog=BacklogStore(store.r, store.prefix) if setup.offer_hold_backlog > 0 else None,
        hold=BacklogHold(setup.offer_hold_backlog, int(setup.offer_hold_max_seconds * 1000)),
    )


def state_sink(setup: PipelineSetup, starts: dict[str, int] | None = None) -> StagesSink:
    """The sink of the flow; ``starts`` (the plan's start offsets) fence each partition's
    first batch."""
    return StagesSink(lambda worker: worker_pipeline(setup, starts or {}, worker))


def build_flow(
    setup: PipelineSetup, starts: dict[str, int], *, until_eof: bool = False
) -> Dataflow:
    """Wire the pipeline for the given start offsets (``topic:partition`` -> offset)."""
    decode = setup.validator.decode

    def validate(msgs: list[Any]) -> list[Accepted | Rejected]:
        now_ms = time.time() * 1000
        return [
            decode(
                msg.topic(),
                msg.partition(),
                msg.offset(),
                msg.key(),
                msg.value(),
                now_ms,
                msg.timestamp()[1],
            )
            for msg in msgs
        ]

    flow = Dataflow("omnicanal")
    raw = op.input(
        "input",
        flow,
        KafkaWorkerSource(
            setup.kafka,
            starts,
            batch_size=setup.batch_size,
            until_eof=until_eof,
            new_start=setup.new_start,
            check_every=setup.partition_check_seconds,
        ),
    )
    checked = op.flat_map_batch("validate", raw, validate)
    op.output("state", checked, state_sink(setup, starts))
    return flow

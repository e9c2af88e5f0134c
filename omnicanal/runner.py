"""Runs the pipeline: waits for Kafka and Redis, decides where each partition starts,
checks that Redis has not lost state and that the topics are the ones it read, sends what a
crashed run left unsent, and executes the dataflow in one or more processes, stopping
cleanly on SIGTERM and stopping every worker when one fails."""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Literal, TypeVar

import redis
from bytewax.run import cli_main
from bytewax.testing import run_main
from confluent_kafka import Consumer, KafkaError, TopicPartition

from flows.alerts import StockAlerts
from flows.decider import build as build_decider
from flows.kafka import CheckedProducer, GroupOffsets, part_name, partitions_of, split_part
from flows.outbox import OutboxSender
from flows.pipeline import build_flow
from flows.source import EARLIEST, LATEST, STOP, InputError
from monitoring import metrics
from omnicanal.config import Settings, configure_logging
from omnicanal.wiring import pipeline_setup, stock_rules
from state.health import HealthStore
from state.offers import OfferStore
from state.profiles import ProfileStore, StateError, connect, redact_url
from state.stock import StockStore

log = logging.getLogger(__name__)

ResumeFrom = Literal["auto", "redis", "earliest"]


@dataclass(frozen=True)
class Plan:
    starts: dict[str, int]
    #: parts where the consumer group is ahead of Redis: part -> (redis next, group next)
    behind: dict[str, tuple[int, int]]
    persistence: dict[str, str]


class StateBehindStreamError(StateError):
    pass


class TopicChangedError(StateError):
    """A partition no longer holds the events Redis says were applied from it."""


T = TypeVar("T")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for the workers' exchange addresses)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, call: Callable[[], T], *, timeout: float = 0.0, every: float = 10.0) -> T:
    """``call()`` until it answers: a service that is down at start is waited for (and
    said so every ``every`` seconds), not a reason to exit. ``timeout`` 0 waits until a
    stop signal; past ``timeout`` the last error is raised."""
    start = time.monotonic()
    said = 0.0
    delay = 0.5
    while True:
        try:
            return call()
        except Exception as e:
            waited = time.monotonic() - start
            if STOP.is_set() or (timeout and waited > timeout):
                raise
            if waited - said >= every or said == 0.0:
                log.warning("waiting for %s (%.0fs so far): %s", what, waited, e)
                said = waited or 1e-9
            time.sleep(delay)
            delay = min(5.0, delay * 2)


def plan(settings: Settings, resume_from: ResumeFrom = "auto") -> Plan:
    """Start offset per input partition: one past what Redis has applied.

    With ``resume_from="auto"``, refuses to start if the consumer group (the stream's
    position) is ahead of Redis: Redis lost state. ``"redis"`` replays the gap from Redis's
    position (it must still be retained in Kafka); ``"earliest"`` re-reads everything
    (already applied offsets are skipped by the fencing, so this is safe too).
    """
    kafka = settings.kafka_config()
    where = f"Kafka at {settings.kafka_bootstrap}"
    patience = settings.startup_wait_seconds
    counts = wait_for(
        where,
        lambda: partitions_of(kafka, list(settings.topic_contracts()), timeout=5),
        timeout=patience,
    )
    parts = [part_name(t, p) for t, n in counts.items() for p in range(n)]
    store = ProfileStore(
        connect(settings.redis_url, socket_timeout=settings.redis_socket_timeout_seconds),
        settings.redis_prefix,
    )
    try:
        wait_for(f"Redis at {redact_url(settings.redis_url)}", store.ping, timeout=patience)
        store.check_version()
        store.check_eviction(allow=settings.redis_allow_eviction)
        stored = store.load_offsets(parts)
        stamps = store.offset_stamps(list(stored))
        persistence = store.persistence()
    finally:
        store.close()
    if resume_from != "earliest":
        check_positions(kafka, stored, stamps)
    group = GroupOffsets(kafka, settings.group_id)
    try:
        committed = group.committed(parts)
    finally:
        group.close()
    behind = {
        p: (stored.get(p, -1) + 1, nxt)
        for p, nxt in committed.items()
        if nxt > stored.get(p, -1) + 1
    }
    if behind and resume_from == "auto":
        lines = "\n".join(
            f"  {p}: Redis has applied up to offset {r - 1}, the stream is committed at {g}"
            for p, (r, g) in sorted(behind.items())
        )
        raise StateBehindStreamError(
            "Redis state is behind the stream: Redis lost data (restarted without "
            "persistence, failed over, flushed, or AOF lost its last second).\n"
            f"{lines}\n"
            "Refusing to continue with wrong profiles. If Kafka still retains those offsets, "
            "rebuild the missing state with `omnicanal run --resume-from redis`; see the "
            "README section 'Recovering from Redis data loss'."
        )
    default = EARLIEST if settings.start_offset == "earliest" else LATEST
    if resume_from == "earliest":
        starts = dict.fromkeys(parts, EARLIEST)
    else:
        starts = {p: stored[p] + 1 if p in stored else default for p in parts}
    return Plan(starts, behind, persistence)


def check_positions(
    config: dict[str, str], stored: dict[str, int], stamps: dict[str, int], timeout: float = 10.0
) -> None:
    """Each partition must still hold, at the last offset Redis applied, the message that
    was applied there (same Kafka timestamp). A topic deleted and recreated, or truncated,
    would otherwise have its new events at those offsets dropped as replays, silently."""
    todo = {p: o for p, o in stored.items() if p in stamps}
    if not todo:
        return
    c = Consumer(
        {
            **config,
            "group.id": "omnicanal-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "error",
            "enable.partition.eof": True,
        }
    )
    found: dict[str, int] = {}
    gone: set[str] = set()
    try:
        c.assign([TopicPartition(*split_part(p), o) for p, o in todo.items()])
        deadline = time.monotonic() + timeout
        while len(found) + len(gone) < len(todo) and time.monotonic() < deadline:
            for msg in c.consume(100, 0.2):
                part = f"{msg.topic()}:{msg.partition()}"
                if part not in todo or part in found or part in gone:
                    continue
                err = msg.error()
                if err is None:
                    if msg.offset() == todo[part]:
                        found[part] = msg.timestamp()[1]
                    else:
                        gone.add(part)
                elif err.code() == KafkaError._PARTITION_EOF:
                    gone.add(part)
                elif err.code() == KafkaError._AUTO_OFFSET_RESET:
                    # Out of range: recreated or truncated, unless retention removed exactly
                    # up to the last applied message (nothing unread is missing then).
                    low, _ = c.get_watermark_offsets(
                        TopicPartition(*split_part(part)), timeout=timeout
                    )
                    if low == todo[part] + 1:
                        found[part] = stamps[part]
                    else:
                        gone.add(part)
    finally:
        c.close()
    gone |= set(todo) - set(found)  # no answer: the offset is past the partition's end
    changed = sorted(p for p, ts in found.items() if ts != stamps[p]) + sorted(gone)
    if changed:
        lines = "\n".join(
            f"  {p}: last applied offset {todo[p]} "
            + ("holds another message" if p in found else "is not in the partition any more")
            for p in changed
        )
        topics = " ".join(sorted({split_part(p)[0] for p in changed}))
        raise TopicChangedError(
            "Kafka no longer holds the events Redis says it applied:\n"
            f"{lines}\n"
            "The topic was deleted and recreated, truncated, or retention removed events "
            "this pipeline never read. Starting here would drop the new events at those "
            "offsets as replays. If the topic was recreated on purpose (its old events are "
            "applied, the new ones are not), or you accept that the removed events are "
            f"lost, run `omnicanal offsets forget {topics} --yes` and start again: those "
            "partitions are then read from OMNICANAL_START_OFFSET."
        )


def recover_alerts(settings: Settings) -> tuple[int, int, int]:
    """What a crashed run left: stock alerts in the outbox (sent unless the broker has them
    already) and SKUs whose alerts were not evaluated. Runs once, before the workers, so
    that every entry has one sender. Returns (sent, found already sent, SKUs evaluated)."""
    client = connect(settings.redis_url, socket_timeout=settings.redis_socket_timeout_seconds)
    producer = CheckedProducer(settings.kafka_config(), what="stock alert recovery")
    try:
        alerts = StockAlerts(
            StockStore(client, settings.redis_prefix),
            stock_rules(settings),
            producer,
            settings.topic_stock_alerts,
            kafka_config=settings.kafka_config(),
        )
        sent, found, skus = alerts.recover()
    finally:
        client.close()
    if sent or found or skus:
        log.info(
            "recovery: sent %d stock alert(s) a previous run left unsent (%d were on the "
            "topic already); evaluated %d SKU(s) it left unevaluated",
            sent,
            found,
            skus,
        )
    return sent, found, skus


def recover_offers(settings: Settings) -> tuple[int, int]:
    """Offers a crashed run left in the outbox: sent unless the broker has them already.
    Runs once, before the workers. Returns (sent, found already sent)."""
    client = connect(settings.redis_url, socket_timeout=settings.redis_socket_timeout_seconds)
    producer = CheckedProducer(settings.kafka_config(), what="offer recovery")
    try:
        sender = OutboxSender(
            OfferStore(client, settings.redis_prefix).outbox,
            producer,
            settings.topic_offers,
            what="offers",
            id_field="offer_id",
            key_field="customer_id",
            kafka_config=settings.kafka_config(),
        )
        sent, found = sender.recover()
    finally:
        client.close()
    if sent or found:
        log.info(
            "recovery: sent %d offer(s) a previous run left unsent (%d were on the topic already)",
            sent,
            found,
        )
    return sent, found


def recover_health(settings: Settings) -> tuple[int, int]:
    """Channel-health messages a crashed run left in the outbox: sent unless the broker
    has them already. Returns (sent, found already sent)."""
    if not settings.topic_channel_health:
        return 0, 0
    client = connect(settings.redis_url, socket_timeout=settings.redis_socket_timeout_seconds)
    producer = CheckedProducer(settings.kafka_config(), what="channel health recovery")
    try:
        sent, found = OutboxSender(
            HealthStore(client, settings.redis_prefix).outbox, producer,
            settings.topic_channel_health, what="channel health", id_field="message_id",
            key_field="key", kafka_config=settings.kafka_config(),
        ).recover()  # fmt: skip
    finally:
        client.close()
    if sent or found:
        log.info("recovery: sent %d channel-health message(s) left unsent (%d on the topic)",
                 sent, found)  # fmt: skip
    return sent, found


def warn_persistence(persistence: dict[str, str]) -> str | None:
    """A warning when the state Redis would lose everything on restart."""
    if persistence and persistence.get("appendonly") != "yes":
        return (
            "WARNING: the state Redis runs without AOF persistence (appendonly no): a "
            "restart empties it. omnicanal will detect that and stop, but you will have to "
            "rebuild. Set `appendonly yes` (see README, Guarantees)."
        )
    return None


def known_cause(exc: BaseException) -> BaseException | None:
    """The omnicanal error behind an exception Bytewax wrapped (BytewaxRuntimeError)."""
    from flows.kafka import DeliveryError

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, StateError | DeliveryError | InputError | redis.RedisError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def install_stop_handlers() -> None:
    """SIGTERM/SIGINT end every source partition; in-flight batches are finished."""

    def _stop(signum: int, frame: object) -> None:
        log.warning("signal %d received: finishing in-flight batches, then stopping", signum)
        STOP.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)


def tune_gc() -> None:
    """Fewer cyclic-GC passes on the hot path: a batch allocates thousands of short-lived
    objects (freed by reference counting), which trigger generation-0 collections that
    find nothing. Objects alive at start-up (modules, the flow) are frozen out of them."""
    if os.environ.get("OMNICANAL_GC_TUNE", "1") == "0":
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


class WorkerFailedError(RuntimeError):
    """A worker process (or the offer decider) failed; every other one was stopped.
    ``exitcode`` is the process's (128 + the signal number when a signal killed it, as
    shells report it)."""

    def __init__(self, name: str, exitcode: int, *, starting: bool = False) -> None:
        how = (
            f"was killed by signal {-exitcode}" if exitcode < 0 else f"exited with code {exitcode}"
        )
        what, rest = (
            ("the offer decider process", "the workers were stopped")
            if name == DeciderProcess.NAME
            else ("worker process", "the other workers were stopped")
        )
        if starting:  # (the decider, before the workers were started)
            how, rest = f"{how} while starting", "the workers were not started"
        super().__init__(f"{what} {name} {how}; {rest} (see the log above for its error)")
        self.exitcode = 128 - exitcode if exitcode < 0 else exitcode


def run(
    settings: Settings,
    starts: dict[str, int],
    *,
    until_eof: bool = False,
    processes: int = 1,
    allow_demo_key: bool = False,
    serve_metrics: bool = True,
    recover: bool = True,
) -> None:
    """Execute the dataflow; blocks until the input ends or a stop signal arrives.

    With several processes, the first one to fail stops all the others and its exit code
    is raised as :class:`WorkerFailedError`: a half-running pipeline, with some partitions
    silently unread, is worse than a stopped one."""
    if recover:
        recover_alerts(settings)
        recover_offers(settings)
        recover_health(settings)
    apart = decides_offers_apart(settings)
    if processes <= 1:
        if serve_metrics:
            metrics.serve(
                settings.metrics_port, settings.metrics_addr, targets=settings.sales_targets
            )
        setup = pipeline_setup(settings, allow_demo_key=allow_demo_key)
        decider = (
            DeciderProcess(settings, allow_demo_key, serve_metrics, index=1, watch=True)
            if apart
            else None
        )
        if decider is not None:
            decider.wait_ready()
        flow = build_flow(
            replace(setup, offers_in_worker=decider is None), starts, until_eof=until_eof
        )
        tune_gc()
        try:
            run_main(flow)
        except BaseException:
            if decider is not None:
                decider.finish(raise_failure=False, grace=30.0)
            raise
        linger = linger_seconds(settings, until_eof, serve_metrics)
        if decider is not None:
            decider.finish(linger=linger)  # it lingers, and this process serves meanwhile
        else:
            serve_final_metrics(linger)
        return
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_process_main,
            args=(
                i, addresses, settings, starts, until_eof, allow_demo_key, serve_metrics, apart,
                logging.getLogger().level,
            ),
            name=f"omnicanal-worker-{i}",
        )
        for i in range(processes)
    ]  # fmt: skip
    decider = (
        DeciderProcess(settings, allow_demo_key, serve_metrics, index=processes) if apart else None
    )
    if decider is not None:
        decider.wait_ready()
    for p in procs:
        p.start()
    watched = procs + ([decider.proc] if decider is not None else [])

    def _forward(signum: int, frame: object) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                p.terminate()  # SIGTERM: the child finishes its batch and stops

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    failed: multiprocessing.process.BaseProcess | None = None
    while any(p.is_alive() for p in procs):
        for p in watched:
            if failed is None and p.exitcode not in (0, None):
                failed = p
                log.error("%s exited with code %s: stopping the other workers", p.name, p.exitcode)
                _stop_all(procs)
        time.sleep(0.2)
    for p in procs:
        p.join()
    if failed is None:
        failed = next((p for p in procs if p.exitcode not in (0, None)), None)
    if decider is not None:  # the workers are done: the decider's last look, then it ends
        decider.finish(
            raise_failure=failed is None,
            grace=300.0 if failed is None else 30.0,
            linger=linger_seconds(settings, until_eof, serve_metrics) if failed is None else 0.0,
        )
    if failed is not None:
        raise WorkerFailedError(failed.name, int(failed.exitcode or 1))


def linger_seconds(settings: Settings, until_eof: bool, serve_metrics: bool) -> float:
    """How long a run's processes serve their metrics after its end
    (``OMNICANAL_METRICS_LINGER_SECONDS``): only a run that ended by itself, at the end of
    its input, and serves them; never after a stop request."""
    if until_eof and serve_metrics and settings.metrics_port and not STOP.is_set():
        return settings.metrics_linger_seconds
    return 0.0


def serve_final_metrics(seconds: float, told: Callable[[float], bool] | None = None) -> None:
    """Keep this process (and its metrics server) up ``seconds`` more, so that Prometheus
    scrapes the final counts; a stop request ends the wait, as does ``told(timeout)``
    (which waits up to ``timeout`` seconds for word to end)."""
    if seconds <= 0 or STOP.is_set():
        return
    log.info("the run is over: its final metrics are served %.0f s more", seconds)
    deadline = time.monotonic() + seconds
    while not STOP.is_set() and (left := deadline - time.monotonic()) > 0:
        if told is None:
            STOP.wait(left)
        elif told(min(left, 0.2)):
            return


def decides_offers_apart(settings: Settings) -> bool:
    """Are offers decided, by an offer decider process (``OMNICANAL_OFFER_DECIDER``)?"""
    return settings.offer_decider == "process" and bool(
        settings.campaigns_file and settings.coupon_key and settings.topic_offers
    )


#: how much lower the offer decider's CPU priority is than the workers' (``nice``)
DECIDER_NICENESS = 5
#: How long the workers wait for the offer decider to be ready before starting beside it.
DECIDER_READY_SECONDS = 60.0


class DeciderProcess:
    """The offer decider (``flows/decider.py``) in a process of its own, beside the workers:
    its metrics on the port after theirs (``index``: the number of worker processes).

    ``watch``: a thread stops the input (:data:`STOP`) if the decider fails while this
    process runs the workers itself; :meth:`finish` then raises its failure. A pipeline that
    no longer decides offers is stopped, as one whose worker failed is."""

    NAME = "omnicanal-offer-decider"

    def __init__(
        self,
        settings: Settings,
        allow_demo_key: bool,
        serve_metrics: bool,
        index: int,
        watch: bool = False,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        # A pipe, not an Event: an Event's lock held by a decider killed while waiting on it
        # would block the parent's set() forever. The end of the pipe (this process gone)
        # tells the decider to finish too.
        self._finish, theirs = ctx.Pipe()
        port = settings.metrics_port + index if serve_metrics and settings.metrics_port else 0
        self.proc = ctx.Process(
            target=_decider_main,
            args=(settings, allow_demo_key, port, theirs, logging.getLogger().level),
            name=self.NAME,
        )
        self.proc.start()
        theirs.close()
        self._finishing = threading.Event()
        if watch:
            threading.Thread(
                target=self._watch, name="omnicanal-decider-watch", daemon=True
            ).start()

    def wait_ready(self, timeout: float = DECIDER_READY_SECONDS) -> bool:
        """Wait until the decider is ready (imports, Redis, models and producer), before the
        workers start: its start is CPU-heavy (River and SciPy imports, several seconds)
        and would otherwise take a core from the workers' first batches, and offers are
        decided from the first batch on. True once it is ready; raises
        :class:`WorkerFailedError` if it failed before. False if it ended without deciding
        anything (no offers configured), or is still starting after ``timeout`` seconds or
        a stop request: then the workers start beside it. On any error the decider is
        ended before it is raised."""
        try:
            return self._wait_ready(timeout)
        except BaseException:
            self.finish(raise_failure=False, grace=30.0)
            raise

    def _wait_ready(self, timeout: float) -> bool:
        started = time.monotonic()
        try:
            while time.monotonic() < started + timeout and not STOP.is_set():
                if self._finish.poll(0.2):
                    self._finish.recv()  # "ready"
                    log.info("%s ready in %.1fs", self.NAME, time.monotonic() - started)
                    return True
            if not STOP.is_set():
                log.warning("%s not ready after %.0fs: starting the workers", self.NAME, timeout)
        except (EOFError, OSError):  # it ended before being ready
            self.proc.join(10)
            code = self.proc.exitcode
            if code not in (0, None):
                raise WorkerFailedError(self.NAME, int(code), starting=True) from None
        return False

    def _watch(self) -> None:
        while not self._finishing.wait(0.2):
            code = self.proc.exitcode
            if code is not None:
                if code != 0:
                    log.error("%s exited with code %s: stopping the workers", self.NAME, code)
                    STOP.set()
                return

    def finish(
        self, *, raise_failure: bool = True, grace: float = 300.0, linger: float = 0.0
    ) -> None:
        """The workers are done: the decider decides what is due now, waits for the broker,
        serves its final metrics ``linger`` seconds more and ends (killed after ``grace``
        seconds and the linger). Raises :class:`WorkerFailedError` if it failed (unless
        ``raise_failure`` is false: another error is being reported)."""
        self._finishing.set()
        with contextlib.suppress(OSError):  # (a decider that is gone already)
            self._finish.send(b"finish %f" % linger)
        deadline, stopped = time.monotonic() + grace + linger, False
        while self.proc.is_alive() and time.monotonic() < deadline:
            self.proc.join(0.2)
            if linger and not stopped and STOP.is_set():  # a stop request ends its linger
                stopped = True
                with contextlib.suppress(OSError):
                    self._finish.send(b"stop")
        if self.proc.is_alive():
            log.error("%s did not end within %.0fs: killed", self.NAME, grace)
            self.proc.kill()
            self.proc.join()
        code = self.proc.exitcode
        if raise_failure and code not in (0, None):
            raise WorkerFailedError(self.NAME, int(code or 1))


def _decider_main(
    settings: Settings, allow_demo_key: bool, port: int, finish: Connection, log_level: int
) -> None:
    configure_logging(log_level)
    install_stop_handlers()
    # The workers' ingest comes first: offers fire minutes after their moment, so the
    # decider takes the CPU the workers and Redis leave (a backlog shows in
    # omnicanal_offer_timers). Measured: +3 to +12% worker throughput in alternating pairs.
    os.nice(DECIDER_NICENESS)
    if port:
        metrics.serve(port, settings.metrics_addr)
    decider = build_decider(pipeline_setup(settings, allow_demo_key=allow_demo_key))
    if decider is None:
        return
    tune_gc()
    with contextlib.suppress(OSError):  # (the parent gone: the loop below ends at once)
        finish.send(b"ready")
    decider.run(lambda seconds: STOP.is_set() or finish.poll(seconds))
    linger = 0.0
    with contextlib.suppress(EOFError, OSError, ValueError, IndexError):  # (the parent gone)
        linger = float(finish.recv().split()[1]) if port and finish.poll() else 0.0
    serve_final_metrics(linger, finish.poll)


def _stop_all(procs: Sequence[multiprocessing.process.BaseProcess], grace: float = 10.0) -> None:
    """SIGTERM every live worker (each finishes its batch), SIGKILL what is left after
    ``grace`` seconds (a worker stuck talking to the failed one's cluster)."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()


def _process_main(
    index: int,
    addresses: list[str],
    settings: Settings,
    starts: dict[str, int],
    until_eof: bool,
    allow_demo_key: bool,
    serve_metrics: bool,
    decider: bool = False,
    log_level: int = logging.INFO,
) -> None:
    configure_logging(log_level)
    install_stop_handlers()
    if serve_metrics and settings.metrics_port:
        metrics.serve(
            settings.metrics_port + index, settings.metrics_addr, targets=settings.sales_targets
        )
    setup = pipeline_setup(settings, allow_demo_key=allow_demo_key)
    flow = build_flow(replace(setup, offers_in_worker=not decider), starts, until_eof=until_eof)
    tune_gc()
    cli_main(flow, workers_per_process=1, process_id=index, addresses=addresses)
    serve_final_metrics(linger_seconds(settings, until_eof, serve_metrics))

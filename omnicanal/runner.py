"""Runs the pipeline: decides where each partition starts, checks that Redis has not lost
state, and executes the dataflow in one or more processes, stopping cleanly on SIGTERM."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
from dataclasses import dataclass
from typing import Literal

from bytewax.run import cli_main
from bytewax.testing import run_main

from flows.connectors import EARLIEST, LATEST, STOP
from flows.pipeline import build_flow
from monitoring import metrics
from omnicanal.config import Settings
from omnicanal.kafka import GroupOffsets, part_name, partitions_of
from omnicanal.services import free_port
from state.profiles import ProfileStore, StateError, connect

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


def plan(settings: Settings, resume_from: ResumeFrom = "auto") -> Plan:
    """Start offset per input partition: one past what Redis has applied.

    With ``resume_from="auto"``, refuses to start if the consumer group (the stream's
    position) is ahead of Redis: Redis lost state. ``"redis"`` replays the gap from Redis's
    position (it must still be retained in Kafka); ``"earliest"`` re-reads everything
    (already applied offsets are skipped by the fencing, so this is safe too).
    """
    kafka = settings.kafka_config()
    counts = partitions_of(kafka, list(settings.topic_contracts()))
    parts = [part_name(t, p) for t, n in counts.items() for p in range(n)]
    store = ProfileStore(connect(settings.redis_url), settings.redis_prefix)
    try:
        stored = store.load_offsets(parts)
        persistence = store.persistence()
    finally:
        store.close()
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
    from omnicanal.kafka import DeliveryError

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, StateError | DeliveryError):
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


def run(
    settings: Settings,
    starts: dict[str, int],
    *,
    until_eof: bool = False,
    processes: int = 1,
    allow_demo_key: bool = False,
    serve_metrics: bool = True,
) -> None:
    """Execute the dataflow; blocks until the input ends or a stop signal arrives."""
    if processes <= 1:
        if serve_metrics:
            metrics.serve(settings.metrics_port, settings.metrics_addr)
        flow = build_flow(settings, starts, until_eof=until_eof, allow_demo_key=allow_demo_key)
        tune_gc()
        run_main(flow)
        return
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_process_main,
            args=(i, addresses, settings, starts, until_eof, allow_demo_key, serve_metrics),
            name=f"omnicanal-worker-{i}",
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()

    def _forward(signum: int, frame: object) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                p.terminate()  # SIGTERM: the child finishes its batch and stops

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    for p in procs:
        p.join()
    failed = [p.name for p in procs if p.exitcode not in (0, None)]
    if failed:
        raise RuntimeError(f"worker process(es) failed: {', '.join(failed)} (see their logs)")


def _process_main(
    index: int,
    addresses: list[str],
    settings: Settings,
    starts: dict[str, int],
    until_eof: bool,
    allow_demo_key: bool,
    serve_metrics: bool,
) -> None:
    install_stop_handlers()
    if serve_metrics and settings.metrics_port:
        metrics.serve(settings.metrics_port + index, settings.metrics_addr)
    flow = build_flow(settings, starts, until_eof=until_eof, allow_demo_key=allow_demo_key)
    tune_gc()
    cli_main(flow, workers_per_process=1, process_id=index, addresses=addresses)

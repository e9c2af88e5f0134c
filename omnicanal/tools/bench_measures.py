"""The measurements of ``omnicanal bench`` (``omnicanal/tools/bench.py`` runs them): the
pipeline's throughput, latency, memory and stage profile, the bare consumer loop beside it,
the duplicate check's cost and a 10x burst; and the services and settings they run on."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from flows.kafka import CheckedProducer, create_topics, part_name, partitions_of
from omnicanal.config import Settings
from omnicanal.tools.datagen import Generator
from omnicanal.tools.demo import DEMO_CAMPAIGNS, DEMO_COUPON_KEY, produce
from omnicanal.tools.services import LocalKafka, LocalRedis
from state.profiles import ProfileStore, connect

Progress = Callable[[str], None]


BENCH_PII_KEY = "omnicanal-bench-key-not-secret-0000"


@dataclass
class BenchPlan:
    events: int = 1_000_000
    customers: list[int] = field(default_factory=lambda: [10_000, 100_000, 1_000_000])
    processes: list[int] = field(default_factory=lambda: [1, 2])
    rates: list[int] = field(default_factory=lambda: [1_000, 5_000, 10_000])
    rate_seconds: float = 20.0
    partitions: int = 4
    bad_share: float = 0.01
    profile_events: int = 100_000
    memory_events: list[int] = field(default_factory=list)
    complete_journey_baskets: int = 0
    seed: int = 42
    #: pipeline/bare pairs for the ratio (alternating, same events)
    ratio_rounds: int = 3
    #: events applied with and without the event_id dedupe (0: off)
    dedupe_events: int = 100_000
    #: a burst of ``burst_factor`` x ``burst_rate`` events/s for this long (0: off)
    burst_seconds: float = 60.0
    burst_rate: int = 1_500
    burst_factor: int = 10

    @classmethod
    def quick(cls) -> BenchPlan:
        return cls(
            events=60_000,
            customers=[10_000],
            processes=[1, 2],
            rates=[1_000, 5_000],
            rate_seconds=5.0,
            profile_events=20_000,
            dedupe_events=20_000,
            burst_seconds=0,
            ratio_rounds=1,
        )


# ------------------------------------------------------------------------ environment
class Services:
    """Embedded Tansu + redis-server (AOF on, as in production) for the whole bench."""

    def __init__(self, workdir: Path) -> None:
        self.kafka = LocalKafka(workdir / "kafka")
        self.redis = LocalRedis(workdir / "redis", appendfsync="everysec")

    def __enter__(self) -> Services:
        self.kafka.start()
        self.redis.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kafka.stop()
        self.redis.stop()


_scenario = iter(range(1, 10**9))


def scenario_settings(base: Settings, partitions: int) -> Settings:
    """Own topics, consumer group and Redis prefix: scenarios never see each other, and the
    bench never touches a topic or a key it did not create (``--external`` included)."""
    n = next(_scenario)
    s = base.model_copy(
        update={
            "group_id": f"omnicanal-bench-{n}",
            "redis_prefix": f"ocb{n}:",
            # every topic, outputs included: omnicanal.x -> bench<n>.x
            **{
                name: f"bench{n}." + str(getattr(base, name)).rpartition(".")[2]
                for name in type(base).model_fields
                if name.startswith("topic_")
            },
            "partitions": partitions,
            "pii_key": base.pii_key or BENCH_PII_KEY,
            # offers on, as in production: the demo's cart and win-back campaigns
            "coupon_key": base.coupon_key or DEMO_COUPON_KEY,
            "campaigns_file": base.campaigns_file or str(DEMO_CAMPAIGNS),
            "metrics_port": 0,
        }
    )
    create_topics(s.kafka_config(), s.all_topics(), partitions)
    return s


def _env(s: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, **s.to_env(), **extra}


def _input_parts(s: Settings) -> list[str]:
    counts = partitions_of(s.kafka_config(), list(s.topic_contracts()))
    return [part_name(t, p) for t, n in counts.items() for p in range(n)]


class _Watch:
    """Polls Redis for applied offsets and the pipeline's process tree for memory."""

    def __init__(self, s: Settings, proc: subprocess.Popen[bytes]) -> None:
        import psutil

        self.store = ProfileStore(connect(s.redis_url), s.redis_prefix)
        self.parts = _input_parts(s)
        self.root = psutil.Process(proc.pid)
        self.peak_rss = 0
        self.last_rss = 0

    def applied(self) -> int:
        return sum(o + 1 for o in self.store.load_offsets(self.parts).values())

    def sample_memory(self) -> None:
        import psutil

        rss = 0
        try:
            for p in [self.root, *self.root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
        except psutil.Error:
            return
        self.last_rss = rss
        self.peak_rss = max(self.peak_rss, rss)


def _start_pipeline(
    s: Settings, processes: int, until_eof: bool, **env: str
) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "omnicanal", "run", "--processes", str(processes)]
    if until_eof:
        args.append("--until-eof")
    return subprocess.Popen(
        args, env=_env(s, **env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return (err or b"").decode(errors="replace")


# ------------------------------------------------------------------------ throughput
def _read_log(log: Path) -> tuple[list[tuple[float, float, int]], list[tuple[float, float]]]:
    batches, events = [], []
    for f in log.parent.glob(log.name + ".*"):
        for line in f.read_text().splitlines():
            kind, *vals = line.split()
            if kind == "B":
                batches.append((float(vals[0]), float(vals[1]), int(vals[2])))
            else:
                events.append((float(vals[0]), float(vals[1])))
    return batches, events


def pipeline_throughput(s: Settings, total: int, processes: int, log: Path) -> dict[str, Any]:
    """Sustained throughput over pre-loaded topics: from the first event consumed to the last
    state write, as the pipeline itself timestamps them (all processes together)."""
    proc = _start_pipeline(s, processes, until_eof=True, OMNICANAL_LATENCY_LOG=str(log))
    watch = _Watch(s, proc)
    t_first = t_last = None
    applied = 0
    #: RSS when a quarter, half, three quarters of the input were applied (growth or burst?)
    rss_at: dict[str, float] = {}
    # The watch shares the machine with the pipeline (the bare loop has none): a memory
    # sample walks /proc (~2 ms of CPU here), so it is taken every 0.25 s and at each
    # quarter, not at every poll (every 20 ms it took ~10% of a core from the run).
    next_sample = 0.0
    while True:
        exited = proc.poll() is not None
        applied = watch.applied()
        now = time.perf_counter()
        if applied and t_first is None:
            t_first = now
        quarter = [q for q in (25, 50, 75) if f"{q}%" not in rss_at and applied >= total * q / 100]
        if now >= next_sample or quarter:
            watch.sample_memory()
            next_sample = now + 0.25
        for q in quarter:
            rss_at[f"{q}%"] = round(watch.last_rss / 2**20, 1)
        if applied >= total:
            t_last = now
            break
        if exited:
            break
        time.sleep(0.05)
    try:  # --until-eof: the run ends by itself at the end of the input
        _, err_b = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err_b = proc.communicate()
    err = (err_b or b"").decode(errors="replace")
    if t_first is None or t_last is None or proc.returncode not in (0, None):
        raise RuntimeError(f"pipeline run failed (applied {applied}/{total}): {err[-2000:]}")
    batches, _ = _read_log(log)
    seconds = max(max(b[1] for b in batches) - min(b[0] for b in batches), 1.0) / 1000
    return {
        "processes": processes,
        "events": total,
        "seconds": round(seconds, 3),
        "events_per_s": round(total / seconds, 1),
        "peak_rss_mb": round(watch.peak_rss / 2**20, 1),
        "rss_mb_at_progress": rss_at,
    }


def bare_loop(s: Settings, total: int, out_topic: str) -> dict[str, Any]:
    """The minimal hand-written loop: assign(), orjson parse, the same Redis writes per event
    pipelined per batch (two hash increments), one output message per event. It is the
    baseline a user would write, so it talks to Redis directly, not through ``state/``."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    create_topics(s.kafka_config(), [out_topic], s.partitions)
    r = connect(s.redis_url)
    consumer = Consumer(
        {
            **s.kafka_config(),
            "group.id": "bare",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    parts = _input_parts(s)
    consumer.assign([TopicPartition(*_split(p), OFFSET_BEGINNING) for p in parts])
    producer = CheckedProducer(s.kafka_config(), what="bare loop")
    seen = 0
    eof: set[tuple[str, int]] = set()
    t0: float | None = None
    while len(eof) < len(parts):
        msgs = consumer.consume(2000, 0.05)
        if not msgs:
            continue
        if t0 is None:
            t0 = time.perf_counter()
        pipe = r.pipeline(transaction=False)
        for msg in msgs:
            kerr = msg.error()
            if kerr is not None:
                if kerr.code() == KafkaError._PARTITION_EOF:
                    eof.add((msg.topic() or "", msg.partition() or 0))
                continue
            seen += 1
            try:
                ev = orjson.loads(msg.value() or b"")
                key = str(ev.get("event_id", "x"))[:32] if isinstance(ev, dict) else "bad"
            except orjson.JSONDecodeError:
                key = "bad"
            h = s.redis_prefix + "bare:" + key[-6:]
            pipe.hincrby(h, "events", 1)
            pipe.hincrby(h, "last", 1)
            producer.produce(out_topic, msg.value() or b"", msg.key())
        pipe.execute()
        producer.poll()
    producer.flush(60)
    seconds = time.perf_counter() - (t0 or time.perf_counter())
    consumer.close()
    r.close()
    return {"events": seen, "seconds": round(seconds, 3), "events_per_s": round(seen / seconds, 1)}


def _split(part: str) -> tuple[str, int]:
    topic, _, p = part.rpartition(":")
    return topic, int(p)


# ------------------------------------------------------------------------ latency
def latency_at_rate(
    s: Settings, rate: int, seconds: float, customers: int, log_dir: Path
) -> dict[str, Any]:
    """Open loop: events sent on a fixed schedule, whatever the pipeline does."""
    import numpy as np

    log = log_dir / f"latency-{rate}"
    proc = _start_pipeline(
        s, 1, until_eof=False, OMNICANAL_LATENCY_LOG=str(log), OMNICANAL_LATENCY_LOG_EVENTS="1"
    )
    try:
        watch = _Watch(s, proc)
        # Warm-up: the pipeline is ready once it has applied a first event.
        gen = Generator(seed=rate, customers=customers, bad_share=0.0, start=None)
        warm = list(gen.messages(200))
        produce(s, warm)
        deadline = time.monotonic() + 60
        # The latency line is written after the offsets commit: wait for both, or warm-up
        # lines written after the truncation below would count as samples.
        while watch.applied() < len(warm) or len(_read_log(log)[1]) < len(warm):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pipeline did not start: {_stop(proc)[-2000:]}")
            time.sleep(0.05)
        for f in log_dir.glob(f"latency-{rate}.*"):
            f.write_bytes(b"")  # drop warm-up samples (the sink appends: O_APPEND)
        topics = s.contract_topics()
        p = CheckedProducer(s.kafka_config(), what="latency producer")
        n = int(rate * seconds)
        msgs = list(gen.messages(n))
        start = time.perf_counter()
        for i, m in enumerate(msgs):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0.0005:
                time.sleep(delay)
            p.produce(topics[m.contract], m.value, m.key)
            if i % 200 == 0:
                p.poll()
        p.flush(60)
        send_seconds = time.perf_counter() - start
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            watch.applied() < len(warm) + n or len(_read_log(log)[1]) < n
        ):
            time.sleep(0.05)
    finally:
        _stop(proc)
    _, rows = _read_log(log)
    arr = np.array(rows) if rows else np.zeros((0, 2))

    def pct(col: int) -> dict[str, float]:
        if not len(arr):
            return {}
        return {f"p{q}": round(float(np.percentile(arr[:, col], q)), 2) for q in (50, 95, 99)}

    return {
        "offered_per_s": rate,
        "achieved_send_per_s": round(n / send_seconds, 1),
        "samples": len(arr),
        "pipeline_ms": pct(0),
        "end_to_end_ms": pct(1),
    }


# ------------------------------------------------------------------------ memory & profile
def redis_bytes_per_customer(s: Settings, baseline: int) -> dict[str, Any]:
    store = ProfileStore(connect(s.redis_url), s.redis_prefix)
    used = store.used_memory() - baseline
    customers = store.customer_count()
    sample = [store.memory_usage(c) for _, c in zip(range(500), store.customer_ids(), strict=False)]
    return {
        "customers": customers,
        "used_memory_per_customer_bytes": round(used / customers) if customers else None,
        "keys_per_customer_bytes_mean": round(sum(sample) / len(sample)) if sample else None,
    }


def profile_stages(s: Settings, events: int, customers: int) -> dict[str, Any]:
    """cProfile of one in-process run: µs per event spent in each stage. The offers stage
    runs on worker 0 here (``OMNICANAL_OFFER_DECIDER=worker``): the profiler sees one
    process, and its row is then what the offer decider process takes off the workers."""
    import cProfile
    import pstats

    from omnicanal import runner

    s = s.model_copy(update={"offer_decider": "worker"})
    produce(s, Generator(seed=3, customers=customers, bad_share=0.01).messages(events))
    plan = runner.plan(s)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    runner.run(s, plan.starts, until_eof=True, serve_metrics=False)
    prof.disable()
    wall = time.perf_counter() - t0
    st = pstats.Stats(prof)
    cum: dict[str, float] = {}
    for (file, _, func), (_, _, _, ct, _) in st.stats.items():  # type: ignore[attr-defined]
        cum[f"{Path(file).name}:{func}"] = cum.get(f"{Path(file).name}:{func}", 0.0) + ct
    stages = {
        "consume (source next_batch)": cum.get("source.py:next_batch", 0.0),
        "validate (decode, contract, HMAC)": cum.get("pipeline.py:validate", 0.0),
        "identity linking (operators/identity)": cum.get("identity.py:link_batch", 0.0),
        "fold deltas (operators/profile)": cum.get("profile.py:fold", 0.0)
        + cum.get("profile.py:to_row", 0.0),
        "stock movements (operators/stock)": cum.get("stock.py:plan_stock", 0.0),
        # the script runs in Redis while the pipeline reads and plans the next batch: what
        # the pipeline's thread spends on it is its wait for the reply (and what the reply
        # asks for), not the script's own time
        "Redis batch apply (Lua, waited for)": cum.get("stages.py:finish", 0.0),
        "stock alerts (read, evaluate, write, send)": cum.get("alerts.py:_evaluate", 0.0),
        # the alerts' sends are in the stage above
        # (in the offer decider process by default: see the docstring)
        "offers (timers, decide, coupons, write, send)": cum.get("offers.py:_fire", 0.0),
        "dead letters (produce+confirm)": cum.get("stages.py:send", 0.0),
        "metrics": cum.get("stages.py:count_applied", 0.0),
    }
    accounted = sum(stages.values())
    stages["Bytewax runtime and other"] = max(wall - accounted, 0.0)
    return {
        "events": events,
        "wall_seconds_under_profiler": round(wall, 3),
        "us_per_event": {k: round(v / events * 1e6, 2) for k, v in stages.items()},
    }


def complete_journey_replay(
    base: Settings, plan: BenchPlan, workdir: Path, say: Progress
) -> dict[str, Any]:
    """Throughput on real grocery baskets (about 9 lines each) instead of generated traffic."""
    from collections import Counter

    from omnicanal.tools.complete_journey import read_events
    from omnicanal.tools.demo import events_from_jsonl

    say(f"replay: {plan.complete_journey_baskets:,} Complete Journey baskets")
    report: Counter[str] = Counter()
    lines = (orjson.dumps(e) for e in read_events(plan.complete_journey_baskets, report))
    s = scenario_settings(base, plan.partitions)
    n, _, _ = produce(s, events_from_jsonl(lines))
    row = pipeline_throughput(s, n, 1, workdir / "complete-journey")
    row["purchase_lines_per_s"] = round(report["lines"] / row["seconds"], 1)
    row["source"] = dict(report)
    return row


INPUT_TOPICS = (
    "topic_transactions",
    "topic_clickstream",
    "topic_inventory",
    "topic_offer_feedback",
    "topic_customers",
)


def forget(s: Settings) -> int:
    """Delete a scenario's Redis keys (its own prefix: nothing else is touched)."""
    store = ProfileStore(connect(s.redis_url), s.redis_prefix)
    try:
        return store.delete_all()
    finally:
        store.close()


def dedupe_cost(
    base: Settings, events: int, customers: int, rounds: int = 4, buckets: int | None = None
) -> dict[str, Any]:
    """What the event_id dedupe costs: the same validated batches applied to Redis with the
    dedupe and without it (µs per event, apply calls only), and the bytes its sets take per
    event (MEMORY USAGE of the sets over the events)."""
    from operators.batch import plan_batch
    from operators.dedupe import event_key
    from operators.identity import IdentityRules
    from operators.privacy import PiiHasher
    from operators.validate import Validator
    from schemas.envelope import Accepted

    gen = Generator(seed=11, customers=customers, bad_share=0.0)
    topics = base.topic_contracts()
    by_contract = {c: t for t, c in topics.items()}
    v = Validator(topics, PiiHasher(BENCH_PII_KEY.encode()))
    items = []
    for i, m in enumerate(gen.messages(events)):
        a = v.decode(by_contract[m.contract], 0, i, None, m.value, 2e12)
        if isinstance(a, Accepted):
            items.append(a)
    batches = [items[i : i + 5000] for i in range(0, len(items), 5000)]
    plans = [plan_batch(b, IdentityRules()) for b in batches]
    keys = [[event_key(a.contract, a.event_id, a.ts_ms) for a in b] for b in batches]
    out: dict[str, Any] = {"events": len(items), "buckets": buckets or base.dedupe_buckets}
    spent: dict[str, list[float]] = {"without": [], "with": []}
    # Alternating rounds (with, without, without, with, ...): the machine's drift and the
    # warm-up weigh on both sides alike; the medians are reported.
    for rnd in range(rounds):
        order = [("with", 7 * 86_400_000), ("without", 0)]
        for label, window in order if rnd % 2 == 0 else order[::-1]:
            s = scenario_settings(base, 1)
            store = ProfileStore(
                connect(s.redis_url),
                s.redis_prefix,
                dedupe_window_ms=window,
                dedupe_buckets=buckets or base.dedupe_buckets,
            )
            total, floor = 0.0, -1
            for b, plan, k in zip(batches, plans, keys, strict=True):
                hi = b[-1].offset
                t0 = time.perf_counter()
                res = store.apply([("p:0", floor, hi)], plan.rows, dedupe=k if window else ())
                total += time.perf_counter() - t0
                assert res.ok, res
                floor = hi
            spent[label].append(total / len(items) * 1e6)
            if window and "sets" not in out:
                sets, size = store.dedupe_memory()
                out["sets"] = sets
                out["redis_bytes_per_event"] = round(size / len(items), 2)
            forget(s)
    for label, values in spent.items():
        out[f"apply_us_per_event_{label}"] = round(statistics.median(values), 2)
    out["us_per_event"] = round(
        out["apply_us_per_event_with"] - out["apply_us_per_event_without"], 2
    )
    # The hashes themselves, computed in the sink per event (operators/dedupe.event_key).
    t0 = time.perf_counter()
    for a in items:
        event_key(a.contract, a.event_id, a.ts_ms)
    out["hash_us_per_event"] = round((time.perf_counter() - t0) / len(items) * 1e6, 2)
    return out


def burst(s: Settings, plan: BenchPlan, log_dir: Path) -> dict[str, Any]:
    """Open loop: a sustained rate, then ``burst_factor`` times it for ``burst_seconds``,
    then the sustained rate again. Reports the peak lag and RSS and how long after the
    burst the lag came back to zero: the pipeline must take it without crashing and with
    bounded memory (the sources pause above 20,000 events in flight)."""
    proc = _start_pipeline(s, 1, until_eof=False)
    watch = _Watch(s, proc)
    topics = s.contract_topics()
    gen = Generator(seed=5, customers=plan.customers[0], bad_share=plan.bad_share, start=None)
    p = CheckedProducer(s.kafka_config(), what="burst producer")
    phases = [
        ("before", plan.burst_rate, 10.0),
        ("burst", plan.burst_rate * plan.burst_factor, plan.burst_seconds),
        ("after", plan.burst_rate, 30.0),
    ]
    sent = 0
    peak_lag = 0
    lag_zero_at: float | None = None
    burst_end = 0.0
    rss: list[float] = []
    try:
        for name, rate, seconds in phases:
            n = int(rate * seconds)
            start = time.perf_counter()
            next_sample = start
            for i, m in enumerate(gen.messages(n)):
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0.0005:
                    time.sleep(delay)
                p.produce(topics[m.contract], m.value, m.key)
                sent += 1
                if i % 500 == 0:
                    p.poll()
                    if time.perf_counter() >= next_sample:
                        next_sample += 0.5
                        lag = sent - watch.applied()
                        peak_lag = max(peak_lag, lag)
                        watch.sample_memory()
                        rss.append(watch.last_rss / 2**20)
                        if name == "after" and lag_zero_at is None and lag <= rate:
                            lag_zero_at = time.perf_counter() - burst_end
                        if proc.poll() is not None:
                            raise RuntimeError(f"pipeline died: {_stop(proc)[-2000:]}")
            if name == "burst":
                burst_end = time.perf_counter()
        p.flush(60)
        deadline = time.monotonic() + 120
        while watch.applied() < sent and time.monotonic() < deadline:
            time.sleep(0.1)
        drained = watch.applied() >= sent
    finally:
        err = _stop(proc)
    return {
        "sustained_per_s": plan.burst_rate,
        "burst_per_s": plan.burst_rate * plan.burst_factor,
        "burst_seconds": plan.burst_seconds,
        "events": sent,
        "all_applied": drained,
        "crashed": "Traceback" in err,
        "peak_lag_events": peak_lag,
        "lag_back_to_zero_seconds_after_burst": round(lag_zero_at, 1) if lag_zero_at else None,
        "peak_rss_mb": round(max(rss), 1) if rss else None,
        "rss_mb_end": round(rss[-1], 1) if rss else None,
    }

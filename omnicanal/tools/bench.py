"""``omnicanal bench``: throughput, latency and memory of the whole pipeline, side by side
with the bare consumer loop a user would write by hand, on the same events.

Every pipeline measurement runs ``omnicanal run`` as a separate process tree against a
broker and Redis (embedded by default), exactly as users run it; the bench process only
produces, polls Redis for applied offsets and samples memory.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from omnicanal.config import Settings
from omnicanal.tools.bench_measures import (
    BENCH_PII_KEY,
    INPUT_TOPICS,
    BenchPlan,
    Progress,
    Services,
    bare_loop,
    burst,
    complete_journey_replay,
    dedupe_cost,
    forget,
    latency_at_rate,
    pipeline_throughput,
    profile_stages,
    redis_bytes_per_customer,
    scenario_settings,
)
from omnicanal.tools.bench_offers import decision_cost
from omnicanal.tools.datagen import Generator
from omnicanal.tools.demo import produce
from state.profiles import ProfileStore, connect


# ------------------------------------------------------------------------ the whole bench
def run_bench(
    plan: BenchPlan, progress: Progress | None = None, external: Settings | None = None
) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    workdir = Path(tempfile.mkdtemp(prefix="omnicanal-bench-"))
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "plan": plan.__dict__,
    }
    try:
        with _services(external, workdir) as base:
            state = ProfileStore(connect(base.redis_url), base.redis_prefix)
            scenarios = []
            first_pipeline: dict[str, Any] | None = None
            for customers in plan.customers:
                for processes in plan.processes:
                    say(
                        f"throughput: {plan.events:,} events, {customers:,} customers, "
                        f"{processes} process(es)"
                    )
                    s = scenario_settings(base, plan.partitions)
                    gen = Generator(seed=plan.seed, customers=customers, bad_share=plan.bad_share)
                    produce(s, gen.messages(plan.events))
                    baseline = state.used_memory()
                    log = workdir / f"throughput-{customers}-{processes}"
                    row = {
                        "customers": customers,
                        **pipeline_throughput(s, plan.events, processes, log),
                    }
                    row["redis"] = redis_bytes_per_customer(s, baseline)
                    if first_pipeline is None:
                        first_pipeline = row
                        result["ratio_rounds"] = ratio_rounds(s, plan, workdir, row, say)
                    scenarios.append(row)
                    forget(s)
            result["throughput"] = scenarios
            rounds = result["ratio_rounds"]
            result["bare_loop"] = {
                "events": plan.events,
                "events_per_s": statistics.median(r["bare_per_s"] for r in rounds),
            }
            best_1p = next(r for r in scenarios if r["processes"] == 1)
            result["events_per_s"] = {
                "pipeline_1_process": best_1p["events_per_s"],
                "pipeline_best": max(r["events_per_s"] for r in scenarios),
                "bare": result["bare_loop"]["events_per_s"],
            }
            # The median of ratios measured in pairs, one right after the other: this
            # machine's speed drifts by half between minutes, so a ratio of runs taken far
            # apart says more about the machine than about the pipeline.
            result["ratio"] = round(statistics.median(r["ratio"] for r in rounds), 3)
            lat = []
            for rate in plan.rates:
                say(f"latency: open loop at {rate:,} events/s for {plan.rate_seconds:.0f}s")
                s = scenario_settings(base, plan.partitions)
                lat.append(latency_at_rate(s, rate, plan.rate_seconds, plan.customers[0], workdir))
            result["latency"] = lat
            mem = []
            for n in plan.memory_events:
                say(f"memory: {n:,} events")
                s = scenario_settings(base, plan.partitions)
                produce(
                    s,
                    Generator(
                        seed=9, customers=plan.customers[0], bad_share=plan.bad_share
                    ).messages(n),
                )
                mem.append(pipeline_throughput(s, n, 1, workdir / f"memory-{n}"))
                forget(s)
            if mem:
                result["memory_growth"] = mem
            if plan.complete_journey_baskets:
                result["complete_journey"] = complete_journey_replay(base, plan, workdir, say)
            say(f"profiler: {plan.profile_events:,} events in-process")
            s = scenario_settings(base, plan.partitions)
            result["profile"] = profile_stages(s, plan.profile_events, plan.customers[0])
            forget(s)
            if plan.dedupe_events:
                say(f"event_id dedupe: {plan.dedupe_events:,} events applied with and without")
                result["dedupe"] = dedupe_cost(base, plan.dedupe_events, plan.customers[0])
            say("offer decisions: cost per decision, in-process")
            result["offer_decisions"] = decision_cost()
            if plan.burst_seconds:
                say(
                    f"burst: {plan.burst_rate * plan.burst_factor:,} events/s for "
                    f"{plan.burst_seconds:.0f}s between {plan.burst_rate:,} events/s"
                )
                s = scenario_settings(base, plan.partitions)
                result["burst"] = burst(s, plan, workdir)
                forget(s)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def ratio_rounds(
    s: Settings, plan: BenchPlan, workdir: Path, first: dict[str, Any], say: Progress
) -> list[dict[str, Any]]:
    """Pipeline (1 process) and bare loop alternately on the same input topics, each
    pipeline run with its own group, prefix and output topics: ``plan.ratio_rounds`` pairs,
    the first pipeline run being the scenario's own."""
    out = []
    pipeline_eps = first["events_per_s"]
    for k in range(plan.ratio_rounds):
        say(f"bare loop on the same events ({k + 1} of {plan.ratio_rounds})")
        bare = bare_loop(s, plan.events, f"{s.topic_transactions}.bare-out{k}")
        if k:
            again = scenario_settings(s, plan.partitions).model_copy(
                update={t: getattr(s, t) for t in INPUT_TOPICS}
            )
            say(f"pipeline again on the same events ({k + 1} of {plan.ratio_rounds})")
            pipeline_eps = pipeline_throughput(again, plan.events, 1, workdir / f"ratio-{k}")[
                "events_per_s"
            ]
            forget(again)
        out.append(
            {
                "pipeline_per_s": pipeline_eps,
                "bare_per_s": bare["events_per_s"],
                "ratio": round(pipeline_eps / bare["events_per_s"], 3),
            }
        )
    return out


class _services:
    def __init__(self, external: Settings | None, workdir: Path) -> None:
        self.external = external
        self.svc = None if external else Services(workdir)

    def __enter__(self) -> Settings:
        if self.external is not None:
            return self.external
        assert self.svc is not None
        self.svc.__enter__()
        return Settings(
            kafka_bootstrap=self.svc.kafka.bootstrap,
            redis_url=self.svc.redis.url,
            pii_key=BENCH_PII_KEY,
            metrics_port=0,
        )

    def __exit__(self, *exc: object) -> None:
        if self.svc is not None:
            self.svc.__exit__()


def chart(result: dict[str, Any], path: Path) -> Path:
    """PNG: throughput (pipeline vs bare) and latency percentiles against offered load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = [
        f"{r['customers'] // 1000}k cust\n{r['processes']} proc" for r in result["throughput"]
    ]
    values = [r["events_per_s"] for r in result["throughput"]]
    a.bar(labels, values, color="#3b7dd8", label="omnicanal pipeline")
    a.axhline(result["bare_loop"]["events_per_s"], color="#d8553b", ls="--", label="bare loop")
    a.axhline(25_000, color="#777", ls=":", label="target 25k/s")
    a.set_ylabel("events/s")
    a.set_title("Sustained throughput")
    a.legend(fontsize=8)
    rates = [x["offered_per_s"] for x in result["latency"]]
    for key, style in (("pipeline_ms", "-"), ("end_to_end_ms", "--")):
        for q, color in (("p50", "#3b7dd8"), ("p95", "#e0a030"), ("p99", "#d8553b")):
            ys = [x[key].get(q, float("nan")) for x in result["latency"]]
            b.plot(rates, ys, style, marker="o", color=color, label=f"{key.split('_')[0]} {q}")
    b.set_xlabel("offered load (events/s)")
    b.set_ylabel("latency (ms)")
    b.set_yscale("log")
    b.set_title("Latency (solid: pipeline own, dashed: through broker)")
    b.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

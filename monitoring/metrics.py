"""The metric catalog: every Prometheus metric omnicanal exposes is declared here, once.

Counters are incremented per batch (never per event) with per-label totals.

>>> EVENTS.labels("omnicanal.transactions", "web", "sale").inc(0)
>>> counter_total(EVENTS, channel="web") >= 0
True
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

EVENTS = Counter(
    "omnicanal_events",
    "Valid events applied to state, by source topic, channel and event type.",
    ["topic", "channel", "event_type"],
)
DEAD_LETTERS = Counter(
    "omnicanal_dead_letters",
    "Inputs sent to the dead-letter topic, by source topic and reason code.",
    ["topic", "reason"],
)
REPLAYED = Counter(
    "omnicanal_replayed_events",
    "Inputs skipped because their offset was already applied (replay after a restart).",
    ["topic"],
)
BATCH_SECONDS = Histogram(
    "omnicanal_batch_seconds",
    "Time to apply one batch, by stage (dead_letters: produce+confirm, state: planning and "
    "the Redis batch script, which runs while the worker reads the next batch).",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BATCH_EVENTS = Histogram(
    "omnicanal_batch_events",
    "Inputs per batch reaching the state sink.",
    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000),
)
NEW_CUSTOMERS = Counter(
    "omnicanal_new_customers", "Customers (canonical ids) created by the identity graph."
)
IDENTITY_LINKS = Counter(
    "omnicanal_identity_links", "Identifiers newly linked to a customer by an event."
)
IDENTITY_MERGES = Counter(
    "omnicanal_identity_merges",
    "Customers merged into an older one because an event showed they are the same person.",
)
IDENTITY_REFUSALS = Counter(
    "omnicanal_identity_refusals",
    "Links refused by the guard rails, by reason (runaway, limit:<type>); the events "
    "count unlinked.",
    ["reason"],
)
ANONYMOUS_EVENTS = Counter(
    "omnicanal_anonymous_events",
    "Valid customer-facing events with no usable identifier (not profiled), by topic.",
    ["topic"],
)
SUPPRESSED_EVENTS = Counter(
    "omnicanal_suppressed_events",
    "Events dropped because they belong to an erased customer and predate the erasure.",
    ["topic"],
)
APPLIED_OFFSET = Gauge(
    "omnicanal_applied_offset",
    "Last source offset applied to state, per topic and partition.",
    ["topic", "partition"],
)
EVENT_LATENCY = Histogram(
    "omnicanal_event_latency_seconds",
    "Event time to applied in Redis, per event, by source topic (an event time ahead of "
    "the clock counts as 0). Observed per batch: one bucket count per event, no per-event "
    "metric call.",
    ["topic"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
)
EVENT_LAG_SECONDS = Gauge(
    "omnicanal_event_lag_seconds",
    "Processing time minus the newest event time in the last batch, per topic.",
    ["topic"],
)
STOCK_EVENTS = Counter(
    "omnicanal_stock_events",
    "Stock events applied: inventory events by type, and sale/return lines that move stock.",
    ["event_type"],
)
STOCK_UNLOCATED = Counter(
    "omnicanal_stock_unlocated",
    "Store sales/returns without a location_id: their stock effect is unknown.",
)
STOCK_SHRINKAGE_UNITS = Counter(
    "omnicanal_stock_shrinkage_units",
    "Units stock counts found missing against the recorded level (found extra: negative "
    "contributions are not counted here, see `omnicanal stock`).",
)
STOCK_LATE_COUNTS = Counter(
    "omnicanal_stock_late_counts",
    "Stock counts ignored: older than the movement records kept since the last count (all "
    "of them up to 4,096; then the latest 2,048 within 2 days).",
)
STOCK_ALERTS = Counter(
    "omnicanal_stock_alerts",
    "Stock alert messages sent, by type, severity and status (raised, updated, resolved).",
    ["type", "severity", "status"],
)
OPEN_STOCK_ALERTS = Gauge(
    "omnicanal_open_stock_alerts",
    "Open stock alerts by type, 0 included (Redis-wide: only worker 0 exports it, so a sum "
    "over processes counts each alert once).",
    ["type"],
)
SKUS_AT_RISK = Gauge(
    "omnicanal_skus_at_risk",
    "SKUs with an open low-stock, out-of-stock or predicted stock-out alert (Redis-wide: "
    "worker 0 only).",
)

DUPLICATE_EVENTS = Counter(
    "omnicanal_duplicate_events",
    "Events dropped because an event with the same contract and event_id was applied "
    "within the dedupe window (an upstream retry), by source topic.",
    ["topic"],
)
REDIS_WAITS = Counter(
    "omnicanal_redis_waits",
    "Times a batch waited for Redis before trying again, by cause: out_of_memory (maxmemory "
    "reached), busy (loading, a long script, a failover), unreachable (connection or "
    "timeout).",
    ["cause"],
)
REDIS_WAITING = Gauge(
    "omnicanal_redis_waiting",
    "1 while this worker's batch waits for Redis (out of memory, busy or unreachable).",
)
REDIS_SECONDS = Histogram(
    "omnicanal_redis_call_seconds",
    "Redis round trips, by command (evalsha: the scripts; pipeline and transaction: a "
    "pipeline's whole round trip), errors included.",
    ["op"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
REDIS_ERRORS = Counter(
    "omnicanal_redis_errors",
    "Redis calls that failed, by command and cause (out_of_memory, busy, unreachable, "
    "error: anything else, a refused script included).",
    ["op", "cause"],
)
BROKER_RETRIES = Counter(
    "omnicanal_broker_retries",
    "Dead letters, stock alerts or offers sent again because the broker did not confirm them in "
    "time (down, paused, or refusing), by what was sent.",
    ["what"],
)
COUPON_REDEMPTIONS = Counter(
    "omnicanal_coupon_redemptions",
    "Coupon codes presented in sales and offer_redeemed events, by outcome (redeemed, "
    "duplicate, or why it was refused) and channel.",
    ["outcome", "channel"],
)
OFFER_REDEMPTIONS = Counter(
    "omnicanal_offer_redemptions",
    "Offers redeemed (their coupon code accepted), by campaign and the channel where it was "
    "redeemed: with omnicanal_offers_total, the redemption rate per campaign and channel.",
    ["campaign", "channel"],
)
OFFERS = Counter(
    "omnicanal_offers",
    "Offers decided and written to the outbox (sent once the broker confirms), by campaign "
    "and delivery channel.",
    ["campaign", "channel"],
)
OFFER_SUPPRESSIONS = Counter(
    "omnicanal_offer_suppressions",
    "Offer triggers that ended without an offer because of a guard rail, by reason "
    "(holdout, no_consent, frequency_day, frequency_week, frequency_campaign, budget, "
    "duplicate_trigger, ...).",
    ["reason"],
)
OFFER_TIMERS = Gauge(
    "omnicanal_offer_timers",
    "Offer timers pending, by kind (cart, browse, winback, expand, bis, xsell; Redis-wide: "
    "exported by the process that fires them, the offer decider or worker 0).",
    ["timer"],
)
OFFER_BACKLOG = Gauge(
    "omnicanal_offer_backlog_events",
    "Events the workers are behind their input, as they last reported it (every 5 s while "
    "they read), seen by the process that fires the offer timers.",
)
OFFERS_WAITING = Gauge(
    "omnicanal_offers_waiting",
    "1 while the offer timers wait for the workers to catch up with a backlog "
    "(OMNICANAL_OFFER_HOLD_BACKLOG), else 0.",
)
OFFERS_HOLD_EXPIRED = Gauge(
    "omnicanal_offers_hold_expired",
    "1 while the offer timers are decided although the workers are still behind: they "
    "waited OMNICANAL_OFFER_HOLD_MAX_MINUTES for the catch-up (offers from a partial "
    "history), else 0.",
)
OFFER_OUTCOMES = Counter(
    "omnicanal_offer_outcomes",
    "Offer outcomes the offer policy learnt from: redeemed (in any channel), dismissed, or "
    "expired unredeemed.",
    ["outcome"],
)
OFFER_DISMISSALS = Counter(
    "omnicanal_offer_dismissals",
    "offer_dismissed events: accepted (a negative for the offer policy), or refused because "
    "the offer was made to another customer (wrong_customer).",
    ["result"],
)
OFFER_MODEL_LOSS = Histogram(
    "omnicanal_offer_model_log_loss",
    "Progressive validation of the offer policy's model: the log-loss of its prediction for "
    "each outcome, made before learning it (lower is better; 0.69 is a coin).",
    buckets=(0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 0.69, 1.0, 2.0, 5.0),
)
CROSS_SELL_BASKETS = Counter(
    "omnicanal_cross_sell_baskets",
    "Baskets (sales of any channel) the co-purchase counts learnt from, by result: added "
    "(flushed to Redis, where every worker's counts are summed) or lost (a delta dropped "
    "after Redis refused it for too long).",
    ["result"],
)
PREFERENCE_MODEL_LOSS = Histogram(
    "omnicanal_preference_model_log_loss",
    "Progressive validation of the cross-sell ranker: for each item it ranked at a "
    "customer's purchase, the log-loss of its prediction that the customer buys it next (in "
    "any channel), made before learning it.",
    buckets=(0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 0.69, 1.0, 2.0, 5.0),
)
PREFERENCE_EXAMPLES = Counter(
    "omnicanal_preference_examples",
    "Items the cross-sell ranker learnt from, by label: bought (the customer bought the "
    "ranked item after the ranking, in any channel) or not_bought. bought / all is the hit "
    "rate of its rankings.",
    ["label"],
)
NEXT_BASKET_LOSS = Histogram(
    "omnicanal_next_basket_log_loss",
    "Progressive validation of the next-basket preference model: for each candidate item of "
    "a basket it learnt from (bought, or sampled among those not bought), the log-loss of "
    "its prediction that the customer buys it, made before learning it.",
    buckets=(0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 0.69, 1.0, 2.0, 5.0),
)
NEXT_BASKET_PENDING = Gauge(
    "omnicanal_next_basket_pending",
    "Customers with baskets the next-basket model has still to learn from (exported by the "
    "offer decider): a number that keeps growing means it learns slower than baskets come.",
)
NEXT_BASKET_BASKETS = Counter(
    "omnicanal_next_basket_baskets",
    "Baskets (sales of any channel) the next-basket preference model learnt from: a stable "
    "share of all baskets (operators/preferences.py LEARN_SHARE), each learnt once.",
)
CHANNEL_HEALTH = Gauge(
    "omnicanal_channel_health",
    "Health of each sales channel (key sales:<channel>), store (store:<location>) and "
    "digital channel's browsing (activity:<channel>): 0 normal, 1 degraded, 2 collapsed "
    "(worker 0 only, the worker that watches them).",
    ["key"],
)
CHANNEL_HEALTH_EVENTS = Counter(
    "omnicanal_channel_health_events",
    "Channel-health messages raised: collapsed, degraded, recovered, relearning (an alarm "
    "of 3 days: the new level is learnt).",
    ["status"],
)
CHANNEL_HEALTH_UNCOUNTED = Counter(
    "omnicanal_channel_health_uncounted",
    "Sales of stores not counted for channel health: the minute already counted the cap "
    "of store ids (2,000; ids come from events, made-up ones must not grow the counts).",
)
OFFER_CONTINGENCY = Counter(
    "omnicanal_offer_contingency",
    "Offers that avoided a collapsed channel: rerouted to the customer's next reachable "
    "channel, or held (looked at again 15 minutes later) when no other was reachable.",
    ["action"],
)
OFFER_RANKINGS = Counter(
    "omnicanal_offer_rankings",
    "Cross-sell and win-back timers by timer (xsell, winback) and result: ranked (a model "
    "ranked the items the offer may name) or skipped (the outcome did not depend on them: "
    "not overdue yet, in the holdout, no consent, capped, too late, offered before).",
    ["timer", "result"],
)
WEBHOOK_ALERTS = Counter(
    "omnicanal_webhook_alerts",
    "Alerts received from Alertmanager by `omnicanal webhook`, by alertname (omnicanal's "
    "own; any other is `other`) and status (firing, resolved).",
    ["alertname", "status"],
)
WEBHOOK_REQUESTS = Counter(
    "omnicanal_webhook_requests",
    "Notifications `omnicanal webhook` answered, by outcome: ok, invalid (not an "
    "Alertmanager webhook), unauthorized (no or a wrong bearer token), too_large, "
    "unavailable (Redis could not be written: retried).",
    ["outcome"],
)
ORDERS = Counter(
    "omnicanal_orders",
    "Sales (orders) applied, by channel.",
    ["channel"],
)
REVENUE = Counter(
    "omnicanal_revenue_minor",
    "Revenue of the sales applied, in minor units of the currency (cents), by channel and "
    "currency: money is never a float in omnicanal.",
    ["channel", "currency"],
)
ITEMS_SOLD = Counter(
    "omnicanal_items_sold",
    "Product units in the sales applied, by channel.",
    ["channel"],
)
SALES_TARGET = Gauge(
    "omnicanal_sales_target_daily_minor",
    "The daily sales target configured per channel and currency (OMNICANAL_SALES_TARGETS), "
    "in minor units; every process exports it (use max, not sum).",
    ["channel", "currency"],
)
CONSUMER_LAG = Gauge(
    "omnicanal_consumer_lag",
    "Messages not yet read, per input topic and partition (of this process): the high "
    "watermark minus the next offset to read, at the first poll, then every 5 s.",
    ["topic", "partition"],
)

for _cause in ("out_of_memory", "busy", "unreachable", "error"):
    REDIS_ERRORS.labels("evalsha", _cause)  # 0 until one happens: rates exist from the start

CATALOG: tuple[MetricWrapperBase, ...] = (
    EVENTS,
    DEAD_LETTERS,
    REPLAYED,
    BATCH_SECONDS,
    BATCH_EVENTS,
    NEW_CUSTOMERS,
    IDENTITY_LINKS,
    IDENTITY_MERGES,
    IDENTITY_REFUSALS,
    ANONYMOUS_EVENTS,
    SUPPRESSED_EVENTS,
    APPLIED_OFFSET,
    EVENT_LATENCY,
    EVENT_LAG_SECONDS,
    STOCK_EVENTS,
    STOCK_UNLOCATED,
    STOCK_SHRINKAGE_UNITS,
    STOCK_LATE_COUNTS,
    STOCK_ALERTS,
    OPEN_STOCK_ALERTS,
    SKUS_AT_RISK,
    DUPLICATE_EVENTS,
    REDIS_WAITS,
    REDIS_WAITING,
    REDIS_SECONDS,
    REDIS_ERRORS,
    BROKER_RETRIES,
    COUPON_REDEMPTIONS,
    OFFER_REDEMPTIONS,
    OFFERS,
    OFFER_SUPPRESSIONS,
    OFFER_TIMERS,
    OFFER_BACKLOG,
    OFFERS_WAITING,
    OFFERS_HOLD_EXPIRED,
    OFFER_OUTCOMES,
    OFFER_DISMISSALS,
    OFFER_MODEL_LOSS,
    CROSS_SELL_BASKETS,
    PREFERENCE_MODEL_LOSS,
    PREFERENCE_EXAMPLES,
    NEXT_BASKET_LOSS,
    NEXT_BASKET_BASKETS,
    NEXT_BASKET_PENDING,
    CHANNEL_HEALTH,
    CHANNEL_HEALTH_EVENTS,
    CHANNEL_HEALTH_UNCOUNTED,
    OFFER_CONTINGENCY,
    OFFER_RANKINGS,
    WEBHOOK_ALERTS,
    WEBHOOK_REQUESTS,
    ORDERS,
    REVENUE,
    ITEMS_SOLD,
    SALES_TARGET,
    CONSUMER_LAG,
)


def serve(
    port: int, addr: str = "127.0.0.1", *, targets: Mapping[str, Mapping[str, int]] | None = None
) -> None:
    """Expose /metrics over HTTP (no-op for port 0), with the daily sales ``targets`` (per
    channel, per currency, in minor units).

    >>> serve(0, targets={"web": {"EUR": 150_000}})
    >>> SALES_TARGET.labels("web", "EUR")._value.get()
    150000.0
    """
    for channel, per_currency in (targets or {}).items():
        for currency, amount in per_currency.items():
            SALES_TARGET.labels(channel, currency).set(amount)
    if port:
        start_http_server(port, addr=addr, registry=REGISTRY)


def observe_many(hist: Histogram, values: Sequence[float]) -> None:
    """Observe ``values`` in a histogram child with one bucket increment per bucket, not one
    ``observe`` per value (what a per-event histogram costs on the hot path).

    >>> h = Histogram("doc_observe_many", "doc", buckets=(1.0, 5.0), registry=None)
    >>> observe_many(h, [0.5, 2.0, 7.0, -1.0])
    >>> [(s.labels.get("le"), s.value) for s in h.collect()[0].samples if s.name.endswith(
    ...     ("_bucket", "_count", "_sum"))]
    [('1.0', 2.0), ('5.0', 3.0), ('+Inf', 4.0), (None, 4.0), (None, 8.5)]
    """
    if not values:
        return
    bounds = hist._upper_bounds
    counts = [0] * len(bounds)
    for v in values:
        counts[bisect_left(bounds, v)] += 1
    for bucket, n in zip(hist._buckets, counts, strict=True):
        if n:
            bucket.inc(n)
    hist._sum.inc(sum(values))


def counter_total(counter: Counter, **match: str) -> float:
    """Sum of a counter's samples whose labels include ``match`` (for summaries and tests)."""
    total = 0.0
    for metric in counter.collect():
        for s in metric.samples:
            if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in match.items()):
                total += s.value
    return total


def counter_by(counter: Counter, label: str) -> dict[str, float]:
    """A counter's totals grouped by one label."""
    out: dict[str, float] = {}
    for metric in counter.collect():
        for s in metric.samples:
            if s.name.endswith("_total"):
                out[s.labels[label]] = out.get(s.labels[label], 0.0) + s.value
    return out


def histogram_totals(hist: Histogram) -> tuple[float, float]:
    """(count, sum) of a histogram without labels (for summaries and tests)."""
    n = total = 0.0
    for metric in hist.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                n += sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
    return n, total

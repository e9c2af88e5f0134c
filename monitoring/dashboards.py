"""Grafana dashboards for omnicanal, generated from this one definition (never edited by
hand): ``python -m monitoring.dashboards DIR`` writes one JSON file per dashboard, which
``docker/compose.yml`` provisions. Every panel has a title, a description, a unit and the
``datasource`` variable; tests run every panel's query against a real Prometheus scraping
a real run.

>>> boards = dashboards()
>>> sorted(boards)
['omnicanal-channels', 'omnicanal-offers', 'omnicanal-pipeline', 'omnicanal-stock']
>>> all(p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
...     for b in boards.values() for p in b["panels"])
True
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


class Panel(NamedTuple):
    title: str
    description: str
    unit: str
    #: PromQL, legend
    queries: tuple[tuple[str, str], ...]
    kind: str = "timeseries"


BOARDS: dict[str, tuple[str, list[Panel]]] = {
    "omnicanal-channels": (
        "omnicanal: channel health and sales",
        [
            Panel("Channel health", "0 normal, 1 degraded, 2 collapsed, per sales channel and "
                  "store (the in-stream detectors; worker 0).", "none",
                  (("max by (key) (omnicanal_channel_health)", "{{key}}"),), "state-timeline"),
            Panel("Orders per minute", "Sales applied per channel.", "short",
                  (("sum by (channel) (rate(omnicanal_orders_total[5m])) * 60", "{{channel}}"),)),
            Panel("Revenue per minute", "Revenue of the sales applied, per channel and "
                  "currency, in currency units.", "currencyEUR",
                  (("sum by (channel, currency) (rate(omnicanal_revenue_minor_total[5m])) * 60"
                    " / 100", "{{channel}} {{currency}}"),)),
            Panel("Sales against the daily target", "Revenue of the last 24 hours per channel "
                  "and currency, divided by the daily target set in OMNICANAL_SALES_TARGETS "
                  "(channels without a target are not shown).", "percentunit",
                  (("sum by (channel, currency) (increase(omnicanal_revenue_minor_total[1d])) "
                    "/ on (channel, currency) max by (channel, currency) "
                    "(omnicanal_sales_target_daily_minor)", "{{channel}} {{currency}}"),)),
            Panel("Units sold per minute", "Product units in the sales applied, per channel.",
                  "short",
                  (("sum by (channel) (rate(omnicanal_items_sold_total[5m])) * 60",
                    "{{channel}}"),)),
            Panel("Funnel, web and app", "Product views, cart adds, checkouts started and sales "
                  "per minute on the web and in the app.", "short",
                  (("sum by (event_type) (rate(omnicanal_events_total{channel=~\"web|app\","
                    "event_type=~\"product_view|add_to_cart|checkout_started|sale\"}[5m])) * 60",
                    "{{event_type}}"),)),
            Panel("Conversion: sales per add-to-cart", "Sales divided by cart adds, web and "
                  "app (the alert OmnicanalConversionDrop compares it with last week).",
                  "percentunit",
                  (("sum by (channel) (rate(omnicanal_events_total{event_type=\"sale\","
                    "channel=~\"web|app\"}[30m])) / sum by (channel) (rate(omnicanal_events_total"
                    "{event_type=\"add_to_cart\",channel=~\"web|app\"}[30m]))", "{{channel}}"),)),
        ],
    ),
    "omnicanal-pipeline": (
        "omnicanal: pipeline",
        [
            Panel("Events applied per second", "Valid events applied to state, per topic.",
                  "ops",
                  (("sum by (topic) (rate(omnicanal_events_total[5m]))", "{{topic}}"),)),
            Panel("Dead letters per second", "Inputs sent to the dead-letter topic, by "
                  "reason.", "ops",
                  (("sum by (reason) (rate(omnicanal_dead_letters_total[5m]))", "{{reason}}"),)),
            Panel("Event lag", "Age of the newest applied event of each topic (event time to "
                  "applied).", "s", (("max by (topic) (omnicanal_event_lag_seconds)",
                                      "{{topic}}"),)),
            Panel("Event latency, p50 and p95", "Event time to applied in Redis, per topic "
                  "(every event counted; channels' clocks included).", "s",
                  (("histogram_quantile(0.95, sum by (topic, le) "
                    "(rate(omnicanal_event_latency_seconds_bucket[5m])))", "p95 {{topic}}"),
                   ("histogram_quantile(0.5, sum by (topic, le) "
                    "(rate(omnicanal_event_latency_seconds_bucket[5m])))", "p50 {{topic}}"))),
            Panel("Consumer lag", "Messages not read yet per input topic and partition (high "
                  "watermark minus the next offset).", "short",
                  (("sum by (topic, partition) (omnicanal_consumer_lag)",
                    "{{topic}}:{{partition}}"),)),
            Panel("Redis round trips, p99", "99th percentile of each kind of Redis call "
                  "(evalsha: the scripts; pipeline, transaction: a whole pipeline).", "s",
                  (("histogram_quantile(0.99, sum by (op, le) "
                    "(rate(omnicanal_redis_call_seconds_bucket[5m])))", "{{op}}"),)),
            Panel("Redis errors", "Failed Redis calls per 5 minutes, by cause (a script "
                  "loaded again after a Redis restart counts once as error).", "short",
                  (("sum by (cause) (increase(omnicanal_redis_errors_total[5m]))",
                    "{{cause}}"),)),
            Panel("Batch time, p95", "95th percentile of the time each stage takes per batch.",
                  "s",
                  (("histogram_quantile(0.95, sum by (stage, le) "
                    "(rate(omnicanal_batch_seconds_bucket[5m])))", "{{stage}}"),)),
            Panel("Redis waits", "Times a batch waited for Redis, by cause.", "short",
                  (("sum by (cause) (increase(omnicanal_redis_waits_total[5m]))", "{{cause}}"),
                   ("max(omnicanal_redis_waiting)", "waiting now"))),
        ],
    ),
    "omnicanal-stock": (
        "omnicanal: stock",
        [
            Panel("Open stock alerts", "Open alerts by type (worker 0).", "short",
                  (("max by (type) (omnicanal_open_stock_alerts)", "{{type}}"),)),
            Panel("SKUs at risk", "SKUs with an open low-stock, out-of-stock or predicted "
                  "stock-out alert.", "short", (("max(omnicanal_skus_at_risk)", "SKUs"),)),
            Panel("Stock alerts raised", "Alert messages per 5 minutes, by type and status.",
                  "short",
                  (("sum by (type, status) (increase(omnicanal_stock_alerts_total[5m]))",
                    "{{type}} {{status}}"),)),
        ],
    ),
    "omnicanal-offers": (
        "omnicanal: offers",
        [
            Panel("Offers and redemptions per 5 minutes", "Offers decided and sent, by "
                  "campaign, and offers redeemed (in any channel), by campaign and the channel "
                  "where they were redeemed.", "short",
                  (("sum by (campaign) (increase(omnicanal_offers_total[5m]))",
                    "sent {{campaign}}"),
                   ("sum by (campaign, channel) (increase(omnicanal_offer_redemptions_total[5m]))",
                    "redeemed {{campaign}} in {{channel}}"))),
            Panel("Suppressed per 5 minutes", "Triggers that ended without an offer, by guard "
                  "rail.", "short",
                  (("sum by (reason) (increase(omnicanal_offer_suppressions_total[5m]))",
                    "{{reason}}"),)),
            Panel("Timers pending", "Offer timers waiting to fire, by kind.", "short",
                  (("max by (timer) (omnicanal_offer_timers)", "{{timer}}"),)),
            Panel("Waiting for a catch-up", "Events the workers are behind their input, as "
                  "the process that fires the offer timers sees it, and whether the timers "
                  "wait for them (1: more than OMNICANAL_OFFER_HOLD_BACKLOG behind; they are "
                  "decided once the workers catch up, or after "
                  "OMNICANAL_OFFER_HOLD_MAX_MINUTES: then 'decided behind' is 1 until the "
                  "workers catch up).", "short",
                  (("max(omnicanal_offer_backlog_events)", "workers behind (events)"),
                   ("max(omnicanal_offers_waiting)", "timers waiting"),
                   ("max(omnicanal_offers_hold_expired)", "decided behind"))),
            Panel("Cross-sell and win-back rankings", "Due cross-sell and win-back timers per "
                  "5 minutes, by whether a model ranked their items (an offer may follow) or "
                  "they were decided without (holdout, no consent, capped, too late, offered "
                  "before). Ranking is the costly part of a decision: a high ranked share "
                  "means more CPU per offer.", "short",
                  (("sum by (timer, result) (increase(omnicanal_offer_rankings_total[5m]))",
                    "{{timer}} {{result}}"),)),
            Panel("Coupon redemptions", "Codes presented in every channel, by outcome.",
                  "short",
                  (("sum by (outcome) (increase(omnicanal_coupon_redemptions_total[5m]))",
                    "{{outcome}}"),)),

            Panel("Cross-sell learning", "Baskets (any channel) added to the co-purchase "
                  "counts per 5 minutes (lost: dropped after Redis refused them too long), and "
                  "the items the cross-sell ranker learnt from, by whether the customer bought "
                  "them next (bought / all is its hit rate).", "short",
                  (("sum by (result) (increase(omnicanal_cross_sell_baskets_total[5m]))",
                    "baskets {{result}}"),
                   ("sum by (label) (increase(omnicanal_preference_examples_total[5m]))",
                    "ranked items {{label}}"))),
            Panel("Next-basket learning", "Baskets (any channel) the next-basket preference "
                  "model learnt from per 5 minutes (a stable tenth of all), its progressive "
                  "validation: the mean log-loss of its predictions made before learning each "
                  "basket (0.69 is a coin; lower is better), and the customers it has still "
                  "to learn from (growing: the offer decider falls behind).", "short",
                  (("sum(increase(omnicanal_next_basket_baskets_total[5m]))", "baskets learnt"),
                   ("sum(increase(omnicanal_next_basket_log_loss_sum[15m])) / "
                    "sum(increase(omnicanal_next_basket_log_loss_count[15m]))",
                    "mean log-loss"),
                   ("max(omnicanal_next_basket_pending)", "customers still to learn from"))),
        ],
    ),
}  # fmt: skip


def _panel(i: int, p: Panel) -> dict[str, Any]:
    return {
        "id": i + 1,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "targets": [
            {"refId": chr(65 + k), "expr": expr, "legendFormat": legend, "datasource": DATASOURCE}
            for k, (expr, legend) in enumerate(p.queries)
        ],
    }


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard as Grafana JSON, by uid."""
    out = {}
    for uid, (title, panels) in BOARDS.items():
        out[uid] = {
            "uid": uid,
            "title": title,
            "tags": ["omnicanal"],
            "schemaVersion": 39,
            "time": {"from": "now-6h", "to": "now"},
            "refresh": "30s",
            "templating": {
                "list": [
                    {
                        "name": "datasource",
                        "type": "datasource",
                        "query": "prometheus",
                        "label": "Prometheus",
                    }
                ]
            },
            "panels": [_panel(i, p) for i, p in enumerate(panels)],
        }
    return out


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for uid, doc in dashboards().items():
        path = directory / f"{uid}.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":  # pragma: no cover
    for p in write(Path(sys.argv[1] if len(sys.argv) > 1 else "docker/dashboards")):
        print(p)

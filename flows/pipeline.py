"""The omnicanal dataflow: Kafka inputs -> validate -> state sink (Redis, dead letters, stock
alerts).

    input (a worker's share of the topic-partitions, one consumer, assign())
        --flat_map_batch: validate--> state sink

One ``flat_map_batch`` step decodes a worker's whole batch (cheaper than a chain of maps);
the sink links the batch's identities and applies it with one Redis call (identity
resolution, merges, profile deltas and offsets together). State lives in Redis, not in
Bytewax, so no exchange between workers is needed: profile updates are commutative, merges
deterministic, and everything is fenced by offsets (see ``state/lua/apply_batch.lua``).
Stock moves in the same call; the SKUs it touched are then evaluated for alerts
(``operators/stock.py``), written with an outbox and sent to the stock-alerts topic.
"""

from __future__ import annotations

import time
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from flows.connectors import EARLIEST, LATEST, KafkaWorkerSource, StateSink
from omnicanal.config import ConfigError, Settings
from operators.identity import IdentityRules, rules_from_config
from operators.privacy import PiiHasher
from operators.stock import StockRules, parse_thresholds
from operators.validate import Accepted, Rejected, Validator
from state.profiles import ProfileStore, connect
from state.stock import StockStore


def stock_rules(settings: Settings) -> StockRules:
    """The stock and alert rules of ``OMNICANAL_STOCK_*``."""
    try:
        skus, cats = parse_thresholds(settings.stock_thresholds)
    except ValueError as e:
        raise ConfigError(f"OMNICANAL_STOCK_THRESHOLDS: {e}") from None
    online = settings.stock_online_locations
    if not online:
        raise ConfigError("OMNICANAL_STOCK_ONLINE_LOCATIONS: give at least one location")
    return StockRules(
        online_locations=frozenset(online),
        online_fulfilment=settings.stock_online_fulfilment or online[0],
        online_store_share=settings.stock_online_store_share,
        low_stock=settings.stock_low_threshold,
        low_stock_sku=skus,
        low_stock_category=cats,
        price_tolerance=settings.stock_price_tolerance,
        horizon_hours=settings.stock_horizon_hours,
        min_confidence=settings.stock_min_confidence,
    )


def state_sink(
    settings: Settings,
    rules: IdentityRules,
    stock: StockRules,
    *,
    starts: dict[str, int] | None = None,
    hasher: PiiHasher | None = None,
) -> StateSink:
    """The sink of the flow: Redis state, dead letters and stock alerts. ``starts`` (the
    plan's start offsets) fence each partition's first batch."""

    def stores() -> tuple[ProfileStore, StockStore]:
        client = connect(settings.redis_url, socket_timeout=settings.redis_socket_timeout_seconds)
        return (
            ProfileStore(
                client,
                settings.redis_prefix,
                rules,
                id_buckets=settings.identity_buckets,
                dedupe_buckets=settings.dedupe_buckets,
                dedupe_window_ms=settings.dedupe_window_hours * 3_600_000,
            ),
            StockStore(client, settings.redis_prefix),
        )

    return StateSink(
        stores,
        stock,
        settings.kafka_config(),
        settings.topic_dead_letters,
        settings.topic_stock_alerts,
        settings.group_id,
        alert_interval=settings.stock_alert_interval_ms / 1000,
        starts=starts,
        hasher=hasher,
        redis_retry_seconds=settings.redis_retry_seconds,
    )


def build_flow(
    settings: Settings,
    starts: dict[str, int],
    *,
    until_eof: bool = False,
    allow_demo_key: bool = False,
) -> Dataflow:
    """Wire the pipeline for the given start offsets (``topic:partition`` -> offset)."""
    hasher = PiiHasher(settings.pii_key_bytes(allow_demo=allow_demo_key))
    try:
        rules = rules_from_config(
            settings.identity_blocked,
            settings.identity_limits,
            settings.identity_max_component,
            hasher,
        )
    except ValueError as e:
        raise ConfigError(f"OMNICANAL_IDENTITY_BLOCKED / OMNICANAL_IDENTITY_LIMITS: {e}") from None
    stock = stock_rules(settings)
    validator = Validator(
        settings.topic_contracts(),
        hasher,
        max_bytes=settings.max_event_bytes,
        min_event_ms=settings.min_event_ms(),
        max_future_ms=settings.max_future_seconds * 1000,
        max_skew_ms=settings.max_clock_skew_seconds * 1000,
        max_dead_letter_payload=settings.dead_letter_max_payload_bytes,
    )

    def validate(msgs: list[Any]) -> list[Accepted | Rejected]:
        now_ms = time.time() * 1000
        decode = validator.decode
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

    kafka = settings.kafka_config()
    flow = Dataflow("omnicanal")
    raw = op.input(
        "input",
        flow,
        KafkaWorkerSource(
            kafka,
            starts,
            batch_size=settings.batch_size,
            until_eof=until_eof,
            new_start=EARLIEST if settings.start_offset == "earliest" else LATEST,
            check_every=settings.partition_check_seconds,
        ),
    )
    checked = op.flat_map_batch("validate", raw, validate)
    op.output("state", checked, state_sink(settings, rules, stock, starts=starts, hasher=hasher))
    return flow

"""From settings to the pipeline's parts: the rules, validator and stores each stage needs
(:class:`flows.pipeline.PipelineSetup`). The flows never read settings themselves."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flows.pipeline import PipelineSetup
from flows.source import EARLIEST, LATEST
from omnicanal.campaigns import CatalogueWatcher
from omnicanal.config import ConfigError, Settings
from operators.coupons import CouponCodec
from operators.guardrails import FrequencyCaps, QuietHours
from operators.identity import IdentityRules, rules_from_config
from operators.privacy import PiiHasher
from operators.stock import StockRules, parse_thresholds
from operators.validate import Validator
from schemas.campaigns import Campaign
from state.profiles import ProfileStore, connect, redact_url
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


def identity_rules(settings: Settings, hasher: PiiHasher) -> IdentityRules:
    """The identity rules of ``OMNICANAL_IDENTITY_*``."""
    try:
        return rules_from_config(
            settings.identity_blocked,
            settings.identity_limits,
            settings.identity_max_component,
            hasher,
        )
    except ValueError as e:
        raise ConfigError(f"OMNICANAL_IDENTITY_BLOCKED / OMNICANAL_IDENTITY_LIMITS: {e}") from None


def offer_caps(settings: Settings) -> FrequencyCaps:
    """The frequency caps of ``OMNICANAL_OFFER_CAPS`` (per day, per week, per campaign)."""
    day, week, campaign = (int(x) for x in settings.offer_caps.split(","))
    return FrequencyCaps(day, week, campaign)


def quiet_hours(settings: Settings) -> QuietHours | None:
    """``OMNICANAL_OFFER_QUIET_HOURS`` in ``OMNICANAL_OFFER_TIMEZONE`` (checked: a wrong
    zone stops the start with its name)."""
    try:
        ZoneInfo(settings.offer_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"OMNICANAL_OFFER_TIMEZONE: unknown time zone {settings.offer_timezone!r} "
            "(an IANA name such as Europe/London)"
        ) from None
    if not settings.offer_quiet_hours:
        return None
    start, end = (int(h) for h in settings.offer_quiet_hours.split("-"))
    return QuietHours(start, end)


def campaigns(settings: Settings) -> Callable[[], Sequence[Campaign]] | None:
    """The campaigns in force, reloaded when ``OMNICANAL_CAMPAIGNS_FILE`` changes (None:
    no catalogue). A catalogue that does not load stops the start, with the place and the
    cause."""
    if not settings.campaigns_file:
        return None
    if not settings.coupon_key:
        raise ConfigError(
            "OMNICANAL_CAMPAIGNS_FILE is set but OMNICANAL_COUPON_KEY is not: offers carry "
            "coupon codes signed with that key (set it, or unset the catalogue)"
        )
    watcher = CatalogueWatcher(Path(settings.campaigns_file))
    return lambda: watcher.current(time.monotonic()).campaigns


def pipeline_setup(
    settings: Settings,
    *,
    allow_demo_key: bool = False,
    identity: IdentityRules | None = None,
    hasher: PiiHasher | None = None,
) -> PipelineSetup:
    """The pipeline's parts for ``settings`` (``identity`` and ``hasher`` override the
    configured ones: tests)."""
    hasher = hasher or PiiHasher(settings.pii_key_bytes(allow_demo=allow_demo_key))
    rules = identity if identity is not None else identity_rules(settings, hasher)

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

    return PipelineSetup(
        kafka=settings.kafka_config(),
        validator=Validator(
            settings.topic_contracts(),
            hasher,
            max_bytes=settings.max_event_bytes,
            min_event_ms=settings.min_event_ms(),
            max_future_ms=settings.max_future_seconds * 1000,
            max_skew_ms=settings.max_clock_skew_seconds * 1000,
            max_dead_letter_payload=settings.dead_letter_max_payload_bytes,
        ),
        stock_rules=stock_rules(settings),
        stores=stores,
        redis_where=redact_url(settings.redis_url),
        dead_letter_topic=settings.topic_dead_letters,
        alerts_topic=settings.topic_stock_alerts,
        group_id=settings.group_id,
        hasher=hasher,
        coupon_codec=CouponCodec(settings.coupon_key_bytes()) if settings.coupon_key else None,
        batch_size=settings.batch_size,
        new_start=EARLIEST if settings.start_offset == "earliest" else LATEST,
        partition_check_seconds=settings.partition_check_seconds,
        alert_interval_seconds=settings.stock_alert_interval_ms / 1000,
        redis_retry_seconds=settings.redis_retry_seconds,
        campaigns=campaigns(settings),
        offers_topic=settings.topic_offers,
        offer_caps=offer_caps(settings),
        holdout_share=settings.offer_holdout_share,
        offer_interval_seconds=settings.offer_interval_ms / 1000,
        offer_learn_seconds=settings.offer_learn_ms / 1000,
        offer_hold_backlog=settings.offer_hold_backlog,
        offer_hold_max_seconds=settings.offer_hold_max_minutes * 60,
        offer_learning=settings.offer_policy == "learnt",
        offer_quiet_hours=quiet_hours(settings),
        offer_timezone=settings.offer_timezone,
        health_topic=settings.topic_channel_health,
        store_regions=settings.store_regions,
    )

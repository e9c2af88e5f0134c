"""Configuration from environment variables (prefix ``OMNICANAL_``) with sane defaults.

Every setting is documented in the README's configuration table, which a test keeps in sync
with this class.

>>> s = Settings(_env_file=None, kafka_bootstrap="k:9092")
>>> s.topic_contracts()["omnicanal.transactions"]
'transaction'
>>> s.kafka_config()["bootstrap.servers"]
'k:9092'
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Literal, get_args

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from operators.stock_alerts import CONFIDENCE_HYSTERESIS
from schemas.events import CONTRACTS, SalesChannel

#: Used only by ``omnicanal demo`` and the tests when OMNICANAL_PII_KEY is not set.
DEMO_PII_KEY = "omnicanal-demo-key-NOT-SECRET-do-not-use-in-production"


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names it."""


class Settings(BaseSettings):
    # Errors never echo what was given: a URL or an option may carry a password.
    model_config = SettingsConfigDict(
        env_prefix="OMNICANAL_", extra="ignore", hide_input_in_errors=True
    )

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    kafka_options: dict[str, str] = Field(
        default_factory=dict,
        description='extra librdkafka settings as JSON, e.g. {"security.protocol":"SASL_SSL"}',
    )
    group_id: str = Field(
        "omnicanal", description="consumer group whose committed offsets witness progress"
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL (rediss:// for TLS)")
    redis_prefix: str = Field("oc:", description="prefix of every Redis key omnicanal writes")
    redis_socket_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="a Redis call with no answer after this long fails (TCP keepalive also "
        "detects a dead peer within ~25 s)",
    )
    redis_retry_seconds: float = Field(
        60.0,
        ge=0,
        le=86400,
        description="how long a batch waits for an unreachable or busy Redis before the run "
        "stops (a full Redis is waited for without limit)",
    )
    startup_wait_seconds: float = Field(
        0.0,
        ge=0,
        description="how long `run` waits for Kafka and Redis at start, saying so every 10 s "
        "(0: until they answer or the run is stopped)",
    )
    redis_allow_eviction: bool = Field(
        False,
        description="start even if Redis maxmemory-policy is not noeviction (experts only: "
        "evicted keys corrupt identities and revive erased people)",
    )
    dedupe_window_hours: int = Field(
        168,
        ge=0,
        le=24 * 90,
        description="a second event with the same event_id within this many hours is dropped "
        "and counted (0: no dedupe); Redis keeps ~8 bytes per event of the window",
    )
    dedupe_buckets: int = Field(
        1024,
        ge=1,
        le=1 << 20,
        description="dedupe sets per event day in a new Redis: about events per day / 400 keeps "
        "them compact (~9 bytes per event, ~64 past that); the first writer stores it in Redis "
        "and it is fixed from then on",
    )
    pii_key: str = Field(
        "", description="secret key for HMAC of emails/phones (>= 16 bytes); required by run"
    )
    coupon_key: str = Field(
        "",
        description="secret key that signs coupon codes (>= 16 bytes); tills that verify "
        "codes offline hold the same key",
    )
    webhook_token: str = Field(
        "",
        description="bearer token `omnicanal webhook` requires of Alertmanager (its "
        "webhook_config http_config.authorization); empty: none asked (bind it to a "
        "private address then)",
    )
    campaigns_file: str = Field(
        "",
        description="campaign catalogue (YAML or JSON) of the offers, reloaded while running "
        "when the file changes; offers are decided when it and the coupon key are set",
    )
    offer_holdout_share: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="share of customers in the persistent holdout group, who never get "
        "offers (a stable hash: the uplift is measured against them)",
    )
    offer_caps: str = Field(
        "1,3,1",
        pattern=r"^\d+,\d+,\d+$",
        description="frequency caps across all channels: offers per customer per day, per "
        "rolling week, and per campaign per week",
    )
    store_regions: dict[str, str] = Field(
        default_factory=dict,
        description='region of each store (location id), JSON, e.g. {"S001":"north",'
        '"S002":"north"}: channel health also watches each region\'s store sales (a '
        "region's tills or network going down), beside each store and the whole channel",
    )
    sales_targets: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="daily sales target per channel, in minor units (cents) per currency, JSON, "
        'e.g. {"web":{"EUR":1500000},"store":{"EUR":4200000}}: exported as '
        "omnicanal_sales_target_daily_minor; the sales dashboard shows each channel's last "
        "24 hours against it",
    )
    offer_policy: Literal["learnt", "rules"] = Field(
        "learnt",
        description="how an offer is chosen among the eligible campaigns: learnt (a River "
        "model of redemption, epsilon-greedy with 10% exploration, learning from every "
        "redemption and expiry) or rules (the first in catalogue order)",
    )
    offer_quiet_hours: str = Field(
        "21-8",
        pattern=r"^(|([01]?\d|2[0-3])-([01]?\d|2[0-3]))$",
        description="hours (start-end, local time) when offers by email, SMS, push or app "
        "are held until the end, then sent; empty: none",
    )
    offer_timezone: str = Field(
        "UTC",
        description="time zone (IANA name) for the quiet hours of customers whose own zone is "
        "not known (a consent event's time_zone sets it)",
    )
    offer_interval_ms: int = Field(
        1000, ge=0, le=600_000, description="ms between looks for due offer timers"
    )
    offer_learn_ms: int = Field(
        200,
        ge=1,
        le=60_000,
        description="ms a look for due offers may spend first learning the next-basket model "
        "from the baskets due (the rest waits for the next looks); with "
        "OMNICANAL_OFFER_DECIDER=worker it is worker 0's time, taken from its input",
    )
    offer_hold_backlog: int = Field(
        50_000,
        ge=0,
        description="offer timers wait while the workers are more than this many events "
        "behind their input (a catch-up: a store purchase still in the backlog would not "
        "cancel its cart's offer); 0: never wait",
    )
    offer_hold_max_minutes: float = Field(
        15,
        ge=0,
        le=1440,
        description="minutes the offer timers wait for a backlog at most, in a row: a "
        "pipeline that cannot catch up still makes offers",
    )
    offer_decider: Literal["process", "worker"] = Field(
        "process",
        description="where offers are decided: process (a process of its own beside the "
        "workers, which then only ingest; its metrics on the port after the workers') or "
        "worker (worker 0, between its batches)",
    )

    topic_transactions: str = Field(
        CONTRACTS["transaction"].default_topic, description="transactions topic"
    )
    topic_clickstream: str = Field(
        CONTRACTS["clickstream"].default_topic, description="clickstream topic"
    )
    topic_inventory: str = Field(
        CONTRACTS["inventory"].default_topic, description="inventory topic"
    )
    topic_offer_feedback: str = Field(
        CONTRACTS["offer_feedback"].default_topic, description="offer feedback topic"
    )
    topic_customers: str = Field(
        CONTRACTS["customer"].default_topic,
        description="customer events topic (consents, chosen home store)",
    )
    topic_dead_letters: str = Field("omnicanal.dead-letters", description="dead-letter topic")
    topic_stock_alerts: str = Field(
        "omnicanal.stock-alerts", description="stock alerts topic (output, keyed by SKU)"
    )
    topic_offers: str = Field(
        "omnicanal.offers", description="offers topic (output, keyed by customer id)"
    )
    topic_channel_health: str = Field(
        "omnicanal.channel-health",
        description="channel-health topic (output, keyed by channel or store); empty: "
        "channel health is not watched",
    )
    partitions: int = Field(4, ge=1, le=1024, description="partitions for `topics create`")
    replication_factor: int = Field(1, ge=1, le=16, description="replication for new topics")

    identity_blocked: list[str] = Field(
        default_factory=list,
        description="identifiers that never link customers, JSON list of "
        '"type:value" (e.g. ["card:0000","email:test@shop.com"]; emails/phones in clear)',
    )
    identity_limits: dict[str, int] = Field(
        default_factory=dict,
        description="max identifiers of a type per customer, JSON, overriding "
        '{"loyalty":1,"account":1,"email":3,"phone":3,"card":10,"device":20,"cookie":50}',
    )
    identity_max_component: int = Field(
        200, ge=2, description="links that would give one customer more identifiers are refused"
    )
    identity_buckets: int = Field(
        4096,
        ge=1,
        le=1 << 24,
        description="hash buckets of the identity links in a new Redis (~identifiers/100); "
        "the first writer stores it in Redis and it is fixed from then on",
    )
    stock_online_locations: list[str] = Field(
        default_factory=lambda: ["online"],
        description="locations whose stock the online channels sell (warehouses, the online "
        'allocation), JSON list, e.g. ["warehouse-1","online"]',
    )
    stock_online_fulfilment: str = Field(
        "",
        description="location web/app/marketplace/call-centre sales without a location_id "
        "take stock from (empty: the first online location)",
    )
    stock_online_store_share: float = Field(
        0.0, ge=0.0, le=1.0, description="share of store stock the online channels may also sell"
    )
    stock_low_threshold: int = Field(
        5, ge=0, description="low-stock alert at or below this many units (default reorder point)"
    )
    stock_thresholds: dict[str, int] = Field(
        default_factory=dict,
        description='low-stock thresholds per SKU or category, JSON, e.g. {"sku:A1":20,'
        "\"category:shoes\":3} (a SKU's own wins over its category's)",
    )
    stock_price_tolerance: float = Field(
        0.01,
        ge=0.0,
        le=10.0,
        description="relative price gap between channels that raises an alert",
    )
    stock_horizon_hours: float = Field(
        24.0, gt=0, le=24 * 28, description="predicted stock-outs within this horizon raise alerts"
    )
    stock_min_confidence: float = Field(
        0.7,
        gt=CONFIDENCE_HYSTERESIS,
        le=1.0,
        description="probability of a stock-out within the horizon that raises "
        f"an alert (it resolves {CONFIDENCE_HYSTERESIS} below)",
    )
    stock_alert_interval_ms: int = Field(
        1000,
        ge=0,
        le=600_000,
        description="SKUs whose stock moved are evaluated for alerts at most this often per "
        "worker (a hot SKU once, not once per batch); 0: after every batch",
    )
    max_event_bytes: int = Field(
        262144, ge=256, description="larger payloads are dead-lettered (checked before parsing)"
    )
    dead_letter_max_payload_bytes: int = Field(
        65536,
        ge=0,
        le=700_000,
        description="bytes of a rejected payload kept in its dead letter (the rest is cut; "
        "size and SHA-256 of the whole are kept)",
    )
    min_event_time: str = Field(
        "2000-01-01T00:00:00Z", description="older event_time values are rejected"
    )
    max_future_seconds: int = Field(
        86400, ge=0, description="event_time further ahead of now is rejected"
    )
    max_clock_skew_seconds: int = Field(
        300,
        ge=0,
        le=86400,
        description="consents, the chosen home store and erasures trust an event_time at "
        "most this far ahead of the message's Kafka timestamp",
    )
    batch_size: int = Field(
        5000, ge=1, le=100_000, description="max messages a worker takes per poll (its batch)"
    )
    start_offset: Literal["earliest", "latest"] = Field(
        "earliest",
        description="where to start partitions Redis has never seen (partitions added while "
        "running included)",
    )
    partition_check_seconds: float = Field(
        30.0, gt=0, le=3600, description="how often a running pipeline looks for new partitions"
    )
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus port (0: off)")
    metrics_addr: str = Field("127.0.0.1", description="address the metrics server binds")
    metrics_linger_seconds: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="seconds a run that ends by itself (--until-eof) keeps serving its "
        "metrics after its end, every process, so that Prometheus scrapes the final counts "
        "(twice the scrape interval; 0: none)",
    )

    @field_validator("store_regions")
    @classmethod
    def _regions(cls, v: dict[str, str]) -> dict[str, str]:
        for store, region in v.items():
            if (
                not region
                or len(region) > 64
                or not region.replace("-", "").replace("_", "").isalnum()
            ):
                raise ValueError(
                    f"store {store!r}: region {region!r} must be 1-64 letters, digits, - or _"
                )
        if len(set(v.values())) > 200:
            raise ValueError(f"{len(set(v.values()))} regions: at most 200 are watched")
        return v

    @field_validator("sales_targets")
    @classmethod
    def _targets(cls, v: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        channels = get_args(SalesChannel)
        for channel, per_currency in v.items():
            if channel not in channels:
                raise ValueError(
                    f"unknown sales channel {channel!r} (one of {', '.join(channels)})"
                )
            for currency, amount in per_currency.items():
                if not (len(currency) == 3 and currency.isascii() and currency.isupper()):
                    raise ValueError(
                        f"{channel}: {currency!r} is not an ISO 4217 code (three capitals, EUR)"
                    )
                if amount <= 0:
                    raise ValueError(f"{channel} {currency}: the target must be above 0")
        return v

    @field_validator("kafka_bootstrap", "redis_url")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    # ------------------------------------------------------------------ derived
    def topic_contracts(self) -> dict[str, str]:
        """Input topic -> contract name."""
        return {
            self.topic_transactions: "transaction",
            self.topic_clickstream: "clickstream",
            self.topic_inventory: "inventory",
            self.topic_offer_feedback: "offer_feedback",
            self.topic_customers: "customer",
        }

    def contract_topics(self) -> dict[str, str]:
        """Contract name -> input topic."""
        return {c: t for t, c in self.topic_contracts().items()}

    def all_topics(self) -> list[str]:
        return [
            *self.topic_contracts(),
            self.topic_dead_letters,
            self.topic_stock_alerts,
            self.topic_offers,
            *([self.topic_channel_health] if self.topic_channel_health else []),
        ]

    def kafka_config(self) -> dict[str, str]:
        return {"bootstrap.servers": self.kafka_bootstrap, **self.kafka_options}

    def pii_key_bytes(self, *, allow_demo: bool = False) -> bytes:
        key = self.pii_key or (DEMO_PII_KEY if allow_demo else "")
        if not key:
            raise ConfigError(
                "OMNICANAL_PII_KEY is not set: omnicanal hashes emails and phone numbers with "
                "a secret key before storing anything. Set it to a random string of 16+ "
                'bytes, e.g. OMNICANAL_PII_KEY="$(python -c "import secrets;'
                'print(secrets.token_hex(32))")", and keep it in your secret store.'
            )
        if len(key.encode()) < 16:
            raise ConfigError("OMNICANAL_PII_KEY must be at least 16 bytes long")
        return key.encode()

    def coupon_key_bytes(self) -> bytes:
        key = self.coupon_key.encode()
        if len(key) < 16:
            raise ConfigError(
                "OMNICANAL_COUPON_KEY must be set to a secret of 16+ bytes: it signs coupon "
                "codes, and whoever holds it can make valid ones"
            )
        return key

    def to_env(self) -> dict[str, str]:
        """These settings as OMNICANAL_* environment variables (for child processes).

        >>> Settings(_env_file=None, partitions=8).to_env()["OMNICANAL_PARTITIONS"]
        '8'
        """
        return {
            f"OMNICANAL_{name.upper()}": json.dumps(v) if isinstance(v, dict | list) else str(v)
            for name, v in self.model_dump().items()
        }

    def min_event_ms(self) -> int:
        from datetime import datetime

        try:
            dt = datetime.fromisoformat(self.min_event_time.replace("Z", "+00:00"))
        except ValueError as e:
            raise ConfigError(f"OMNICANAL_MIN_EVENT_TIME: {e}") from None
        if dt.tzinfo is None:
            raise ConfigError("OMNICANAL_MIN_EVENT_TIME needs a timezone (e.g. ...Z)")
        return int(dt.timestamp() * 1000)


def load(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (CLI options) on top."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)  # type: ignore[arg-type]
    except Exception as e:  # pydantic.ValidationError: say which variable
        raise ConfigError(f"invalid configuration: {e}") from None


def env_documentation() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting: the README table's source."""
    rows = []
    for name, f in Settings.model_fields.items():
        default = f.default_factory() if f.default_factory else f.default  # type: ignore[call-arg]
        rows.append((f"OMNICANAL_{name.upper()}", repr(default), f.description or ""))
    return rows


def configure_logging(level: int) -> None:
    """Log to stderr at ``level``, in one format, in every process of a run (worker
    processes and the offer decider are spawned: they do not inherit the CLI's logging)."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


__all__ = ["ConfigError", "Settings", "configure_logging", "env_documentation", "load"]

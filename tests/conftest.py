"""Fixtures: a real Kafka-protocol broker (Tansu) and real redis-server processes, started
on free ports for the test session (Redis per test where a test restarts it)."""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.kafka import create_topics
from omnicanal.config import Settings
from omnicanal.tools.services import LocalKafka, LocalRedis

os.environ.pop("OMNICANAL_PII_KEY", None)
TEST_PII_KEY = "test-pii-key-0123456789abcdef"
_ids = itertools.count()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    k = LocalKafka(tmp_path_factory.mktemp("kafka")).start()
    yield k
    k.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[LocalRedis]:
    r = LocalRedis(tmp_path / "redis", appendfsync="always").start()
    yield r
    r.stop()


def make_settings(kafka: LocalKafka, redis_url: str, partitions: int = 3, **kw: object) -> Settings:
    """Settings with topics of their own, so tests never see each other's messages."""
    n = next(_ids)
    s = Settings(
        kafka_bootstrap=kafka.bootstrap,
        redis_url=redis_url,
        pii_key=TEST_PII_KEY,
        metrics_port=0,
        partitions=partitions,
        group_id=f"omnicanal-test-{n}",
        topic_transactions=f"t{n}.transactions",
        topic_clickstream=f"t{n}.clickstream",
        topic_inventory=f"t{n}.inventory",
        topic_offer_feedback=f"t{n}.offer-feedback",
        topic_customers=f"t{n}.customers",
        topic_dead_letters=f"t{n}.dead-letters",
        topic_stock_alerts=f"t{n}.stock-alerts",
        topic_offers=f"t{n}.offers",
        topic_channel_health=f"t{n}.channel-health",
        **kw,  # type: ignore[arg-type]
    )
    create_topics(s.kafka_config(), s.all_topics(), partitions)
    return s


@pytest.fixture
def settings(kafka: LocalKafka, redis_server: LocalRedis) -> Settings:
    return make_settings(kafka, redis_server.url)


class Settled:
    """A worker's state sink part (or its stages) whose every batch is finished before the
    call returns, as when the input goes idle after it. The pipeline finishes a batch at
    the next one (its script runs in Redis while the next batch is read): a test that looks
    at Redis right after a write needs the batch finished."""

    def __init__(self, part: Any) -> None:
        self._part = part

    def write_batch(self, items: list[Any]) -> None:
        self._part.write_batch(items)
        self._part.flush()

    def write(self, items: list[Any]) -> None:
        self._part.write(items)
        self._part.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._part, name)


def port_pair() -> int:
    """A port P with P and P + 1 free on 127.0.0.1 (a worker's metrics, the offer
    decider's after it)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two consecutive free ports")

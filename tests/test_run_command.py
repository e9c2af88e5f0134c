"""`omnicanal run` as users run it: a subprocess against the real broker and Redis that
serves Prometheus metrics and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

import orjson
import pytest

from flows.kafka import partitions_of
from omnicanal.config import Settings
from omnicanal.tools.datagen import Generator
from omnicanal.tools.demo import produce
from omnicanal.tools.services import LocalKafka, LocalRedis, free_port
from state.profiles import ProfileStore, connect
from tests import reference
from tests.conftest import TEST_PII_KEY, make_settings
from tests.test_pipeline_e2e import profiles

pytestmark = pytest.mark.services


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), **extra}


def wait_for(pred: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_run_serves_metrics_and_stops_cleanly_on_sigterm(settings: Settings) -> None:
    msgs = list(Generator(seed=8, customers=300, bad_share=0.05).messages(3000))
    produce(settings, msgs)
    bad = sum(1 for x in msgs if x.expected_reason)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnicanal", "run"],
        env=env_for(settings, OMNICANAL_METRICS_PORT=str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        store = ProfileStore(connect(settings.redis_url), settings.redis_prefix)

        def applied() -> int:
            return sum(o + 1 for o in store.load_offsets().values())

        wait_for(lambda: applied() == len(msgs), 60, "all offsets applied")

        def metrics() -> str:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            return str(body.decode())

        def dead() -> float:
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics().splitlines()
                if line.startswith("omnicanal_dead_letters_total{")
            )

        # Counters follow the Redis write of their batch by a few milliseconds.
        wait_for(lambda: dead() >= bad, 10, "dead letters counted")
        assert dead() == bad
        text = metrics()
        assert "omnicanal_events_total{" in text
        assert 'omnicanal_batch_seconds_bucket{le="0.001",stage="state"}' in text

        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped cleanly" in err


def test_run_refuses_to_start_without_a_pii_key(settings: Settings) -> None:
    env = env_for(settings)
    env["OMNICANAL_PII_KEY"] = ""
    res = subprocess.run(
        [sys.executable, "-m", "omnicanal", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "OMNICANAL_PII_KEY is not set" in res.stderr


def test_run_refuses_when_redis_lost_state(settings: Settings) -> None:
    from flows.kafka import GroupOffsets

    parts = [f"{settings.topic_transactions}:0"]
    g = GroupOffsets(settings.kafka_config(), settings.group_id)
    g.commit({parts[0]: 10}, asynchronous=False)
    g.close()
    res = subprocess.run(
        [sys.executable, "-m", "omnicanal", "run"],
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "Redis state is behind the stream" in res.stderr
    assert f"{parts[0]}: Redis has applied up to offset -1, the stream is committed at 10" in (
        res.stderr
    )


def test_two_worker_processes_give_the_same_profiles(
    kafka: LocalKafka, redis_server: LocalRedis
) -> None:
    settings = make_settings(kafka, redis_server.url, partitions=4)
    msgs = list(Generator(seed=12, customers=300, bad_share=0.02).messages(5000))
    produce(settings, msgs)
    res = subprocess.run(
        [sys.executable, "-m", "omnicanal", "run", "--processes", "2", "--until-eof"],
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    good = [orjson.loads(x.value) for x in msgs if x.expected_reason is None]
    assert (
        reference.mismatches(profiles(settings), reference.build(good, TEST_PII_KEY.encode())) == []
    )


def test_topics_create_is_idempotent(settings: Settings) -> None:
    env = env_for(settings, OMNICANAL_TOPIC_INVENTORY=settings.topic_inventory + ".new")
    args = [sys.executable, "-m", "omnicanal", "topics", "create", "--partitions", "2"]
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert f"{settings.topic_inventory}.new: created" in first.stdout
    assert f"{settings.topic_transactions}: exists" in first.stdout
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert f"{settings.topic_inventory}.new: exists" in again.stdout
    assert partitions_of(settings.kafka_config(), [settings.topic_inventory + ".new"]) == {
        settings.topic_inventory + ".new": 2
    }


def test_run_stops_with_a_clear_error_when_redis_loses_state_mid_run(settings: Settings) -> None:
    first = list(Generator(seed=21, customers=200, bad_share=0.0).messages(1000))
    produce(settings, first)
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnicanal", "run"],
        env=env_for(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        store = ProfileStore(connect(settings.redis_url), settings.redis_prefix)
        wait_for(
            lambda: sum(o + 1 for o in store.load_offsets().values()) == len(first),
            60,
            "first events applied",
        )
        store.r.flushall()  # Redis comes back empty under a running pipeline
        produce(settings, list(Generator(seed=22, customers=200).messages(500)))
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err[-2000:]
    assert "pipeline stopped: Redis state went back in time" in err

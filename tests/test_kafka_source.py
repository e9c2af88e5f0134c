"""The pipeline's Kafka source against the real broker: each worker reads its share of the
partitions with one consumer, from the given offsets, and together the workers read every
message once."""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import Producer

from flows.kafka import create_topics
from flows.source import EARLIEST, KafkaWorkerSource, owner, worker_share
from omnicanal.tools.services import LocalKafka

pytestmark = pytest.mark.services


def _drain(source: KafkaWorkerSource, index: int, count: int) -> list[tuple[str, int, int]]:
    """Everything one worker reads until its partitions end."""
    part = source.build("input", index, count)
    seen: list[tuple[str, int, int]] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            try:
                batch: list[Any] = part.next_batch()
            except StopIteration:
                return seen
            seen += [(m.topic(), m.partition(), m.offset()) for m in batch]
            if not batch:
                time.sleep(0.005)
        raise AssertionError(f"worker {index} of {count} did not reach the end of its input")
    finally:
        part.close()


def test_workers_read_disjoint_shares_that_cover_every_message(kafka: LocalKafka) -> None:
    cfg = {"bootstrap.servers": kafka.bootstrap}
    topics = ["src-a", "src-b"]
    create_topics(cfg, topics, 3)
    p = Producer(cfg | {"linger.ms": 5})
    sizes = {("src-a", 0): 40, ("src-a", 1): 7, ("src-a", 2): 25, ("src-b", 0): 12, ("src-b", 1): 3}
    for (topic, partition), n in sizes.items():  # src-b:2 stays empty
        for i in range(n):
            p.produce(topic, f"{topic}-{partition}-{i}".encode(), partition=partition)
    assert p.flush(10) == 0
    starts = {f"{t}:{i}": EARLIEST for t in topics for i in range(3)}
    starts["src-a:0"] = 10  # resumes after what Redis has applied
    expected = {
        (t, i, o)
        for (t, i), n in sizes.items()
        for o in range(10 if (t, i) == ("src-a", 0) else 0, n)
    }
    source = KafkaWorkerSource(cfg, starts, batch_size=16, until_eof=True)

    shares = [_drain(source, w, 2) for w in range(2)]

    assert set(shares[0]).isdisjoint(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(expected)  # each message exactly once
    for w, read in enumerate(shares):
        mine = set(worker_share(starts, w, 2))
        assert {f"{t}:{i}" for t, i, _ in read} <= mine


def test_a_worker_without_partitions_ends_at_once(kafka: LocalKafka) -> None:
    create_topics({"bootstrap.servers": kafka.bootstrap}, ["src-x"], 1)
    source = KafkaWorkerSource(
        {"bootstrap.servers": kafka.bootstrap}, {"src-x:0": EARLIEST}, until_eof=True
    )
    assert _drain(source, 1 - owner("src-x:0", 2), 2) == []


def test_a_partition_added_later_keeps_every_other_on_its_worker() -> None:
    before = [f"t{t}:{p}" for t in range(3) for p in range(4)]
    after = before + [f"t{t}:{p}" for t in range(3) for p in range(4, 7)]
    for n in (2, 3, 5):
        assert {p: owner(p, n) for p in before} == {p: owner(p, n) for p in after if p in before}
        shares = [worker_share(after, w, n) for w in range(n)]
        assert sorted(p for share in shares for p in share) == sorted(
            after
        )  # every partition, once
        assert max(map(len, shares)) - min(map(len, shares)) <= 3  # about even


def test_consumer_lag_is_what_the_worker_has_not_read(
    kafka: LocalKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows import source as src
    from monitoring import metrics as m

    cfg = {"bootstrap.servers": kafka.bootstrap}
    create_topics(cfg, ["lag-a"], 2)
    p = Producer(cfg | {"linger.ms": 5})
    for i in range(300):
        p.produce("lag-a", b"x", partition=i % 2)
    assert p.flush(10) == 0
    monkeypatch.setattr(src, "LAG_EVERY", 0.0)  # report at every call
    part = KafkaWorkerSource(cfg, {"lag-a:0": EARLIEST, "lag-a:1": EARLIEST}, batch_size=50,
                             until_eof=False).build("input", 0, 1)  # fmt: skip
    try:
        read = 0
        deadline = time.monotonic() + 30
        while read < 100:  # read a third, then look
            assert time.monotonic() < deadline
            read += len(part.next_batch())
        more = part.next_batch()  # reports the lag before it reads its batch
        lag = [m.CONSUMER_LAG.labels("lag-a", str(n))._value.get() for n in (0, 1)]
        assert sum(lag) == 300 - read
        assert all(0 <= x <= 150 for x in lag)  # each partition its own figure
        # the sink takes the worker's total once, for the offer decider
        assert src.Backlog.take() == 300 - read and src.Backlog.take() is None
        read += len(more)
        while read < 300:
            assert time.monotonic() < deadline
            read += len(part.next_batch())
        part.next_batch()
        assert [m.CONSUMER_LAG.labels("lag-a", str(n))._value.get() for n in (0, 1)] == [0, 0]
        assert src.Backlog.take() == 0
    finally:
        part.close()


def test_consumer_lag_is_reported_at_the_first_call(kafka: LocalKafka) -> None:
    """The backlog a start faces shows at once, not LAG_EVERY seconds later: a run shorter
    than that (a fast demo) used to export no lag at all."""
    from flows import source as src
    from monitoring import metrics as m

    assert src.LAG_EVERY >= 5  # the default interval: the first report must not wait for it
    cfg = {"bootstrap.servers": kafka.bootstrap}
    create_topics(cfg, ["lag-first"], 1)
    p = Producer(cfg | {"linger.ms": 5})
    for _ in range(40):
        p.produce("lag-first", b"x", partition=0)
    assert p.flush(10) == 0
    part = KafkaWorkerSource(cfg, {"lag-first:0": EARLIEST}, batch_size=10,
                             until_eof=False).build("input", 0, 1)  # fmt: skip
    try:
        part.next_batch()  # reports the lag before it reads its batch
        # (the figure is the broker's watermark before any fetch: Tansu answered 1 for one
        # record batch of 40 messages; the exact lag once fetching is the test above)
        assert 1 <= m.CONSUMER_LAG.labels("lag-first", "0")._value.get() <= 40
    finally:
        part.close()


def test_end_offsets_come_from_the_end_of_each_partition(kafka: LocalKafka) -> None:
    """The outbox's recovery bound: the offset after each partition's last message, read to
    the end (not the watermarks), from a start or the beginning; a start past the end (a
    bound recorded wrong) still finds the end."""
    from flows.kafka import end_offsets

    cfg = {"bootstrap.servers": kafka.bootstrap}
    topic = f"ends-{time.monotonic_ns()}"
    create_topics(cfg, [topic], 3)
    p = Producer({**cfg, "linger.ms": 5})
    for i in range(5):
        p.produce(topic, f"m{i}".encode(), partition=0)
    for i in range(2):
        p.produce(topic, f"n{i}".encode(), partition=2)
    assert p.flush(30) == 0
    assert end_offsets(cfg, topic) == {0: 5, 1: 0, 2: 2}
    assert end_offsets(cfg, topic, starts={0: 3, 2: 2}) == {0: 5, 1: 0, 2: 2}
    assert end_offsets(cfg, topic, starts={0: 50}) == {0: 5, 1: 0, 2: 2}

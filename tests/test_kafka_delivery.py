"""The producer behind dead letters and `produce` fails loudly when the broker does not
confirm a message (Bytewax's own KafkaSink would drop it silently)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.kafka import CheckedProducer, DeliveryError, create_topics, read_topic
from omnicanal.tools.services import LocalKafka

pytestmark = pytest.mark.services


def test_undeliverable_messages_fail_the_flush(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path).start()  # a broker of its own: this test freezes it
    try:
        cfg = {"bootstrap.servers": broker.bootstrap}
        create_topics(cfg, ["dl"], 1)
        p = CheckedProducer(cfg | {"message.timeout.ms": "1500"}, what="test")
        p.produce("dl", b"before")
        p.flush(10)
        assert p.delivered == 1
        broker.pause()  # SIGSTOP: the broker stops answering, like a network partition
        try:
            p.produce("dl", b"lost?")
            with pytest.raises(DeliveryError, match=r"could not be delivered|not delivered"):
                p.flush(10)
        finally:
            broker.resume()
        # A failed run is restarted with a new producer (the old one may stay fenced).
        again = CheckedProducer(cfg, what="test")
        again.produce("dl", b"after")
        again.flush(10)
        values = [v for _, _, _, v in read_topic(cfg, "dl")]
        assert values[0] == b"before" and values[-1] == b"after"
    finally:
        broker.stop()


def test_unknown_topic_is_a_delivery_error(kafka: LocalKafka) -> None:
    p = CheckedProducer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "message.timeout.ms": "2000",
            "allow.auto.create.topics": "false",
        },
        what="test",
    )
    p.produce("no-such-topic-anywhere", b"x")
    with pytest.raises(DeliveryError):
        p.flush(10)

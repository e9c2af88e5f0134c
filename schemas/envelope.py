"""The envelope of an event inside the pipeline: what validation hands to every later stage.

An input becomes either an :class:`Accepted` event (valid, identifiers hashed, with its
source position) or a :class:`Rejected` one (its dead letter, encoded, with its source
position). Every operator, store and flow stage speaks these two types; they live here, with
the contracts, so that nothing needs the validator to name them.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

#: Identifier kinds in the order that picks the profile key of an event.
ID_PRIORITY: Final = ("loyalty", "account", "email", "phone", "card", "device", "cookie")


class Accepted(msgspec.Struct, gc=False):
    """A valid event, with its source position and hashed identifiers."""

    topic: str
    partition: int
    offset: int
    contract: str
    event_type: str
    event_id: str
    ts_ms: int
    channel: str | None
    customer: str | None
    ids: dict[str, str]
    event: Any
    #: wall-clock ms when the pipeline validated it, and the Kafka message timestamp
    received_ms: float = 0.0
    kafka_ts_ms: int = 0
    #: the event time consents, the chosen home store and erasures trust: ``ts_ms``, but
    #: never further ahead of the message's broker timestamp than the allowed skew
    eff_ms: int = 0


class Rejected(msgspec.Struct, gc=False):
    """An input that goes to the dead-letter topic; ``record`` is the encoded DeadLetter."""

    topic: str
    partition: int
    offset: int
    reason: str
    record: bytes
    #: the Kafka timestamp of the message (0: none)
    kafka_ts_ms: int = 0

    @property
    def dlq_key(self) -> bytes:
        """Deterministic key, so a re-sent dead letter can be recognised downstream."""
        return f"{self.topic}:{self.partition}:{self.offset}".encode()

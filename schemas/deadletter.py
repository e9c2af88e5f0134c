"""The dead-letter record: what omnicanal writes for every input it cannot use.

Modelled on Snowplow's "bad rows": nothing is lost, every record says why, where it came
from and carries the original bytes (base64), so that it can be fixed and replayed.
Raw emails and phone numbers are replaced by their keyed HMAC before the bytes are kept.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

from msgspec import UNSET, Struct, UnsetType

Reason = Literal[
    "too_large",
    "invalid_utf8",
    "malformed_json",
    "duplicate_key",
    "not_an_object",
    "unknown_event_type",
    "missing_field",
    "wrong_type",
    "unknown_field",
    "invalid_value",
    "timestamp_out_of_range",
    "wrong_topic",
    "internal_error",
    "state_rejected",
]

#: Every reason code with the sentence ops read in dashboards and the README.
REASONS: Final[dict[str, str]] = {
    "too_large": "payload larger than the configured limit (checked before parsing)",
    "invalid_utf8": "payload is not valid UTF-8",
    "malformed_json": "payload is not JSON (includes NaN/Infinity literals and truncation)",
    "duplicate_key": "a JSON object repeats a key",
    "not_an_object": "payload is JSON but not an object",
    "unknown_event_type": "event_type missing or not one this topic accepts",
    "missing_field": "a required field is absent",
    "wrong_type": "a field has the wrong JSON type (including null and out-of-range numbers)",
    "unknown_field": "a field the contract does not define",
    "invalid_value": "a value outside its allowed range, pattern or enumeration",
    "timestamp_out_of_range": "event_time before the configured minimum or too far in the future",
    "wrong_topic": "a valid event of another contract on this topic",
    "internal_error": "omnicanal failed on this message (the message names the exception type)",
    "state_rejected": "Redis refused to apply this event; the rest of its batch was applied",
}


class SourcePosition(Struct, frozen=True):
    topic: str
    partition: int
    offset: int
    key_b64: str | None = None
    timestamp_ms: int | None = None


class DeadLetter(Struct, frozen=True, omit_defaults=True):
    """One dead-lettered input. Keyed on the Kafka topic by ``topic:partition:offset``."""

    reason: Reason
    message: str
    source: SourcePosition
    received_at: datetime
    payload_b64: str
    payload_scrubbed: bool
    payload_size: int
    processor: str
    step: str
    event_type: str | UnsetType = UNSET
    #: SHA-256 (hex) of the whole payload as kept before truncation, that is after
    #: scrubbing: the original's own SHA-256 when ``payload_scrubbed`` is false. Absent when
    #: the payload could not be kept at all.
    payload_sha256: str | UnsetType = UNSET
    #: ``payload_b64`` holds only the first bytes (OMNICANAL_DEAD_LETTER_MAX_PAYLOAD_BYTES)
    payload_truncated: bool = False

"""Event contracts (input) and output records; the single source of truth for every event."""

from schemas.deadletter import REASONS, DeadLetter, SourcePosition
from schemas.events import CONTRACT_OF_TYPE, CONTRACTS, SCHEMA_VERSION, Contract

__all__ = [
    "CONTRACTS",
    "CONTRACT_OF_TYPE",
    "REASONS",
    "SCHEMA_VERSION",
    "Contract",
    "DeadLetter",
    "SourcePosition",
]

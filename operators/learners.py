"""The contract of the stream's small online models, River-style: ``learn_one`` an
observation, ``predict_one`` a query, ``merge`` another learner's knowledge (two workers'
or two batches': the result must not depend on the order), and a JSON-able state
(``to_state`` / ``from_state``) so that a learner is stored, never pickled.

Every subclass is found and checked by one generic suite (``tests/test_learners.py``):
merge order-independence, learning order-independence, serialisation round trip, and
parity with the Redis script where the script keeps the same model. Each declares the
observations and queries that suite feeds it (:meth:`Learner.check_stream`), as River
estimators declare their unit-test parameters.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any, Self

#: what :meth:`Learner.check_stream` returns: observations, then queries
Stream = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]


class Learner(ABC):
    """A small online model of the stream."""

    @abstractmethod
    def learn_one(self, *x: Any) -> None:
        """Update with one observation."""

    @abstractmethod
    def predict_one(self, *q: Any) -> Any:
        """Answer one query (numbers, or a dict of numbers)."""

    @abstractmethod
    def merge(self, other: Self) -> None:
        """Absorb what ``other`` learnt, as if this learner had seen its observations."""

    @abstractmethod
    def to_state(self) -> Any:
        """A JSON-able state: :meth:`from_state` restores an equal learner."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: Any) -> Self: ...

    @classmethod
    @abstractmethod
    def check_stream(
        cls, rng: random.Random
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Observations and queries for the generic checks."""

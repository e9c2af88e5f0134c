"""The Bytewax sink of the pipeline: a thin adapter that hands each worker's batches to that
worker's stages (:class:`flows.pipeline.WorkerPipeline`), built once per worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.source import IdleWork, InFlight
from schemas.envelope import Accepted, Rejected


class BatchWriter(Protocol):
    """What a worker's stages offer the sink."""

    def write(self, items: list[Accepted | Rejected]) -> None: ...

    def idle(self) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class StagesSink(DynamicSink[Accepted | Rejected]):
    """Builds one :class:`BatchWriter` per worker with ``make(worker_index)``."""

    def __init__(self, make: Callable[[int], BatchWriter]) -> None:
        self._make = make

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Part:
        return _Part(self._make(worker_index))


class _Part(StatelessSinkPartition[Accepted | Rejected]):
    def __init__(self, writer: BatchWriter) -> None:
        self._writer = writer
        # Work the stages defer while input flows runs when the worker's input is idle.
        IdleWork.register(writer.idle)

    def write_batch(self, items: list[Accepted | Rejected]) -> None:
        if not items:
            return
        try:
            self._writer.write(items)
        finally:
            InFlight.count = max(0, InFlight.count - len(items))

    def flush(self) -> None:
        """Finish what was written (a batch is finished at the next one otherwise, or when
        the input is idle)."""
        self._writer.flush()

    def close(self) -> None:
        IdleWork.unregister(self._writer.idle)
        self._writer.close()

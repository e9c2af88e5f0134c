"""Connecting to Redis and telling its failures apart: a client that never hangs, the
errors the stores raise, and which Redis errors are worth waiting out (:func:`transient`)."""

from __future__ import annotations

import socket
import time
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.client import Pipeline
from redis.retry import Retry

from monitoring import metrics as m


class StateError(RuntimeError):
    """Redis state cannot be trusted; the message says why and what to do."""


class StateRegressedError(StateError):
    """Redis holds less than this process already applied: Redis lost writes."""


class TornBatchError(StateError):
    """A batch script failed half-way through its writes: Redis holds part of a batch."""


class RedisOutOfMemoryError(StateError):
    """Redis refused the batch for lack of memory (maxmemory with noeviction): nothing was
    written; the caller pauses and tries again."""


class RedisBusyError(StateError):
    """Redis cannot serve now (loading its data, running a long script, read-only during a
    failover): nothing was written; the caller tries again."""


class ScriptRejectedError(StateError):
    """The batch script refused the batch, or failed before its first write: nothing was
    written. The caller splits the batch to find the event that causes it."""


class StateUnavailableError(StateError):
    """Redis stayed unreachable or busy longer than the pipeline waits for it."""


class EvictionPolicyError(StateError):
    """Redis may evict keys: state would silently lose customers, ids or tombstones."""


_BUSY_PREFIXES = ("BUSY", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")


def transient(e: BaseException) -> str | None:
    """Why Redis could not take a call now, when it is worth waiting for: "out_of_memory"
    (maxmemory with noeviction), "busy" (loading, a long script, read-only in a failover)
    or "unreachable" (connection or timeout); None for a real error. Inside a script the
    error keeps its code (redis-py turns "OOM ..." into OutOfMemoryError).

    >>> transient(redis.exceptions.OutOfMemoryError("command not allowed")), transient(
    ...     redis.ResponseError("BUSY Redis is busy running a script")), transient(
    ...     redis.ResponseError("ERR wrong number of arguments"))
    ('out_of_memory', 'busy', None)
    """
    if isinstance(e, RedisOutOfMemoryError | redis.exceptions.OutOfMemoryError):
        return "out_of_memory"
    if isinstance(e, RedisBusyError | redis.exceptions.BusyLoadingError):
        return "busy"
    if isinstance(e, redis.ConnectionError | redis.TimeoutError):
        return "unreachable"
    if isinstance(
        e,
        redis.exceptions.ReadOnlyError
        | redis.exceptions.MasterDownError
        | redis.exceptions.TryAgainError
        | redis.exceptions.ClusterDownError,
    ):
        return "busy"
    if isinstance(e, redis.ResponseError):
        msg = str(e)
        if msg.startswith("OOM") or "used memory > 'maxmemory'" in msg:
            return "out_of_memory"
        if msg.startswith(_BUSY_PREFIXES):
            return "busy"
    return None


def _observe(op: str, t0: float, error: BaseException | None) -> None:
    m.REDIS_SECONDS.labels(op).observe(time.perf_counter() - t0)
    if error is not None and not isinstance(error, redis.exceptions.NoScriptError):
        # (NOSCRIPT is how a script is loaded the first time: redis-py sends it then)
        m.REDIS_ERRORS.labels(op, transient(error) or "error").inc()


class TimedPipeline(Pipeline):
    """A pipeline whose round trip is timed as one call (``pipeline`` or ``transaction``)."""

    op = "pipeline"

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        op = self.op
        t0 = time.perf_counter()
        try:
            out = super().execute(raise_on_error)
        except BaseException as e:
            _observe(op, t0, e)
            raise
        _observe(op, t0, None)
        return out


class TimedRedis(redis.Redis):
    """The client omnicanal uses: every command and pipeline round trip is timed into
    ``omnicanal_redis_call_seconds{op}`` and every failure counted in
    ``omnicanal_redis_errors_total{op,cause}`` (one observation per call: calls are per
    batch, never per event). Scripts show as ``evalsha``; the NOSCRIPT answer that makes
    redis-py load a script is not an error.

    >>> c = TimedRedis(port=1, socket_connect_timeout=0.1)
    >>> try:
    ...     c.ping()
    ... except redis.ConnectionError:
    ...     pass
    >>> m.REDIS_ERRORS.labels("ping", "unreachable")._value.get() >= 1
    True
    """

    def execute_command(self, *args: Any, **options: Any) -> Any:
        op = str(args[0]).lower() if args else "?"
        t0 = time.perf_counter()
        try:
            out = super().execute_command(*args, **options)
        except BaseException as e:
            _observe(op, t0, e)
            raise
        _observe(op, t0, None)
        return out

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> TimedPipeline:
        pipe = TimedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.op = "transaction" if transaction else "pipeline"
        return pipe


def connect(
    url: str, *, socket_timeout: float = 30.0, retries: int = 3, connect_timeout: float = 5.0
) -> redis.Redis:
    """A client that never hangs: every call times out after ``socket_timeout`` seconds,
    TCP keepalive notices a dead peer within about 25 s, and a failed connection is retried
    ``retries`` times with a short backoff before it raises. Longer outages are the
    caller's to ride out (the pipeline waits up to ``OMNICANAL_REDIS_RETRY_SECONDS``)."""
    keepalive: dict[int, int] = {}
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            keepalive[getattr(socket, name)] = value
    return TimedRedis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), max(0, retries)),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        socket_keepalive=True,
        socket_keepalive_options=keepalive,
        health_check_interval=30,
    )


def pairs(flat: list[bytes]) -> list[tuple[bytes, bytes]]:
    """A flat reply of a script (``HGETALL``, ``ZRANGE ... WITHSCORES``) as pairs.

    >>> pairs([b"a", b"1", b"b", b"2"])
    [(b'a', b'1'), (b'b', b'2')]
    """
    it = iter(flat)
    return list(zip(it, it, strict=True))


def redact_url(url: str) -> str:
    """A Redis or broker URL without its password, for messages and logs.

    >>> redact_url("rediss://user:s3cret@redis:6380/0")
    'rediss://user:***@redis:6380/0'
    >>> redact_url("redis://:s3cret@redis/0"), redact_url("redis://redis:6379/0")
    ('redis://:***@redis/0', 'redis://redis:6379/0')
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user, colon, _ = creds.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"

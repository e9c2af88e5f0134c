"""Connecting to Redis and telling its failures apart: a client that never hangs, the
errors the stores raise, and which Redis errors are worth waiting out (:func:`transient`)."""

from __future__ import annotations

import socket

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry


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
    return redis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), max(0, retries)),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        socket_keepalive=True,
        socket_keepalive_options=keepalive,
        health_check_interval=30,
    )


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

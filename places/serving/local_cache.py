"""A per-process copy of the most recently used small bodies in front of the Redis cache.

A cached map answer (a 1,000-place view, a tile) is a few kilobytes of gzip that every
request fetched from Redis: one round trip and redis-py's parsing, the largest part of a
cached view's own time after the data version stopped needing PostgreSQL (issue 14). Each
web process now keeps the bodies it last sent, up to ``CACHE_LOCAL_BYTES`` in all, and asks
Redis only for others.

Nothing can go stale here that could not go stale in Redis: a body's key holds the data
version of everything it shows (``places.serving.responses``), so an edit gives its answers
new keys and the old entries are simply not asked for again, then pushed out by newer ones;
an entry also expires with its Redis time to live (at most ``LOCAL_MAX_SECONDS``). Only
bodies Redis also stores are kept, so the rules on what may be stored hold here too. The
copy is read only while the process's data version listener is trusted
(``places.version_watch``), which is also how every process learns to empty its copy:
``cache.clear()`` (``RedisCache`` below is the cache backend) empties Redis and this
process's copy; ``places.version_watch.copies_clear_everywhere()``, or ``NOTIFY
places_data_versions, 'clear'`` after emptying Redis by hand, empties every web process's.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django_prometheus.cache import metrics as cache_metrics
from django_prometheus.cache.backends import redis as prometheus_redis
from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Bigger bodies (a 100,000-place view is about 800 KB) are few and cost Redis little per
# byte: the copy is for the many small ones.
LOCAL_MAX_BODY_BYTES = 256 * 1024
# What an entry costs beyond its body, its key and its headers' text: the tuple, the dict,
# the ordered dict's node (measured with tracemalloc: about 350 bytes). Counted, so that
# many empty tiles (a zero-byte body each) cannot grow the copy past its budget.
ENTRY_OVERHEAD_BYTES = 400
# An entry is dropped after this long even while in use, as Redis would drop it: a body's
# key holds its data version, but a few headers (a download's licences) do not.
LOCAL_MAX_SECONDS = 300


class LocalBodies:
    """Least recently used (key → compressed body and headers), bounded in bytes (bodies,
    keys, headers and each entry's own cost) and in age."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[bytes, dict[str, str], float, int]] = OrderedDict()
        self._bytes = 0
        # Moves at every clear(): a body fetched from Redis before a clear is not put back.
        self.epoch = 0

    def get(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        """The body and headers kept under ``key`` (a copy of the headers), if fresh."""
        if settings.CACHE_LOCAL_BYTES <= 0:
            return None
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            body, headers, expires_at, _ = found
            if time.monotonic() >= expires_at:
                self._drop(key)
                return None
            self._entries.move_to_end(key)
        return body, dict(headers)

    def put(
        self,
        key: str,
        body: bytes,
        headers: dict[str, str],
        *,
        ttl: float,
        epoch: int | None = None,
    ) -> None:
        """Keep ``body`` for at most ``ttl`` seconds (and ``LOCAL_MAX_SECONDS``), pushing out
        the least recently used entries beyond ``CACHE_LOCAL_BYTES``; not when ``epoch``
        (read before the body was fetched) is no longer current."""
        budget = settings.CACHE_LOCAL_BYTES
        cost = (
            len(body)
            + len(key)
            + sum(len(k) + len(v) for k, v in headers.items())
            + ENTRY_OVERHEAD_BYTES
        )
        if budget <= 0 or len(body) > LOCAL_MAX_BODY_BYTES or cost > budget or ttl <= 0:
            return
        expires_at = time.monotonic() + min(ttl, LOCAL_MAX_SECONDS)
        with self._lock:
            if epoch is not None and epoch != self.epoch:
                return
            self._drop(key)
            self._entries[key] = (body, dict(headers), expires_at, cost)
            self._bytes += cost
            while self._bytes > budget:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[3]

    def clear(self) -> None:
        """Empty the copy."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.epoch += 1

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """What the entries cost, as counted against ``CACHE_LOCAL_BYTES``."""
        return self._bytes


LOCAL_BODIES = LocalBodies()


# The value under KEYS[1] and its milliseconds left, with 0; for a value longer than ARGV[3]
# bytes, only its milliseconds left, with 2 (the caller GETs it: Lua copies a value twice, and
# an 800 KB one took 1.2 ms more through the script than by GET); for none, the build lock
# KEYS[2] taken (1) or held by another request (0). One round trip where a miss took two
# (GET, then SET NX) and a small value kept in the process copy three (GET, then
# django-redis's ttl(): EXISTS and TTL). STRLEN is 0 only for a missing key: a stored value
# is never empty (a pickle). Both keys must live on one server (no Redis Cluster slots).
_GET_OR_LOCK = """
local size = redis.call('STRLEN', KEYS[1])
if size > tonumber(ARGV[3]) then return {false, redis.call('PTTL', KEYS[1]), 2} end
if size > 0 then return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1]), 0} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) then return {false, 0, 1} end
return {false, 0, 0}
"""
# Values up to this size come back through the script; longer ones by a GET of their own.
SCRIPT_MAX_VALUE_BYTES = 64 * 1024

# What django-redis turns into ConnectionInterrupted, as its own commands do.
_REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, ResponseError, TimeoutError)


class RedisCache(prometheus_redis.RedisCache):
    """django-redis with django-prometheus's metrics, whose ``clear()`` also empties this
    process's copy of recent bodies (``LOCAL_BODIES``), and the two compound commands of a
    cached answer's build (``places.serving.responses.cached_build``).

    Each Redis command costs a web worker more Python (redis-py's argument checks, the
    connection pool, django-redis's key and value handling) than Redis spends on it: on an
    uncached 1K view they were 30 % of a worker's GIL time (py-spy, issue 14), four
    commands for one body; with the compound ones below, two commands and 21 %.

    Unlike django-redis's own commands, these two ignore ``IGNORE_EXCEPTIONS`` (Redis
    errors always raise ``ConnectionInterrupted``; the setting is not used here) and take a
    whole positive number of seconds as ``timeout``.
    """

    def clear(self, *args: Any, **kwargs: Any) -> Any:
        LOCAL_BODIES.clear()
        return super().clear(*args, **kwargs)

    def get_or_lock(
        self, key: str, *, lock_key: str, lock_seconds: int
    ) -> tuple[Any, float | None, bool]:
        """The value under ``key`` and its seconds left (None without expiry), or when there
        is none, whether this call took the lock ``lock_key`` (for ``lock_seconds``), in one
        round trip (two for a value over ``SCRIPT_MAX_VALUE_BYTES``). Counted in
        django-prometheus's cache metrics as a ``get``."""
        client = self.client.get_client(write=True)
        script = getattr(self, "_get_or_lock_script", None)
        if script is None:
            # Registered once per backend object: redis-py sends its SHA (EVALSHA) and the
            # source only when the server does not know it yet (after a restart).
            script = self._get_or_lock_script = client.register_script(_GET_OR_LOCK)
        keys = [self.client.make_key(key), self.client.make_key(lock_key)]
        args = [self.client.encode(1), lock_seconds, SCRIPT_MAX_VALUE_BYTES]
        cache_metrics.django_cache_get_total.labels(backend="redis").inc()
        try:
            value, milliseconds, outcome = script(keys=keys, args=args, client=client)
            if outcome == 2:
                value = client.get(keys[0])
                if value is None:  # expired or evicted in between: as if never there
                    value, milliseconds, outcome = script(
                        keys=keys, args=[*args[:2], 2**53], client=client
                    )
        except _REDIS_ERRORS as exc:
            cache_metrics.django_cache_get_fail_total.labels(backend="redis").inc()
            raise ConnectionInterrupted(connection=client) from exc
        if value is None:
            cache_metrics.django_cache_misses_total.labels(backend="redis").inc()
            return None, None, outcome == 1
        cache_metrics.django_cache_hits_total.labels(backend="redis").inc()
        seconds_left = milliseconds / 1000 if milliseconds > 0 else None
        return self.client.decode(value), seconds_left, False

    def set_and_unlock(self, key: str, value: Any, *, timeout: int, lock_key: str) -> None:
        """Store ``value`` under ``key`` for ``timeout`` seconds and release ``lock_key``,
        in one round trip (a pipeline: waiters poll for the value, so the order of the two
        matters only in that the value is written first)."""
        client = self.client.get_client(write=True)
        try:
            with client.pipeline(transaction=False) as pipe:
                pipe.set(self.client.make_key(key), self.client.encode(value), ex=timeout)
                pipe.delete(self.client.make_key(lock_key))
                pipe.execute()
        except _REDIS_ERRORS as exc:
            raise ConnectionInterrupted(connection=client) from exc


def bodies_cache() -> RedisCache:
    """The default cache, which stores the answers' bodies: this module's ``RedisCache``
    (``CACHES`` in ``config.settings.base``), whose compound commands the answers use."""
    backend = caches["default"]
    if not isinstance(backend, RedisCache):
        raise ImproperlyConfigured(
            f"CACHES['default'] must be {__name__}.RedisCache, not {type(backend).__name__}"
        )
    return backend

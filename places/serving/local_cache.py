"""A per-process copy of the most recently used small bodies in front of the Redis cache.

A cached map answer (a 1,000-place view, a tile) is a few kilobytes of gzip that every
request fetched from Redis: one round trip and redis-py's parsing, the largest part of a
cached view's own time after the data version stopped needing PostgreSQL (issue 14). Each
web process now keeps the bodies it last sent, up to ``CACHE_LOCAL_BYTES`` in all, and asks
Redis only for others.

Nothing can go stale here that could not go stale in Redis: a body's key holds the data
version of everything it shows (``places.serving.responses``), so an edit gives its answers
new keys and the old entries are simply not asked for again, then pushed out by newer ones.
Only bodies Redis also stores are kept, so the rules on what may be stored hold here too.
Clearing the cache (``cache.clear()``, which tests and operators use to make every answer be
built anew) clears this process's copy as well: ``RedisCache`` below is the cache backend.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from django.conf import settings
from django_prometheus.cache.backends import redis as prometheus_redis

# Bigger bodies (a 100,000-place view is about 800 KB) are few and cost Redis little per
# byte: the copy is for the many small ones.
LOCAL_MAX_BODY_BYTES = 256 * 1024


class LocalBodies:
    """Least recently used (key → compressed body and headers), bounded in bytes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[bytes, dict[str, str]]] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: str, body: bytes, headers: dict[str, str]) -> None:
        budget = settings.CACHE_LOCAL_BYTES
        if len(body) > min(budget, LOCAL_MAX_BODY_BYTES):
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old[0])
            self._entries[key] = (body, headers)
            self._bytes += len(body)
            while self._bytes > budget:
                _, (evicted, _) = self._entries.popitem(last=False)
                self._bytes -= len(evicted)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes


LOCAL_BODIES = LocalBodies()


class RedisCache(prometheus_redis.RedisCache):
    """django-redis with django-prometheus's metrics, whose ``clear()`` also empties this
    process's copy of recent bodies (``LOCAL_BODIES``)."""

    def clear(self, *args: Any, **kwargs: Any) -> Any:
        LOCAL_BODIES.clear()
        return super().clear(*args, **kwargs)

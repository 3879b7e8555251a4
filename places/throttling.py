"""API rate limits counted atomically in Redis, announced in ``RateLimit-*`` headers.

Each client has one fixed window per rate: it opens with the client's first request, lasts
the rate's period and holds at most the rate's number of requests; the next request after it
closes opens a new one. The count is one Redis transaction (``SET NX EX``, ``INCR``, ``TTL``),
so requests arriving at once on any number of workers and pods are counted exactly: no more
than the limit pass in a window. (DRF's own throttles read a history, then write it back, and
concurrent requests overwrite each other's entries: about 15 % more got through.)

A client is its signed-in user (rate ``user``) or, anonymous, its address as DRF's
``get_ident`` sees it (rate ``anon``): ``REMOTE_ADDR``, or with ``NUM_PROXIES`` = n the n-th
address from the end of ``X-Forwarded-For``. Behind a proxy n must equal the number of
proxies, or every client shares the proxy's bucket.

Every response of a throttled view carries ``RateLimit-Limit``, ``RateLimit-Remaining`` and
``RateLimit-Reset`` (seconds until the window closes; the IETF httpapi draft's names), set by
``RateLimitHeadersMiddleware`` from what the throttle recorded on the request; a refused
request gets 429 with ``Retry-After`` (DRF's ``Throttled``). When Redis cannot be reached the
request is let through and a warning logged: an outage of the cache must not take the API
down with it (``/health/ready/`` reports the cache).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django_redis import get_redis_connection
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

logger = logging.getLogger(__name__)

KEY_PREFIX = "ratelimit"
# Where the throttle leaves its figures for the middleware (on the HttpRequest, which the
# middleware sees; DRF's Request wraps it).
REQUEST_ATTRIBUTE = "ratelimit"
PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class RateLimitState:
    """One client's window after counting a request. ``allowed`` when the request was within
    the limit; ``remaining`` (what the window still admits) never goes below 0."""

    limit: int
    remaining: int
    reset_seconds: int
    allowed: bool

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }


def parse_rate(rate: str) -> tuple[int, int]:
    """``"6000/min"`` → (6000, 60): requests and period in seconds, as DRF writes rates
    (the period's first letter counts: s, m, h, d)."""
    number, period = rate.split("/")
    return int(number), PERIODS[period.strip()[0]]


def rate_limit_hit(*, key: str, limit: int, period_seconds: int) -> RateLimitState:
    """Count one request against ``key`` and say whether the window still has room.

    One MULTI/EXEC: the window is created with its expiry if missing, then incremented, then
    its time left read, so concurrent callers each see a distinct count and exactly ``limit``
    of them see a count within the limit. Raises ``RedisError`` if Redis cannot be reached.
    """
    redis = get_redis_connection("default")
    name = cache.make_key(f"{KEY_PREFIX}:{key}")
    with redis.pipeline(transaction=True) as pipe:
        pipe.set(name, 0, ex=period_seconds, nx=True)
        pipe.incr(name)
        pipe.ttl(name)
        _, count, ttl = pipe.execute()
    if ttl < 0:
        # Only a key written without expiry by something else could get here; without this
        # it would refuse its client for good.
        redis.expire(name, period_seconds)
        ttl = period_seconds
    count = int(count)
    return RateLimitState(
        limit=limit,
        remaining=max(limit - count, 0),
        reset_seconds=max(int(ttl), 1),
        allowed=count <= limit,
    )


class RedisRateThrottle(BaseThrottle):
    """The API's rate limit (``DEFAULT_THROTTLE_CLASSES``): rate ``user`` per signed-in user,
    ``anon`` per client address, from ``DEFAULT_THROTTLE_RATES`` (read per request, so a
    changed setting applies at once). A rate of None switches its limit off."""

    def __init__(self) -> None:
        self.state: RateLimitState | None = None

    def client(self, request: Request) -> tuple[str, str]:
        """The rate's scope and the identity counted against it."""
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return "user", f"user:{user.pk}"
        return "anon", f"ip:{self.get_ident(request) or 'unknown'}"

    def rate(self, scope: str) -> str | None:
        """The scope's rate, as DRF writes rates; subclasses may read it elsewhere."""
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(scope)
        return str(rate) if rate else None

    def allow_request(self, request: Request, view: Any) -> bool:
        scope, ident = self.client(request)
        rate = self.rate(scope)
        if not rate:
            return True
        limit, period = parse_rate(str(rate))
        try:
            state = rate_limit_hit(key=f"{scope}:{ident}", limit=limit, period_seconds=period)
        except RedisError as exc:
            logger.warning("rate limit not counted, Redis unavailable: %s", exc)
            return True
        self.state = state
        _record(request, state)
        return state.allowed

    def wait(self) -> float | None:
        # DRF's 429 sends this, rounded up, as Retry-After: the window's time left.
        return self.state.reset_seconds if self.state is not None else None


def _record(request: Request, state: RateLimitState) -> None:
    http_request: HttpRequest = request._request
    previous: RateLimitState | None = getattr(http_request, REQUEST_ATTRIBUTE, None)
    # With several limits on one view, the headers describe the one closest to refusing.
    if previous is None or state.remaining < previous.remaining:
        setattr(http_request, REQUEST_ATTRIBUTE, state)


class RateLimitHeadersMiddleware:
    """Adds the ``RateLimit-*`` headers to every response whose request was counted by a
    rate limit (API views), refused ones included."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        state: RateLimitState | None = getattr(request, REQUEST_ATTRIBUTE, None)
        if state is not None:
            for name, value in state.headers().items():
                response[name] = value
        return response

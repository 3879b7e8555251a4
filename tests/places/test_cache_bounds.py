"""What the response cache stores is bounded: a unique query string cannot buy a big entry,
while tiles (whatever their size) and small answers are stored. Keys are counted in the test
Redis database itself."""

from __future__ import annotations

import gzip
import math

import pytest
from django.core.cache import cache
from django_redis import get_redis_connection

pytestmark = pytest.mark.django_db

# Small enough that the London pages, views and tiles below are all "big" next to it.
LIMIT_BYTES = 1000
LONDON = "-0.2,51.45,0.0,51.55"
GZIP = {"HTTP_ACCEPT_ENCODING": "gzip"}


def _tile_for(lon: float, lat: float, z: int) -> tuple[int, int, int]:
    n = 2**z
    rad = math.radians(lat)
    return z, int((lon + 180) / 360 * n), int((1 - math.asinh(math.tan(rad)) / math.pi) / 2 * n)


def _stored_bodies() -> int:
    """Response bodies in the cache's Redis database (build locks are deleted after use)."""
    redis = get_redis_connection("default")
    pattern = cache.make_key("bytes:*")
    return sum(1 for key in redis.scan_iter(match=pattern) if not key.endswith(b":building"))


@pytest.fixture
def small_limit(settings, clear_cache) -> int:
    settings.CACHE_MAX_BODY_BYTES = LIMIT_BYTES
    return LIMIT_BYTES


def test_twenty_distinct_big_place_pages_store_nothing(client, gb_import, small_limit):
    # given 20 requests for London pages, each with its own limit (a unique query string)
    urls = [f"/api/v1/places/?bbox={LONDON}&limit={500 + i}" for i in range(20)]
    # when each is answered
    responses = [client.get(url, **GZIP) for url in urls]
    # then each got its full, big body, and none of them was stored
    assert all(r.status_code == 200 for r in responses)
    assert min(len(r.content) for r in responses) > small_limit
    assert _stored_bodies() == 0
    # and asking again builds the same answer anew (gzip's header holds the build time)
    again = client.get(urls[0], **GZIP)
    assert gzip.decompress(again.content) == gzip.decompress(responses[0].content)
    assert _stored_bodies() == 0


def test_twenty_distinct_big_views_store_nothing(client, gb_import, small_limit):
    # given 20 viewport boxes over London, each a little wider than the one before
    urls = [
        f"/api/v1/viewport/?bbox={-0.2 - i / 1000:.3f},51.45,0.0,51.55&zoom=12&format=bin"
        for i in range(20)
    ]
    responses = [client.get(url, **GZIP) for url in urls]
    assert all(r.status_code == 200 for r in responses)
    assert min(len(r.content) for r in responses) > small_limit
    assert _stored_bodies() == 0


def test_tiles_are_stored_at_any_size(client, gb_import, small_limit):
    # given a dense zoom-10 tile over London, bigger than the limit
    z, x, y = _tile_for(-0.1, 51.5, 10)
    url = f"/tiles/places/{z}/{x}/{y}.pbf"
    # when it is asked for
    first = client.get(url, **GZIP)
    # then it is stored, and the next request is answered from the cache with the same body
    assert first.status_code == 200
    assert len(first.content) > small_limit
    assert _stored_bodies() == 1
    assert client.get(url, **GZIP).content == first.content
    assert _stored_bodies() == 1


def test_small_pages_are_stored_whatever_the_query(client, gb_import, small_limit):
    # given small pages, each with its own query string
    urls = [f"/api/v1/places/?bbox={LONDON}&limit=1&fields=name&q=x{i}" for i in range(3)]
    # when each is answered
    responses = [client.get(url, **GZIP) for url in urls]
    # then each was small and stored
    assert all(r.status_code == 200 for r in responses)
    assert max(len(r.content) for r in responses) <= small_limit
    assert _stored_bodies() == 3

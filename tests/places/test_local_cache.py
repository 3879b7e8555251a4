"""Each web process keeps the small bodies it last sent (places.serving.local_cache)."""

from __future__ import annotations

import gzip

import pytest
from django.core.cache import cache
from django_redis import get_redis_connection

from places.serving import viewport
from places.serving.local_cache import LOCAL_BODIES, LocalBodies

pytestmark = pytest.mark.django_db

VIEW = "/api/v1/viewport/?bbox=-0.2,51.45,0.0,51.55&zoom=12&format=bin"
GZIP = {"HTTP_ACCEPT_ENCODING": "gzip"}


@pytest.fixture
def builds(monkeypatch) -> list[int]:
    """How many times the viewport's SQL ran."""
    counted: list[int] = []
    real = viewport.viewport_query

    def counting(**kwargs):
        counted.append(1)
        return real(**kwargs)

    monkeypatch.setattr(viewport, "viewport_query", counting)
    return counted


def _forget_redis_only() -> None:
    """Empty the cache's Redis database behind the cache's back (cache.clear() would empty
    the process's copy too)."""
    get_redis_connection("default").flushdb()


def test_a_body_sent_once_is_sent_again_from_the_process_copy(
    client, gb_import, clear_cache, builds
):
    first = client.get(VIEW, **GZIP)
    assert first.status_code == 200
    assert builds == [1]
    # when Redis loses the body (evicted, flushed) but this process still has it
    _forget_redis_only()
    again = client.get(VIEW, **GZIP)
    # then the same body is sent without building it again
    assert again.status_code == 200
    assert again.content == first.content
    assert again["ETag"] == first["ETag"]
    assert builds == [1]
    # and clearing the cache clears the copy too: the next request builds
    cache.clear()
    third = client.get(VIEW, **GZIP)
    assert gzip.decompress(third.content) == gzip.decompress(first.content)
    assert builds == [1, 1]


def test_a_body_redis_may_not_store_is_not_kept_either(
    client, gb_import, clear_cache, settings, builds
):
    # given a limit on stored bodies below this view's size (a free-form query)
    settings.CACHE_MAX_BODY_BYTES = 100
    first = client.get(VIEW, **GZIP)
    assert len(first.content) > 100
    # then every request builds it again
    client.get(VIEW, **GZIP)
    assert builds == [1, 1]
    assert LOCAL_BODIES.size_bytes == 0


def test_switched_off_nothing_is_kept(client, gb_import, clear_cache, settings, builds):
    settings.CACHE_LOCAL_BYTES = 0
    client.get(VIEW, **GZIP)
    _forget_redis_only()
    client.get(VIEW, **GZIP)
    assert builds == [1, 1]
    assert LOCAL_BODIES.size_bytes == 0


def test_the_copy_keeps_the_most_recently_used_within_its_bytes(settings):
    settings.CACHE_LOCAL_BYTES = 3000
    bodies = LocalBodies()
    for key in "abc":
        bodies.put(key, key.encode() * 1000, {"ETag": key})
    assert bodies.size_bytes == 3000
    # using "a" makes "b" the least recently used: the next body pushes "b" out
    assert bodies.get("a") == (b"a" * 1000, {"ETag": "a"})
    bodies.put("d", b"d" * 1000, {})
    assert bodies.get("b") is None
    assert {k for k in "acd" if bodies.get(k)} == {"a", "c", "d"}
    assert bodies.size_bytes == 3000
    # a body bigger than the whole copy is not kept, and pushes nothing out
    bodies.put("huge", b"x" * 3001, {})
    assert bodies.get("huge") is None
    assert bodies.size_bytes == 3000
    # the same key again replaces its body and its bytes
    bodies.put("a", b"a" * 10, {})
    assert bodies.size_bytes == 2010

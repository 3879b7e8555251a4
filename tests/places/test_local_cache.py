"""Each web process keeps the small bodies it last sent (places.serving.local_cache)."""

from __future__ import annotations

import gzip
import time

import pytest
from django.core.cache import cache
from django_redis import get_redis_connection

from places import version_watch
from places.serving import local_cache, viewport
from places.serving.local_cache import LOCAL_BODIES, LocalBodies

pytestmark = pytest.mark.django_db

VIEW = "/api/v1/viewport/?bbox=-0.2,51.45,0.0,51.55&zoom=12&format=bin"
GZIP = {"HTTP_ACCEPT_ENCODING": "gzip"}


@pytest.fixture
def builds(monkeypatch) -> list[int]:
    """How many times the viewport's SQL ran (once the session's listener hears: the copy
    is used only then)."""
    deadline = time.monotonic() + 15
    while not version_watch.WATCH.trusted() and time.monotonic() < deadline:
        time.sleep(0.01)
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
    assert len(LOCAL_BODIES) == 0


def test_switched_off_nothing_is_kept(client, gb_import, clear_cache, settings, builds):
    settings.CACHE_LOCAL_BYTES = 0
    client.get(VIEW, **GZIP)
    _forget_redis_only()
    client.get(VIEW, **GZIP)
    assert builds == [1, 1]
    assert len(LOCAL_BODIES) == 0
    # not even empty bodies (a tile with nothing in it)
    LOCAL_BODIES.put("bytes:empty", b"", {}, ttl=60)
    assert len(LOCAL_BODIES) == 0


def test_without_a_listener_that_hears_the_copy_is_not_used(
    client, gb_import, clear_cache, monkeypatch, builds
):
    # given a process whose data version listener is down (it could not hear a "clear")
    monkeypatch.setattr(version_watch.WATCH, "trusted", lambda: False)
    client.get(VIEW, **GZIP)
    _forget_redis_only()
    client.get(VIEW, **GZIP)
    assert builds == [1, 1]


def _cost(key: str, body: bytes) -> int:
    return len(key) + len(body) + local_cache.ENTRY_OVERHEAD_BYTES


def test_the_copy_keeps_the_most_recently_used_within_its_bytes(settings):
    one = _cost("a", b"a" * 1000)
    settings.CACHE_LOCAL_BYTES = 3 * one
    bodies = LocalBodies()
    for key in "abc":
        bodies.put(key, key.encode() * 1000, {}, ttl=60)
    assert bodies.size_bytes == 3 * one
    # using "a" makes "b" the least recently used: the next body pushes "b" out
    assert bodies.get("a") == (b"a" * 1000, {})
    bodies.put("d", b"d" * 1000, {}, ttl=60)
    assert bodies.get("b") is None
    assert {k for k in "acd" if bodies.get(k)} == {"a", "c", "d"}
    assert bodies.size_bytes == 3 * one
    # a body bigger than the whole copy is not kept, and pushes nothing out
    bodies.put("huge", b"x" * 3 * one, {}, ttl=60)
    assert bodies.get("huge") is None
    assert len(bodies) == 3
    # the same key again replaces its body and its cost
    bodies.put("a", b"a" * 10, {}, ttl=60)
    assert bodies.size_bytes == 2 * one + _cost("a", b"a" * 10)


def test_empty_bodies_count_too(settings):
    # many empty tiles (a zero-byte body each) cannot grow the copy past its budget
    settings.CACHE_LOCAL_BYTES = 10 * local_cache.ENTRY_OVERHEAD_BYTES
    bodies = LocalBodies()
    for i in range(1000):
        bodies.put(f"k{i}", b"", {"ETag": "x"}, ttl=60)
    assert 0 < len(bodies) < 10
    assert bodies.size_bytes <= settings.CACHE_LOCAL_BYTES


def test_an_entry_expires_with_its_time_to_live(settings, monkeypatch):
    settings.CACHE_LOCAL_BYTES = 1 << 20
    now = [1000.0]
    monkeypatch.setattr(local_cache.time, "monotonic", lambda: now[0])
    bodies = LocalBodies()
    bodies.put("short", b"s", {}, ttl=5)
    bodies.put("long", b"l", {}, ttl=10**6)
    now[0] += 6
    assert bodies.get("short") is None
    assert bodies.get("long") is not None
    # however long Redis keeps it, the copy keeps it at most LOCAL_MAX_SECONDS
    now[0] += local_cache.LOCAL_MAX_SECONDS
    assert bodies.get("long") is None
    assert len(bodies) == 0


def test_the_headers_handed_out_are_a_copy(settings):
    settings.CACHE_LOCAL_BYTES = 1 << 20
    bodies = LocalBodies()
    bodies.put("k", b"b", {"ETag": "x"}, ttl=60)
    bodies.get("k")[1]["ETag"] = "changed"
    assert bodies.get("k") == (b"b", {"ETag": "x"})


def test_a_body_fetched_before_a_clear_is_not_put_back(settings):
    settings.CACHE_LOCAL_BYTES = 1 << 20
    bodies = LocalBodies()
    # a request reads the epoch, then fetches from Redis while another empties the copies
    epoch = bodies.epoch
    bodies.clear()
    bodies.put("k", b"from before the clear", {}, ttl=60, epoch=epoch)
    assert bodies.get("k") is None
    bodies.put("k", b"after", {}, ttl=60, epoch=bodies.epoch)
    assert bodies.get("k") == (b"after", {})


def _cache_metric(name: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, {"backend": "redis"}) or 0.0


def test_get_or_lock_answers_the_value_or_takes_the_build_lock_once(clear_cache):
    redis = get_redis_connection("default")
    misses = _cache_metric("django_cache_get_misses_total")
    # a miss takes the lock, with the expiry asked for
    assert cache.get_or_lock("k", lock_key="k:building", lock_seconds=30) == (None, None, True)
    assert 0 < redis.ttl(cache.make_key("k:building")) <= 30
    # and a second caller finds it taken
    assert cache.get_or_lock("k", lock_key="k:building", lock_seconds=30) == (None, None, False)
    # (each counted by django-prometheus as a missed get)
    assert _cache_metric("django_cache_get_misses_total") == misses + 2
    # the builder stores the body and frees the lock in one go
    cache.set_and_unlock("k", (b"body", {"X": "1"}), timeout=60, lock_key="k:building")
    assert cache.get("k:building") is None
    assert cache.get("k") == (b"body", {"X": "1"})
    # then callers get the body and the seconds it has left, and take no lock
    gets, hits = (
        _cache_metric("django_cache_get_total"),
        _cache_metric("django_cache_get_hits_total"),
    )
    value, seconds_left, locked = cache.get_or_lock("k", lock_key="k:building", lock_seconds=30)
    assert _cache_metric("django_cache_get_total") == gets + 1
    assert _cache_metric("django_cache_get_hits_total") == hits + 1
    assert value == (b"body", {"X": "1"})
    assert 58 < seconds_left <= 60
    assert locked is False
    assert cache.get("k:building") is None


def test_get_or_lock_of_a_value_without_expiry_says_so(clear_cache):
    cache.set("forever", b"x", timeout=None)
    assert cache.get_or_lock("forever", lock_key="forever:building", lock_seconds=30) == (
        b"x",
        None,
        False,
    )


def test_a_miss_holds_the_lock_while_it_builds_and_leaves_none_behind(clear_cache, settings):
    from places.serving import responses

    held: list[bool] = []

    def build() -> bytes:
        held.append(cache.get("bytes:lockcheck:building") is not None)
        return b"x" * 500

    body, _ = responses.cached_build(cache_key="bytes:lockcheck", ttl=60, build=build)
    assert held == [True]
    assert gzip.decompress(body) == b"x" * 500
    assert cache.get("bytes:lockcheck:building") is None
    # a body too big to store is not stored, and its lock is freed all the same
    settings.CACHE_MAX_BODY_BYTES = 10
    responses.cached_build(cache_key="bytes:big", ttl=60, build=lambda: bytes(range(256)) * 50)
    assert cache.get("bytes:big") is None
    assert cache.get("bytes:big:building") is None
    # and so is the lock of a build that fails
    with pytest.raises(ZeroDivisionError):
        responses.cached_build(cache_key="bytes:fails", ttl=60, build=lambda: 1 / 0)
    assert cache.get("bytes:fails:building") is None


def test_get_or_lock_of_a_long_value_fetches_it_apart(clear_cache):
    # given a value longer than the script passes through (Lua copies it twice)
    long_value = (bytes(range(256)) * 400, {"X": "long"})
    cache.set("long", long_value, timeout=120)
    assert len(cache.client.encode(long_value)) > local_cache.SCRIPT_MAX_VALUE_BYTES
    value, seconds_left, locked = cache.get_or_lock(
        "long", lock_key="long:building", lock_seconds=9
    )
    assert value == long_value
    assert 118 < seconds_left <= 120
    assert locked is False
    assert cache.get("long:building") is None


def test_a_long_value_gone_before_its_fetch_is_a_miss_that_takes_the_lock(clear_cache, monkeypatch):
    cache.set("long", bytes(range(256)) * 400, timeout=120)
    redis = cache.client.get_client(write=True)
    real_get = redis.get

    def evicted_meanwhile(name):
        redis.delete(name)
        return real_get(name)

    monkeypatch.setattr(redis, "get", evicted_meanwhile)
    assert cache.get_or_lock("long", lock_key="long:building", lock_seconds=9) == (
        None,
        None,
        True,
    )
    monkeypatch.undo()
    assert cache.get("long:building") == 1


def test_a_miss_asks_redis_twice_and_a_hit_once(clear_cache, settings, monkeypatch):
    from redis.connection import Connection

    from places.serving import responses

    settings.CACHE_LOCAL_BYTES = 0  # every hit from Redis
    cache.get_or_lock("warm", lock_key="warm:building", lock_seconds=1)  # script loaded
    sent: list[int] = []
    real_send = Connection.send_packed_command

    def counted(self, command, check_health=True):
        sent.append(1)
        return real_send(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    # a miss: the body or the lock in one round trip, the body stored and the lock freed in
    # another
    responses.cached_build(cache_key="bytes:trips", ttl=60, build=lambda: b"x" * 100)
    assert len(sent) == 2
    # a hit: one
    sent.clear()
    body, _ = responses.cached_build(cache_key="bytes:trips", ttl=60, build=lambda: b"other")
    assert gzip.decompress(body) == b"x" * 100
    assert len(sent) == 1


def test_a_build_lock_left_by_a_builder_that_died_is_taken_when_it_expires(clear_cache):
    from places.serving import responses

    # given a lock whose holder will never store the body
    cache.add("bytes:orphan:building", 1, timeout=1)
    calls: list[int] = []
    started = time.monotonic()
    body, _ = responses.cached_build(
        cache_key="bytes:orphan", ttl=60, build=lambda: calls.append(1) or b"mine"
    )
    # then the waiter builds it itself once the lock has expired
    assert calls == [1]
    assert gzip.decompress(body) == b"mine"
    assert time.monotonic() - started >= 0.9
    assert cache.get("bytes:orphan") is not None


def test_redis_failing_in_get_or_lock_is_connection_interrupted_and_counted(
    clear_cache, monkeypatch
):
    from django_redis.exceptions import ConnectionInterrupted
    from redis.exceptions import ConnectionError as RedisConnectionError

    redis = cache.client.get_client(write=True)

    def down(*args, **kwargs):
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(redis, "evalsha", down)
    failed = _cache_metric("django_cache_get_fail_total")
    with pytest.raises(ConnectionInterrupted):
        cache.get_or_lock("k", lock_key="k:building", lock_seconds=9)
    assert _cache_metric("django_cache_get_fail_total") == failed + 1

"""The API rate limit: counted atomically in the real Redis (exactly the limit passes however
many requests arrive at once), per client address or per user, announced in RateLimit-*
headers, with Retry-After on 429."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client, override_settings
from rest_framework.test import APIClient

from places.throttling import KEY_PREFIX, parse_rate

# The viewport without its required parameters: the throttle counts the request, then the
# view answers 400 without touching the database, so threads need no connections of their own.
CHEAP = "/api/v1/viewport/"


@pytest.fixture
def rates(settings) -> Callable[..., None]:
    """Set the anonymous and user rates for one test (DRF re-reads its settings on change)."""

    def set_rates(*, anon: str | None, user: str | None = None) -> None:
        settings.REST_FRAMEWORK = {
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {"anon": anon, "user": user},
        }

    return set_rates


@pytest.fixture
def fresh_counters() -> Iterator[None]:
    """No window left over from another test or run."""
    cache.delete_pattern(f"{KEY_PREFIX}:*")  # type: ignore[attr-defined]  # django-redis
    yield
    cache.delete_pattern(f"{KEY_PREFIX}:*")  # type: ignore[attr-defined]


def test_concurrent_requests_pass_exactly_the_limit(rates, fresh_counters):
    # given a limit of 25 an hour (no window can close during the test) and 8 threads that
    # start together and send 10 requests each from one address
    rates(anon="25/hour")
    barrier = threading.Barrier(8)
    codes: Counter[int] = Counter()
    lock = threading.Lock()

    def hammer() -> None:
        client = Client(REMOTE_ADDR="198.51.100.7")
        barrier.wait()
        for _ in range(10):
            status = client.get(CHEAP).status_code
            with lock:
                codes[status] += 1

    # when they all hammer one endpoint
    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then exactly 25 were let through and the other 55 refused
    assert codes == Counter({400: 25, 429: 55})


def test_every_counted_response_says_where_the_client_stands(rates, fresh_counters):
    # given a limit of 3 an hour
    rates(anon="3/hour")
    client = Client(REMOTE_ADDR="198.51.100.8")
    # when the client sends four requests
    responses = [client.get(CHEAP) for _ in range(4)]
    # then each counted one carries the limit, what is left and when the window closes
    assert [r.status_code for r in responses] == [400, 400, 400, 429]
    assert [r["RateLimit-Limit"] for r in responses] == ["3"] * 4
    assert [r["RateLimit-Remaining"] for r in responses] == ["2", "1", "0", "0"]
    resets = [int(r["RateLimit-Reset"]) for r in responses]
    assert all(0 < reset <= 3600 for reset in resets)
    # and the refusal says how long to wait: until the window closes
    refused = responses[-1]
    assert 0 < int(refused["Retry-After"]) <= 3600
    assert abs(int(refused["Retry-After"]) - resets[-1]) <= 1


def test_each_address_has_its_own_window(rates, fresh_counters):
    # given a limit of 1 an hour, used up by one address
    rates(anon="1/hour")
    assert Client(REMOTE_ADDR="198.51.100.9").get(CHEAP).status_code == 400
    assert Client(REMOTE_ADDR="198.51.100.9").get(CHEAP).status_code == 429
    # when another address asks
    other = Client(REMOTE_ADDR="198.51.100.10").get(CHEAP)
    # then it is let through
    assert other.status_code == 400
    assert other["RateLimit-Remaining"] == "0"


@pytest.mark.parametrize(
    ("num_proxies", "separate"),
    [
        (1, True),  # the proxy's own entry names each client
        (0, False),  # the proxy's address is everyone's: one shared bucket
    ],
)
def test_behind_a_proxy_clients_are_told_apart_only_with_num_proxies(
    rates, fresh_counters, settings, num_proxies, separate
):
    # given one proxy in front, which appends each client's address to X-Forwarded-For
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": num_proxies}
    rates(anon="1/hour")
    proxy = "10.0.0.5"
    first = Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="203.0.113.1")
    # the second client forges an entry of its own before the one the proxy appended
    second = Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="203.0.113.1, 203.0.113.2")
    # when each sends a request after the first client used up its limit
    assert first.get(CHEAP).status_code == 400
    answer = second.get(CHEAP).status_code
    # then with NUM_PROXIES=1 the second client has its own bucket (its forged entry ignored);
    # with 0 it shares the proxy's and is refused
    assert answer == (400 if separate else 429)
    assert first.get(CHEAP).status_code == 429


@pytest.mark.django_db
def test_a_signed_in_user_counts_against_the_user_rate(rates, fresh_counters):
    # given an anonymous limit of 1 and a user limit of 3 an hour, and a signed-in curator
    rates(anon="1/hour", user="3/hour")
    api = APIClient(REMOTE_ADDR="198.51.100.11")
    api.force_login(get_user_model().objects.create_user("ratelimited"))
    # when the curator asks four times from the address an anonymous client also uses
    codes = [api.get("/api/v1/datasets/").status_code for _ in range(4)]
    anonymous = APIClient(REMOTE_ADDR="198.51.100.11").get("/api/v1/datasets/")
    # then the user's limit applies to the user, and the address still has its own
    assert codes == [200, 200, 200, 429]
    assert anonymous.status_code == 200
    assert anonymous["RateLimit-Limit"] == "1"


def test_a_limit_switched_off_counts_nothing_and_sends_no_headers(rates, fresh_counters):
    rates(anon=None)
    responses = [Client(REMOTE_ADDR="198.51.100.12").get(CHEAP) for _ in range(3)]
    assert [r.status_code for r in responses] == [400, 400, 400]
    assert all("RateLimit-Limit" not in r for r in responses)


def test_requests_pass_uncounted_when_redis_is_unreachable(rates, settings):
    # given a cache Redis on a port nothing listens on
    rates(anon="1/hour")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    caches = {**settings.CACHES}
    caches["default"] = {**caches["default"], "LOCATION": f"redis://127.0.0.1:{port}/0"}
    with override_settings(CACHES=caches):
        responses = [Client(REMOTE_ADDR="198.51.100.13").get(CHEAP) for _ in range(2)]
    # then the API still answers (the readiness probe reports the cache), without headers
    assert [r.status_code for r in responses] == [400, 400]
    assert "RateLimit-Limit" not in responses[0]


@pytest.mark.parametrize(
    ("rate", "expected"),
    [("6000/min", (6000, 60)), ("10/s", (10, 1)), ("5/hour", (5, 3600)), ("2/day", (2, 86400))],
)
def test_rates_are_read_as_drf_writes_them(rate, expected):
    assert parse_rate(rate) == expected

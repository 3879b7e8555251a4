"""Liveness and readiness against the real services, and with each one pointed at a dead port;
readiness reused for a moment; metrics only for private networks."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator

import pytest
from django.db import connections
from django.test import RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext

from places import health
from tests.db import database_url

CLOSED_PORT_HOST = "127.0.0.1"


def _closed_port() -> int:
    """A local port that nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind((CLOSED_PORT_HOST, 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def _fresh_readiness() -> Iterator[None]:
    """Each test sees its own services' answer, not one reused from the test before."""
    health.READINESS.forget()
    yield
    health.READINESS.forget()


def test_live_answers_without_dependencies(client):
    response = client.get("/health/live/")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_ready_is_200_with_every_check_named(client, clear_cache):
    response = client.get("/health/ready/")
    body = response.json()
    assert response.status_code == 200, body
    assert set(body["checks"]) == {"database", "cache", "broker", "migrations"}
    assert all(check["status"] == "ok" for check in body["checks"].values())
    assert response["Cache-Control"] == "no-store"


@pytest.mark.django_db
def test_ready_is_503_naming_the_cache_when_redis_is_unreachable(client, settings):
    caches = {**settings.CACHES}
    caches["default"] = {
        **caches["default"],
        "LOCATION": f"redis://{CLOSED_PORT_HOST}:{_closed_port()}/0",
    }
    with override_settings(CACHES=caches):
        response = client.get("/health/ready/")
    body = response.json()
    assert response.status_code == 503
    assert body["checks"]["cache"]["status"] == "fail"
    assert body["checks"]["database"]["status"] == "ok"


@pytest.mark.slow  # the broker client retries before it gives up
@pytest.mark.django_db
def test_ready_is_503_naming_the_broker_when_it_is_unreachable(client):
    with override_settings(CELERY_BROKER_URL=f"redis://{CLOSED_PORT_HOST}:{_closed_port()}/0"):
        response = client.get("/health/ready/")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["status"] == "fail"


@pytest.fixture
def database_on_closed_port(django_db_blocker) -> Iterator[None]:
    """Point the default connection at a port nothing listens on, then restore it."""
    connection = connections["default"]
    original = connection.settings_dict["PORT"]
    with django_db_blocker.unblock():
        connection.close()
        connection.settings_dict["PORT"] = str(_closed_port())
        try:
            yield
        finally:
            connection.close()
            connection.settings_dict["PORT"] = original


def test_ready_is_503_naming_the_database_when_it_is_unreachable(client, database_on_closed_port):
    response = client.get("/health/ready/")
    body = response.json()
    assert response.status_code == 503
    assert body["checks"]["database"]["status"] == "fail"
    assert "connection" in body["checks"]["database"]["error"].lower()
    assert body["checks"]["cache"]["status"] == "ok"


@pytest.mark.django_db(databases=["default", "replica"])
def test_ready_reports_the_replica_beside_the_checks(client, settings):
    # given a configured replica: the streaming one under make test, else a URL to the
    # primary (the alias then reads the primary's test database, which is no standby)
    streaming = bool(settings.REPLICA_DATABASE_URL)
    if not streaming:
        settings.REPLICA_DATABASE_URL = database_url()
    response = client.get("/health/ready/")
    body = response.json()
    # then it is reported with its state, never as a check that could make the site unready
    assert response.status_code == 200
    assert "replica" not in body["checks"]
    assert body["replica"]["state"] == ("streaming" if streaming else "not_in_recovery")


@pytest.mark.django_db
def test_metrics_expose_database_and_cache_metrics(client):
    client.get("/health/ready/")
    body = client.get("/metrics").content.decode()
    assert "django_db_execute_total" in body
    assert "django_cache_get_total" in body
    assert "django_http_requests_total_by_method_total" in body


@pytest.mark.parametrize("path", ["/health/live/", "/health/ready/", "/metrics"])
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete", "options", "trace"])
def test_probes_and_metrics_answer_get_and_head_only(client, path, method):
    response = getattr(client, method)(path)
    assert response.status_code == 405
    assert set(response["Allow"].split(", ")) == {"GET", "HEAD"}


@pytest.mark.django_db
def test_ready_answers_head(client, clear_cache):
    response = client.head("/health/ready/")
    assert response.status_code == 200
    assert response.content == b""


@pytest.mark.django_db
def test_ready_runs_its_checks_once_per_interval(
    client, clear_cache, monkeypatch, django_assert_num_queries
):
    # given an interval longer than the test (so that no clock decides the outcome)
    monkeypatch.setattr(health.READINESS, "seconds", 3600.0)
    first = client.get("/health/ready/")
    assert first.status_code == 200
    # when a flood of probes follows
    with django_assert_num_queries(0):
        again = [client.get("/health/ready/") for _ in range(20)]
    # then they get the same answer without running a check
    assert {r.content for r in again} == {first.content}
    # and once the result is forgotten (its interval over), the checks run again
    health.READINESS.forget()
    with CaptureQueriesContext(connections["default"]) as checked:
        client.get("/health/ready/")
    assert len(checked) > 0


@pytest.mark.parametrize(
    ("peer", "headers", "allowed"),
    [
        ("127.0.0.1", {}, True),
        ("10.4.5.6", {}, True),
        ("172.20.0.9", {}, True),
        ("192.168.1.2", {}, True),
        ("::1", {}, True),
        ("fd00::5", {}, True),
        ("::ffff:10.0.0.3", {}, True),
        ("203.0.113.5", {}, False),
        ("2001:db8::1", {}, False),
        ("172.32.0.1", {}, False),
        # a public client through an ingress or proxy on a private address
        ("10.0.0.2", {"HTTP_X_FORWARDED_FOR": "203.0.113.5"}, False),
        ("127.0.0.1", {"HTTP_X_FORWARDED_FOR": "10.1.1.1, 203.0.113.5"}, False),
        ("10.0.0.2", {"HTTP_FORWARDED": 'for="[2001:db8::1]:443";proto=https'}, False),
        ("10.0.0.2", {"HTTP_FORWARDED": "for=unknown"}, False),
        ("10.0.0.2", {"HTTP_X_FORWARDED_FOR": "not-an-address"}, False),
        # Prometheus through a proxy that stays inside the cluster
        ("127.0.0.1", {"HTTP_X_FORWARDED_FOR": "10.1.1.1"}, True),
        ("10.0.0.2", {"HTTP_FORWARDED": "for=10.9.8.7:9090, for=192.168.0.1"}, True),
        ("", {}, False),
    ],
)
def test_metrics_client_must_be_private_through_every_hop(peer, headers, allowed):
    request = RequestFactory().get("/metrics", REMOTE_ADDR=peer, **headers)
    assert health.metrics_client_allowed(request) is allowed


@pytest.mark.django_db
def test_metrics_are_a_404_to_a_public_address_and_served_to_a_private_one(client):
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.5").status_code == 404
    via_proxy = client.get("/metrics", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.5")
    assert via_proxy.status_code == 404
    response = client.get("/metrics", REMOTE_ADDR="10.0.0.2")
    assert response.status_code == 200
    assert b"django_http_requests_total_by_method_total" in response.content


def test_metrics_networks_follow_the_setting(client, settings):
    # given a setting that allows only one documentation network
    settings.METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("198.51.100.0/24")]
    # then loopback is refused and that network is served
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", REMOTE_ADDR="198.51.100.20").status_code == 200

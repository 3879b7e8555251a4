"""Liveness and readiness against the real services, and with each one pointed at a dead port."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from django.db import connections
from django.test import override_settings

from tests.db import database_url

CLOSED_PORT_HOST = "127.0.0.1"


def _closed_port() -> int:
    """A local port that nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind((CLOSED_PORT_HOST, 0))
        return sock.getsockname()[1]


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
def test_ready_checks_the_replica_when_one_is_configured(client, settings):
    # given a configured replica (the test's replica alias reads the test database)
    settings.REPLICA_DATABASE_URL = database_url()
    response = client.get("/health/ready/")
    assert response.status_code == 200
    assert response.json()["checks"]["replica"]["status"] == "ok"


@pytest.mark.django_db
def test_metrics_expose_database_and_cache_metrics(client):
    client.get("/health/ready/")
    body = client.get("/metrics").content.decode()
    assert "django_db_execute_total" in body
    assert "django_cache_get_total" in body
    assert "django_http_requests_total_by_method_total" in body

"""The database backend's health check (config/database/base.py): no round trip for a live
connection between requests, and a connection the server closed is replaced before the
request's first query, which then succeeds."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import connections

pytestmark = pytest.mark.django_db


@pytest.fixture
def connection():
    """A connection of its own to the test database, outside the test's transaction, so
    that the server may end it."""
    made = connections.create_connection("default")
    yield made
    made.close()


def _between_requests(connection) -> None:
    # What Django does when a request ends and the next one starts (close_old_connections).
    connection.close_if_unusable_or_obsolete()


def _backend_pid(connection) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _other_connection(connection) -> psycopg.Connection:
    params = connection.get_connection_params()
    keep = ("host", "port", "user", "password", "dbname")
    return psycopg.connect(**{k: v for k, v in params.items() if k in keep}, autocommit=True)


@pytest.fixture
def round_trips(connection, monkeypatch) -> list[int]:
    """Counts Django's health-check round trips (the real ones still run)."""
    calls: list[int] = []
    real = type(connection).is_usable

    def counted(self) -> bool:
        calls.append(1)
        return real(self)

    monkeypatch.setattr(type(connection), "is_usable", counted)
    return calls


def test_the_backend_checks_health_without_a_round_trip_on_a_live_connection(
    connection, round_trips
):
    assert connection.settings_dict["ENGINE"] == "config.database"
    assert connection.settings_dict["CONN_HEALTH_CHECKS"] is True
    assert connection.settings_dict["CONN_MAX_AGE"] > 0  # persistent, as deployed
    pid = _backend_pid(connection)
    for _ in range(3):
        _between_requests(connection)
        assert _backend_pid(connection) == pid
    assert round_trips == []


def test_a_connection_the_server_closed_is_replaced_before_the_first_query(connection, round_trips):
    pid = _backend_pid(connection)
    _between_requests(connection)
    # given: the server ends the session between two requests (a restart, a failover)
    with _other_connection(connection) as other:
        assert other.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]
        deadline = time.monotonic() + 10
        while other.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchone()[0]:
            assert time.monotonic() < deadline, "the backend did not end"
            time.sleep(0.05)
    # then: the next request's first query runs on a new session, not into an error
    assert _backend_pid(connection) != pid
    assert round_trips == [1]


def test_a_connection_left_unused_for_long_gets_the_round_trip(
    connection, round_trips, monkeypatch
):
    # A NAT or load balancer may drop an idle flow without a word: only a round trip tells.
    from config.database import base

    pid = _backend_pid(connection)
    monkeypatch.setattr(base, "IDLE_CHECK_SECONDS", 0.0)
    time.sleep(0.01)
    _between_requests(connection)
    assert _backend_pid(connection) == pid
    assert round_trips == [1]

"""The analytics read source: the streaming replica when it is fit, the fallback policies when
it is down or lagging, waiting for a replay by LSN, no write ever on it, no recovery conflict
cancelling a long aggregate, and its lag in /health/ready/ and /metrics.

Tests marked ``needs_replica`` talk to the real replica (``make test`` sets
REPLICA_DATABASE_URL to the one bin/replica-up keeps); the rest run with or without it. A
replica that is "down" is a copy of the alias's settings pointed at a closed port: the shared
replica is never stopped, other test runs read from it.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.apps import apps
from django.conf import settings
from django.db import DatabaseError, connections, router, transaction
from django.test.utils import CaptureQueriesContext

from analytics.replica import (
    CATCH_UP_PROBE_SECONDS,
    ReplicaUnavailable,
    lsn_to_int,
    primary_lsn,
    read_source,
    replica_catch_up_seconds,
    replica_status,
    replica_wait_for_lsn,
)
from config.routers import REPLICA
from places import health
from places.models import Dataset, Place
from places.services import dataset_get_or_create
from tests.db import database_kwargs

pytestmark = pytest.mark.django_db(databases=["default", "replica"])

needs_replica = pytest.mark.skipif(
    not settings.REPLICA_DATABASE_URL,
    reason="REPLICA_DATABASE_URL is unset: no streaming replica to test (make test sets it "
    "from bin/replica-up; without one, analytics read from the primary)",
)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def replica_down(settings) -> Iterator[None]:
    """The replica alias becomes a copy of its settings pointed at a port nothing listens on."""
    port = _closed_port()
    settings.REPLICA_DATABASE_URL = f"postgis://postgres@127.0.0.1:{port}/closed"
    original = connections[REPLICA]
    broken = original.__class__({**original.settings_dict, "PORT": str(port)}, REPLICA)
    connections[REPLICA] = broken
    try:
        yield
    finally:
        broken.close()
        connections[REPLICA] = original


@pytest.fixture
def primary_side() -> Iterator[psycopg.Connection]:
    """A second session on the primary's test database that commits: the test's own
    transaction is never committed, so the replica could never see its writes."""
    with psycopg.connect(**database_kwargs(), autocommit=True) as conn:
        yield conn


def _in_recovery(alias: str) -> bool:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        return bool(cursor.fetchone()[0])


@needs_replica
def test_reads_through_read_source_run_on_the_replica():
    # when analytics ask where to read
    source = read_source(wait_for_lsn=primary_lsn())
    # then it is the replica, and the server behind that connection is a standby
    assert source.alias == REPLICA
    assert source.on_replica is True
    assert source.reason == "replica"
    assert _in_recovery(source.alias) is True
    assert source.lag_bytes is not None
    assert source.lag_bytes >= 0
    assert source.lag_seconds is not None
    assert source.lag_seconds >= 0
    # and it reads the same (replicated) test database as the primary
    with connections[source.alias].cursor() as cursor:
        cursor.execute("SELECT current_database()")
        assert cursor.fetchone()[0] == connections["default"].settings_dict["NAME"]


def test_without_a_replica_read_source_is_the_read_only_alias(settings):
    # given no replica configured
    settings.REPLICA_DATABASE_URL = ""
    # when analytics ask where to read
    source = read_source()
    # then the replica alias (a read-only session) with nothing to wait for or fall back from
    assert (source.alias, source.on_replica, source.reason) == (
        REPLICA,
        False,
        "no replica configured",
    )
    assert source.lag_seconds is None


def test_a_write_through_the_replica_alias_fails():
    # raw SQL, and an ORM write sent there on purpose, both refused by the server (each in a
    # savepoint: the test's transaction on the alias stays usable for the next)
    with (
        pytest.raises(DatabaseError, match="read-only"),
        transaction.atomic(using=REPLICA),
        connections[REPLICA].cursor() as cursor,
    ):
        cursor.execute("CREATE TABLE never_here (id int)")
    with pytest.raises(DatabaseError, match="read-only"), transaction.atomic(using=REPLICA):
        Dataset.objects.using(REPLICA).create(slug=f"never-{uuid.uuid4().hex[:8]}", name="x")
    with pytest.raises(DatabaseError, match="read-only"), transaction.atomic(using=REPLICA):
        Dataset.objects.using(REPLICA).update(name="x")


def test_the_router_sends_every_orm_write_to_the_primary():
    # every model, for writes and migrations
    for model in apps.get_models():
        assert router.db_for_write(model) == "default", model
        assert router.db_for_read(model) == "default", model
        assert not router.allow_migrate(REPLICA, model._meta.app_label, model_name=model.__name__)
    # and an ordinary write sends nothing to the replica's connection
    with CaptureQueriesContext(connections[REPLICA]) as replica_queries:
        dataset = dataset_get_or_create(slug=f"router-{uuid.uuid4().hex[:8]}")
        Place.objects.filter(dataset=dataset).update(name="x")
        dataset.delete()
    assert len(replica_queries) == 0


def test_a_down_replica_falls_back_to_the_primary(settings, replica_down):
    # given the fallback "primary"
    settings.ANALYTICS_REPLICA_FALLBACK = "primary"
    # when analytics ask where to read
    source = read_source()
    # then the primary, saying why
    assert (source.alias, source.on_replica) == ("default", False)
    assert source.reason.startswith("primary: replica down")
    assert _in_recovery(source.alias) is False
    assert replica_status().state == "down"


def test_a_down_replica_raises_for_a_retry_when_so_configured(settings, replica_down):
    settings.ANALYTICS_REPLICA_FALLBACK = "retry"
    with pytest.raises(ReplicaUnavailable, match="replica down"):
        read_source()


@needs_replica
@pytest.mark.parametrize(
    "bound", ["ANALYTICS_REPLICA_MAX_LAG_BYTES", "ANALYTICS_REPLICA_MAX_LAG_SECONDS"]
)
def test_a_replica_lagging_past_the_bound_is_not_read(settings, bound):
    # given a bound no replica meets (the lag is never negative)
    setattr(settings, bound, -1)
    # when the fallback is the primary, then the primary is read
    settings.ANALYTICS_REPLICA_FALLBACK = "primary"
    source = read_source()
    assert (source.alias, source.on_replica) == ("default", False)
    assert "lags" in source.reason
    # and when it is "retry", the task is told to retry
    settings.ANALYTICS_REPLICA_FALLBACK = "retry"
    with pytest.raises(ReplicaUnavailable, match="lags"):
        read_source()


@needs_replica
def test_wait_for_lsn_sees_a_write_committed_just_before(primary_side):
    table = f"replica_probe_{uuid.uuid4().hex[:8]}"
    try:
        # given a row committed on the primary, and the primary's position after it
        primary_side.execute(f"CREATE TABLE {table} (token text)")
        token = uuid.uuid4().hex
        primary_side.execute(f"INSERT INTO {table} VALUES (%s)", [token])
        lsn = primary_lsn()
        # when analytics ask for a source that has replayed it
        source = read_source(wait_for_lsn=lsn)
        # then the replica, which has the row
        assert source.on_replica is True
        with connections[source.alias].cursor() as cursor:
            cursor.execute(f"SELECT token FROM {table}")
            assert cursor.fetchall() == [(token,)]
    finally:
        primary_side.execute(f"DROP TABLE IF EXISTS {table}")


@needs_replica
def test_an_lsn_the_replica_has_not_replayed_is_waited_for_then_the_policy_applies(settings):
    # given a position far ahead of anything written (1 GiB past the primary's)
    ahead = lsn_to_int(primary_lsn()) + 2**30
    future = f"{ahead >> 32:X}/{ahead & 0xFFFFFFFF:X}"
    settings.ANALYTICS_REPLICA_WAIT_SECONDS = 0.3
    # when waited for, the wait ends at the timeout, not before
    started = time.monotonic()
    assert replica_wait_for_lsn(lsn=future, timeout=0.3) is False
    assert time.monotonic() - started >= 0.3
    # and read_source applies the policy instead of reading stale data
    settings.ANALYTICS_REPLICA_FALLBACK = "retry"
    with pytest.raises(ReplicaUnavailable, match="had not replayed"):
        read_source(wait_for_lsn=future)
    settings.ANALYTICS_REPLICA_FALLBACK = "primary"
    assert read_source(wait_for_lsn=future).alias == "default"


@needs_replica
def test_a_lag_estimate_is_checked_by_watching_the_replica_catch_up():
    # a position already written is reached within the probe, and that time is the lag
    caught_up = replica_catch_up_seconds(lsn=primary_lsn())
    assert caught_up is not None
    assert 0 <= caught_up < CATCH_UP_PROBE_SECONDS
    # one far ahead is not, and the probe gives up after its second
    ahead = lsn_to_int(primary_lsn()) + 2**30
    started = time.monotonic()
    assert replica_catch_up_seconds(lsn=f"{ahead >> 32:X}/{ahead & 0xFFFFFFFF:X}") is None
    assert time.monotonic() - started >= CATCH_UP_PROBE_SECONDS


ROWS = 20_000


@needs_replica
@pytest.mark.slow  # about 6 s: a 5 s aggregate on the replica under a write load
def test_a_long_aggregate_on_the_replica_survives_updates_and_vacuum_on_the_primary(
    primary_side,
):
    table = f"replica_conflict_{uuid.uuid4().hex[:8]}"
    replica_kwargs = {**database_kwargs(alias=REPLICA)}
    try:
        # given a table on the primary, replayed on the replica
        primary_side.execute(
            f"CREATE TABLE {table} WITH (autovacuum_enabled = off) AS "
            f"SELECT i AS id, 1 AS v FROM generate_series(1, {ROWS}) i"
        )
        assert read_source(wait_for_lsn=primary_lsn()).on_replica
        with psycopg.connect(**replica_kwargs, autocommit=True) as standby:
            conflicts_before = _standby_conflicts(standby)
        outcome: dict[str, object] = {}

        def long_aggregate() -> None:
            # about 5 s of reading the table row by row in one snapshot
            try:
                with psycopg.connect(**replica_kwargs, autocommit=True) as standby:
                    outcome["sum"] = standby.execute(
                        f"SELECT sum(v) FROM (SELECT v, CASE WHEN id % 100 = 0 THEN "
                        f"pg_sleep(0.025) END FROM {table}) s"
                    ).fetchone()[0]
            except psycopg.Error as error:
                outcome["error"] = error

        reader = threading.Thread(target=long_aggregate)
        reader.start()
        time.sleep(0.5)  # the aggregate has its snapshot
        # when the primary rewrites every row and vacuums, again and again, meanwhile
        not_removable = []
        notices: list[str] = []
        primary_side.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        rounds = 0
        while reader.is_alive() and rounds < 100:
            primary_side.execute(f"UPDATE {table} SET v = v + 1")
            notices.clear()
            primary_side.execute(f"VACUUM (VERBOSE) {table}")
            not_removable += [
                int(n) for m in notices for n in re.findall(r"(\d+) are dead but not yet", m)
            ]
            rounds += 1
            time.sleep(0.2)
        reader.join(timeout=60)
        # then the aggregate finished with the figures of its snapshot, not cancelled
        assert "error" not in outcome, outcome.get("error")
        assert outcome["sum"] == ROWS
        assert rounds >= 2, rounds
        # because the replica's feedback kept the rows its snapshot sees from being vacuumed
        assert max(not_removable, default=0) >= ROWS, not_removable
        with psycopg.connect(**replica_kwargs, autocommit=True) as standby:
            assert _standby_conflicts(standby) == conflicts_before
    finally:
        primary_side.execute(f"DROP TABLE IF EXISTS {table}")


def _standby_conflicts(standby: psycopg.Connection) -> tuple[int, ...]:
    row = standby.execute(
        "SELECT confl_tablespace, confl_lock, confl_snapshot, confl_bufferpin, confl_deadlock "
        "FROM pg_stat_database_conflicts WHERE datname = current_database()"
    ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.fixture
def fresh_readiness() -> Iterator[None]:
    health.READINESS.forget()
    yield
    health.READINESS.forget()


@needs_replica
def test_ready_reports_the_replica_streaming_with_its_lag(client, clear_cache, fresh_readiness):
    response = client.get("/health/ready/")
    assert response.status_code == 200
    replica = response.json()["replica"]
    assert replica["state"] == "streaming"
    assert isinstance(replica["lag_bytes"], int)
    assert replica["lag_bytes"] >= 0
    assert isinstance(replica["lag_seconds"], float | int)
    assert replica["lag_seconds"] >= 0


def test_ready_stays_ready_with_the_replica_down(
    client, clear_cache, fresh_readiness, replica_down
):
    response = client.get("/health/ready/")
    body = response.json()
    assert response.status_code == 200, body
    assert body["replica"]["state"] == "down"
    assert "replica" not in body["checks"]


def test_ready_says_absent_without_a_replica(client, clear_cache, fresh_readiness, settings):
    settings.REPLICA_DATABASE_URL = ""
    body = client.get("/health/ready/").json()
    assert body["replica"]["state"] == "absent"


@needs_replica
def test_metrics_export_the_replica_lag(client):
    body = client.get("/metrics").content.decode()
    assert re.search(r"^analytics_replica_up 1\.0$", body, re.M)
    assert re.search(r"^analytics_replica_lag_bytes \d+(\.\d+)?$", body, re.M)
    assert re.search(r"^analytics_replica_lag_seconds \d+(\.\d+)?(e-?\d+)?$", body, re.M)


def test_metrics_say_the_replica_is_down(client, replica_down):
    body = client.get("/metrics").content.decode()
    assert re.search(r"^analytics_replica_up 0\.0$", body, re.M)
    assert "analytics_replica_lag_bytes " not in body


REPLICA_UP = Path(settings.BASE_DIR) / "bin" / "replica-up"


def _replica_up(*args: str, database_url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPLICA_UP), *args],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@needs_replica
def test_replica_up_leaves_a_streaming_replica_alone_and_names_its_url():
    replica = settings.DATABASES[REPLICA]
    if (replica.get("HOST"), str(replica.get("PORT"))) != ("127.0.0.1", "5433"):
        pytest.skip("REPLICA_DATABASE_URL is not the local replica bin/replica-up keeps")
    # when it runs again, it does nothing (and says nothing)
    started = time.monotonic()
    again = _replica_up(database_url="postgis://postgres@127.0.0.1:5432/places")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert time.monotonic() - started < 10
    # and its URL is the replica's address with DATABASE_URL's user and database
    named = _replica_up("--url", database_url="postgis://someone@127.0.0.1:5432/some_db")
    assert named.stdout.strip() == "postgis://someone@127.0.0.1:5433/some_db"
    # but none for a primary elsewhere, which that replica does not copy
    remote = _replica_up("--url", database_url="postgis://u:p@db.example.org:5432/places")
    assert (remote.returncode, remote.stdout) == (0, "")

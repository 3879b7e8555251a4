"""Data versions remembered between the commits that move them (places.version_watch).

These tests commit for real: the versions move only at commit and PostgreSQL tells the
listener only then. Each works on a dataset of its own, at a spot no other test looks at.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from django.contrib.gis.geos import Point
from django.db import connection, connections, transaction

from config.database import base as database
from places import version_watch
from places.geo import BBox
from places.models import Dataset, Place
from places.selectors import data_version
from places.services import dataset_get_or_create, place_create, place_update
from places.serving.local_cache import LOCAL_BODIES

SPOT = (-140.5, -40.5)  # the South Pacific: no fixture's place is near it
BOX = BBox(SPOT[0] - 0.1, SPOT[1] - 0.1, SPOT[0] + 0.1, SPOT[1] + 0.1)


def _until(predicate: Callable[[], bool], seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def _sql_version(dataset: Dataset) -> str:
    """The version as PostgreSQL gives it now, read inside a transaction (never remembered)."""
    with transaction.atomic():
        return data_version(dataset_ids=[dataset.pk], bbox=BOX)


@pytest.fixture
def spot(django_db_setup, django_db_blocker) -> Iterator[tuple[Dataset, Place]]:
    with django_db_blocker.unblock():
        dataset = dataset_get_or_create(slug=f"watch-{uuid.uuid4().hex[:8]}")
        place = place_create(
            dataset=dataset, source_key="a", data={"name": "A", "location": Point(*SPOT)}
        )
        # the session's listener (tests/conftest.py, as gunicorn's workers start theirs)
        assert _until(version_watch.WATCH.trusted), "the listener does not hear"
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = %s AND datname = current_database()",
                [version_watch.APPLICATION_NAME],
            )
            assert cursor.fetchone() == (1,), "the listener listens on another database"
        yield dataset, place
        connection.close()


def _edit_from_elsewhere(place: Place, name: str) -> None:
    """An edit committed on a connection of its own without this process's commit hook: as
    another web process or worker would commit it, known here only through PostgreSQL."""
    hooks = list(database.AFTER_COMMIT)
    database.AFTER_COMMIT.clear()
    try:
        thread = threading.Thread(target=_edit, args=(place.pk, name))
        thread.start()
        thread.join()
    finally:
        database.AFTER_COMMIT.extend(hooks)


def _edit(place_id: int, name: str) -> None:
    from django.db import connection as own

    try:
        place_update(place=Place.objects.get(pk=place_id), data={"name": name})
    finally:
        own.close()


def test_a_remembered_version_costs_no_query_and_a_commit_elsewhere_moves_it(
    spot, django_assert_num_queries
):
    dataset, place = spot
    before = data_version(dataset_ids=[dataset.pk], bbox=BOX)
    # read again with no commit in between: remembered, no round trip
    with django_assert_num_queries(0):
        assert data_version(dataset_ids=[dataset.pk], bbox=BOX) == before
    generation = version_watch.WATCH.generation
    # when another connection commits an edit of a place in the box
    _edit_from_elsewhere(place, "A, renamed elsewhere")
    # then PostgreSQL's notification moves the generation, and the version read is the new one
    assert _until(lambda: version_watch.WATCH.generation > generation)
    after = data_version(dataset_ids=[dataset.pk], bbox=BOX)
    assert after != before
    assert after == _sql_version(dataset)


def test_a_process_forgets_at_its_own_commit_without_waiting_for_postgresql(spot):
    dataset, place = spot
    before = data_version(dataset_ids=[dataset.pk], bbox=BOX)
    calls: list[int] = []

    def generation_at_commit() -> None:
        # runs inside commit(), right after the watch's own hook: no notification can have
        # been counted yet unless the hook moved the generation itself
        calls.append(version_watch.WATCH.generation)

    generation = version_watch.WATCH.generation
    database.AFTER_COMMIT.append(generation_at_commit)
    try:
        place_update(place=place, data={"name": "A, renamed here"})
    finally:
        database.AFTER_COMMIT.remove(generation_at_commit)
    assert version_watch.WATCH.forget in database.AFTER_COMMIT
    assert len(calls) == 1
    assert calls[0] > generation
    after = data_version(dataset_ids=[dataset.pk], bbox=BOX)
    assert after != before
    assert after == _sql_version(dataset)


def test_a_dataset_wide_version_follows_commits_elsewhere(spot, django_assert_num_queries):
    # no box: the version is read from places_dataversion alone, moved by
    # places_dataversion_commit, which notifies
    dataset, place = spot
    before = data_version(dataset_ids=[dataset.pk])
    with django_assert_num_queries(0):
        assert data_version(dataset_ids=[dataset.pk]) == before
    _edit_from_elsewhere(place, "A, renamed for the whole dataset")
    assert _until(lambda: data_version(dataset_ids=[dataset.pk]) != before)


def test_a_clear_from_anywhere_empties_the_copy_of_bodies(spot):
    LOCAL_BODIES.put("bytes:probe", b"body", {}, ttl=60)
    assert LOCAL_BODIES.get("bytes:probe") is not None
    generation = version_watch.WATCH.generation
    # when another connection asks every web process to drop its copies
    with psycopg.connect(**_params(), autocommit=True) as other:
        other.execute("SELECT pg_notify(%s, %s)", [version_watch.CHANNEL, version_watch.CLEAR])
    assert _until(lambda: version_watch.WATCH.generation > generation)
    assert LOCAL_BODIES.get("bytes:probe") is None


def test_inside_a_transaction_every_read_is_postgresqls_and_sees_its_own_writes(
    spot, django_assert_num_queries
):
    dataset, place = spot
    before = data_version(dataset_ids=[dataset.pk], bbox=BOX)
    with transaction.atomic():
        with django_assert_num_queries(1):
            assert data_version(dataset_ids=[dataset.pk], bbox=BOX) == before
        place_update(place=place, data={"name": "A, not yet committed"})
        assert data_version(dataset_ids=[dataset.pk], bbox=BOX) != before
        transaction.set_rollback(True)


def test_switched_off_every_read_is_postgresqls(spot, settings, django_assert_num_queries):
    dataset, _ = spot
    settings.DATA_VERSION_LISTEN_URL = "off"
    for _ in range(2):
        with django_assert_num_queries(1):
            data_version(dataset_ids=[dataset.pk], bbox=BOX)


def test_a_lost_listener_is_not_trusted_and_comes_back(spot, monkeypatch):
    dataset, place = spot
    monkeypatch.setattr(version_watch.WATCH, "retry_seconds", 0.2)
    generation = version_watch.WATCH.generation
    # when the listening session is terminated (a restart, a failover, a killed backend)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            [version_watch.APPLICATION_NAME],
        )
        assert cursor.fetchone() == (True,)
    # then it stops being trusted, reconnects, and the generation has moved (a commit may
    # have gone untold while it was away)
    assert _until(lambda: not version_watch.WATCH.trusted())
    assert _until(version_watch.WATCH.trusted)
    assert version_watch.WATCH.generation > generation
    # and versions still follow commits made elsewhere
    before = data_version(dataset_ids=[dataset.pk], bbox=BOX)
    _edit_from_elsewhere(place, "A, after the reconnection")
    assert _until(lambda: data_version(dataset_ids=[dataset.pk], bbox=BOX) != before)


def _params() -> dict:
    params = connections["default"].get_connection_params()
    return {k: v for k, v in params.items() if k in {"dbname", "user", "password", "host", "port"}}


class _DeafConnection(psycopg.Connection):
    """As behind a transaction pool: the session the statements run on does not listen."""

    def execute(self, query, params=None, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(query, str) and query.startswith("LISTEN"):
            # the same session answers, but its LISTENs went with an earlier transaction
            query = ";".join(part for part in query.split(";") if "LISTEN" not in part)
        return super().execute(query, params, **kwargs)


def test_a_listener_that_does_not_hear_is_never_trusted(django_db_setup):
    deaf = version_watch.VersionWatch(
        connect=lambda: version_watch._listen_connection(_DeafConnection),
        check_seconds=0.2,
        retry_seconds=0.1,
    )
    hearing = version_watch.VersionWatch(
        connect=version_watch._listen_connection, check_seconds=0.2, retry_seconds=0.1
    )
    deaf.start()
    hearing.start()
    try:
        # the one that hears proves it within a moment; the deaf one answers every check
        # (SELECT works) but its own notification never comes back
        assert _until(hearing.trusted, seconds=5)
        assert not _until(deaf.trusted, seconds=2)
    finally:
        deaf.stop()
        hearing.stop()


def _watch_on(sock: socket.socket) -> version_watch.VersionWatch:
    watch = version_watch.VersionWatch(connect=lambda: pytest.fail("not to connect"))
    watch._pid = os.getpid()
    watch._fd = sock.fileno()
    watch._alive_at = time.monotonic()
    return watch


def test_a_notification_not_yet_read_is_not_trusted():
    # given a watch whose listening socket is one end of a socket pair
    ours, server = socket.socketpair()
    with ours, server:
        watch = _watch_on(ours)
        assert watch.trusted()
        # when bytes arrive that the listener thread has not read yet (it may be waiting
        # for the GIL)
        server.sendall(b"A")
        # then a request does not trust what is remembered
        assert not watch.trusted()
        ours.recv(1)
        assert watch.trusted()
        # nor while the listener is reading, nor when its last proof of life is too old
        watch._busy = True
        assert not watch.trusted()
        watch._busy = False
        watch._alive_at = time.monotonic() - watch.trust_seconds - 1
        assert not watch.trusted()


def test_a_version_read_while_a_commit_was_told_is_not_remembered():
    # given a watch trusted on a quiet socket
    ours, server = socket.socketpair()
    with ours, server:
        watch = _watch_on(ours)
        reads: list[str] = []

        def read_across_a_commit() -> str:
            # the notification of a commit is counted while this read runs
            reads.append("old")
            watch.forget()
            return "old"

        assert watch.version("key", read_across_a_commit) == "old"
        # the next request reads again rather than take "old" as current
        assert watch.version("key", lambda: "new") == "new"
        assert watch.version("key", lambda: pytest.fail("remembered")) == "new"
        assert reads == ["old"]

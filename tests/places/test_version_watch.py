"""Data versions remembered between the commits that move them (places.version_watch).

These tests commit for real: the versions move only at commit and PostgreSQL tells the
listener only then. Each works on a dataset of its own, at a spot no other test looks at.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from django.contrib.gis.geos import Point
from django.db import connection, transaction

from config.database import base as database
from places import version_watch
from places.geo import BBox
from places.models import Dataset, Place
from places.selectors import data_version
from places.services import dataset_get_or_create, place_create, place_update

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
        assert _until(version_watch.WATCH.trusted), "the listener never started"
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


def test_a_process_sees_its_own_commit_at_once(spot, django_assert_num_queries):
    dataset, place = spot
    before = data_version(dataset_ids=[dataset.pk], bbox=BOX)
    # when this process commits an edit itself
    place_update(place=place, data={"name": "A, renamed here"})
    # then the very next read is PostgreSQL's, without waiting for the notification
    with django_assert_num_queries(1):
        after = data_version(dataset_ids=[dataset.pk], bbox=BOX)
    assert after != before
    assert after == _sql_version(dataset)


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
    monkeypatch.setattr(version_watch, "RETRY_SECONDS", 0.2)
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


def _watch_on(sock: socket.socket) -> version_watch.VersionWatch:
    watch = version_watch.VersionWatch(connect=lambda: pytest.fail("not to connect"))
    watch._pid = __import__("os").getpid()
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
        watch._alive_at = time.monotonic() - version_watch.TRUST_SECONDS - 1
        assert not watch.trusted()


def test_a_version_read_while_a_commit_was_told_is_not_remembered():
    ours, server = socket.socketpair()
    with ours, server:
        watch = _watch_on(ours)
        reads: list[str] = []

        def read_across_a_commit() -> str:
            # the notification of a commit is counted while this read runs
            reads.append("old")
            watch._moved(alive=True)
            return "old"

        assert watch.version("key", read_across_a_commit) == "old"
        # the next request reads again rather than take "old" as current
        assert watch.version("key", lambda: "new") == "new"
        assert watch.version("key", lambda: pytest.fail("remembered")) == "new"
        assert reads == ["old"]

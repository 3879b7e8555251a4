"""The change feed never skips a change that commits late, and never repeats one.

These tests commit for real (no wrapping transaction): the feed is about what other
transactions can see. They use their own dataset and leave their rows behind, as the change
log refuses deletes.
"""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
from django.contrib.gis.geos import Point
from django.db import connection

from places.selectors import place_change_feed
from places.services import dataset_get_or_create, place_create, place_update
from tests.db import database_kwargs

FOREIGN_WAIT_SECONDS = 120
# Slow where other test runs or benchmarks share the server: each test waits for them.
pytestmark = pytest.mark.slow


def _wait_for_other_databases() -> None:
    """Transaction ids are shared by the whole server: a transaction left open in another
    database (a benchmark, another test run) holds the feed back for everyone. Wait for
    such transactions to end, as a feed reader would; skip, naming them, if they do not."""
    deadline = time.monotonic() + FOREIGN_WAIT_SECONDS
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT datname, pid FROM pg_stat_activity "
                "WHERE backend_xid IS NOT NULL AND datname <> current_database()"
            )
            open_elsewhere = cursor.fetchall()
        if not open_elsewhere:
            return
        if time.monotonic() > deadline:
            pytest.skip(f"transactions open in other databases of the server: {open_elsewhere}")
        time.sleep(0.5)


@pytest.fixture
def committed(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        _wait_for_other_databases()
        yield
        connection.close()


def _other_connection() -> psycopg.Connection:
    return psycopg.connect(**database_kwargs())


def test_feed_pages_in_order_and_resumes_from_its_cursor(committed):
    dataset = dataset_get_or_create(slug=f"feed-{uuid.uuid4().hex[:6]}")
    place = place_create(dataset=dataset, source_key="f1", data={"location": Point(0, 0)})
    for i in range(4):
        place_update(place=place, data={"name": f"name {i}"})
    # when the feed is read two changes at a time
    seen, cursor = [], None
    while True:
        page, cursor = place_change_feed(after=cursor, limit=2, dataset_id=dataset.pk)
        if not page:
            break
        seen += [c.place_version for c in page]
    # then every change comes once, in order
    assert seen == [1, 2, 3, 4, 5]


def test_feed_holds_back_changes_until_older_transactions_finish(committed):
    dataset = dataset_get_or_create(slug=f"feed-{uuid.uuid4().hex[:6]}")
    place = place_create(dataset=dataset, source_key="f1", data={"location": Point(0, 0)})
    page, cursor = place_change_feed(dataset_id=dataset.pk)
    assert [c.place_version for c in page] == [1]
    # given another transaction that started writing first and is still open
    slow = _other_connection()
    slow.execute("SELECT txid_current()")
    try:
        # when a later transaction commits a change
        place_update(place=place, data={"name": "committed while another is open"})
        # then the feed holds it back: the open transaction could still commit a change
        # that sorts before it
        held, same_cursor = place_change_feed(after=cursor, dataset_id=dataset.pk)
        assert held == []
        assert same_cursor == cursor
    finally:
        slow.rollback()
        slow.close()
    # and hands it out once the older transaction has finished
    page, _ = place_change_feed(after=cursor, dataset_id=dataset.pk)
    assert [c.place_version for c in page] == [2]

"""The edge change feed: a snapshot of the node's region, then its changes by cursor, with
tombstones, 304s, and no change missed when writers commit out of order.

These tests commit for real (no wrapping transaction): the feed hands out only changes older
than every open transaction, which a test transaction would hold back. Each test makes its
own regions, dataset and places and leaves them behind (the change log refuses deletes).
Transaction ids are shared by the whole PostgreSQL server, so before reading the feed a test
waits until every transaction older than its writes has ended, wherever it runs.
"""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.contrib.gis.geos import Point
from django.core.cache import cache
from django.db import connection
from django.test import Client

from ingestion.edge.models import EdgeNode, KeyScope
from ingestion.edge.selectors import ChangeCursor, CursorInvalid, edge_changes_list
from ingestion.edge.services.keys import edge_key_create
from places.models import ChangeOperation, Place, PlaceStatus, Region
from places.services import dataset_get_or_create, place_create, place_retire, place_update
from places.throttling import KEY_PREFIX
from tests.db import database_kwargs
from tests.ingestion.edge.factories import node_make, region_make

CHANGES = "/api/v1/edge/changes/"
HORIZON_WAIT_SECONDS = 120
# Slow where other test runs share the server: a test waits for their older transactions.
pytestmark = pytest.mark.slow

_numbers = itertools.count(1)


@pytest.fixture
def committed(django_db_setup, django_db_blocker, settings) -> Iterator[None]:
    settings.EDGE_RATE = None
    with django_db_blocker.unblock():
        yield
        connection.close()


def _feed_caught_up() -> None:
    """Wait until the feed can hand out everything committed so far: every transaction
    that started before now has ended (``pg_snapshot_xmin`` passed our last id)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT txid_current()")
        mine = cursor.fetchone()[0]
    deadline = time.monotonic() + HORIZON_WAIT_SECONDS
    while True:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            if cursor.fetchone()[0] > mine:
                return
        if time.monotonic() > deadline:
            pytest.skip("a transaction elsewhere on the server held the change feed back")
        time.sleep(0.2)


class World:
    """A region with its node, a neighbouring region, and a dataset of places."""

    def __init__(self) -> None:
        self.region = region_make()
        self.elsewhere = region_make()
        self.node = node_make(region=self.region)
        self.dataset = dataset_get_or_create(slug=f"edge-feed-{uuid.uuid4().hex[:8]}")

    def place(self, *, region: Region | None = None, name: str = "") -> Place:
        return place_create(
            dataset=self.dataset,
            source_key=f"k{next(_numbers)}",
            data={
                "name": name or f"place {next(_numbers)}",
                "location": Point(-2.5, 57.5),
                "region": region or self.region,
            },
        )


def _pull(
    node: EdgeNode, cursor: str | None, copy: dict[int, Any], *, limit: int = 1000
) -> tuple[str, list[dict]]:
    """Follow the feed from ``cursor`` until has_more is false, applying it to ``copy`` as a
    device would; return the cursor to keep and every entry seen."""
    seen: list[dict] = []
    while True:
        page = edge_changes_list(node=node, cursor=cursor, limit=limit)
        for entry in page.changes:
            seen.append(entry)
            if entry["op"] == "upsert":
                copy[entry["id"]] = entry["place"]
            else:
                copy.pop(entry["id"], None)
        cursor = page.cursor
        if not page.has_more:
            return cursor, seen


def _names(copy: dict[int, Any]) -> dict[int, str]:
    return {pid: place["name"] for pid, place in copy.items()}


def test_snapshot_pages_then_the_feed_bring_the_region_and_its_changes(committed):
    # given a region with five active places, a retired one, and one place elsewhere
    world = World()
    active = [world.place(name=f"p{i}") for i in range(5)]
    place_retire(place=world.place(name="retired"))
    world.place(region=world.elsewhere, name="elsewhere")

    # when a device takes the snapshot two places a page
    pages = []
    cursor = None
    while True:
        page = edge_changes_list(node=world.node, cursor=cursor, limit=2)
        pages.append(page)
        cursor = page.cursor
        if not page.snapshot:
            break
    # then it gets the active places of the region, in id order, in pages marked snapshot
    snapshot = [e for p in pages if p.snapshot for e in p.changes]
    assert [e["id"] for e in snapshot] == [p.pk for p in active]
    assert [len(p.changes) for p in pages if p.snapshot] == [2, 2, 1]
    assert all(p.has_more for p in pages if p.snapshot)
    assert snapshot[0]["place"] == {
        "id": active[0].pk,
        "name": "p0",
        "religion": "unknown",
        "denominations": [],
        "dataset": world.dataset.slug,
        "source_key": active[0].source_key,
        "lon": -2.5,
        "lat": 57.5,
        "status": "active",
    }
    assert snapshot[0]["version"] == 1


def test_tombstones_for_retired_merged_and_moved_out_places(committed):
    # given a device holding the snapshot of a region of four places
    world = World()
    kept, retired, merged, moved = (world.place(name=n) for n in ("kept", "ret", "mer", "mov"))
    copy: dict[int, Any] = {}
    _feed_caught_up()
    cursor, _ = _pull(world.node, None, copy)
    assert set(copy) == {kept.pk, retired.pk, merged.pk, moved.pk}

    # when one is renamed, one retired, one merged into the first, one moved to another region
    place_update(place=kept, data={"name": "kept, renamed"})
    place_retire(place=retired)
    place_update(
        place=merged,
        data={"status": PlaceStatus.MERGED, "merged_into": kept},
        operation=ChangeOperation.MERGE,
    )
    place_update(place=moved, data={"region": world.elsewhere})
    _feed_caught_up()
    cursor, seen = _pull(world.node, cursor, copy)

    # then the device's copy is the region as it is now
    assert _names(copy) == {kept.pk: "kept, renamed"}
    deletes = {e["id"]: (e["reason"], e["superseded_by"]) for e in seen if e["op"] == "delete"}
    assert deletes == {
        retired.pk: ("retired", None),
        merged.pk: ("merged", kept.pk),
        moved.pk: ("moved_out", None),
    }
    # and one entry per place, the newest state
    assert len([e for e in seen if e["id"] == kept.pk]) == 1

    # and a place moved into the region appears, changes elsewhere do not
    newcomer = world.place(region=world.elsewhere, name="newcomer")
    outsider = world.place(region=world.elsewhere, name="outsider")
    place_update(place=newcomer, data={"region": world.region})
    place_update(place=outsider, data={"name": "still outside"})
    _feed_caught_up()
    _, seen = _pull(world.node, cursor, copy)
    assert [e["id"] for e in seen] == [newcomer.pk]
    assert _names(copy) == {kept.pk: "kept, renamed", newcomer.pk: "newcomer"}


def test_a_snapshot_taken_while_places_change_ends_consistent(committed):
    # given a region of six places and a device half way through its snapshot
    world = World()
    places = [world.place(name=f"s{i}") for i in range(6)]
    copy: dict[int, Any] = {}
    page = edge_changes_list(node=world.node, limit=3)
    for entry in page.changes:
        copy[entry["id"]] = entry["place"]
    # when places it already has and places it has yet to get change meanwhile
    place_update(place=places[0], data={"name": "s0 renamed"})
    place_retire(place=places[1])
    place_update(place=places[4], data={"region": world.elsewhere})
    added = world.place(name="added")
    _feed_caught_up()
    _pull(world.node, page.cursor, copy)
    # then, once the feed after the snapshot is applied, the copy is the region now
    expected = {p.pk: p.name for p in Place.objects.filter(region=world.region, status="active")}
    assert _names(copy) == expected
    assert places[0].pk in expected
    assert added.pk in expected


def test_a_writer_that_commits_late_is_not_skipped(committed):
    # given a device up to date with a region of two places
    world = World()
    early, late = world.place(name="early"), world.place(name="late")
    copy: dict[int, Any] = {}
    _feed_caught_up()
    cursor, _ = _pull(world.node, None, copy)
    # when a second connection takes the earlier change-log sequence number and stays open
    slow = psycopg.connect(**database_kwargs())
    try:
        slow.execute(
            "UPDATE places_place SET name = 'early, renamed late', version = version + 1 "
            "WHERE id = %s",
            [early.pk],
        )
        slow.execute(
            "INSERT INTO places_placechange (place_id, dataset_id, operation, changes, "
            "place_version, source, device_id, comment) "
            "VALUES (%s, %s, 'update', %s, 2, 'system', '', '')",
            [early.pk, world.dataset.pk, '{"name": {"old": "early", "new": "x"}}'],
        )
        # and this connection changes the other place and commits first
        place_update(place=late, data={"name": "late, renamed first"})
        # then a pull while the first is open hands out neither (the feed waits for it)
        held_cursor, seen = _pull(world.node, cursor, copy)
        assert seen == []
        assert held_cursor == cursor
        # when the earlier writer commits
        slow.commit()
    finally:
        slow.close()
    _feed_caught_up()
    # then the next pull from the kept cursor brings both changes
    _, seen = _pull(world.node, held_cursor, copy)
    assert {e["id"] for e in seen} == {early.pk, late.pk}
    assert _names(copy) == {early.pk: "early, renamed late", late.pk: "late, renamed first"}


def test_a_country_nodes_region_is_the_places_country(committed):
    world = World()
    country = region_make()
    Region.objects.filter(pk=country.pk).update(level="country")
    country.refresh_from_db()
    node = node_make(region=country)
    inside = place_create(
        dataset=world.dataset,
        source_key="in-country",
        data={"location": Point(-2.5, 57.5), "region": world.region, "country": country},
    )
    page = edge_changes_list(node=node)
    assert [e["id"] for e in page.changes] == [inside.pk]


def test_a_first_level_nodes_region_holds_its_districts_places(committed):
    # given an admin1 region with two districts, a place in each, one located in the admin1
    # itself (in no district), and a district elsewhere
    world = World()
    admin1 = region_make()
    Region.objects.filter(pk=admin1.pk).update(level="admin1")
    admin1.refresh_from_db()
    north, south = region_make(), region_make()
    Region.objects.filter(pk__in=[north.pk, south.pk]).update(parent=admin1)
    node = node_make(region=admin1)
    in_north = world.place(region=north, name="north")
    in_south = world.place(region=south, name="south")
    in_admin1 = world.place(region=admin1, name="admin1")
    world.place(region=world.elsewhere, name="elsewhere")
    newcomer = world.place(region=world.elsewhere, name="newcomer")

    # when its node takes the snapshot
    copy: dict[int, Any] = {}
    _feed_caught_up()
    cursor, _ = _pull(node, None, copy)
    # then it holds the places of both districts and of the admin1 itself
    assert _names(copy) == {in_north.pk: "north", in_south.pk: "south", in_admin1.pk: "admin1"}

    # when a place moves between its districts, one moves out and another moves in
    place_update(place=in_north, data={"region": south})
    place_update(place=in_south, data={"region": world.elsewhere})
    place_update(place=newcomer, data={"region": north})
    _feed_caught_up()
    _, seen = _pull(node, cursor, copy)

    # then the move inside is an upsert, the move out a tombstone, the move in an upsert
    ops = {e["id"]: (e["op"], e.get("reason")) for e in seen}
    assert ops == {
        in_north.pk: ("upsert", None),
        in_south.pk: ("delete", "moved_out"),
        newcomer.pk: ("upsert", None),
    }
    assert _names(copy) == {in_north.pk: "north", in_admin1.pk: "admin1", newcomer.pk: "newcomer"}


def test_a_malformed_cursor_or_one_of_another_region_is_refused(committed):
    world = World()
    other = node_make(region=world.elsewhere)
    theirs = edge_changes_list(node=other).cursor
    forged = [
        base64.urlsafe_b64encode(text.encode()).decode()
        for text in (f"2:{world.region.pk}:1.1:", f"1:{world.region.pk}:-1.1:", "1:x:1.1:")
    ]
    for cursor in ("nonsense", "MTo", "é", "x" * 500, theirs, *forged):
        with pytest.raises(CursorInvalid):
            edge_changes_list(node=world.node, cursor=cursor)
    # and a cursor this server gave out round-trips
    mine = edge_changes_list(node=world.node).cursor
    assert ChangeCursor.decode(mine).region_id == world.region.pk


# --- over HTTP ------------------------------------------------------------------------------


def test_changes_over_http_answer_304_until_something_changes(committed):
    # given a device that pulled its region to the end
    world = World()
    place = world.place(name="one")
    key = edge_key_create(node=world.node, scopes=[KeyScope.PULL_PLACES]).secret
    cache.delete_pattern(f"{KEY_PREFIX}:*")  # type: ignore[attr-defined]  # django-redis
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    _feed_caught_up()
    cursor = None
    while True:
        response = client.get(CHANGES, {"cursor": cursor} if cursor else {})
        assert response.status_code == 200, response.content
        body, etag = response.json(), response["ETag"]
        cursor = body["cursor"]
        if not body["has_more"]:
            break
    # when it asks again with the ETag of that last answer
    again = client.get(CHANGES, {"cursor": cursor}, HTTP_IF_NONE_MATCH=etag)
    # then nothing changed: 304
    assert again.status_code == 304
    assert again["ETag"] == etag
    # when the place changes
    place_update(place=place, data={"name": "one, renamed"})
    _feed_caught_up()
    changed = client.get(CHANGES, {"cursor": cursor}, HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200
    assert [e["place"]["name"] for e in changed.json()["changes"]] == ["one, renamed"]
    assert changed["ETag"] != etag


def test_changes_elsewhere_move_the_cursor_on_instead_of_a_304(committed):
    # given a device that pulled its region to the end, with that answer's ETag
    world = World()
    world.place(name="one")
    key = edge_key_create(node=world.node, scopes=[KeyScope.PULL_PLACES]).secret
    cache.delete_pattern(f"{KEY_PREFIX}:*")  # type: ignore[attr-defined]  # django-redis
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    _feed_caught_up()
    cursor, etag = None, ""
    while True:
        response = client.get(CHANGES, {"cursor": cursor} if cursor else {})
        body, etag = response.json(), response["ETag"]
        cursor = body["cursor"]
        if not body["has_more"]:
            break
    # when only places of another region change
    world.place(region=world.elsewhere, name="elsewhere")
    _feed_caught_up()
    again = client.get(CHANGES, {"cursor": cursor}, HTTP_IF_NONE_MATCH=etag)
    # then the answer is no 304: it has no entries but a cursor past those changes
    assert again.status_code == 200
    assert again.json()["changes"] == []
    assert again.json()["cursor"] != cursor
    assert again["ETag"] != etag
    # and from that cursor, with its ETag, nothing has changed: 304
    moved = again.json()["cursor"]
    assert (
        client.get(CHANGES, {"cursor": moved}, HTTP_IF_NONE_MATCH=again["ETag"]).status_code == 304
    )


@pytest.mark.django_db  # needs no commit (and makes this module set up the test database)
def test_changes_over_http_refuse_a_bad_cursor_or_limit(settings):
    settings.EDGE_RATE = None
    world = World()
    key = edge_key_create(node=world.node, scopes=[KeyScope.PULL_PLACES]).secret
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    response = client.get(CHANGES, {"cursor": "not-a-cursor"})
    assert (response.status_code, response.json()["code"]) == (400, "cursor")
    # "²" and "١" pass str.isdigit(); int() refuses the first and reads the second as 1.
    for limit in ("0", "5001", "ten", "-1", "²", "١", "１", " 5", "00005000000"):
        response = client.get(CHANGES, {"limit": limit})
        assert (response.status_code, response.json()["code"]) == (400, "limit")


@pytest.mark.django_db
def test_changes_over_http_are_gzipped_when_the_client_asks(settings):
    settings.EDGE_RATE = None
    world = World()
    for i in range(8):
        world.place(name=f"a place with a long enough name to fill the page, number {i}")
    key = edge_key_create(node=world.node, scopes=[KeyScope.PULL_PLACES]).secret
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    plain = client.get(CHANGES)
    zipped = client.get(CHANGES, HTTP_ACCEPT_ENCODING="gzip")
    assert "Content-Encoding" not in plain
    assert zipped["Content-Encoding"] == "gzip"
    assert zipped["Vary"] == "Accept-Encoding"
    assert len(zipped.content) < len(plain.content)
    changes = json.loads(gzip.decompress(zipped.content))["changes"]
    assert changes == plain.json()["changes"]
    assert len(changes) == 8

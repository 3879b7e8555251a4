"""Curator writes go through services and land in the change log with old and new values."""

from __future__ import annotations

import pytest
from django.contrib.gis.geos import Point

from places.models import PlaceChange, PlaceStatus
from places.selectors import FeedCursor, place_change_feed
from places.services import dataset_get_or_create, place_create, place_retire, place_update

pytestmark = pytest.mark.django_db


@pytest.fixture
def place(admin_user):
    dataset = dataset_get_or_create(slug="services")
    return place_create(
        dataset=dataset,
        source_key="s1",
        data={"name": "Old name", "location": Point(-1, 52), "denominations": ["anglican"]},
        user=admin_user,
    )


def test_create_logs_version_one_by_its_user(place, admin_user):
    change = PlaceChange.objects.get(place=place)
    assert (change.operation, change.place_version, change.user, change.source) == (
        "create",
        1,
        admin_user,
        "user",
    )
    assert change.changes["name"] == {"old": None, "new": "Old name"}


def test_update_logs_only_changed_fields(place, admin_user):
    updated = place_update(
        place=place, data={"name": "New name", "denominations": ["anglican"]}, user=admin_user
    )
    assert updated.version == 2
    change = PlaceChange.objects.filter(place=place).latest("seq")
    assert change.changes == {"name": {"old": "Old name", "new": "New name"}}
    assert change.place_version == 2


def test_update_with_no_change_writes_nothing(place):
    place_update(place=place, data={"name": "Old name"})
    assert PlaceChange.objects.filter(place=place).count() == 1


def test_update_refuses_managed_fields(place):
    with pytest.raises(ValueError, match="source_key"):
        place_update(place=place, data={"source_key": "other"})


def test_retire_keeps_the_place_with_an_end_date(place):
    retired = place_retire(place=place)
    assert retired.status == PlaceStatus.RETIRED
    assert retired.end_date is not None
    change = PlaceChange.objects.filter(place=place).latest("seq")
    assert change.operation == "retire"
    assert change.changes["status"] == {"old": "active", "new": "retired"}


def test_device_edits_are_attributed_to_the_device(place):
    place_update(place=place, data={"name": "From the field"}, device_id="edge-42")
    change = PlaceChange.objects.filter(place=place).latest("seq")
    assert (change.source, change.device_id) == ("device", "edge-42")


def test_change_feed_holds_back_changes_of_a_transaction_still_open(place):
    for i in range(4):
        place_update(place=place, data={"name": f"name {i}"})
    # The test's own transaction is still open, so its rows are not yet safe to hand out;
    # the feed must hold them back rather than risk a gap.
    page, cursor = place_change_feed(dataset_id=place.dataset_id)
    assert page == []
    assert cursor is None


def test_feed_cursor_round_trips():
    assert FeedCursor.parse(str(FeedCursor(123, 456))) == FeedCursor(123, 456)


def test_curator_created_place_gets_its_district_and_country(sample_regions):
    dataset = dataset_get_or_create(slug="curated-new")
    place = place_create(
        dataset=dataset,
        source_key="c1",
        data={"name": "St Martin", "location": Point(-0.1265, 51.5088)},
    )
    assert (place.region.code, place.country.code) == ("E09000033", "GBR")  # Westminster


def test_moving_a_place_reassigns_and_logs_its_region(sample_regions):
    dataset = dataset_get_or_create(slug="curated-move")
    place = place_create(
        dataset=dataset, source_key="m1", data={"location": Point(-0.1265, 51.5088)}
    )
    moved = place_update(place=place, data={"location": Point(-2.2426, 53.4808)})  # Manchester
    assert moved.region.code == "E08000003"
    change = PlaceChange.objects.filter(place=place).latest("seq")
    assert change.changes["region_id"]["new"] == moved.region_id


def test_region_writers_wait_until_a_curators_new_or_moved_place_commits(place):
    import psycopg

    from places.locks import AdvisoryLock
    from tests.db import database_kwargs

    # given a curator's move, located against the regions but not committed yet
    place_update(place=place, data={"location": Point(-2, 53)})
    # when region upkeep starts in another session
    with psycopg.connect(**database_kwargs()) as other:
        other.execute("SET lock_timeout = '200ms'")
        # then it waits for the move to commit (here: gives up), so the pieces the place
        # was located against cannot be replaced under it
        with pytest.raises(psycopg.errors.LockNotAvailable):
            other.execute("SELECT pg_advisory_xact_lock(%s)", [AdvisoryLock.REGIONS.value])

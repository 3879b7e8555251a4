"""Data-quality flags: computed, kept up to date, counted, filtered, fixed in bulk, exported."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import User
from django.contrib.gis.geos import MultiPolygon, Point, Polygon
from django.db import connection
from django.urls import reverse

from places import tasks
from places.models import Dataset, Place, PlaceChange, PlaceFlag, Region, RegionPart
from places.services import place_create, place_update, places_retire
from places.services.access import dataset_role_grant
from places.services.quality import (
    places_denomination_replace,
    places_set_religion,
    quality_flag_counts,
    quality_flags_refresh,
    quality_flags_refresh_due,
)

pytestmark = pytest.mark.django_db

SQUARE = MultiPolygon(Polygon.from_bbox((20.0, 20.0, 21.0, 21.0)), srid=4326)


@pytest.fixture
def dataset() -> Dataset:
    return Dataset.objects.create(name="Quality", slug="quality")


@pytest.fixture
def square() -> Region:
    region = Region.objects.create(
        name="Square", level="district", code="SQ", code_system="quality-test", geom=SQUARE
    )
    RegionPart.objects.create(region=region, level="district", geom=SQUARE[0])
    return region


def _flags(place: Place) -> set[str]:
    return set(PlaceFlag.objects.filter(place=place).values_list("flag", flat=True))


def _place(dataset: Dataset, key: str, **data) -> Place:
    values = {
        "name": "St Anne",
        "religion": "christian",
        "location": Point(20.5, 20.5, srid=4326),
        **data,
    }
    return place_create(dataset=dataset, source_key=key, data=values)


def test_each_flag_is_computed_when_a_place_is_created(dataset, square):
    # given places with one problem each, and one without any
    clean = _place(dataset, "clean", denominations=["anglican"])
    unnamed = _place(dataset, "unnamed", name="", location=Point(20.1, 20.1))
    unknown = _place(dataset, "unknown", religion="unknown", location=Point(20.2, 20.2))
    outside = _place(dataset, "outside", region=square, location=Point(30.0, 30.0))
    odd = _place(dataset, "odd", denominations=["anglicn"], location=Point(20.3, 20.3))
    dates = _place(
        dataset, "dates", start_date_raw="c. 1900", end_date_raw="1850", location=Point(20.4, 20.4)
    )
    # then each has exactly its flag (and the clean one none)
    assert _flags(clean) == set()
    assert _flags(unnamed) == {"no_name"}
    assert _flags(unknown) == {"unknown_religion"}
    assert _flags(outside) == {"outside_region"}
    assert _flags(odd) == {"unrecognised_denomination"}
    assert _flags(dates) == {"start_after_end"}
    # and computing the whole dataset again (beat's way) gives the same flags
    before = set(PlaceFlag.objects.filter(dataset=dataset).values_list("place_id", "flag"))
    assert quality_flags_refresh(dataset_id=dataset.pk) == 5
    assert set(PlaceFlag.objects.filter(dataset=dataset).values_list("place_id", "flag")) == before


def test_moving_a_place_refreshes_the_duplicate_flag_at_its_old_and_new_coordinates(dataset):
    # given two places on the same coordinates and a third elsewhere
    a = _place(dataset, "a", location=Point(5, 5))
    b = _place(dataset, "b", location=Point(5, 5))
    c = _place(dataset, "c", location=Point(6, 6))
    assert _flags(a) == _flags(b) == {"duplicate_coordinates"}
    assert _flags(c) == set()
    # when b moves onto c
    place_update(place=b, data={"location": Point(6, 6, srid=4326)})
    # then a is alone again, and b and c share coordinates
    assert _flags(a) == set()
    assert _flags(b) == _flags(c) == {"duplicate_coordinates"}
    # and retiring c leaves b alone
    places_retire(place_ids=[c.pk])
    assert _flags(b) == set()


def test_writes_that_bypass_the_services_are_flagged_by_the_beat_refresh(dataset):
    # given datasets whose flags are up to date (the session's sample imports' too, if any)
    place = _place(dataset, "raw")
    quality_flags_refresh_due()
    assert quality_flags_refresh_due() == []
    # when a set-based write (as imports make) empties a name and logs it as an import
    with connection.cursor() as cursor:
        cursor.execute("UPDATE places_place SET name = '' WHERE id = %s", [place.pk])
    PlaceChange.objects.create(
        place=place,
        dataset=dataset,
        operation="update",
        changes={"name": {"old": "St Anne", "new": ""}},
        place_version=2,
        source="import",
    )
    assert _flags(place) == set()
    # then beat's task computes that dataset again, and a second run has nothing to do
    assert tasks.quality_flags_refresh_due() == [dataset.pk]
    assert _flags(place) == {"no_name"}
    assert tasks.quality_flags_refresh_due() == []


def test_counts_are_per_dataset_and_only_of_datasets_the_user_may_view(dataset):
    # given flagged places in two datasets and a viewer of one
    other = Dataset.objects.create(name="Other", slug="other-q")
    _place(dataset, "n1", name="", location=Point(1, 1))
    _place(dataset, "n2", name="", religion="unknown", location=Point(2, 2))
    _place(other, "n3", name="", location=Point(3, 3))
    viewer = User.objects.create_user("viewer-q")
    dataset_role_grant(user=viewer, dataset=dataset, role="viewer")
    # when counted for the viewer
    counts = quality_flag_counts(user=User.objects.get(pk=viewer.pk))
    # then only their dataset is counted, per flag
    assert counts == {dataset.pk: {"no_name": 2, "unknown_religion": 1}}


def _curator(dataset: Dataset) -> User:
    user = User.objects.create_user("curator-q", password="pw")
    dataset_role_grant(user=user, dataset=dataset, role="curator")
    return User.objects.get(pk=user.pk)


def test_the_places_list_filters_by_flag_and_the_quality_page_links_to_it(client, dataset):
    # given an unnamed place and a named one, and a curator of their dataset
    unnamed = _place(dataset, "unnamed", name="", location=Point(1, 1))
    named = _place(dataset, "named", location=Point(2, 2))
    client.force_login(_curator(dataset))
    # when the list is filtered by the flag and the dataset
    url = reverse("admin:places_place_changelist")
    response = client.get(url, {"flag": "no_name", "dataset__id__exact": dataset.pk})
    page = response.content.decode()
    # then only the unnamed place is listed, and counted (by the flags' index)
    assert response.context["cl"].result_count == 1
    assert f"/{unnamed.pk}/change/" in page
    assert f"/{named.pk}/change/" not in page
    # and the quality page counts it with a link to that list
    quality = client.get(reverse("admin:places_place_quality")).content.decode()
    assert f"?dataset__id__exact={dataset.pk}&amp;flag=no_name" in quality


def _act(client, action: str, places: list[Place], **fields) -> object:
    return client.post(
        reverse("admin:places_place_changelist"),
        {
            "action": action,
            ACTION_CHECKBOX_NAME: [p.pk for p in places],
            "index": 0,
            "confirm": "yes",
            **fields,
        },
    )


def test_bulk_fixes_go_through_the_services_and_are_logged(client, dataset):
    # given places with an unknown religion and a misspelt denomination
    a = _place(dataset, "a", religion="unknown", denominations=["c_of_e_x"], location=Point(1, 1))
    b = _place(dataset, "b", religion="unknown", denominations=["c_of_e_x", "methodist"])
    curator = _curator(dataset)
    client.force_login(curator)
    # when the curator sets the religion and replaces the denomination on both
    _act(client, "set_religion", [a, b], religion="christian", comment="survey 2026")
    _act(client, "replace_denomination", [a, b], old="c_of_e_x", new="anglican", comment="")
    # then both are fixed, each change logged with the curator as author
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.religion, a.denominations) == ("christian", ["anglican"])
    assert (b.religion, b.denominations) == ("christian", ["anglican", "methodist"])
    logged = PlaceChange.objects.filter(place__in=[a, b], operation="update", user=curator)
    assert logged.count() == 4
    assert logged.filter(comment="survey 2026", changes__has_key="religion").count() == 2
    # and their flags went with the fixes
    assert _flags(a) == _flags(b) == set()


def test_bulk_fix_services_refuse_places_of_a_dataset_the_user_may_not_edit(dataset):
    # given a curator of another dataset
    other = Dataset.objects.create(name="Other", slug="other-fix")
    place = _place(dataset, "x", religion="unknown", denominations=["x"])
    outsider = User.objects.create_user("outsider")
    dataset_role_grant(user=outsider, dataset=other, role="curator")
    outsider = User.objects.get(pk=outsider.pk)
    # when they try to fix it, then nothing changes
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        places_set_religion(place_ids=[place.pk], religion="christian", user=outsider)
    with pytest.raises(PermissionDenied):
        places_denomination_replace(place_ids=[place.pk], old="x", new="y", user=outsider)
    place.refresh_from_db()
    assert (place.religion, place.denominations) == ("unknown", ["x"])


def test_a_selection_exports_as_csv_and_geojson_with_its_flags(client, dataset):
    # given two places, one unnamed with a formula-like source key (exports need the edit right)
    a = _place(dataset, "=cmd", name="", location=Point(1.5, 2.5))
    b = _place(dataset, "b", name="São Bento", location=Point(3, 4))
    client.force_login(_curator(dataset))
    # when both are exported as CSV
    response = _act(client, "export_csv", [a, b])
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    # then each is a row with its coordinates and flags, cells safe for spreadsheets
    by_id = {int(r["id"]): r for r in rows}
    assert by_id[a.pk]["source_key"] == "'=cmd"
    assert by_id[a.pk]["flags"] == "no_name"
    assert (float(by_id[a.pk]["longitude"]), float(by_id[a.pk]["latitude"])) == (1.5, 2.5)
    assert by_id[b.pk]["name"] == "São Bento"
    # and as GeoJSON, a feature collection of the same places
    response = _act(client, "export_geojson", [a, b])
    collection = json.loads(b"".join(response.streaming_content))
    features = {f["id"]: f for f in collection["features"]}
    assert set(features) == {a.pk, b.pk}
    assert features[a.pk]["geometry"] == {"type": "Point", "coordinates": [1.5, 2.5]}
    assert features[a.pk]["properties"]["flags"] == ["no_name"]
    assert features[b.pk]["properties"]["dataset"] == "quality"


def test_a_refresh_leaves_the_planner_fresh_statistics_of_the_flags(dataset):
    # given places with unknown religion, flagged by a full refresh of their dataset
    for i in range(30):
        _place(dataset, f"u{i}", religion="unknown", location=Point(i, 1))
    # when the dataset's flags are computed again
    quality_flags_refresh(dataset_id=dataset.pk)
    # then the planner knows how many flag rows there are (the list by flag plans on it)
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = 'places_placeflag'")
        estimated = cursor.fetchone()[0]
    assert estimated == PlaceFlag.objects.count()


def test_the_list_by_flag_and_another_filter_is_counted_unordered_up_to_the_cap(
    admin_client, dataset
):
    from django.test.utils import CaptureQueriesContext

    from places.admin_history import AUDIT_COUNT_CAP

    # given flagged places
    unknown = [_place(dataset, f"c{i}", religion="unknown", location=Point(i, 2)) for i in range(3)]
    # when the list is filtered by the flag and by status
    url = reverse("admin:places_place_changelist")
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(url, {"flag": "unknown_religion", "status__exact": "active"})
    # then the places are listed and counted (other tests may have left flagged places)
    flagged = Place.objects.filter(flags__flag="unknown_religion", status="active")
    assert response.context["cl"].result_count == flagged.count()
    assert {p.pk for p in unknown} <= set(flagged.values_list("pk", flat=True))
    # by a count that stops at the cap without sorting what it counts
    counts = [q["sql"] for q in queries if q["sql"].startswith("SELECT COUNT(*)")]
    assert len(counts) == 1
    assert f"LIMIT {AUDIT_COUNT_CAP}" in counts[0]
    assert "ORDER BY" not in counts[0]

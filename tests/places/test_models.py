"""Invariants the database itself holds: natural keys, checks, append-only log, partitions."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from django.contrib.gis.geos import MultiPolygon, Point, Polygon
from django.db import IntegrityError, connection, transaction

from places.models import Place, PlaceAttribute, PlaceChange, Region
from places.services import dataset_get_or_create, place_attribute_partitions_ensure, place_create
from tests.db import database_kwargs

pytestmark = pytest.mark.django_db


@pytest.fixture
def place() -> Place:
    dataset = dataset_get_or_create(slug="model-tests")
    return place_create(
        dataset=dataset, source_key="osm:node/1", data={"name": "A", "location": Point(0, 51)}
    )


def test_source_key_is_unique_within_a_dataset(place):
    with pytest.raises(IntegrityError), transaction.atomic():
        Place.objects.create(dataset=place.dataset, source_key="osm:node/1", location=Point(1, 1))
    other = dataset_get_or_create(slug="model-tests-2")
    Place.objects.create(dataset=other, source_key="osm:node/1", location=Point(1, 1))


def test_end_date_before_start_date_is_refused(place):
    with pytest.raises(IntegrityError), transaction.atomic():
        Place.objects.filter(pk=place.pk).update(
            start_date=dt.date(2000, 1, 1), end_date=dt.date(1999, 1, 1)
        )


def _square_region(code: str) -> Region:
    square = MultiPolygon(Polygon.from_bbox((0, 0, 1, 1)))
    return Region.objects.create(
        name=code, level="district", code=code, code_system="test", geom=square
    )


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ("region_id", r"names region \d+ \(region_id\)"),
        ("country_id", r"names region \d+ \(country_id\)"),
        ("dataset_id", "names dataset"),
    ],
)
def test_a_place_must_name_an_existing_dataset_and_regions(place, column, message):
    # Checked per statement by triggers (migration 0014), on insert and on update.
    missing = 10**12
    with pytest.raises(IntegrityError, match=message), transaction.atomic():
        Place.objects.filter(pk=place.pk).update(**{column: missing})
    values = {"dataset_id": place.dataset_id, column: missing}
    with pytest.raises(IntegrityError, match=message), transaction.atomic():
        Place.objects.create(source_key="osm:node/2", location=Point(0, 51), **values)


def test_a_region_that_places_name_cannot_be_deleted_behind_djangos_back(place):
    region = _square_region("T1")
    Place.objects.filter(pk=place.pk).update(region=region, country=_square_region("T2"))
    for named in ("T1", "T2"):
        with (
            pytest.raises(IntegrityError, match="places still name"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(
                "DELETE FROM places_region WHERE code_system = 'test' AND code = %s", [named]
            )
    with (
        pytest.raises(IntegrityError, match="still belong"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("DELETE FROM places_dataset WHERE id = %s", [place.dataset_id])
    # Django's own delete first empties the places' reference (on_delete=SET_NULL).
    region.delete()
    place.refresh_from_db()
    assert place.region_id is None
    assert place.country_id is not None


def test_a_region_being_named_cannot_be_deleted_until_the_writer_commits(sample_regions):
    # given a committed country that no place names, named now by an uncommitted insert
    named = set(Place.objects.exclude(country=None).values_list("country_id", flat=True))
    country = Region.objects.filter(level="country").exclude(pk__in=named).first()
    assert country is not None
    Place.objects.create(
        dataset=dataset_get_or_create(slug="model-tests"),
        source_key="osm:node/3",
        location=Point(0, 51),
        country=country,
    )
    # when another session tries to delete the country
    with psycopg.connect(**database_kwargs()) as other:
        other.execute("SET lock_timeout = '300ms'")
        # then it waits for the writer (the check locked the country FOR KEY SHARE, as a
        # foreign key's check does) instead of deleting what the new place names
        with pytest.raises(psycopg.errors.LockNotAvailable):
            other.execute("DELETE FROM places_region WHERE id = %s", [country.pk])
        other.rollback()


def test_invalid_region_geometry_is_refused():
    bowtie = Polygon(((0, 0), (1, 1), (1, 0), (0, 1), (0, 0)))
    with pytest.raises(IntegrityError), transaction.atomic():
        Region.objects.create(
            name="Bowtie", level="other", code="X", code_system="test", geom=MultiPolygon(bowtie)
        )


def test_region_code_keeps_leading_zeros():
    square = MultiPolygon(Polygon.from_bbox((0, 0, 1, 1)))
    Region.objects.create(name="Z", level="other", code="001", code_system="test", geom=square)
    assert Region.objects.get(code_system="test").code == "001"


def test_change_log_refuses_update_and_delete(place):
    change = PlaceChange.objects.filter(place=place).get()
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        PlaceChange.objects.filter(pk=change.pk).update(comment="rewritten")
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        PlaceChange.objects.filter(pk=change.pk).delete()


def test_change_sequence_is_monotonic(place):
    for i in range(3):
        place_create(
            dataset=place.dataset,
            source_key=f"k{i}",
            data={"name": str(i), "location": Point(0, 0)},
        )
    seqs = list(PlaceChange.objects.filter(dataset=place.dataset).values_list("seq", flat=True))
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 4


def _partition_of(attribute_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM places_placeattribute WHERE id = %s",
            [attribute_id],
        )
        return cursor.fetchone()[0]


def test_attributes_land_in_their_year_partition(place):
    old = PlaceAttribute.objects.create(
        place=place, key="attendance", value_num=120, observed_on=dt.date(1851, 3, 30)
    )
    recent = PlaceAttribute.objects.create(
        place=place, key="attendance", value_num=80, observed_on=dt.date(2021, 3, 21)
    )
    assert _partition_of(old.pk) == "places_placeattribute_before_2000"
    assert _partition_of(recent.pk) == "places_placeattribute_y2021"
    assert list(place.attributes.order_by("observed_on").values_list("value_num", flat=True)) == [
        120,
        80,
    ]


def test_partition_maintenance_creates_future_years_and_moves_rows_from_default(place):
    # given a fact for a year beyond the migration's partitions (so in the default partition)
    far = PlaceAttribute.objects.create(
        place=place, key="census", value_num=1, observed_on=dt.date(2031, 6, 1)
    )
    assert _partition_of(far.pk) == "places_placeattribute_default"
    # when maintenance runs as if it were 2030, twice
    created = place_attribute_partitions_ensure(years_ahead=2, today=dt.date(2030, 1, 1))
    again = place_attribute_partitions_ensure(years_ahead=2, today=dt.date(2030, 1, 1))
    # then the missing years exist (2029 too, skipped while "beat was down"), the row moved
    # into its year, and the rerun did nothing
    assert created == [
        "places_placeattribute_y2029",
        "places_placeattribute_y2030",
        "places_placeattribute_y2031",
        "places_placeattribute_y2032",
    ]
    assert again == []
    assert _partition_of(far.pk) == "places_placeattribute_y2031"
    assert PlaceAttribute.objects.filter(pk=far.pk).count() == 1

"""Invariants the database itself holds: natural keys, checks, append-only log, partitions."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.gis.geos import MultiPolygon, Point, Polygon
from django.db import IntegrityError, connection, transaction

from places.models import Place, PlaceAttribute, PlaceChange, Region
from places.services import dataset_get_or_create, place_attribute_partitions_ensure, place_create

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

"""Point in polygon is one rule (places.locate): an import and a curator edit agree."""

from __future__ import annotations

import pytest
from django.contrib.gis.geos import Point
from django.db import connection, transaction

from ingestion.models import ImportState
from ingestion.services.imports import import_job_execute
from ingestion.services.jobs import import_job_create
from places.locate import points_locate
from places.models import Place, Region
from places.selectors import regions_for_point
from places.services import dataset_get_or_create, place_create
from tests.places.synthetic_regions import load_all

pytestmark = pytest.mark.django_db

# key: (lon, lat, expected region code or None, expected country code or None); the codes
# of the test regions are drawn in tests/places/synthetic_regions.py.
POINTS = {
    "district": (-29.5, -43, "TD1", "TC1"),  # a district beats its first-level region
    "admin1-only": (-29.5, -41, "TA1", "TC1"),
    "country-only": (-27, -42, None, "TC1"),  # offshore-ish: no district, no admin1
    "outside": (-35, -42, None, None),
    "district-border": (-29, -43, "TD1|TD2", "TC1"),  # on TD1 | TD2: the lower id
    "country-border": (-26, -42, None, "TC1|TC2"),  # on TC1 | TC2: the lower id
    "admin1-edge": (-28, -41, "TA1", "TC1"),
    "westminster": (-0.1265, 51.5088, "E09000033", "GBR"),
    "paris": (2.3522, 48.8566, None, "FRA"),  # no French districts or admin1 loaded
}


def _expected(codes: str | None, ids: dict[str, int]) -> int | None:
    return None if codes is None else min(ids[c] for c in codes.split("|"))


@pytest.fixture
def regions(sample_regions, tmp_path) -> dict[str, int]:
    load_all(tmp_path)
    return dict(Region.objects.values_list("code", "id"))


def test_an_import_and_a_curator_edit_give_the_same_region_and_country(regions, tmp_path):
    # given the same points in a small CSV and as curators' new places
    path = tmp_path / "points.csv"
    rows = [f"{key},{key},{lon},{lat}" for key, (lon, lat, _, _) in POINTS.items()]
    path.write_text("id,name,lon,lat\n" + "\n".join(rows) + "\n")
    # when the file is imported and the same places are created by hand
    job = import_job_execute(
        job_id=import_job_create(path=path, dataset=dataset_get_or_create(slug="located-import")).pk
    )
    assert job.state == ImportState.DONE
    curated = dataset_get_or_create(slug="located-by-hand")
    for key, (lon, lat, _, _) in POINTS.items():
        place_create(dataset=curated, source_key=key, data={"location": Point(lon, lat)})
    # then both name the same region and country for every point, the expected ones
    imported = _located(job.dataset_id)
    by_hand = _located(curated.pk)
    expected = {
        key: (_expected(region, regions), _expected(country, regions))
        for key, (_, _, region, country) in POINTS.items()
    }
    assert imported == by_hand == expected


def test_one_point_and_a_set_of_points_are_located_alike(regions):
    # given the points in a temporary table, as the import and region upkeep hold theirs
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE test_points (sid bigint, geom geometry) ON COMMIT DROP")
        for sid, (lon, lat, _, _) in enumerate(POINTS.values()):
            cursor.execute(
                "INSERT INTO test_points VALUES (%s, ST_SetSRID(ST_MakePoint(%s, %s), 4326))",
                [sid, lon, lat],
            )
        # when the set is located at once
        points_locate(cursor=cursor, points_table="test_points", located_table="test_located")
        cursor.execute("SELECT sid, region_id, country_id FROM test_located ORDER BY sid")
        located = {sid: (region, country) for sid, region, country in cursor.fetchall()}
    # then every point has its row, with the answer the one-point selector gives
    assert located == {
        sid: regions_for_point(lon=lon, lat=lat)
        for sid, (lon, lat, _, _) in enumerate(POINTS.values())
    }


def test_points_locate_takes_only_plain_table_names():
    with pytest.raises(ValueError, match="plain table name"), connection.cursor() as cursor:
        points_locate(cursor=cursor, points_table="p; DROP TABLE x", located_table="ok")


def _located(dataset_id: int) -> dict[str, tuple[int | None, int | None]]:
    rows = Place.objects.filter(dataset_id=dataset_id).values_list(
        "source_key", "region_id", "country_id"
    )
    return {key: (region, country) for key, region, country in rows}

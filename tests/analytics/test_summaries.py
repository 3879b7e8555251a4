"""Region summaries: each figure against a hand-written query, the GB file's own district codes,
and incremental recomputes that touch only the regions whose data moved."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import math
from collections import Counter

import pytest
from django.contrib.gis.geos import Point
from django.db import connection

from analytics.models import RegionSummary
from analytics.services.summaries import region_summaries_recompute
from places.models import Place, Region
from places.services import dataset_get_or_create, place_create
from tests.conftest import GB_CSV
from tests.ingestion.test_sample_import import BOUNDARY_CASES

pytestmark = pytest.mark.django_db(databases=["default", "replica"])

WESTMINSTER = "E09000033"


def _scalar(sql: str, params: list) -> object:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def _pairs(sql: str, params: list) -> dict:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {str(k): v for k, v in cursor.fetchall()}


@pytest.fixture
def westminster_extras(gb_import, replica_caught_up) -> Region:
    """Westminster with what the GB file lacks: a population, dated places, a place at
    another's coordinates, and one filed under Westminster although it lies in Camden."""
    westminster = Region.objects.get(code=WESTMINSTER)
    Region.objects.filter(pk=westminster.pk).update(population=204_300)
    dataset = dataset_get_or_create(slug="summary-test")
    inside = westminster.geom.point_on_surface
    for i, year in enumerate([1851, 1858, 1962, 2004]):
        place_create(
            dataset=dataset,
            source_key=f"dated-{i}",
            data={
                "name": f"Dated {i}",
                "religion": "sikh",
                "location": Point(inside.x + i * 1e-4, inside.y, srid=4326),
                "start_date": dt.date(year, 6, 1),
                "denominations": ["test_denomination"],
            },
        )
    twin = Place.objects.filter(region=westminster, status="active").exclude(dataset=dataset)[0]
    place_create(dataset=dataset, source_key="twin", data={"location": twin.location})
    camden = Region.objects.get(code="E09000007").geom.point_on_surface
    place_create(
        dataset=dataset,
        source_key="filed-in-westminster",
        data={"location": camden, "region": westminster, "country": westminster.parent},
    )
    return westminster


def test_every_figure_of_a_district_matches_a_hand_written_query(westminster_extras):
    # given Westminster's places and its summary
    region_summaries_recompute(full=True)
    summary = RegionSummary.objects.get(region=westminster_extras)
    where = "FROM places_place p WHERE p.region_id = %s AND p.status = 'active'"
    rid = [westminster_extras.pk]
    # then the counts
    places = _scalar(f"SELECT count(*) {where}", rid)
    assert summary.places == places > 0
    assert summary.by_religion == _pairs(f"SELECT religion, count(*) {where} GROUP BY 1", rid)
    assert summary.by_denomination == _pairs(
        f"SELECT d, count(*) {where.replace('p WHERE', 'p, unnest(p.denominations) d WHERE')} "
        "GROUP BY 1",
        rid,
    )
    assert summary.by_denomination["test_denomination"] == 4
    # and diversity over known religions, written out from the counts of a second query
    known = _pairs(f"SELECT religion, count(*) {where} AND religion <> 'unknown' GROUP BY 1", rid)
    total = sum(known.values())
    shannon = -sum(n / total * math.log(n / total) for n in known.values())
    simpson = 1 - sum((n / total) ** 2 for n in known.values())
    assert summary.shannon == pytest.approx(shannon)
    assert summary.simpson == pytest.approx(simpson)
    assert 0 < summary.simpson < 1
    # and densities
    area = _scalar("SELECT area_km2 FROM places_region WHERE id = %s", rid)
    assert summary.per_1000_km2 == pytest.approx(places / area * 1000)
    assert summary.per_100k_people == pytest.approx(places / 204_300 * 100_000)
    # and founding decades
    decades = _pairs(
        f"SELECT (extract(year FROM start_date)::int / 10 * 10)::text, count(*) {where} "
        "AND start_date IS NOT NULL GROUP BY 1",
        rid,
    )
    assert summary.founding_decades == decades
    assert decades["1850"] == 2
    assert decades["1960"] == 1
    assert decades["2000"] == 1
    assert summary.dated_places == sum(decades.values())
    # and data quality, "outside" against the whole boundary (not the pieces the service uses)
    assert summary.unnamed == _scalar(f"SELECT count(*) {where} AND p.name = ''", rid)
    assert summary.unnamed >= 2  # the twin and the misfiled place have no name
    assert summary.unknown_religion == _scalar(
        f"SELECT count(*) {where} AND p.religion = 'unknown'", rid
    )
    outside = _scalar(
        f"SELECT count(*) {where} AND NOT ST_Covers("
        "(SELECT geom FROM places_region WHERE id = p.region_id), p.location)",
        rid,
    )
    assert summary.outside_region == outside >= 1
    duplicates = _scalar(
        f"SELECT count(*) {where} AND EXISTS (SELECT 1 FROM places_place q "
        "WHERE q.id <> p.id AND q.status = 'active' AND q.location ~= p.location)",
        rid,
    )
    assert summary.duplicate_coordinates == duplicates >= 2
    # and where it was computed
    assert summary.computed_on in {"replica", "primary"}
    assert summary.data_version
    assert summary.region_version


def _file_area_codes() -> Counter:
    kept: dict[str, str] = {}
    with gzip.open(GB_CSV, "rt", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            kept.setdefault(f"osm:{row['osm_type']}/{row['osm_id']}", row["area_code"])
    return Counter(kept.values())


def test_gb_district_counts_equal_the_files_area_codes_but_two_boundary_cases(gb_import):
    # given the summaries of every region
    region_summaries_recompute(full=True)
    counted = dict(RegionSummary.objects.filter(level="district").values_list("code", "places"))
    # when the file's own district codes are counted, and places of other datasets set apart
    expected = _file_area_codes()
    others = Counter(
        Place.objects.filter(region__level="district", status="active")
        .exclude(dataset=gb_import.dataset)
        .values_list("region__code", flat=True)
    )
    # then they agree everywhere except where the two boundary cases left or joined
    differences = {
        code: counted.get(code, 0) - others[code] - expected[code]
        for code in set(counted) | set(expected)
        if counted.get(code, 0) - others[code] != expected[code]
    }
    moves = Counter()
    for key in BOUNDARY_CASES:
        place = Place.objects.select_related("region").get(
            dataset=gb_import.dataset, source_key=key
        )
        moves[place.tags["area_code"]] -= 1
        moves[place.region.code] += 1
    assert differences == {code: n for code, n in moves.items() if n}
    assert sum(counted.values()) > 30_000


def test_incremental_recompute_touches_only_regions_whose_data_moved(gb_import, replica_caught_up):
    # given summaries of every region, and nothing changed since
    full = region_summaries_recompute(full=True)
    assert region_summaries_recompute().recomputed == 0
    before = {s.region_id: (s.computed_at, s.places) for s in RegionSummary.objects.all()}
    westminster = Region.objects.get(code=WESTMINSTER)
    # when a place is added in Westminster
    place_create(
        dataset=dataset_get_or_create(slug="incremental-test"),
        source_key="new",
        data={"name": "New", "location": westminster.geom.point_on_surface},
    )
    run = region_summaries_recompute()
    # then Westminster and Great Britain are recomputed with it, far regions are not
    after = {s.region_id: (s.computed_at, s.places) for s in RegionSummary.objects.all()}
    assert after[westminster.pk][1] == before[westminster.pk][1] + 1
    assert after[westminster.parent_id][1] == before[westminster.parent_id][1] + 1
    assert {westminster.pk, westminster.parent_id} <= set(run.region_ids)
    far = Region.objects.filter(code__in=["S12000027", "JPN", "BRA"]).values_list("pk", flat=True)
    assert len(far) == 3
    assert not set(far) & set(run.region_ids)
    assert run.recomputed < full.recomputed / 4
    # and only those two had figures that moved
    changed = {rid for rid in after if after[rid][1] != before[rid][1]}
    assert changed == {westminster.pk, westminster.parent_id}
    # and running again finds nothing to do
    assert region_summaries_recompute().recomputed == 0


def test_a_place_inside_a_countrys_box_but_far_from_its_land_leaves_its_summary_alone(
    gb_import, replica_caught_up
):
    # given summaries of every region, and a point in the North Atlantic that lies inside the
    # bounding boxes of the United States (the Aleutians reach round the world), Russia and
    # France (French Guiana to Réunion), far from the land of any
    region_summaries_recompute(full=True)
    point = Point(-40.0, 45.0, srid=4326)
    boxed = Region.objects.filter(level="country", code__in=["USA", "RUS", "FRA"])
    assert len(boxed) == 3
    for country in boxed:
        west, south, east, north = country.geom.extent
        assert west <= point.x <= east, country.code
        assert south <= point.y <= north, country.code
    assert not Region.objects.filter(geom__dwithin=(point, 5.0)).exists()
    # when a place is added there
    place_create(
        dataset=dataset_get_or_create(slug="incremental-test"),
        source_key="at-sea",
        data={"name": "At sea", "location": point},
    )
    run = region_summaries_recompute()
    # then no region is recomputed: a key follows the region's pieces, not its box
    assert run.recomputed == 0

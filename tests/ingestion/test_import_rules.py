"""Import rules on small files made for the purpose: rejections, repairs, curator edits."""

from __future__ import annotations

import datetime as dt
import json
import zipfile
from pathlib import Path

import pytest
from django.contrib.gis.geos import Point

from ingestion.models import ImportState
from ingestion.readers import UnreadableFile
from ingestion.services.imports import import_job_execute
from ingestion.services.jobs import import_job_create
from places.models import Place, PlaceChange, Religion
from places.services import dataset_get_or_create, place_update
from tests.conftest import FIXTURES, LONDON_SHP

pytestmark = pytest.mark.django_db


def _run(path: Path, slug: str, **kwargs):
    dataset = dataset_get_or_create(slug=slug)
    return import_job_execute(job_id=import_job_create(path=path, dataset=dataset, **kwargs).pk)


def test_nasty_rows_are_rejected_with_reasons_and_the_rest_kept(sample_regions):
    job = _run(FIXTURES / "nasty_places.csv", "nasty")
    reasons = dict(job.rejections.values_list("row_number", "reason"))
    assert reasons == {
        4: "missing_geometry",
        5: "bad_coordinates",
        6: "bad_coordinates",
        7: "bad_coordinates",
        8: "bad_coordinates",
        9: "duplicate_key",
        10: "missing_key",
    }
    keys = set(Place.objects.filter(dataset=job.dataset).values_list("source_key", flat=True))
    assert keys == {"p1", "p2", "p8", "p9"}
    assert "out" in job.rejections.get(row_number=6).detail.lower()


def test_values_are_normalised_with_raw_kept(sample_regions):
    job = _run(FIXTURES / "nasty_places.csv", "normalised")
    places = {p.source_key: p for p in Place.objects.filter(dataset=job.dataset)}
    assert places["p1"].name == "St Mary, the Virgin"
    assert places["p1"].denominations == ["anglican", "methodist"]
    assert places["p1"].start_date == dt.date(1885, 1, 1)
    assert places["p2"].name == ""
    assert places["p2"].religion == Religion.MUSLIM
    assert places["p2"].religion_raw == "Islam"
    assert places["p2"].start_date == dt.date(1995, 1, 1)
    assert places["p8"].religion == Religion.BAHAI
    assert places["p8"].name == 'Quoted "name" here'
    assert places["p8"].start_date_raw == "early 1960's"
    assert places["p9"].religion == Religion.OTHER
    assert places["p9"].start_date == dt.date(1885, 5, 12)
    assert places["p1"].region.code == "E09000028"  # Southwark, south bank of the Thames


def test_curator_fix_survives_reimport_of_unchanged_source(sample_regions, admin_user):
    # given an imported place that a curator renamed
    job = _run(FIXTURES / "nasty_places.csv", "curated")
    place = Place.objects.get(dataset=job.dataset, source_key="p2")
    place_update(place=place, data={"name": "Masjid (name added by curator)"}, user=admin_user)
    # when the unchanged file is imported again
    again = _run(FIXTURES / "nasty_places.csv", "curated")
    # then the curator's name stays and nothing is logged
    place.refresh_from_db()
    assert place.name == "Masjid (name added by curator)"
    assert again.updated == 0
    assert again.unchanged == 4


def test_changed_source_value_updates_only_that_field_and_logs_it(sample_regions, tmp_path):
    # given an import
    original = (FIXTURES / "nasty_places.csv").read_text(encoding="utf-8")
    first = _run(FIXTURES / "nasty_places.csv", "moving")
    # when the file moves p1 and renames p9
    changed = tmp_path / "changed.csv"
    changed.write_text(
        original.replace("-0.1,51.5,1885", "-0.2,51.6,1885").replace("Druid grove", "Grove"),
        encoding="utf-8",
    )
    second = _run(changed, "moving")
    # then exactly those fields change, the version goes up and the log says old and new
    assert (second.added, second.updated, second.unchanged) == (0, 2, 2)
    p1 = Place.objects.get(dataset=first.dataset, source_key="p1")
    assert p1.version == 2
    assert p1.location.equals_exact(Point(-0.2, 51.6, srid=4326), tolerance=1e-9)
    change = PlaceChange.objects.filter(place=p1).latest("seq")
    assert change.operation == "update"
    assert change.changes["location"]["old"]["coordinates"] == [-0.1, 51.5]
    assert change.changes["location"]["new"]["coordinates"] == [-0.2, 51.6]
    assert change.import_job_id == second.pk
    p9 = PlaceChange.objects.filter(place__source_key="p9", place__dataset=first.dataset).latest(
        "seq"
    )
    assert set(p9.changes) == {"name"}


@pytest.mark.slow
def test_shapefile_layers_give_points_and_footprints(sample_regions):
    job = _run(LONDON_SHP, "geofabrik")
    assert job.state == ImportState.DONE
    assert job.rows_read == 782 + 2130
    places = Place.objects.filter(dataset=job.dataset)
    # schools and cemeteries in the pofw layers are reported instead (test_formats.py)
    not_worship = job.rejections.filter(reason="not_place_of_worship")
    points_out = not_worship.filter(layer="gis_osm_pofw_free_1").count()
    assert places.filter(source_key__startswith="osm:node/").count() == 782 - points_out
    with_footprint = places.exclude(footprint=None)
    assert with_footprint.count() == 2130 - (not_worship.count() - points_out)
    # the representative point of a polygon lies inside it
    sample = with_footprint.first()
    assert sample.footprint.contains(sample.location)
    anglican = places.filter(tags__fclass="christian_anglican").first()
    assert anglican.religion == Religion.CHRISTIAN
    assert anglican.denominations == ["anglican"]


def test_file_in_another_crs_is_reprojected(sample_regions, tmp_path):
    # given a GeoJSON in British National Grid (EPSG:27700): Trafalgar Square
    path = tmp_path / "bng.geojson"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::27700"}},
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"id": "t1", "name": "St Martin-in-the-Fields"},
                        "geometry": {"type": "Point", "coordinates": [530048, 180492]},
                    }
                ],
            }
        )
    )
    job = _run(path, "bng")
    place = Place.objects.get(dataset=job.dataset, source_key="t1")
    assert place.location.x == pytest.approx(-0.1268, abs=1e-3)
    assert place.location.y == pytest.approx(51.5087, abs=1e-3)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"id,name\n1,x\n", "longitude/latitude columns found .* among the columns 'id', 'name'"),
        (b"\x00\x01\x02binary", "binary"),
    ],
)
def test_unusable_files_are_refused_with_a_reason(tmp_path, content, message):
    path = tmp_path / "upload.csv"
    path.write_bytes(content)
    with pytest.raises(UnreadableFile, match=message):
        import_job_create(path=path, dataset=dataset_get_or_create(slug="refused"))


def test_zip_with_path_traversal_is_refused(tmp_path):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("../../etc/passwd.shp", b"x")
    with pytest.raises(UnreadableFile, match="unsafe path"):
        import_job_create(path=path, dataset=dataset_get_or_create(slug="evil"))


def test_zip_holding_a_vrt_is_refused(tmp_path):
    path = tmp_path / "vrt.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("layer.vrt", b"<OGRVRTDataSource/>")
    with pytest.raises(UnreadableFile, match="not part of a shapefile"):
        import_job_create(path=path, dataset=dataset_get_or_create(slug="vrt"))


def test_running_a_finished_job_again_changes_nothing(sample_regions):
    job = _run(FIXTURES / "nasty_places.csv", "twice")
    log = PlaceChange.objects.filter(dataset=job.dataset).count()
    again = import_job_execute(job_id=job.pk)
    assert again.state == ImportState.DONE
    assert again.attempts == 1
    assert PlaceChange.objects.filter(dataset=job.dataset).count() == log


def test_region_file_with_a_repeated_code_keeps_the_first(tmp_path):
    from ingestion.services.regions import RegionSource, region_load
    from places.models import Region

    square = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
    path = tmp_path / "regions.geojson"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"c": "X1", "n": "First"},
                        "geometry": square,
                    },
                    {
                        "type": "Feature",
                        "properties": {"c": "X1", "n": "Second"},
                        "geometry": square,
                    },
                ],
            }
        )
    )
    source = RegionSource(level="other", code_field="c", name_field="n", code_system="test-dup")
    result = region_load(
        path=path, source=source, dataset=dataset_get_or_create(slug="dup-regions")
    )
    assert (result.added, len(result.rejected)) == (1, 1)
    assert "feature 2" in result.rejected[0]
    assert Region.objects.get(code_system="test-dup").name == "First"

"""Tables whose geometry is text in a column (WKT, EWKT, hex WKB), and heights and measures
dropped with a note rather than refused."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import pytest
from django.contrib.gis.geos import Point, Polygon

from ingestion.admin import MAPPING_HELP
from ingestion.mapping import ColumnMapping, mapping_problems, mapping_propose
from ingestion.models import ImportJob
from ingestion.services.imports import import_job_execute
from ingestion.services.inspection import DIMENSIONS_DROPPED, import_job_inspect
from ingestion.services.jobs import import_job_create
from ingestion.staging.geometry_text import geometry_wkb, has_heights_or_measures
from places.models import Place
from places.services import dataset_get_or_create

pytestmark = pytest.mark.django_db

# A small square in Leeds, and points in Yorkshire and Lancashire (inside sample_regions).
SQUARE = "POLYGON ((-1.55 53.79, -1.54 53.79, -1.54 53.80, -1.55 53.80, -1.55 53.79))"


def _run(path: Path, slug: str, **kwargs) -> ImportJob:
    dataset = dataset_get_or_create(slug=slug)
    return import_job_execute(job_id=import_job_create(path=path, dataset=dataset, **kwargs).pk)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _place(job: ImportJob, key: str) -> Place:
    return Place.objects.get(dataset=job.dataset, source_key=key)


@pytest.mark.parametrize("column", ["geom", "THE_GEOM", "Wkt", "geometry", "shape", "wkb"])
def test_geometry_column_is_proposed_from_its_name(column):
    # given a table's columns with a geometry column and no lon/lat
    columns = ["id", "name", column]
    # when a mapping is proposed
    mapping = mapping_propose(columns, has_geometry=False)
    # then the column places the rows, and the mapping needs no lon/lat
    assert mapping.geometry == column
    assert mapping_problems(mapping, columns=columns, has_geometry=False) == {}


def test_geo_files_propose_no_geometry_column():
    mapping = mapping_propose(["id", "geom"], has_geometry=True)
    assert mapping.geometry is None


def test_a_table_without_geometry_or_coordinates_names_both_in_its_problem():
    problems = mapping_problems(
        ColumnMapping(key="{id}"), columns=["id", "name"], has_geometry=False
    )
    assert "no geometry column" in problems["lon"]


def test_semicolon_csv_with_wkt_points_and_polygons(sample_regions, tmp_path):
    # given a semicolon-delimited CSV whose geometry is WKT: a point and a polygon
    path = _write(
        tmp_path,
        "wkt.csv",
        'id;name;geom\nw1;Chapel;POINT (-1.5 53.8)\nw2;Abbey;"' + SQUARE + '"\n',
    )
    # when it is imported
    job = _run(path, "wkt-semicolon")
    # then the point is kept as it is, the polygon as a footprint with a point inside it
    assert (job.added, job.rejected) == (2, 0)
    chapel, abbey = _place(job, "w1"), _place(job, "w2")
    assert (chapel.location.x, chapel.location.y) == (-1.5, 53.8)
    assert chapel.footprint is None
    assert abbey.footprint is not None
    assert abbey.footprint.contains(abbey.location)
    assert abbey.footprint.geom_type == "MultiPolygon"
    # and the geometry column is consumed, not kept as a tag
    assert "geom" not in chapel.tags


def test_hex_wkb_column_in_csv_and_plain_parquet(sample_regions, tmp_path):
    # given hex WKB (plain and PostGIS's EWKB with SRID 4326) in a CSV, and raw WKB bytes
    # in a plain Parquet file without GeoParquet metadata
    point = Point(-2.2, 53.5, srid=4326)
    path = _write(
        tmp_path,
        "wkb.csv",
        f"id,wkb\nh1,{point.wkb.hex()}\nh2,{point.hexewkb.decode()}\n",
    )
    parquet = tmp_path / "plain.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["p1"],
                "geometry": [Polygon.from_bbox((-1.55, 53.79, -1.54, 53.8)).wkb.tobytes()],
            }
        ),
        parquet,
    )
    # when both are imported
    csv_job = _run(path, "wkb-csv")
    parquet_job = _run(parquet, "wkb-parquet")
    # then every row is placed by its geometry
    assert (csv_job.added, csv_job.rejected) == (2, 0)
    assert _place(csv_job, "h2").location.coords == (-2.2, 53.5)
    assert (parquet_job.added, parquet_job.rejected) == (1, 0)
    assert _place(parquet_job, "p1").footprint is not None


def test_a_row_with_bad_wkt_is_rejected_and_the_rest_import(sample_regions, tmp_path):
    # given WKT that does not parse, a ring that is too short, a projected EWKT and
    # coordinates outside WGS84, among good rows
    path = _write(
        tmp_path,
        "bad.csv",
        "id,name,wkt\n"
        "b1,Good,POINT (-1.5 53.8)\n"
        "b2,Cut,POINT (-1.5\n"
        'b3,Short ring,"POLYGON ((0 0, 1 1, 0 0))"\n'
        "b4,Projected,SRID=3857;POINT (-166000 7130000)\n"
        "b5,Far,POINT (500 53)\n"
        "b6,Also good,POINT (-2.2 53.5)\n",
    )
    # when it is imported
    job = _run(path, "bad-wkt")
    # then the good rows are places and each bad one is rejected with its reason
    assert (job.added, job.rejected) == (2, 4)
    rejected = {r.row_number: (r.reason, r.detail) for r in job.rejections.all()}
    assert rejected[3][0] == "invalid_geometry"
    assert "not WKT, EWKT or hex WKB" in rejected[3][1]
    assert "POINT (-1.5" in rejected[3][1]
    assert rejected[4] == (
        "invalid_geometry",
        "geometry is not usable: a polygon ring needs at least 4 points",
    )
    assert rejected[5][0] == "bad_coordinates"
    assert "EPSG:3857" in rejected[5][1]
    assert rejected[6][0] == "bad_coordinates"
    assert job.rejections.get(row_number=3).raw["wkt"] == "POINT (-1.5"


def test_per_row_the_filled_geometry_or_lon_lat_is_used(sample_regions, tmp_path):
    # given rows with a WKT value and lon/lat, with lon/lat only, with WKT only, and neither
    path = _write(
        tmp_path,
        "both.csv",
        "id,lon,lat,geom\n"
        "m1,-2.2,53.5,POINT (-1.5 53.8)\n"
        "m2,-2.2,53.5,\n"
        "m3,,,POINT (-1.5 53.8)\n"
        "m4,,,\n",
    )
    # when it is imported
    job = _run(path, "both")
    # then a filled geometry wins, lon/lat place the rows without one, and a row with
    # neither is rejected saying so
    assert (job.added, job.rejected) == (3, 1)
    assert _place(job, "m1").location.coords == (-1.5, 53.8)
    assert _place(job, "m2").location.coords == (-2.2, 53.5)
    assert _place(job, "m3").location.coords == (-1.5, 53.8)
    rejection = job.rejections.get()
    assert (rejection.reason, rejection.detail) == (
        "missing_geometry",
        "no geometry and no longitude/latitude values",
    )


def test_wkt_heights_are_dropped_and_noted_at_inspection(sample_regions, tmp_path):
    # given a CSV of 3D WKT
    path = _write(tmp_path, "z.csv", "id,wkt\nz1,POINT Z (-1.5 53.8 120)\n")
    dataset = dataset_get_or_create(slug="wkt-z")
    # when it is inspected, then imported
    job = import_job_inspect(
        job=import_job_create(path=path, dataset=dataset, wait_for_review=True)
    )
    imported = _run(path, "wkt-z")
    # then the inspection says heights are dropped, and the place is 2D
    assert job.inspection["geometry_notes"] == [DIMENSIONS_DROPPED]
    assert job.inspection["proposed_mapping"]["geometry"] == "wkt"
    place = _place(imported, "z1")
    assert (place.location.coords, place.location.hasz) == ((-1.5, 53.8), False)


def test_geopackage_with_heights_imports_flat_with_a_note(sample_regions, tmp_path):
    # given a GeoPackage of Point Z features (ISO WKB type 1001)
    path = tmp_path / "z.gpkg"
    point_z = struct.pack("<BI3d", 1, 1001, -1.5, 53.8, 120.0)
    pyogrio.write_arrow(
        pa.table({"id": ["zm1"], "geom": pa.array([point_z], pa.binary())}),
        path,
        layer="zm",
        driver="GPKG",
        geometry_name="geom",
        geometry_type="Point Z",
        crs="EPSG:4326",
    )
    dataset = dataset_get_or_create(slug="gpkg-zm")
    # when it is inspected and imported
    job = import_job_inspect(
        job=import_job_create(path=path, dataset=dataset, wait_for_review=True)
    )
    imported = _run(path, "gpkg-zm")
    # then the layer is not refused, the note is there, and the place is 2D
    assert job.inspection["geometry_notes"] == [DIMENSIONS_DROPPED]
    assert (imported.added, imported.rejected) == (1, 0)
    assert _place(imported, "zm1").location.coords == (-1.5, 53.8)


def test_geojson_in_2d_gets_no_note(tmp_path):
    path = _write(
        tmp_path,
        "flat.geojson",
        json.dumps(
            {
                "type": "Feature",
                "properties": {"id": "f1"},
                "geometry": {"type": "Point", "coordinates": [-1.5, 53.8]},
            }
        ),
    )
    dataset = dataset_get_or_create(slug="flat")
    job = import_job_inspect(
        job=import_job_create(path=path, dataset=dataset, wait_for_review=True)
    )
    assert "geometry_notes" not in job.inspection


def test_geometry_texts_become_2d_wkb():
    wkb, problems = geometry_wkb(["point z (1 2 3)", "", "TRIANGLE ((0 0, 1 0, 0 1, 0 0))"])
    assert wkb[0] == Point(1, 2).wkb.tobytes()
    assert wkb[1] is None
    assert problems[1] is None
    assert problems[2] is not None
    assert problems[2][0] == "invalid_geometry"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("POINT (1 2)", False),
        ("POINT Z (1 2 3)", True),
        ("POINT M (1 2 3)", True),
        ("POLYGON ((0 0 5, 1 0 5, 1 1 5, 0 0 5))", True),
        ("Point ZM", True),
        ("MultiPolygon", False),
        (Point(1, 2, 3).hexewkb.decode(), True),
        (Point(1, 2).wkb.hex(), False),
    ],
)
def test_heights_or_measures_are_found_in_wkt_wkb_and_layer_types(value, expected):
    assert has_heights_or_measures(value) is expected


def test_mapping_help_names_what_the_geometry_column_takes():
    assert "WKT, EWKT or hex WKB" in MAPPING_HELP["geometry"]
    assert "Heights (Z) and measures (M) are dropped" in MAPPING_HELP["geometry"]


def test_measured_geometries_in_ewkt_and_iso_spellings_import_flat_with_a_note(
    sample_regions, tmp_path
):
    # given measured geometries as PostGIS's EWKT writes them (POINTM, with and without an
    # SRID) and as ISO WKT spells them, and a polygon with measures
    path = _write(
        tmp_path,
        "m.csv",
        "id\tgeom\n"
        "m1\tPOINTM(-1.5 53.8 7)\n"
        "m2\tSRID=4326;POINTM(-1.51 53.81 8)\n"
        "m3\tPOINT M (-1.52 53.82 9)\n"
        f"m4\tPOLYGONM(({SQUARE[10:-2].replace(',', ' 1,')} 1))\n",
    )
    dataset = dataset_get_or_create(slug="wkt-m")
    # when it is inspected, then imported
    job = import_job_inspect(
        job=import_job_create(path=path, dataset=dataset, wait_for_review=True)
    )
    imported = _run(path, "wkt-m")
    # then nothing is refused, the note says measures are dropped, and places are 2D
    assert job.inspection["geometry_notes"] == [DIMENSIONS_DROPPED]
    assert (imported.added, imported.rejected) == (4, 0)
    assert _place(imported, "m1").location.coords == (-1.5, 53.8)
    assert _place(imported, "m2").location.coords == (-1.51, 53.81)
    assert _place(imported, "m4").footprint is not None


def test_an_empty_geometry_reads_as_an_empty_cell(sample_regions, tmp_path):
    # given rows whose geometry is EMPTY, one with lon/lat beside it and one without
    path = _write(
        tmp_path,
        "empty.csv",
        "id,lon,lat,geom\ne1,-1.5,53.8,POINT EMPTY\ne2,,,POLYGONM EMPTY\n",
    )
    # when it is imported
    job = _run(path, "empty-geometries")
    # then lon/lat place the first, and the second is rejected for having no position,
    # rather than the import failing
    assert (job.state, job.added, job.rejected) == ("done", 1, 1)
    assert _place(job, "e1").location.coords == (-1.5, 53.8)
    assert job.rejections.get().reason == "missing_geometry"


def test_plain_parquet_with_wkt_and_hex_text_and_no_id_imports_under_the_content_key(
    sample_regions, tmp_path
):
    # given a plain Parquet file (no GeoParquet metadata) whose geometry is text, WKT in one
    # row and hex WKB in the other, with no id column at all
    parquet = tmp_path / "text.parquet"
    pq.write_table(
        pa.table(
            {
                "name": ["Chapel", "Temple"],
                "the_geom": ["POINT (-1.5 53.8)", Point(-2.2, 53.5).wkb.hex()],
            }
        ),
        parquet,
    )
    # when it is imported
    job = _run(parquet, "parquet-text")
    # then both rows are placed by their geometry, keyed by their content
    assert job.options["mapping"]["key"] == "{_content}"
    assert job.options["mapping"]["geometry"] == "the_geom"
    assert (job.added, job.rejected) == (2, 0)
    places = Place.objects.filter(dataset=job.dataset)
    assert sorted(p.location.coords for p in places) == [(-2.2, 53.5), (-1.5, 53.8)]

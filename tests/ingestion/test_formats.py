"""Formats beyond CSV and shapefiles: Parquet, GeoParquet, the go-bayes JSON export, GeoJSONSeq,
and what the import makes of Geofabrik's packed classes."""

from __future__ import annotations

import gzip
import json
from ctypes import POINTER, byref, c_char_p, c_void_p
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.contrib.gis.gdal import SpatialReference
from django.contrib.gis.gdal.libgdal import lgdal
from django.contrib.gis.geos import Point, Polygon
from pyogrio.raw import read

from ingestion.mapping import mapping_propose
from ingestion.models import ImportJob, ImportState
from ingestion.normalize import packed_class_not_worship
from ingestion.readers import JsonArrayReader, ParquetReader, UnreadableFile, detect_format
from ingestion.services.imports import import_job_execute
from ingestion.services.jobs import import_job_create
from places.models import Place, Religion
from places.services import dataset_get_or_create
from tests.conftest import FIXTURES, LONDON_SHP

pytestmark = pytest.mark.django_db

GOBAYES = FIXTURES / "gobayes_export.json"
_NO_CRS = object()


def _run(path: Path, slug: str, **kwargs: Any) -> ImportJob:
    dataset = dataset_get_or_create(slug=slug)
    return import_job_execute(job_id=import_job_create(path=path, dataset=dataset, **kwargs).pk)


def _projjson(epsg: int, *, with_id: bool = True) -> dict[str, Any]:
    """GDAL's own PROJJSON for an EPSG code, as a GeoParquet writer would store it."""
    export = lgdal["OSRExportToPROJJSON"]
    export.argtypes = [c_void_p, POINTER(c_char_p), POINTER(c_char_p)]
    export.restype = int
    out = c_char_p()
    assert export(SpatialReference(epsg).ptr, byref(out), None) == 0
    projjson = json.loads(out.value)
    if not with_id:
        del projjson["id"]
    return projjson


def _geoparquet(
    path: Path,
    columns: dict[str, list[Any]],
    geometries: list[bytes | None],
    *,
    crs: Any = _NO_CRS,
    encoding: str = "WKB",
    types: tuple[str, ...] = ("Point",),
    extra_geo: dict[str, Any] | None = None,
    row_group_size: int | None = None,
) -> Path:
    spec: dict[str, Any] = {"encoding": encoding, "geometry_types": list(types)}
    if crs is not _NO_CRS:
        spec["crs"] = crs
    spec.update(extra_geo or {})
    geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": spec}}
    table = pa.table({**columns, "geometry": pa.array(geometries, type=pa.binary())})
    table = table.replace_schema_metadata({"geo": json.dumps(geo)})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _wkb(geometry: Point | Polygon) -> bytes:
    return geometry.wkb.tobytes()


# --- Parquet and GeoParquet -------------------------------------------------------------


def test_geoparquet_points_and_polygons_become_places(sample_regions, tmp_path):
    # given a GeoParquet without a "crs" (OGC:CRS84), a point and a polygon
    square = Polygon(((-0.1, 51.5), (-0.09, 51.5), (-0.09, 51.51), (-0.1, 51.51), (-0.1, 51.5)))
    path = _geoparquet(
        tmp_path / "places.parquet",
        {"id": ["g1", "g2"], "name": ["Chapel", "Temple"], "religion": ["christian", "hindu"]},
        [_wkb(Point(-1.5, 53.8)), _wkb(square)],
        types=("Point", "Polygon"),
    )
    # when it is imported
    assert detect_format(path) == "parquet"
    job = _run(path, "geoparquet")
    # then both are places, the polygon with its footprint and a point inside it
    assert (job.format, job.state, job.added, job.rejected) == ("parquet", ImportState.DONE, 2, 0)
    chapel = Place.objects.get(dataset=job.dataset, source_key="g1")
    assert (round(chapel.location.x, 6), round(chapel.location.y, 6)) == (-1.5, 53.8)
    temple = Place.objects.get(dataset=job.dataset, source_key="g2")
    assert temple.footprint.contains(temple.location)
    assert temple.religion == Religion.HINDU
    assert "geometry" not in temple.tags


@pytest.mark.parametrize("with_id", [True, False], ids=["projjson-with-id", "projjson-without-id"])
def test_geoparquet_in_british_national_grid_is_reprojected(sample_regions, tmp_path, with_id):
    # given Trafalgar Square in EPSG:27700, the CRS given as PROJJSON (with or without its id)
    path = _geoparquet(
        tmp_path / "bng.parquet",
        {"id": ["t1"], "name": ["St Martin-in-the-Fields"]},
        [_wkb(Point(530048, 180492))],
        crs=_projjson(27700, with_id=with_id),
    )
    # when it is imported
    job = _run(path, f"bng-parquet-{with_id}")
    # then the place is at its longitude/latitude
    place = Place.objects.get(dataset=job.dataset, source_key="t1")
    assert place.location.x == pytest.approx(-0.1268, abs=1e-3)
    assert place.location.y == pytest.approx(51.5087, abs=1e-3)


def test_geoparquet_with_a_null_crs_is_read_as_longitude_latitude(sample_regions, tmp_path):
    # GeoParquet's null means "unknown"; like GeoJSON without a crs, WGS84 is assumed and
    # coordinates that are not longitude/latitude are rejected row by row
    path = _geoparquet(
        tmp_path / "null-crs.parquet",
        {"id": ["in", "out"]},
        [_wkb(Point(-0.1, 51.5)), _wkb(Point(530048, 180492))],
        crs=None,
    )
    job = _run(path, "null-crs")
    assert job.added == 1
    assert list(job.rejections.values_list("row_number", "reason")) == [(2, "bad_coordinates")]


def test_geoparquet_with_geoarrow_encoding_is_refused_with_the_reason(tmp_path):
    path = _geoparquet(tmp_path / "native.parquet", {"id": ["a"]}, [b"x"], encoding="point")
    with pytest.raises(UnreadableFile, match=r"encoding 'point'; only WKB is supported"):
        import_job_create(path=path, dataset=dataset_get_or_create(slug="geoarrow"))


def test_geoparquet_row_with_broken_wkb_is_rejected_alone(sample_regions, tmp_path):
    # given three rows: good, truncated WKB, an unclosed ring; and a bbox covering column
    good = _wkb(Point(-0.1, 51.5))
    unclosed = bytearray(_wkb(Polygon(((0, 0), (1, 0), (1, 1), (0, 1), (0, 0)))))
    unclosed[-16:] = _wkb(Point(5, 5))[5:]  # move the ring's last point away from its first
    bbox = [{"xmin": -0.1, "ymin": 51.5, "xmax": -0.1, "ymax": 51.5}] * 3
    path = _geoparquet(
        tmp_path / "broken.parquet",
        {"id": ["ok", "cut", "open"], "bbox": bbox},
        [good, good[:-3], bytes(unclosed)],
        extra_geo={"covering": {"bbox": {k: ["bbox", k] for k in bbox[0]}}},
    )
    # when it is imported
    job = _run(path, "broken-wkb")
    # then only the good row is a place; the others are reported with the WKB problem
    assert job.state == ImportState.DONE, job.error
    assert job.added == 1
    rejections = dict(job.rejections.values_list("row_number", "detail"))
    assert set(rejections) == {2, 3}
    assert "truncated" in rejections[2]
    assert "not closed" in rejections[3]
    assert set(job.rejections.values_list("reason", flat=True)) == {"invalid_geometry"}
    assert "bbox" not in Place.objects.get(dataset=job.dataset).tags


def test_plain_parquet_with_lon_lat_columns_reads_like_a_csv(sample_regions, tmp_path):
    # given a Parquet file of typed columns and no geometry
    path = tmp_path / "plain.parquet"
    table = pa.table(
        {
            "id": pa.array([1, 2], type=pa.int64()),
            "name": ["Old Chapel", "New Hall"],
            "lon": pa.array([-0.1, -0.12], type=pa.float64()),
            "lat": pa.array([51.5, 51.52], type=pa.float64()),
            "code": ["001", "002"],
            "opened": pa.array([1885, None], type=pa.int32()),
        }
    )
    pq.write_table(table, path)
    # when it is imported
    reader = ParquetReader(path)
    mapping = mapping_propose(reader.layers()[0].columns, has_geometry=reader.has_geometry)
    job = _run(path, "plain-parquet")
    # then the lon/lat columns are proposed and used, and values keep their text
    assert (mapping.key, mapping.lon, mapping.lat) == ("{id}", "lon", "lat")
    assert job.added == 2
    place = Place.objects.get(dataset=job.dataset, source_key="1")
    assert (place.location.x, place.location.y) == (-0.1, 51.5)
    assert place.tags == {"code": "001", "opened": "1885"}


def test_parquet_is_read_in_batches_not_whole(tmp_path, monkeypatch):
    # given a GeoParquet of 2,500 rows in row groups of 1,000, read 1,000 rows at a time
    monkeypatch.setattr("ingestion.readers.parquet.BATCH_ROWS", 1_000)
    path = _geoparquet(
        tmp_path / "many.parquet",
        {"id": [str(i) for i in range(2_500)]},
        [_wkb(Point(0, i / 100)) for i in range(2_500)],
        row_group_size=1_000,
    )
    # then the reader hands out batches of at most 1,000 rows that add up to the file
    sizes = [batch.num_rows for batch in ParquetReader(path).batches()]
    assert sizes == [1_000, 1_000, 500]


# --- The go-bayes/places-of-worship JSON export ------------------------------------------


def test_gobayes_export_gets_an_osm_key_and_lat_lng(tmp_path):
    reader = JsonArrayReader(GOBAYES)
    mapping = mapping_propose(reader.layers()[0].columns, has_geometry=reader.has_geometry)
    assert detect_format(GOBAYES) == "json"
    assert mapping.key == "osm:{osm_type}/{osm_id}"
    assert (mapping.lon, mapping.lat) == ("lng", "lat")
    assert (mapping.name, mapping.religion, mapping.denomination) == (
        "name",
        "religion",
        "denomination",
    )
    assert mapping.start_date == "start_date"


def test_gobayes_export_imports_with_nested_values_as_json_text(sample_regions):
    # when the export is imported
    job = _run(GOBAYES, "gobayes")
    # then OSM-keyed places, with religion, denominations and dates normalised
    assert job.state == ImportState.DONE, job.error
    places = {p.source_key: p for p in Place.objects.filter(dataset=job.dataset)}
    assert set(places) == {
        "osm:node/26559743",
        "osm:way/4253046",
        "osm:relation/2205410",
        "osm:node/5136440622",
    }
    cathedral = places["osm:node/26559743"]
    assert cathedral.name == "Southwark Cathedral"
    assert (cathedral.location.x, cathedral.location.y) == (-0.09939, 51.50611)
    assert cathedral.start_date.year == 1220
    # tags_raw given as an object or as a string of JSON: JSON text either way, never lost
    assert json.loads(cathedral.tags["tags_raw"])["wikidata"] == "Q1128593"
    assert json.loads(places["osm:way/4253046"].tags["tags_raw"]) == {
        "amenity": "place_of_worship",
        "heritage": "1",
    }
    assert json.loads(places["osm:relation/2205410"].tags["sources"]) == ["osm", "wikidata"]
    assert cathedral.tags["confidence"] == "0.95"
    assert cathedral.tags["country_code"] == "GB"
    assert places["osm:way/4253046"].denominations == ["anglican"]
    mosque = places["osm:node/5136440622"]
    assert (mosque.religion, mosque.religion_raw) == (Religion.MUSLIM, "Islam")
    assert json.loads(mosque.tags["tags_raw"])["name:ar"] == "مسجد شرق لندن"
    # the record without an OSM id and the one out of range are reported
    assert dict(job.rejections.values_list("row_number", "reason")) == {
        5: "missing_key",
        6: "bad_coordinates",
    }


@pytest.mark.slow
def test_gobayes_export_gzipped_gives_the_same_places(sample_regions, tmp_path):
    path = tmp_path / "export.json.gz"
    path.write_bytes(gzip.compress(GOBAYES.read_bytes()))
    plain = _run(GOBAYES, "gobayes-plain")
    zipped = _run(path, "gobayes-gz")
    assert zipped.format == "json"
    assert (zipped.added, zipped.rejected) == (plain.added, plain.rejected)


def test_json_array_is_streamed_in_batches(tmp_path, monkeypatch):
    # given 2,500 objects read 1,000 at a time, with a key that only appears late
    monkeypatch.setattr("ingestion.readers.jsonarray.BATCH_ROWS", 1_000)
    items = [{"id": i, "lat": 51.5, "lng": -0.1} for i in range(2_500)]
    items[-1]["late"] = {"nested": [1, 2]}
    path = tmp_path / "many.json"
    path.write_text(json.dumps(items))
    batches = list(JsonArrayReader(path).batches())
    assert [b.num_rows for b in batches] == [1_000, 1_000, 500]
    assert batches[-1].columns["late"][-1] == '{"nested": [1, 2]}'
    assert batches[0].columns["id"][:2] == ["0", "1"]


def test_json_array_items_that_are_not_objects_are_rejected_alone(sample_regions, tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(
        '[{"id": "a", "lat": 51.5, "lng": -0.1}, 42, ["x"], {"id": "b", "lat": 51.6, "lng": -0.2}]'
    )
    job = _run(path, "mixed-json")
    assert job.added == 2
    assert dict(job.rejections.values_list("row_number", "detail")) == {
        2: "array item is a int, not an object",
        3: "array item is a array, not an object",
    }


def test_json_with_nan_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "nan.json"
    path.write_text('[{"id": "a", "lat": NaN, "lng": 0}]')
    with pytest.raises(UnreadableFile, match="JSON has no NaN or Infinity"):
        import_job_create(path=path, dataset=dataset_get_or_create(slug="nan-json"))


def test_json_object_that_is_not_geojson_is_refused(tmp_path):
    # e.g. the geonames cities file: one object keyed by id
    path = tmp_path / "cities.json"
    path.write_text('{"2643743": {"name": "London", "latitude": 51.5, "longitude": -0.1}}')
    with pytest.raises(UnreadableFile, match="JSON object but not GeoJSON"):
        detect_format(path)


# --- GeoJSONSeq ---------------------------------------------------------------------------


def _feature(key: str, lon: float, lat: float) -> str:
    return json.dumps(
        {
            "type": "Feature",
            "properties": {"id": key, "name": f"Place {key}"},
            "geometry": {"type": "Point", "coordinates": [lon, lat]},
        }
    )


@pytest.mark.parametrize(
    ("prefix", "compress"),
    [("", False), ("\x1e", False), ("\x1e", True)],
    ids=["newline-delimited", "rfc8142", "rfc8142-gzip"],
)
def test_geojsonseq_is_detected_and_imported(sample_regions, tmp_path, prefix, compress):
    text = "".join(f"{prefix}{_feature(k, -0.1 - i / 100, 51.5)}\n" for i, k in enumerate("abc"))
    path = tmp_path / "places.geojsonl"
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    assert detect_format(path) == "geojsonseq"
    job = _run(path, f"seq-{bool(prefix)}-{compress}")
    assert (job.format, job.added, job.rejected) == ("geojsonseq", 3, 0)
    assert Place.objects.get(dataset=job.dataset, source_key="b").name == "Place b"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type": "FeatureCollection", "features": []}', "geojson"),
        (
            '{\n  "type": "FeatureCollection",\n  "features": [\n' + _feature("a", 0, 0) + "]}",
            "geojson",
        ),
        (_feature("a", 0, 0), "geojson"),
        (_feature("a", 0, 0) + "\n", "geojson"),
        (_feature("a", 0, 0) + "\n" + _feature("b", 0, 0) + "\n", "geojsonseq"),
        ("\x1e" + _feature("a", 0, 0) + "\n", "geojsonseq"),
        ('{"type": "Point", "coordinates": [0, 0]}', "geojson"),
    ],
    ids=[
        "collection",
        "pretty-collection",
        "one-feature",
        "one-feature-line",
        "seq",
        "rs",
        "bare-geometry",
    ],
)
def test_geojson_and_geojsonseq_are_told_apart(tmp_path, text, expected):
    path = tmp_path / "upload.json"
    path.write_text(text)
    assert detect_format(path) == expected


# --- Geofabrik's packed classes --------------------------------------------------------------


@pytest.mark.slow
def test_geofabrik_rows_that_are_not_places_of_worship_are_reported(sample_regions):
    # given the Geofabrik Greater London pofw layers, whose 15 classes are all religions
    expected = {}
    for layer in ("gis_osm_pofw_free_1", "gis_osm_pofw_a_free_1"):
        meta, _, _, fields = read(f"/vsizip/{LONDON_SHP}", layer=layer, read_geometry=False)
        names = list(meta["fields"])
        rows = zip(fields[names.index("fclass")], fields[names.index("name")], strict=True)
        for number, (fclass, name) in enumerate(rows, start=1):
            if reason := packed_class_not_worship(fclass, name):
                expected[(layer, number)] = reason
    # when it is imported
    job = _run(LONDON_SHP, "geofabrik-classes")
    # then schools, colleges and cemeteries are reported, exactly those the rule names
    rejected = {
        (r.layer, r.row_number): r.detail
        for r in job.rejections.filter(reason="not_place_of_worship")
    }
    assert rejected == expected
    assert len(rejected) == 136
    assert job.report["rejected_by_reason"] == {"not_place_of_worship": 136}
    details = set(rejected.values())
    assert "Nunhead Cemetery looks like a cemetery, not a place of worship (class christian)" in (
        details
    )
    assert any("Primary School looks like a school" in d for d in details)
    # and chapels of cemeteries and colleges stay places
    kept = set(Place.objects.filter(dataset=job.dataset).values_list("name", flat=True))
    assert {"Brompton Cemetery Chapel", "St Dominic's College Chapel"} <= kept


def test_packed_class_that_is_no_religion_is_reported_naming_the_class(sample_regions, tmp_path):
    features = [
        {
            "type": "Feature",
            "properties": {"osm_id": str(i), "fclass": fclass, "name": name},
            "geometry": {"type": "Point", "coordinates": [-0.1, 51.5 + i / 100]},
        }
        for i, (fclass, name) in enumerate(
            [
                ("christian_anglican", "St Anne"),
                ("school", "Hill School"),
                ("graveyard", ""),
                ("", "No class"),
            ]
        )
    ]
    path = tmp_path / "pois.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    job = _run(path, "pois")
    assert job.added == 2
    assert sorted(job.rejections.values_list("detail", flat=True)) == [
        "class graveyard is not a place of worship",
        "class school is not a place of worship",
    ]

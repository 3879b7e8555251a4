"""Hostile and broken uploads: refused with a clear message, or one row rejected, never more.

Big and nasty files are made here at run time; compressed ones stay small on disk.
"""

from __future__ import annotations

import gzip
import json
import warnings
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingestion.models import ImportJob, ImportState
from ingestion.readers import (
    MAX_CELL_BYTES,
    MAX_COLUMNS,
    CsvReader,
    UnreadableFile,
    detect_format,
    open_reader,
)
from ingestion.readers.geo import GeoReader
from ingestion.services import jobs
from ingestion.services.imports import import_job_execute
from ingestion.services.jobs import import_job_create
from places.models import Place
from places.services import dataset_get_or_create

pytestmark = pytest.mark.django_db

MIB = 1024**2


def _create(path: Path, slug: str) -> ImportJob:
    return import_job_create(path=path, dataset=dataset_get_or_create(slug=slug))


def _run(path: Path, slug: str) -> ImportJob:
    return import_job_execute(job_id=_create(path, slug).pk)


def _gzip_of_zeros(path: Path, mebibytes: int, *, prefix: bytes = b"") -> Path:
    """A single gzip member that inflates to ``mebibytes`` MiB (about 1 KiB per MiB on disk)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"0" * MIB
    with open(path, "wb") as fh:
        fh.write(deflate.compress(prefix))
        for _ in range(mebibytes):
            fh.write(deflate.compress(zeros))
        fh.write(deflate.flush())
    return path


# --- compression bombs ----------------------------------------------------------------------


@pytest.mark.slow
def test_gzip_bomb_is_refused_before_anything_is_stored(tmp_path):
    # given 1 GiB of CSV-looking zeros in about a megabyte of gzip
    path = _gzip_of_zeros(tmp_path / "bomb.csv.gz", 1024, prefix=b"id,lon,lat\n")
    assert path.stat().st_size < 2 * MIB
    # then it is refused by its expansion ratio, and no job exists
    with pytest.raises(UnreadableFile, match=r"expands more than 100×"):
        _create(path, "gzip-bomb")
    assert not ImportJob.objects.filter(dataset__slug="gzip-bomb").exists()


def test_gzip_bomb_split_into_many_members_is_counted_whole(tmp_path):
    # given 64 gzip members of 8 MiB each: no single member is over the ratio floor
    member = gzip.compress(b"1" * (8 * MIB))
    path = tmp_path / "members.geojson.gz"
    path.write_bytes(member * 64)
    with pytest.raises(UnreadableFile, match=r"expands more than 100×"):
        detect_format(path)


def test_gzip_over_the_expanded_size_limit_is_refused_naming_the_limit(tmp_path, monkeypatch):
    # given a limit of 1 MiB and a 2 MiB CSV that compresses only a little
    monkeypatch.setattr("ingestion.readers.safety.MAX_EXPANDED_BYTES", MIB)
    rows = "".join(f"{i},{i * 7919 % 1000003},{i * 104729 % 999983}\n" for i in range(200_000))
    path = tmp_path / "large.csv.gz"
    path.write_bytes(gzip.compress(f"id,lon,lat\n{rows}".encode()))
    with pytest.raises(UnreadableFile, match=r"beyond the limit of 1,048,576 bytes"):
        detect_format(path)


@pytest.mark.slow
def test_geojson_gzip_bomb_is_refused_before_gdal_opens_it(tmp_path):
    path = _gzip_of_zeros(
        tmp_path / "bomb.geojson.gz", 256, prefix=b'{"type": "FeatureCollection", "x": "'
    )
    with pytest.raises(UnreadableFile, match=r"expands more than 100×"):
        GeoReader(path, "geojson")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (gzip.compress(b"id,lon,lat\n1,2,3\n" * 100)[:-20], "cut short"),
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"not deflate data" * 10, "damaged"),
        (gzip.compress(b"PAR1" + b"\x00" * 100), "gzip-compressed Parquet"),
        (gzip.compress(b"SQLite format 3\x00" + b"\x00" * 100), "gzip-compressed GeoPackage"),
    ],
    ids=["truncated", "damaged", "parquet-inside", "geopackage-inside"],
)
def test_broken_or_unsupported_gzip_is_refused(tmp_path, content, message):
    path = tmp_path / "upload.gz"
    path.write_bytes(content)
    with pytest.raises(UnreadableFile, match=message):
        _create(path, "bad-gzip")


def test_parquet_whose_pages_expand_past_the_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("ingestion.readers.parquet.MAX_EXPANDED_BYTES", MIB)
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"id": [str(i) * 20 for i in range(100_000)]}), path)
    with pytest.raises(UnreadableFile, match=r"the limit is 1,048,576 bytes"):
        open_reader(path)


# --- size limits -----------------------------------------------------------------------------


def test_file_over_the_size_limit_is_refused_naming_the_limit(tmp_path):
    # given a sparse file one byte over the limit (it takes no space on disk)
    path = tmp_path / "huge.csv"
    with open(path, "wb") as fh:
        fh.write(b"id,lon,lat\n")
        fh.truncate(jobs.MAX_FILE_BYTES + 1)
    with pytest.raises(UnreadableFile, match=f"the limit is {jobs.MAX_FILE_BYTES}"):
        _create(path, "huge")
    assert not ImportJob.objects.filter(dataset__slug="huge").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"  \r\n\t\n", "the file is empty"),
        (b"\xef\xbb\xbf", "the file is empty"),
        (b"\xef\xbb\xbf\n\n", "the file is empty"),
        (gzip.compress(b""), "empty once decompressed"),
        (gzip.compress(b"\n \n"), "empty once decompressed"),
        (b"[]", "holds no objects"),
        (b"[\n]\n", "holds no objects"),
        (b"id,name,lon,lat\n", "header row but no data rows"),
        (b"id,name,lon,lat\r\n\r\n", "header row but no data rows"),
        (b'{"type": "FeatureCollection", "features": []}', "holds no features"),
        (b"PK\x05\x06" + b"\x00" * 18, "zip file is empty or damaged"),
    ],
    ids=[
        "zero-bytes",
        "whitespace",
        "bom",
        "bom-newlines",
        "empty-gzip",
        "blank-gzip",
        "empty-json-array",
        "empty-json-array-lines",
        "header-only-csv",
        "header-only-crlf",
        "empty-feature-collection",
        "empty-zip",
    ],
)
def test_empty_files_are_refused_as_empty(tmp_path, content, message):
    path = tmp_path / "upload"
    path.write_bytes(content)
    with pytest.raises(UnreadableFile, match=message):
        _create(path, "empty")
    assert not ImportJob.objects.filter(dataset__slug="empty").exists()


def test_empty_parquet_is_refused(tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], type=pa.string())}), path)
    with pytest.raises(UnreadableFile, match="holds no rows"):
        _create(path, "empty-parquet")


# --- columns and cells -----------------------------------------------------------------------


def test_csv_with_ten_thousand_columns_is_refused_naming_the_limit(tmp_path):
    path = tmp_path / "wide.csv"
    header = ",".join(["id", "lon", "lat", *(f"c{i}" for i in range(9_997))])
    path.write_text(f"{header}\n{','.join(['1', '0', '0', *('x' * 9_997)])}\n")
    with pytest.raises(UnreadableFile, match=r"has 10,000 columns; the limit is 1,000 columns"):
        _create(path, "wide-csv")
    assert MAX_COLUMNS == 1_000


def test_geojson_with_ten_thousand_properties_is_refused(tmp_path):
    properties = {f"p{i}": i for i in range(10_000)}
    feature = {"type": "Feature", "properties": properties, "geometry": None}
    path = tmp_path / "wide.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    with pytest.raises(UnreadableFile, match=r"has 10,000 columns; the limit is 1,000"):
        _create(path, "wide-geojson")


def test_json_array_with_ten_thousand_keys_is_refused(tmp_path):
    path = tmp_path / "wide.json"
    path.write_text(json.dumps([{f"k{i}": i for i in range(10_000)}]))
    with pytest.raises(UnreadableFile, match=r"has 10,000 columns; the limit is 1,000"):
        _create(path, "wide-json")


def test_one_megabyte_csv_cell_rejects_its_row_not_the_file(sample_regions, tmp_path):
    # given a CSV whose second row has a 1 MB name
    big = "x" * MIB
    path = tmp_path / "cell.csv"
    path.write_text(f"id,name,lon,lat\na,Small,-0.1,51.5\nb,{big},-0.1,51.5\nc,Fine,-0.2,51.6\n")
    # when it is imported
    job = _run(path, "big-cell")
    # then the other rows are places and the big one is reported, its value cut short
    assert job.state == ImportState.DONE, job.error
    assert set(Place.objects.filter(dataset=job.dataset).values_list("source_key", flat=True)) == {
        "a",
        "c",
    }
    rejection = job.rejections.get()
    assert (rejection.row_number, rejection.reason) == (3, "cell_too_large")
    assert rejection.detail == (
        f"value of 'name' is 1,048,576 bytes; the limit is {MAX_CELL_BYTES:,} bytes"
    )
    assert len(rejection.raw["name"]) < 300
    assert rejection.raw["name"].endswith("(1,048,576 bytes, cut)")
    assert job.report["rejected_by_reason"] == {"cell_too_large": 1}


def test_csv_record_too_long_for_the_reader_is_refused_with_the_limit(tmp_path):
    path = tmp_path / "huge-cell.csv"
    path.write_text(f'id,name,lon,lat\na,"{"y" * (20 * MIB)}",0,0\n')
    reader = CsvReader(path)
    with pytest.raises(UnreadableFile, match=r"record is too long to read.*2,097,152 bytes"):
        list(reader.batches())


@pytest.mark.parametrize("kind", ["geojson", "json", "parquet"])
def test_one_megabyte_value_rejects_its_row_in_other_formats(sample_regions, tmp_path, kind):
    big = "z" * MIB
    rows = [("a", "Small"), ("b", big), ("c", "Fine")]
    if kind == "geojson":
        path = tmp_path / "cell.geojson"
        features = [
            {
                "type": "Feature",
                "properties": {"id": key, "name": name},
                "geometry": {"type": "Point", "coordinates": [-0.1, 51.5 + i / 100]},
            }
            for i, (key, name) in enumerate(rows)
        ]
        path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    elif kind == "json":
        path = tmp_path / "cell.json"
        items = [{"id": key, "name": name, "lat": 51.5, "lng": -0.1} for key, name in rows]
        path.write_text(json.dumps(items))
    else:
        path = tmp_path / "cell.parquet"
        columns = {
            "id": [k for k, _ in rows],
            "name": [n for _, n in rows],
            "lon": [-0.1] * 3,
            "lat": [51.5] * 3,
        }
        pq.write_table(pa.table(columns), path)
    job = _run(path, f"big-cell-{kind}")
    assert job.added == 2
    assert list(job.rejections.values_list("row_number", "reason")) == [(2, "cell_too_large")]


def test_deeply_nested_json_value_is_refused_not_crashed(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('[{"id": "a", "lat": 0, "lng": 0, "deep": ' + "[" * 5000 + "]" * 5000 + "}]")
    reader = open_reader(path)
    with pytest.raises(UnreadableFile, match="nested too deeply"):
        list(reader.batches())


def test_geometries_postgis_would_choke_on_reject_their_rows_only(sample_regions, tmp_path):
    # given GeoJSON that GDAL reads as it is: an unclosed ring, a two-point ring, a one-point
    # line (PostGIS refuses all three with an error that used to abort the whole import)
    geometries = [
        {"type": "Point", "coordinates": [-0.1, 51.5]},
        {"type": "Polygon", "coordinates": [[[0, 51], [1, 51], [1, 52], [0, 52]]]},
        {"type": "Polygon", "coordinates": [[[0, 51], [1, 51]]]},
        {"type": "LineString", "coordinates": [[0, 51]]},
    ]
    features = [
        {"type": "Feature", "properties": {"id": str(i)}, "geometry": geometry}
        for i, geometry in enumerate(geometries)
    ]
    path = tmp_path / "shapes.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    # when it is imported
    # (GDAL complains about the open ring, as a warning or a log line depending on which read
    # meets it first; either is fine, the import must not fail)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        job = _run(path, "bad-shapes")
    # then the point is a place and each broken shape is reported with what is wrong
    assert job.state == ImportState.DONE, job.error
    assert job.added == 1
    details = dict(job.rejections.values_list("row_number", "detail"))
    assert details == {
        2: "geometry is not usable WKB: a polygon ring is not closed",
        3: "geometry is not usable WKB: a polygon ring needs at least 4 points",
        4: "geometry is not usable WKB: a line needs at least 2 points",
    }


@pytest.mark.slow
def test_stray_byte_after_the_sampled_mebibyte_costs_one_character_not_the_file(
    sample_regions, tmp_path
):
    # given a UTF-8 CSV whose last row, after the first MiB the encoding is detected on,
    # holds a Windows-1252 pound sign (0xA3), as files pasted together from two sources do
    filler = "".join(f"f{i},Filler {'x' * 80},-0.1,51.5\n" for i in range(12_000))
    path = tmp_path / "mixed.csv"
    path.write_bytes(f"id,name,lon,lat\n{filler}".encode() + b"last,Price \xa3 5,-0.2,51.6\n")
    assert path.stat().st_size > MIB
    # when it is imported
    job = _run(path, "mixed-encoding")
    # then every row is a place and the undecodable byte became U+FFFD
    assert job.state == ImportState.DONE, job.error
    assert job.added == 12_001
    assert Place.objects.get(dataset=job.dataset, source_key="last").name == "Price \ufffd 5"


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_nul_characters_become_replacement_characters(sample_regions, tmp_path, kind):
    # PostgreSQL text and JSON cannot hold NUL; one in a value used to abort the import
    if kind == "csv":
        path = tmp_path / "nul.csv"
        rows = "".join(f"r{i},Name {i},-0.1,51.5\n" for i in range(300))  # past the sniffed head
        path.write_bytes(f"id,name,lon,lat\n{rows}".encode() + b"nul,Bad\x00Name,-0.1,51.5\n")
    else:
        path = tmp_path / "nul.json"
        path.write_text(
            '[{"id": "nul", "name": "Bad\\u0000Name", "lat": 51.5, "lng": -0.1, '
            '"note\\u0000": "x"}]'
        )
    job = _run(path, f"nul-{kind}")
    assert job.state == ImportState.DONE, job.error
    place = Place.objects.get(dataset=job.dataset, source_key="nul")
    assert place.name == "Bad\ufffdName"

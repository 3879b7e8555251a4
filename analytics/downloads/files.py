"""The files: GeoParquet 1.1.0 and CSV of a selection, written chunk by chunk from a
server-side cursor (see the package docstring)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings
from django.db import connections

from analytics.downloads.selectors import (
    Selection,
    SelectionFacts,
    read_snapshot,
    selection_facts,
    selection_versions,
    where_in,
)
from analytics.models_downloads import DownloadFormat
from places.serving.fields import FIELDS, PROPERTIES, csv_header
from places.serving.query import PlaceQuery

GEOPARQUET_VERSION = "1.1.0"
MEDIA_TYPES: dict[str, str] = {
    DownloadFormat.PARQUET: "application/vnd.apache.parquet",
    DownloadFormat.CSV: "text/csv; charset=utf-8",
}
EXTENSIONS: dict[str, str] = {DownloadFormat.PARQUET: "parquet", DownloadFormat.CSV: "csv"}

# One statement joins what the file shows; regions are read from the table (few, cached).
FROM = """
FROM places_place p
JOIN places_dataset d ON d.id = p.dataset_id
LEFT JOIN places_region c ON c.id = p.country_id
LEFT JOIN places_region r ON r.id = p.region_id
"""

# Dates and times travel as the numbers Arrow stores (days, microseconds since 1970): psycopg
# parsing each timestamp's text into a datetime took half of a file's build.
DAYS = "({} - DATE '1970-01-01')"
MICROSECONDS = "(extract(epoch FROM {}) * 1000000)::bigint"
# (column, SQL, Arrow type): the Parquet columns in order, before the geometries.
PARQUET_COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = (
    ("id", "p.id", pa.int64()),
    ("name", "p.name", pa.string()),
    ("religion", "p.religion", pa.string()),
    ("religion_raw", "p.religion_raw", pa.string()),
    ("denominations", "p.denominations", pa.list_(pa.string())),
    ("denomination_raw", "p.denomination_raw", pa.string()),
    ("dataset", "d.slug", pa.string()),
    ("source_key", "p.source_key", pa.string()),
    ("country_code", "c.code", pa.string()),
    ("country_name", "c.name", pa.string()),
    ("region_id", "r.id", pa.int64()),
    ("region_code", "r.code", pa.string()),
    ("region_name", "r.name", pa.string()),
    ("status", "p.status", pa.string()),
    ("start_date", DAYS.format("p.start_date"), pa.date32()),
    ("start_date_raw", "p.start_date_raw", pa.string()),
    ("end_date", DAYS.format("p.end_date"), pa.date32()),
    ("end_date_raw", "p.end_date_raw", pa.string()),
    # JSON text: every reader can parse it, where Parquet's JSON type is not read by all.
    ("tags", "p.tags::text", pa.string()),
    ("version", "p.version", pa.int64()),
    ("updated_at", MICROSECONDS.format("p.updated_at"), pa.timestamp("us", tz="UTC")),
)
BBOX_TYPE = pa.struct(
    [("xmin", pa.float64()), ("ymin", pa.float64()), ("xmax", pa.float64()), ("ymax", pa.float64())]
)
PARQUET_SCHEMA = pa.schema(
    [
        *[pa.field(name, kind) for name, _, kind in PARQUET_COLUMNS],
        pa.field("geometry", pa.binary(), nullable=False),
        pa.field("bbox", BBOX_TYPE, nullable=False),
        pa.field("footprint", pa.binary()),
    ]
)
# The point's WKB and its coordinates (a point's box is the point itself), then the footprint.
PARQUET_SQL = (
    "SELECT "
    + ", ".join(sql for _, sql, _ in PARQUET_COLUMNS)
    + ", ST_AsBinary(p.location), ST_X(p.location), ST_Y(p.location), ST_AsBinary(p.footprint)"
    + FROM
    + "WHERE {where} ORDER BY p.id"
)
CSV_HEADER = [*csv_header(list(PROPERTIES)), "footprint_wkt"]
# The list's CSV line (``places.serving.fields``: the same cells, quoting and spreadsheet
# rule), plus the footprint. WKT has no formula characters to guard and no quotes inside.
CSV_SQL = (
    "SELECT concat_ws(',', p.id::text, "
    "round(ST_X(p.location)::numeric, 7)::text, round(ST_Y(p.location)::numeric, 7)::text, "
    + ", ".join(expr for name in PROPERTIES for _, expr in FIELDS[name].csv)
    + ", coalesce('\"' || ST_AsText(p.footprint) || '\"', ''))"
    + FROM
    + "WHERE {where} ORDER BY p.id"
)


def geo_metadata(facts: SelectionFacts) -> dict[str, Any]:
    """The ``geo`` key of GeoParquet 1.1.0 (``crs`` left out: OGC:CRS84, see the module
    docstring). The file-level boxes are the selection's extents; the covering tells readers
    that the ``bbox`` struct column holds each row's box of ``geometry``."""
    geometry: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": ["Point"],
        "covering": {
            "bbox": {
                "xmin": ["bbox", "xmin"],
                "ymin": ["bbox", "ymin"],
                "xmax": ["bbox", "xmax"],
                "ymax": ["bbox", "ymax"],
            }
        },
    }
    footprint: dict[str, Any] = {"encoding": "WKB", "geometry_types": ["MultiPolygon"]}
    if facts.bbox is not None:
        geometry["bbox"] = facts.bbox
    if facts.footprint_bbox is not None:
        footprint["bbox"] = facts.footprint_bbox
    return {
        "version": GEOPARQUET_VERSION,
        "primary_column": "geometry",
        "columns": {"geometry": geometry, "footprint": footprint},
    }


def file_metadata(
    *, facts: SelectionFacts, selection: Selection, versions: tuple[str, str]
) -> dict[bytes, bytes]:
    """The Parquet key-value metadata: ``geo``, and what a researcher must cite and can
    reproduce (datasets with licence and attribution, the filters, the versions)."""
    return {
        b"geo": json.dumps(geo_metadata(facts)).encode(),
        b"places:datasets": json.dumps(facts.datasets).encode(),
        b"places:selection": json.dumps(selection.to_json()).encode(),
        b"places:data_version": versions[0].encode(),
        b"places:region_version": versions[1].encode(),
    }


def _fetch_chunks(*, sql: str, params: dict[str, Any], using: str) -> Iterator[list[tuple]]:
    # A server-side cursor: PostgreSQL keeps the result and hands over one chunk per fetch.
    with connections[using].chunked_cursor() as cursor:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(settings.DOWNLOADS_CHUNK_ROWS):
            yield rows


def _parquet_batch(rows: list[tuple]) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True))
    width = len(PARQUET_COLUMNS)
    arrays = [pa.array(columns[i], type=kind) for i, (_, _, kind) in enumerate(PARQUET_COLUMNS)]
    xs = pa.array(columns[width + 1], type=pa.float64())
    ys = pa.array(columns[width + 2], type=pa.float64())
    arrays += [
        pa.array(columns[width], type=pa.binary()),
        pa.StructArray.from_arrays([xs, ys, xs, ys], fields=list(BBOX_TYPE)),
        pa.array(columns[width + 3], type=pa.binary()),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=PARQUET_SCHEMA)


Progress = Callable[[int], None]


def _write_parquet(
    *,
    out: IO[bytes],
    query: PlaceQuery,
    metadata: dict[bytes, bytes],
    using: str,
    progress: Progress,
) -> int:
    where, params = query.where()
    schema = PARQUET_SCHEMA.with_metadata(metadata)
    done = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        for rows in _fetch_chunks(sql=where_in(PARQUET_SQL, where), params=params, using=using):
            writer.write_batch(_parquet_batch(rows).replace_schema_metadata(metadata))
            done += len(rows)
            progress(done)
    return done


def _write_csv(*, out: IO[bytes], query: PlaceQuery, using: str, progress: Progress) -> int:
    where, params = query.where()
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    csv.writer(text, lineterminator="\n").writerow(CSV_HEADER)
    done = 0
    for rows in _fetch_chunks(sql=where_in(CSV_SQL, where), params=params, using=using):
        text.write("".join(line + "\n" for (line,) in rows))
        done += len(rows)
        progress(done)
    text.detach()  # the caller owns ``out``
    return done


def selection_write(
    *,
    out: IO[bytes],
    selection: Selection,
    fmt: str,
    facts: SelectionFacts,
    versions: tuple[str, str],
    using: str,
    progress: Progress = lambda done: None,
) -> int:
    """Write the places of ``selection`` to ``out`` in ``fmt``, in id order; return how many.

    Call inside ``read_snapshot(using)`` with the facts and versions read there.
    """
    if fmt == DownloadFormat.PARQUET:
        metadata = file_metadata(facts=facts, selection=selection, versions=versions)
        return _write_parquet(
            out=out, query=selection.query, metadata=metadata, using=using, progress=progress
        )
    return _write_csv(out=out, query=selection.query, using=using, progress=progress)


@dataclass(frozen=True)
class SmallDownload:
    body: bytes
    datasets: list[dict[str, str]]


def selection_bytes(*, selection: Selection, fmt: str, using: str = "default") -> SmallDownload:
    """A small selection's file, whole, read in one snapshot (the request's answer)."""
    out = io.BytesIO()
    with read_snapshot(using):
        versions = selection_versions(query=selection.query, using=using)
        facts = selection_facts(query=selection.query, using=using)
        selection_write(
            out=out, selection=selection, fmt=fmt, facts=facts, versions=versions, using=using
        )
    return SmallDownload(body=out.getvalue(), datasets=facts.datasets)

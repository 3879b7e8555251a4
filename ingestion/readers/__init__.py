"""Stream records out of uploaded files, without trusting their names or contents.

The format is decided from the file's first bytes, not its name. Compressed input is checked
for bombs before any parser sees it. Geo formats are opened by pyogrio (GDAL 3.12 from its
wheel) only after the file passed those checks, with every GDAL driver but the four allowed
ones deregistered, so nothing can follow a file to other files (VRT and friends); Parquet
and JSON arrays are read by pyarrow and ijson.
Records come out in batches, so memory stays flat however large the file is.

| format | detected by | reader |
|---|---|---|
| ``shapefile`` | zip magic; members checked (paths, links, kinds, sizes) | ``GeoReader`` |
| ``gpkg`` | SQLite magic | ``GeoReader`` |
| ``parquet`` | ``PAR1`` magic (plain Parquet or GeoParquet) | ``ParquetReader`` |
| ``geojson`` | a JSON object that is a FeatureCollection, Feature or geometry | ``GeoReader`` |
| ``geojsonseq`` | RFC 8142 record separators, or one Feature per line | ``GeoReader`` |
| ``json`` | a JSON array of objects (the go-bayes export) | ``JsonArrayReader`` |
| ``csv`` | any other text | ``CsvReader`` |

Text formats may be gzip-compressed. Every ``.shp`` in a zip is a layer, in whatever folder it
sits, named by its path without the suffix.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ingestion.readers.base import (
    BATCH_ROWS,
    MAX_CELL_BYTES,
    MAX_COLUMNS,
    MAX_EXPANDED_BYTES,
    MAX_EXPANSION_RATIO,
    Batch,
    Layer,
    UnreadableFile,
)
from ingestion.readers.crs import srid_from_crs
from ingestion.readers.delimited import CsvReader, detect_encoding, open_text_head
from ingestion.readers.drivers import ALLOWED_DRIVERS, GDAL_FORMATS
from ingestion.readers.jsonarray import JsonArrayReader
from ingestion.readers.parquet import ParquetReader
from ingestion.readers.safety import GZIP_MAGIC, check_gzip, check_zip, wkb_problem

__all__ = [
    "ALLOWED_DRIVERS",
    "BATCH_ROWS",
    "FORMATS",
    "GDAL_FORMATS",
    "MAX_CELL_BYTES",
    "MAX_COLUMNS",
    "MAX_EXPANDED_BYTES",
    "MAX_EXPANSION_RATIO",
    "Batch",
    "CsvReader",
    "JsonArrayReader",
    "Layer",
    "ParquetReader",
    "UnreadableFile",
    "detect_encoding",
    "detect_format",
    "open_reader",
    "srid_from_crs",
    "wkb_problem",
]

FORMATS = ("csv", "geojson", "geojsonseq", "gpkg", "json", "parquet", "shapefile")
if TYPE_CHECKING:
    # GeoReader lives in ingestion.readers.geo, imported only where a geo file is read: that
    # module loads pyogrio (see ingestion.readers.drivers).
    from ingestion.readers.geo import GeoReader

    Reader = CsvReader | GeoReader | JsonArrayReader | ParquetReader


_BOM_AND_SPACE = b"\xef\xbb\xbf \t\r\n"
_GEOJSON_TYPES = (
    "FeatureCollection",
    "Feature",
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)
_GEOJSON_TYPE = re.compile(rb'"type"\s*:\s*"(' + "|".join(_GEOJSON_TYPES).encode() + rb')"')


def detect_format(path: Path) -> str:
    """One of ``FORMATS``, from content; raise ``UnreadableFile`` when the file is unusable."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head:
        raise UnreadableFile("the file is empty")
    if head.startswith(b"PK\x03\x04"):
        check_zip(path)
        return "shapefile"
    if head.startswith(b"PK"):
        raise UnreadableFile("the zip file is empty or damaged")
    if head.startswith(b"SQLite format 3\x00"):
        return "gpkg"
    if head.startswith(b"PAR1"):
        return "parquet"
    compressed = head.startswith(GZIP_MAGIC)
    if compressed:
        check_gzip(path)
    text = open_text_head(path)
    if compressed:
        for magic, name in ((b"PAR1", "Parquet"), (b"SQLite", "GeoPackage"), (b"PK", "zip")):
            if text.startswith(magic):
                raise UnreadableFile(
                    f"a gzip-compressed {name} file is not supported: upload it as it is"
                )
    stripped = text.lstrip(_BOM_AND_SPACE)
    if not stripped:
        raise UnreadableFile("the file is empty" + (" once decompressed" if compressed else ""))
    if stripped.startswith(b"\x1e"):
        return "geojsonseq"
    if stripped.startswith(b"{"):
        return _json_object_format(stripped)
    if stripped.startswith(b"[") and stripped[1:].lstrip(_BOM_AND_SPACE)[:1] in {b"{", b"]", b"["}:
        return "json"
    if b"\x00" in text[:4096]:
        raise UnreadableFile("the file is binary and not a supported format")
    return "csv"


def _json_object_format(text: bytes) -> str:
    """GeoJSON, GeoJSONSeq (one Feature per line), or refused: JSON that is not GeoJSON."""
    first, _, rest = text.partition(b"\n")
    try:
        obj = json.loads(first)
    except (ValueError, RecursionError):
        obj = None  # pretty-printed, or a first line longer than the sample
    if isinstance(obj, dict):
        kind = obj.get("type")
        if kind == "Feature" and rest.strip():
            return "geojsonseq"
        if kind in _GEOJSON_TYPES:
            return "geojson"
    elif _GEOJSON_TYPE.search(text):
        return "geojson"
    raise UnreadableFile(
        "the file is a JSON object but not GeoJSON (no FeatureCollection or Feature); "
        "JSON uploads must be GeoJSON, GeoJSONSeq or an array of objects"
    )


def open_reader(path: Path, fmt: str | None = None) -> Reader:
    fmt = fmt or detect_format(path)
    if fmt == "csv":
        return CsvReader(path)
    if fmt == "json":
        return JsonArrayReader(path)
    if fmt == "parquet":
        return ParquetReader(path)
    if fmt in GDAL_FORMATS:
        from ingestion.readers.geo import GeoReader

        return GeoReader(path, fmt)
    raise UnreadableFile(f"format {fmt!r} is not supported")

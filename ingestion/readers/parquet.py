"""Parquet and GeoParquet through pyarrow, streamed batch by batch.

GeoParquet keeps its geometry as WKB in a binary column named by the file's ``geo`` metadata
(``primary_column``), with the coordinate system as PROJJSON (absent means OGC:CRS84, i.e.
WGS84 longitude/latitude). Plain Parquet with longitude/latitude columns reads like a CSV.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ingestion.readers.base import (
    BATCH_ROWS,
    EXPANSION_RATIO_FLOOR,
    MAX_EXPANDED_BYTES,
    MAX_EXPANSION_RATIO,
    MAX_PARQUET_ROWS,
    Batch,
    Layer,
    UnreadableFile,
    as_text,
    cap_arrow_cells,
    check_columns,
    first_line,
)
from ingestion.readers.safety import reject_bad_wkb

MAGIC = b"PAR1"
# Bounded reads: pyarrow streams each column chunk through a buffer of this size instead of
# loading whole row groups.
_READ_BUFFER = 1 << 20


class ParquetReader:
    format = "parquet"

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.file = pq.ParquetFile(path, buffer_size=_READ_BUFFER, pre_buffer=False)
            metadata = self.file.metadata
            schema = self.file.schema_arrow
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise UnreadableFile(f"not a readable Parquet file: {first_line(exc)}") from None
        names = list(schema.names)
        check_columns(names, what="Parquet file")
        self.num_rows = int(metadata.num_rows)
        if self.num_rows == 0:
            raise UnreadableFile("the Parquet file holds no rows")
        if self.num_rows > MAX_PARQUET_ROWS:
            raise UnreadableFile(
                f"the Parquet file has {self.num_rows:,} rows; the limit is {MAX_PARQUET_ROWS:,}"
            )
        _check_expanded_size(metadata, path.stat().st_size)
        geo = _geo_metadata(schema.metadata or {})
        self.geometry: str | None = None
        self.crs: str | None = None
        self.geometry_type: str | None = None
        skip: set[str] = set()
        if geo is not None:
            self.geometry, self.crs, self.geometry_type, skip = _geometry_column(geo, schema)
        self.has_geometry = self.geometry is not None
        self.columns = [n for n in names if n != self.geometry and n not in skip]

    def layers(self) -> list[Layer]:
        return [
            Layer(
                name="",
                geometry_type=self.geometry_type,
                features=self.num_rows,
                crs=self.crs,
                columns=self.columns,
            )
        ]

    def batches(self, layer: str = "") -> Generator[Batch, None, None]:
        wanted = [*self.columns, *([self.geometry] if self.geometry else [])]
        try:
            for record_batch in self.file.iter_batches(
                batch_size=BATCH_ROWS, columns=wanted, use_threads=False
            ):
                rejects: dict[int, tuple[str, str]] = {}
                capped = cap_arrow_cells(record_batch, self.columns, rejects)
                columns = {n: as_text(capped[n], name=n, rejects=rejects) for n in self.columns}
                wkb = None
                if self.geometry:
                    wkb = _storage(record_batch.column(self.geometry)).to_pylist()
                    reject_bad_wkb(wkb, rejects)
                yield Batch.of(
                    columns=columns, wkb=wkb, num_rows=record_batch.num_rows, rejects=rejects
                )
        except UnreadableFile:
            raise
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise UnreadableFile(f"the Parquet file cannot be read: {first_line(exc)}") from None


def _check_expanded_size(metadata: pq.FileMetaData, file_bytes: int) -> None:
    """Refuse a file whose column chunks would expand past the limits (a compression bomb).

    The sizes come from the file's own metadata, and pyarrow refuses a page that decompresses
    to anything but its declared size, so these are the sizes that would be read.
    """
    expanded = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    if expanded > MAX_EXPANDED_BYTES:
        raise UnreadableFile(
            f"the Parquet data expands to {expanded:,} bytes; "
            f"the limit is {MAX_EXPANDED_BYTES:,} bytes"
        )
    if expanded > EXPANSION_RATIO_FLOOR and expanded > MAX_EXPANSION_RATIO * file_bytes:
        raise UnreadableFile(
            f"the Parquet data expands more than {MAX_EXPANSION_RATIO}× (a compression bomb?)"
        )


def _geo_metadata(metadata: dict[bytes, bytes]) -> dict[str, Any] | None:
    raw = metadata.get(b"geo")
    if raw is None:
        return None
    try:
        geo = json.loads(raw)
    except (ValueError, RecursionError):
        raise UnreadableFile("the GeoParquet 'geo' metadata is not valid JSON") from None
    if not isinstance(geo, dict) or not isinstance(geo.get("columns"), dict):
        raise UnreadableFile("the GeoParquet 'geo' metadata has no 'columns' object")
    return geo


def _geometry_column(
    geo: dict[str, Any], schema: pa.Schema
) -> tuple[str, str | None, str | None, set[str]]:
    """Name, CRS, geometry type and bounding-box columns of the primary geometry."""
    primary = geo.get("primary_column")
    if not isinstance(primary, str) or not isinstance(geo["columns"].get(primary), dict):
        raise UnreadableFile("the GeoParquet 'geo' metadata names no primary geometry column")
    if primary not in schema.names:
        raise UnreadableFile(f"the GeoParquet geometry column {primary[:80]!r} is missing")
    spec = geo["columns"][primary]
    encoding = spec.get("encoding")
    if not isinstance(encoding, str) or encoding.upper() != "WKB":
        raise UnreadableFile(
            f"the GeoParquet geometry column {primary[:80]!r} uses the encoding "
            f"{str(encoding)[:40]!r}; only WKB is supported (GeoArrow encodings such as "
            "'point' or 'polygon' are not): write the file with WKB geometries"
        )
    storage = schema.field(primary).type
    if isinstance(storage, pa.ExtensionType):
        storage = storage.storage_type
    if not (pa.types.is_binary(storage) or pa.types.is_large_binary(storage)):
        raise UnreadableFile(f"the GeoParquet geometry column {primary[:80]!r} is not binary")
    # Absent means OGC:CRS84; an explicit null means "unknown", read as WGS84 too (the same
    # rule as GeoJSON): coordinates that are not longitude/latitude are then rejected per row.
    crs = _crs_text(spec["crs"]) if "crs" in spec else "EPSG:4326"
    types = spec.get("geometry_types")
    geometry_type = None
    if isinstance(types, list) and len(types) == 1 and isinstance(types[0], str):
        geometry_type = types[0].removesuffix(" Z")
    skip = set()
    covering = spec.get("covering")
    if isinstance(covering, dict) and isinstance(covering.get("bbox"), dict):
        for path in covering["bbox"].values():
            if isinstance(path, list) and path and isinstance(path[0], str):
                skip.add(path[0])
    return primary, crs, geometry_type, skip - {primary}


def _crs_text(crs: Any) -> str | None:
    """The CRS as ``EPSG:n`` where the PROJJSON names its code, else as PROJJSON text."""
    if crs is None:
        return None
    if isinstance(crs, str):
        return crs
    if not isinstance(crs, dict):
        raise UnreadableFile("the GeoParquet 'crs' is neither PROJJSON nor null")
    ident = crs.get("id")
    if not isinstance(ident, dict) and isinstance(crs.get("ids"), list) and crs["ids"]:
        ident = crs["ids"][0]
    if isinstance(ident, dict):
        authority = str(ident.get("authority", "")).upper()
        code = str(ident.get("code", ""))
        if authority == "EPSG" and code.isascii() and code.isdigit():
            return f"EPSG:{code}"
        if authority == "OGC" and code.upper() == "CRS84":
            return "EPSG:4326"
    return json.dumps(crs)


def _storage(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.storage if isinstance(column, pa.ExtensionArray) else column

"""Stream records out of uploaded files, without trusting their names or contents.

The format is decided from the file's first bytes, not its name. Geo formats are opened by
pyogrio (GDAL 3.12 from its wheel) only after the file passed those checks, and GDAL is told
never to follow a file to other files (``GDAL_SKIP=OGR_VRT``). Records come out in Arrow
batches, so memory stays flat however large the file is.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
from charset_normalizer import from_bytes

from config.gdal import skip_vrt

# GDAL_SKIP must be in the environment before GDAL registers its drivers.
skip_vrt()

import pyogrio  # noqa: E402
from pyogrio.raw import open_arrow  # noqa: E402

BATCH_ROWS = 50_000
MAX_COLUMNS = 1_000
MAX_ZIP_UNCOMPRESSED = 2 * 1024**3
MAX_ZIP_RATIO = 100
SHAPEFILE_MEMBERS = {".shp", ".shx", ".dbf", ".prj", ".cpg", ".qpj", ".sbn", ".sbx", ".xml", ".txt"}
TEXT_MEMBERS = {"README", "LICENSE", "LICENCE", "COPYING"}
ALLOWED_DRIVERS = {"ESRI Shapefile", "GeoJSON", "GeoJSONSeq", "GPKG"}


class UnreadableFile(ValueError):
    """The file cannot be imported; the message says why in words a user can act on."""


@dataclass(frozen=True)
class Layer:
    name: str
    geometry_type: str | None
    features: int | None
    crs: str | None = None
    columns: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Batch:
    """Columns of text values (Arrow arrays), plus WKB geometries for geo formats.

    ``columns`` and ``wkb`` give the same values as Python lists, for row-by-row readers.
    """

    arrays: dict[str, pa.Array]
    wkb_array: pa.Array | None
    num_rows: int

    @cached_property
    def columns(self) -> dict[str, list[str | None]]:
        return {name: values.to_pylist() for name, values in self.arrays.items()}

    @cached_property
    def wkb(self) -> list[bytes | None] | None:
        return None if self.wkb_array is None else self.wkb_array.to_pylist()


def _head(path: Path, size: int = 1 << 16) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(size)


def _open_text_head(path: Path, size: int = 1 << 20) -> bytes:
    """The first decompressed bytes of a plain or gzip file."""
    raw = _head(path, 2)
    opener = gzip.open if raw == b"\x1f\x8b" else open
    with opener(path, "rb") as fh:
        return fh.read(size)


def detect_format(path: Path) -> str:
    """``csv``, ``geojson``, ``shapefile`` or ``gpkg``, from content; raise when unknown."""
    head = _head(path)
    if not head:
        raise UnreadableFile("the file is empty")
    if head.startswith(b"PK\x03\x04"):
        _check_zip(path)
        return "shapefile"
    if head.startswith(b"SQLite format 3\x00"):
        return "gpkg"
    text = _open_text_head(path, 4096)
    if not text.strip():
        raise UnreadableFile("the file is empty")
    stripped = text.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"{") and b'"type"' in text:
        return "geojson"
    if b"\x00" in text:
        raise UnreadableFile("the file is binary and not a supported format")
    return "csv"


def _check_zip(path: Path) -> None:
    """Refuse zips that could escape, explode or smuggle in other formats."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise UnreadableFile(f"not a readable zip file: {exc}") from None
    with archive:
        total = 0
        shp = 0
        for info in archive.infolist():
            name = info.filename
            if name.startswith(("/", "\\")) or ".." in Path(name).parts or ":" in name:
                raise UnreadableFile(f"zip member has an unsafe path: {name!r}")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise UnreadableFile(f"zip member is a symbolic link: {name!r}")
            if info.is_dir():
                continue
            suffix = Path(name).suffix.lower()
            # Geofabrik ships a README; plain text beside the layers is harmless.
            if suffix not in SHAPEFILE_MEMBERS and Path(name).name.upper() not in TEXT_MEMBERS:
                raise UnreadableFile(f"zip member {name!r} is not part of a shapefile")
            shp += suffix == ".shp"
            total += info.file_size
            if info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO:
                raise UnreadableFile(f"zip member {name!r} expands more than {MAX_ZIP_RATIO}×")
        if total > MAX_ZIP_UNCOMPRESSED:
            raise UnreadableFile("zip expands beyond the size limit")
        if not shp:
            raise UnreadableFile("zip holds no .shp file")


def detect_encoding(sample: bytes) -> str:
    """UTF-8 when the bytes decode as UTF-8, else charset-normalizer's best guess."""
    try:
        sample.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if exc.start >= len(sample) - 3:  # a character cut at the end of the sample
            return "utf-8"
    best = from_bytes(sample).best()
    if best is None:
        raise UnreadableFile("cannot tell the text encoding of the file")
    return best.encoding


class CsvReader:
    """Delimited text (any of , ; tab |), plain or gzip, any encoding; all values as text.

    Rows with the wrong number of fields are skipped and kept in ``invalid_rows`` (their
    text and, where known, line number) for the rejection report.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.invalid_rows: list[tuple[int | None, str]] = []
        sample = _open_text_head(path)
        self.encoding = detect_encoding(sample)
        text = sample.decode(self.encoding, errors="replace")
        first_lines = "\n".join(text.splitlines()[:50])
        try:
            self.delimiter = csv.Sniffer().sniff(first_lines, delimiters=",;\t|").delimiter
        except csv.Error:
            self.delimiter = ","
        header = next(csv.reader(io.StringIO(text.lstrip("\ufeff")), delimiter=self.delimiter), [])
        self.header = [h.strip() for h in header]
        if not any(self.header):
            raise UnreadableFile("the CSV has no header row")
        if len(self.header) > MAX_COLUMNS:
            raise UnreadableFile(f"the CSV has {len(self.header)} columns; at most {MAX_COLUMNS}")
        if len(set(self.header)) != len(self.header):
            raise UnreadableFile("the CSV header repeats a column name")

    def layers(self) -> list[Layer]:
        return [Layer(name="", geometry_type=None, features=None, columns=self.header)]

    def batches(self, layer: str = "") -> Iterator[Batch]:
        compression = "gzip" if _head(self.path, 2) == b"\x1f\x8b" else None
        self.invalid_rows = []

        def invalid(row: pacsv.InvalidRow) -> str:
            self.invalid_rows.append((row.number, row.text[:10_000]))
            return "skip"

        try:
            reader = pacsv.open_csv(
                pa.input_stream(str(self.path), compression=compression),
                read_options=pacsv.ReadOptions(
                    encoding=self.encoding,
                    column_names=self.header,
                    skip_rows=1,
                    block_size=4 << 20,
                ),
                parse_options=pacsv.ParseOptions(
                    delimiter=self.delimiter,
                    newlines_in_values=True,
                    invalid_row_handler=invalid,
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in self.header},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
            for record_batch in reader:
                yield Batch(
                    arrays={n: record_batch.column(n) for n in self.header},
                    wkb_array=None,
                    num_rows=record_batch.num_rows,
                )
        except pa.ArrowInvalid as exc:
            raise UnreadableFile(f"the CSV is malformed: {exc}") from None


class GeoReader:
    """Shapefile (zipped), GeoJSON (plain or gzip) and GeoPackage through pyogrio."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.format = fmt
        if fmt == "geojson" and _head(path, 2) == b"\x1f\x8b":
            self.source = f"/vsigzip/{path}"
        elif fmt == "shapefile":
            self.source = f"/vsizip/{path}"
        else:
            self.source = str(path)

    def layers(self) -> list[Layer]:
        try:
            listed = pyogrio.list_layers(self.source)
        except Exception as exc:  # GDAL raises several error types for unreadable input
            raise UnreadableFile(f"GDAL cannot read the file: {exc}") from None
        layers = []
        for name, geometry_type in listed:
            info = pyogrio.read_info(self.source, layer=name)
            if info["driver"] not in ALLOWED_DRIVERS:
                raise UnreadableFile(f"format {info['driver']} is not accepted")
            layers.append(
                Layer(
                    name=str(name),
                    geometry_type=geometry_type,
                    features=int(info["features"]) if info["features"] >= 0 else None,
                    crs=info["crs"],
                    columns=[str(c) for c in info["fields"]],
                )
            )
        return layers

    def batches(self, layer: str) -> Iterator[Batch]:
        with open_arrow(self.source, layer=layer, batch_size=BATCH_ROWS, use_pyarrow=True) as (
            meta,
            reader,
        ):
            # pyogrio names the WKB column after the layer's geometry column (GeoPackage:
            # usually "geom"), or "wkb_geometry" when the format has no name for it.
            geometry = meta.get("geometry_name") or "wkb_geometry"
            names = [str(f) for f in meta["fields"]]
            for record_batch in reader:
                yield Batch(
                    arrays={n: _as_text(record_batch.column(n)) for n in names},
                    wkb_array=record_batch.column(geometry)
                    if geometry in record_batch.schema.names
                    else None,
                    num_rows=record_batch.num_rows,
                )


def _as_text(column: pa.Array) -> pa.Array:
    """Attribute values as text; lists and structs (GeoJSON arrays, objects) as JSON."""
    if pa.types.is_string(column.type):
        return column
    if pa.types.is_nested(column.type):
        return pa.array(
            [None if v is None else json.dumps(v, default=str) for v in column.to_pylist()],
            pa.string(),
        )
    return column.cast(pa.string())


def open_reader(path: Path, fmt: str | None = None) -> CsvReader | GeoReader:
    fmt = fmt or detect_format(path)
    if fmt == "csv":
        return CsvReader(path)
    if fmt in {"geojson", "shapefile", "gpkg"}:
        return GeoReader(path, fmt)
    raise UnreadableFile(f"format {fmt!r} is not supported")


def srid_from_crs(crs: str | None) -> int:
    """EPSG code of a layer's CRS; WGS84 when the file states none (GeoJSON's rule)."""
    if not crs:
        return 4326
    if crs.upper().startswith("EPSG:"):
        return int(crs.split(":", 1)[1])
    from django.contrib.gis.gdal import GDALException, SpatialReference, SRSException

    try:
        srs = SpatialReference(crs)
        srs.identify_epsg()
        srid = srs.srid
    except (GDALException, SRSException, ValueError, TypeError):
        srid = None
    if srid is None:
        raise UnreadableFile(f"cannot identify the coordinate system {crs[:80]!r}")
    return int(srid)

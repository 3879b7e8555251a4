"""What every reader shares: the error users see, batches, layers and the limits on input."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property

import pyarrow as pa
import pyarrow.compute as pc

BATCH_ROWS = 50_000
# A file with more columns than this is refused; no gazetteer source comes close, and every
# column costs memory in every batch.
MAX_COLUMNS = 1_000
# One value (CSV cell, JSON or GeoJSON property, Parquet cell) may hold this many bytes; a row
# with a larger value is rejected as ``cell_too_large`` and the value is cut in its report.
# OSM values stop at 255 characters; a whole ``tags_raw`` object stays far below this.
MAX_CELL_BYTES = 256 * 1024
CELL_PREVIEW_CHARS = 200
# Compressed uploads (zip members, gzip streams, Parquet column chunks) may expand to at most
# this many bytes in all, and by at most this ratio once they pass the floor (small files of
# repeated text compress very well and are harmless).
MAX_EXPANDED_BYTES = 2 * 1024**3
MAX_EXPANSION_RATIO = 100
EXPANSION_RATIO_FLOOR = 16 * 1024**2
# Text formats cannot hold more rows than bytes; Parquet's run-length encoding can (a few
# kilobytes may declare a billion rows), so Parquet files state their rows and are held to this.
MAX_PARQUET_ROWS = 50_000_000


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

    ``rejects`` maps a row's index in the batch to ``(reason, detail)`` for rows the reader
    already knows are unusable (a value over ``MAX_CELL_BYTES``, geometry bytes that are not
    WKB, a JSON item that is not an object); their values are kept, cut short, for the report.
    ``columns`` and ``wkb`` give the same values as Python lists, for row-by-row callers.
    """

    arrays: dict[str, pa.Array]
    wkb_array: pa.Array | None
    num_rows: int
    rejects: dict[int, tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        *,
        columns: dict[str, pa.Array | list[str | None]],
        wkb: pa.Array | list[bytes | None] | None,
        num_rows: int,
        rejects: dict[int, tuple[str, str]] | None = None,
    ) -> Batch:
        """A batch from Arrow arrays or Python lists (readers that build rows by hand)."""
        arrays = {
            name: values if isinstance(values, pa.Array) else pa.array(values, pa.string())
            for name, values in columns.items()
        }
        wkb_array = wkb if wkb is None or isinstance(wkb, pa.Array) else pa.array(wkb, pa.binary())
        return cls(arrays=arrays, wkb_array=wkb_array, num_rows=num_rows, rejects=rejects or {})

    @cached_property
    def columns(self) -> dict[str, list[str | None]]:
        return {name: values.to_pylist() for name, values in self.arrays.items()}

    @cached_property
    def wkb(self) -> list[bytes | None] | None:
        return None if self.wkb_array is None else self.wkb_array.to_pylist()


def check_columns(names: list[str], *, what: str) -> None:
    """Refuse too many columns, repeated names and names PostgreSQL cannot store."""
    if len(names) > MAX_COLUMNS:
        raise UnreadableFile(
            f"the {what} has {len(names):,} columns; the limit is {MAX_COLUMNS:,} columns"
        )
    seen: set[str] = set()
    for name in names:
        if "\x00" in name:
            raise UnreadableFile(f"a column name in the {what} holds a NUL character")
        if name in seen:
            raise UnreadableFile(f"the {what} repeats the column name {name[:80]!r}")
        seen.add(name)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, short enough for a job's error field."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def cell_preview(value: str) -> str:
    """The start of an over-long value, with its size, for the rejection report."""
    size = len(value.encode("utf-8", "replace"))
    return f"{value[:CELL_PREVIEW_CHARS]}… ({size:,} bytes, cut)"


def too_large_detail(column: str, size: int) -> str:
    return f"value of {column[:80]!r} is {size:,} bytes; the limit is {MAX_CELL_BYTES:,} bytes"


def without_nul(text: str) -> str:
    """PostgreSQL text and JSON cannot hold NUL; it becomes U+FFFD like any undecodable byte."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def cap_arrow_cells(
    record_batch: pa.RecordBatch, names: list[str], rejects: dict[int, tuple[str, str]]
) -> dict[str, pa.Array]:
    """Text columns of the batch, with values over ``MAX_CELL_BYTES`` cut and their rows noted.

    The length check is one vectorised pass per column; rows are only visited in Python for
    a column that holds an over-long value. NUL characters are replaced (``without_nul``).
    """
    columns: dict[str, pa.Array] = {}
    for name in names:
        column = record_batch.column(name)
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            if pc.any(pc.match_substring(column, "\x00")).as_py():
                column = pc.replace_substring(column, "\x00", "\ufffd")
            longest = pc.max(pc.binary_length(column)).as_py()
            if longest is not None and longest > MAX_CELL_BYTES:
                values = column.to_pylist()
                for i, value in enumerate(values):
                    if value is not None and len(value.encode("utf-8")) > MAX_CELL_BYTES:
                        size = len(value.encode("utf-8"))
                        rejects.setdefault(i, ("cell_too_large", too_large_detail(name, size)))
                        values[i] = cell_preview(value)
                column = pa.array(values, type=pa.string())
        columns[name] = column
    return columns


_BINARY_TYPES = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_fixed_size_binary)


def as_text(
    column: pa.Array, *, name: str, rejects: dict[int, tuple[str, str]]
) -> list[str | None]:
    """Attribute values as text; lists and structs (GeoJSON arrays, objects) as JSON text.

    Bytes become hex. Any type Arrow cannot cast to text falls back to Python's ``str``.
    Non-text values that come out longer than ``MAX_CELL_BYTES`` (a huge nested object) are
    cut and their rows noted in ``rejects``.
    """
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.to_pylist()
    if pa.types.is_null(column.type):
        return [None] * len(column)
    kind = column.type
    if any(is_(kind) for is_ in _BINARY_TYPES):
        values = [None if v is None else v.hex() for v in column.to_pylist()]
    elif pa.types.is_nested(column.type):
        values = [None if v is None else nested_text(v) for v in column.to_pylist()]
    else:
        try:
            text = column.cast(pa.string())
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            values = [None if v is None else without_nul(str(v)) for v in column.to_pylist()]
        else:
            longest = pc.max(pc.binary_length(text)).as_py()
            if longest is None or longest <= MAX_CELL_BYTES:  # numbers, dates: the usual case
                return text.to_pylist()
            values = text.to_pylist()
    for i, value in enumerate(values):
        if value is not None and len(value) > MAX_CELL_BYTES // 4:  # cheap pre-check on chars
            size = len(value.encode("utf-8"))
            if size > MAX_CELL_BYTES:
                rejects.setdefault(i, ("cell_too_large", too_large_detail(name, size)))
                values[i] = cell_preview(value)
    return values


def nested_text(value: object) -> str:
    """JSON text of a nested value (lists, objects), as the source wrote it."""
    try:
        return without_nul(json.dumps(value, ensure_ascii=False, default=str))
    except RecursionError:
        raise UnreadableFile("a value is nested too deeply to keep (hundreds of levels)") from None

"""One reader batch as staging rows: every column a whole Arrow array at a time."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ingestion.mapping import ColumnMapping
from ingestion.normalize import denominations_normalise, packed_class_split, religion_normalise
from ingestion.readers import Batch
from ingestion.staging.arrow_text import (
    STRING,
    JsonText,
    constant,
    json_escaped,
    json_literal,
    json_object,
    map_distinct,
    pg_array,
    strip,
    text_array,
)
from ingestion.staging.geometry_text import geometry_wkb
from ingestion.staging.repeated import RepeatedKeys
from ingestion.staging.values import coordinates, fingerprints, iso_date, source_keys

# Column order of the CSV written for COPY into ingestion_importstage. ``fields`` holds the
# source-fed values known from the row itself, in the JSON form compared with a place's
# source_values (SQL adds location, footprint, region and country).
STAGE_COLUMNS = (
    "job_id",
    "sid",
    "row_number",
    "layer",
    "source_key",
    "denominations",
    "lon",
    "lat",
    "wkb",
    "srid",
    "fields",
    "fingerprint",
    "raw",
    "reject",
    "reject_detail",
)


MAX_KEY_LENGTH = 255


def batch_texts(batch: Batch) -> dict[str, pa.Array]:
    """The batch's columns as string arrays."""
    return {name: text_array(values, batch.num_rows) for name, values in batch.arrays.items()}


def embedded_newlines(batch: Batch) -> np.ndarray:
    """Per row, the line breaks inside its values: a quoted CSV value may span lines, and
    the rows after it start that many lines further down the file."""
    extra = np.zeros(batch.num_rows, dtype=np.int64)
    for values in batch.arrays.values():
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            counts = pc.fill_null(pc.count_substring(values, "\n"), 0)
            extra += counts.to_numpy(zero_copy_only=False).astype(np.int64)
    return extra


def raw_values(arrays: dict[str, pa.Array], size: int | None = None) -> pa.Array:
    """Each row's original values as a JSON object (for the rejected-row report); ``size``
    rows when there are no columns."""
    if arrays:
        size = len(next(iter(arrays.values())))
    return json_object(
        [
            (
                n,
                json_literal(values) if values.null_count else JsonText(json_escaped(values)),
            )
            for n, values in arrays.items()
        ],
        size=size or 0,
    )


# A typed null made from an array, not pa.scalar(None): that call imports pandas when it is
# installed (57 MiB in every process that loads this module, the web workers included).
_NULL_TEXT = pa.nulls(1, pa.string())[0]


class _Rejections:
    """Reasons and details per row, in order of precedence: the first that applies wins."""

    def __init__(self, batch: Batch) -> None:
        self.reasons: list[pa.Array] = []
        self.details: list[pa.Array] = []
        if batch.rejects:
            # What the reader already refused (a cell over the size limit, bytes that are not
            # WKB) comes first: the rest of such a row cannot be trusted.
            given = [batch.rejects.get(i) for i in range(batch.num_rows)]
            self.reasons.append(pa.array([g[0] if g else None for g in given], pa.string()))
            self.details.append(pa.array([g[1] if g else None for g in given], pa.string()))

    def add(self, condition: pa.Array | np.ndarray, reason: str, text: pa.Array | str) -> None:
        condition = pa.array(condition) if isinstance(condition, np.ndarray) else condition
        self.reasons.append(pc.if_else(condition, reason, _NULL_TEXT))
        self.details.append(pc.if_else(condition, text, _NULL_TEXT))

    def add_each(self, given: list[tuple[str, str] | None]) -> None:
        """A reason and detail of its own for each row (None: no rejection)."""
        self.reasons.append(pa.array([g[0] if g else None for g in given], pa.string()))
        self.details.append(pa.array([g[1] if g else None for g in given], pa.string()))

    def reason(self) -> pa.Array:
        return pc.coalesce(*self.reasons)

    def detail(self) -> pa.Array:
        return pc.coalesce(*self.details)


@dataclass
class _Location:
    """The columns that place a row: lon/lat text (CSV and other tables) or hex WKB (geo
    files, and tables' geometry columns), which lon/lat are usable numbers, and which lie
    outside WGS84 (tables only)."""

    lon: pa.Array
    lat: pa.Array
    wkb: pa.Array
    usable: np.ndarray
    outside: np.ndarray | None = None
    missing: str = "no longitude/latitude values"


def _hex_wkb(values: list[bytes | None]) -> pa.Array:
    """WKB as PostgreSQL's hex bytea text for COPY."""
    return pa.array([None if w is None else "\\x" + w.hex() for w in values], pa.string())


def _location(
    batch: Batch, arrays: dict[str, pa.Array], mapping: ColumnMapping, rejections: _Rejections
) -> _Location:
    """The row's position columns; unreadable and non-finite coordinates are rejected.

    A table row with a value in the geometry column is placed by it (its longitude and
    latitude, if any, are not read); rows without one use longitude and latitude.
    """
    size = batch.num_rows
    if batch.wkb_array is not None:
        nothing = pa.nulls(size, pa.string())
        return _Location(
            lon=nothing,
            lat=nothing,
            wkb=_hex_wkb(batch.wkb_array.to_pylist()),
            usable=np.zeros(size, dtype=bool),
        )
    wkb = pa.nulls(size, pa.string())
    by_geometry = np.zeros(size, dtype=bool)
    if mapping.geometry:
        texts = strip(text_array(arrays.get(mapping.geometry), size))
        parsed, problems = geometry_wkb(texts.to_pylist())
        # A value that is a geometry, or a rejected attempt at one, places (or rejects) its
        # row; an empty cell and an EMPTY geometry leave it to longitude and latitude.
        by_geometry = np.array(
            [w is not None or p is not None for w, p in zip(parsed, problems, strict=True)],
            dtype=bool,
        )
        wkb = _hex_wkb(parsed)
        rejections.add_each(problems)
    lon, lon_ok, lon_finite, lon_text, lon_error = coordinates(
        text_array(arrays.get(mapping.lon) if mapping.lon else None, size)
    )
    lat, lat_ok, lat_finite, lat_text, lat_error = coordinates(
        text_array(arrays.get(mapping.lat) if mapping.lat else None, size)
    )
    unreadable = [
        None if placed else f"lon {le}" if le else f"lat {ae}" if ae else None
        for le, ae, placed in zip(lon_error, lat_error, by_geometry, strict=True)
    ]
    rejections.add(pc.is_valid(pa.array(unreadable, pa.string())), "bad_coordinates", unreadable)
    rejections.add(
        lon_ok & lat_ok & ~(lon_finite & lat_finite) & ~by_geometry,
        "bad_coordinates",
        "coordinates must be finite numbers",
    )
    usable_lon = lon_ok & lon_finite & ~by_geometry
    usable_lat = lat_ok & lat_finite & ~by_geometry
    with np.errstate(invalid="ignore"):
        outside = (np.abs(lon) > 180) | (np.abs(lat) > 90)
    return _Location(
        lon=pc.if_else(pa.array(usable_lon), lon_text, _NULL_TEXT),
        lat=pc.if_else(pa.array(usable_lat), lat_text, _NULL_TEXT),
        wkb=wkb,
        usable=usable_lon & usable_lat,
        outside=outside,
        missing=(
            "no geometry and no longitude/latitude values"
            if mapping.geometry
            else "no longitude/latitude values"
        ),
    )


def _reject_by_key_and_position(
    rejections: _Rejections, source_key: pa.Array, where: _Location
) -> None:
    """The rules after the coordinates' own: key present and short enough, a position,
    inside WGS84 (geometries are checked in SQL, after reprojection)."""
    key_length = pc.utf8_length(source_key)
    rejections.add(pc.equal(source_key, ""), "missing_key", "the key columns are empty")
    rejections.add(
        pc.greater(key_length, MAX_KEY_LENGTH),
        "key_too_long",
        pc.binary_join_element_wise(
            "key has ",
            pc.cast(key_length, pa.string()),
            f" characters; at most {MAX_KEY_LENGTH}",
            "",
        ),
    )
    no_point = pc.and_(pc.is_null(where.wkb), pa.array(~where.usable))
    rejections.add(no_point, "missing_geometry", where.missing)
    if where.outside is not None:
        rejections.add(
            where.outside & where.usable,
            "bad_coordinates",
            pc.binary_join_element_wise(
                "lon ", where.lon, ", lat ", where.lat, " is outside WGS84 range", ""
            ),
        )


def _religion_texts(
    arrays: dict[str, pa.Array], mapping: ColumnMapping, religion: pa.Array, denomination: pa.Array
) -> tuple[pa.Array, pa.Array]:
    """Religion and denomination as written, filled from a packed class (Geofabrik's
    ``christian_anglican``) where the row has no religion column value of its own."""
    if not mapping.packed_class:
        return religion, denomination
    packed = map_distinct(
        text_array(arrays.get(mapping.packed_class), len(religion)),
        lambda v: dict(zip(("r", "d"), packed_class_split(v), strict=True)),
        pa.struct([("r", pa.string()), ("d", pa.string())]),
    )
    unset = pc.equal(religion, "")
    denomination = pc.if_else(
        pc.and_(unset, pc.equal(denomination, "")),
        pc.fill_null(pc.struct_field(packed, "d"), ""),
        denomination,
    )
    return pc.if_else(unset, pc.fill_null(pc.struct_field(packed, "r"), ""), religion), denomination


def _dates(start_raw: pa.Array, end_raw: pa.Array) -> tuple[pa.Array, pa.Array]:
    start = pc.cast(map_distinct(start_raw, iso_date, pa.string()), pa.date32())
    end = pc.cast(map_distinct(end_raw, iso_date, pa.string()), pa.date32())
    # An end before the start cannot both be right; the raw text stays, the parsed end goes.
    return start, pc.if_else(
        pc.fill_null(pc.less(end, start), False), pa.scalar(None, pa.date32()), end
    )


def _tags(arrays: dict[str, pa.Array], mapping: ColumnMapping, size: int) -> pa.Array:
    """Columns the mapping does not consume, as a JSON object of their non-empty values."""
    used = mapping.used_columns()
    return json_object(
        [
            (
                n,
                pc.binary_join_element_wise(
                    '"', pc.if_else(pc.equal(values, ""), _NULL_TEXT, json_escaped(values)), '"', ""
                ),
            )
            for n, values in arrays.items()
            if n not in used
        ],
        size=size,
    )


def _raw_kept(
    arrays: dict[str, pa.Array],
    reason: pa.Array,
    source_key: pa.Array,
    repeated: RepeatedKeys | None,
) -> pa.Array:
    """Original values for rows rejected here and, given ``repeated``, for valid rows whose
    key may repeat an earlier row's (they may lose under the duplicate rule in SQL); other
    valid rows never carry them."""
    keep = pc.is_valid(reason).to_numpy(zero_copy_only=False).copy()
    if repeated is not None:
        valid = np.flatnonzero(~keep)
        keep[valid[repeated.mark(source_key.take(pa.array(valid)))]] = True
    raw = pa.nulls(len(reason), STRING)
    if not keep.any():
        return raw
    picked = pa.array(np.flatnonzero(keep))
    return pc.replace_with_mask(
        raw,
        pa.array(keep),
        raw_values({n: values.take(picked) for n, values in arrays.items()}, len(picked)),
    )


def _denominations(denomination_raw: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Denominations normalised once per distinct value, as JSON (for ``fields``) and as a
    PostgreSQL text[] literal (for the column)."""
    encoded = pc.dictionary_encode(denomination_raw)
    normalised = [denominations_normalise(v) for v in encoded.dictionary.to_pylist()]
    as_json = pa.array([json.dumps(d, ensure_ascii=False) for d in normalised], STRING)
    as_array = pa.array([pg_array(d) for d in normalised], STRING)
    return as_json.take(encoded.indices), as_array.take(encoded.indices)


def stage_batch(
    batch: Batch,
    mapping: ColumnMapping,
    *,
    job_id: int,
    first_sid: int,
    layer: str,
    first_row_number: int,
    geometry_kind: str,
    srid: int,
    row_numbers: np.ndarray | None = None,
    repeated: RepeatedKeys | None = None,
) -> pa.Table:
    """One batch as staging rows (see STAGE_COLUMNS): normalised values, raw values kept,
    and the rejections a row's own values decide. Rows are numbered from
    ``first_row_number`` on, unless ``row_numbers`` gives each one (CSV lines).
    ``repeated`` tracks the file's keys across its batches (see RepeatedKeys)."""
    size = batch.num_rows
    arrays = batch_texts(batch)

    def column(name: str | None) -> pa.Array:
        return strip(text_array(arrays.get(name) if name else None, size))

    source_key = source_keys(
        arrays, mapping, kind=geometry_kind, size=size, geometry=batch.wkb_array, layer=layer
    )
    rejections = _Rejections(batch)
    where = _location(batch, arrays, mapping, rejections)
    _reject_by_key_and_position(rejections, source_key, where)
    reason = rejections.reason()
    religion_raw, denomination_raw = _religion_texts(
        arrays, mapping, column(mapping.religion), column(mapping.denomination)
    )
    start_raw, end_raw = column(mapping.start_date), column(mapping.end_date)
    start_date, end_date = _dates(start_raw, end_raw)
    denominations, denomination_array = _denominations(denomination_raw)
    fields = json_object(
        [
            ("name", JsonText(json_escaped(column(mapping.name)))),
            ("religion", JsonText(map_distinct(religion_raw, religion_normalise, STRING))),
            ("religion_raw", JsonText(json_escaped(religion_raw))),
            ("denominations", denominations),
            ("denomination_raw", JsonText(json_escaped(denomination_raw))),
            ("tags", _tags(arrays, mapping, size)),
            ("start_date", json_literal(pc.cast(start_date, pa.string()))),
            ("start_date_raw", JsonText(json_escaped(start_raw))),
            ("end_date", json_literal(pc.cast(end_date, pa.string()))),
            ("end_date_raw", JsonText(json_escaped(end_raw))),
        ],
        size=size,
    )
    if row_numbers is None:
        row_numbers = np.arange(first_row_number, first_row_number + size, dtype=np.int64)
    return pa.table(
        {
            "job_id": constant(job_id, size, pa.int64()),
            "sid": pa.array(np.arange(first_sid, first_sid + size, dtype=np.int64)),
            "row_number": pa.array(row_numbers),
            "layer": constant(layer, size),
            "source_key": source_key,
            "denominations": denomination_array,
            "lon": where.lon,
            "lat": where.lat,
            "wkb": where.wkb,
            "srid": constant(srid, size, pa.int64()),
            "fields": fields,
            "fingerprint": fingerprints(fields, where.lon, where.lat, where.wkb, srid),
            "raw": _raw_kept(arrays, reason, source_key, repeated),
            "reject": reason,
            "reject_detail": rejections.detail(),
        }
    )


def stage_csv(table: pa.Table) -> bytes:
    """The rows as CSV for ``COPY … (FORMAT csv)``: values quoted, so NULL stays apart from
    the empty string."""
    out = io.BytesIO()
    pacsv.write_csv(table, out, pacsv.WriteOptions(include_header=False, quoting_style="all_valid"))
    return out.getvalue()

"""Turn reader batches into staging rows a whole Arrow batch at a time.

Per-row Python was the import's main cost. Here every column is handled by pyarrow's compute
kernels, and the normalisers (religion, denominations, dates, packed classes) run once per
*distinct* value of a batch: these columns repeat heavily, so a 50,000-row batch needs a few
hundred calls instead of 200,000. The result is written as CSV by pyarrow for ``COPY``.

Rejections that need only the row's own values (key, coordinates) are decided here; the
ones that need PostGIS (reprojection, polygon repair) and duplicate keys are decided in SQL.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ingestion.mapping import ColumnMapping
from ingestion.normalize import (
    date_parse,
    denominations_normalise,
    packed_class_split,
    religion_normalise,
)
from ingestion.readers import Batch
from ingestion.readers.delimited import INVALID_ROW_TEXT

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

# Exactly the characters str.strip() removes (str.isspace()), so trimming in Arrow gives the
# same values as the per-row code it replaced.
PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# Numbers that Arrow and Python's float() read identically; anything else (inf, nan, 1_000,
# other scripts' digits, garbage) goes through float() itself, one value at a time.
_PLAIN_NUMBER = r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$"
_CONTROL = r"[\x00-\x1f]"


def _text(values: pa.Array | Sequence[str | None] | None, size: int) -> pa.Array:
    """A string array of ``size`` values (all null when the column is absent)."""
    if values is None:
        return pa.nulls(size, pa.string())
    if not isinstance(values, pa.Array | pa.ChunkedArray):
        return pa.array(values, pa.string())
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values if values.type == pa.string() else values.cast(pa.string())


def _strip(values: pa.Array) -> pa.Array:
    """Python's ``(value or "").strip()`` for a whole column."""
    return pc.utf8_trim(pc.fill_null(values, ""), characters=PY_WHITESPACE)


_STRING = pa.string()


def _constant(value: Any, size: int, type_: pa.DataType = _STRING) -> pa.Array:
    return pa.array([value], type_).take(pa.array(np.zeros(size, dtype=np.int64)))


def _map_distinct(values: pa.Array, fn: Callable[[Any], Any], type_: pa.DataType) -> pa.Array:
    """``fn`` applied once per distinct value of ``values`` and spread back over the rows."""
    encoded = pc.dictionary_encode(values)
    mapped = pa.array([fn(v) for v in encoded.dictionary.to_pylist()], type_)
    return mapped.take(encoded.indices)


def _data_bytes(values: pa.Array) -> np.ndarray:
    """The UTF-8 bytes of a string array's values, without copying."""
    _, offsets, data = values.buffers()
    if data is None or len(values) == 0:
        return np.empty(0, dtype=np.uint8)
    bounds = np.frombuffer(offsets, dtype=np.int32)[values.offset : values.offset + len(values) + 1]
    return np.frombuffer(data, dtype=np.uint8)[bounds[0] : bounds[-1]]


def _json_escaped(values: pa.Array) -> pa.Array:
    """Each value escaped for the inside of a JSON string (null stays null).

    A byte scan of the whole column decides which (rare) replacements are needed at all.
    """
    data = _data_bytes(values)
    out = values
    if (data == ord("\\")).any():
        out = pc.replace_substring(out, "\\", "\\\\")
    if (data == ord('"')).any():
        out = pc.replace_substring(out, '"', '\\"')
    if (data < 0x20).any():
        for code in range(32):
            out = pc.replace_substring(out, chr(code), f"\\u{code:04x}")
    return out


def _key(name: str) -> str:
    return json.dumps(name, ensure_ascii=False)


@dataclass(frozen=True)
class _Text:
    """A member value given as escaped string content (never null): its quotes are written
    by the join that builds the object, saving a pass per column."""

    escaped: pa.Array


def _json_object(members: list[tuple[str, pa.Array | _Text]], *, size: int) -> pa.Array:
    """One JSON object per row from (key, JSON literal or _Text per row).

    Members whose literal is null are left out. Members that are never null are joined in
    a single pass; only the others need one of their own. (Arrow's null_handling="skip"
    is avoided: it drops rows in which every argument is null.)
    """
    pieces: list[pa.Array | str] = []
    optional: list[pa.Array] = []
    pending = "{"  # text still to be written before the next piece
    for name, value in members:
        prefix = ("," if pieces else "") + _key(name) + ":"
        if isinstance(value, _Text):
            pieces += [pending + prefix + '"', value.escaped]
            pending = '"'
        elif value.null_count == 0:
            pieces += [pending + prefix, value]
            pending = ""
        else:
            member = pc.binary_join_element_wise("," + _key(name) + ":", value, "")
            optional.append(pc.fill_null(member, ""))
    if pieces:
        return pc.binary_join_element_wise(*pieces, pending, *optional, "}", "")
    if not optional:
        return _constant("{}", size)
    # Only optional members: each starts with a comma, and the first one must not.
    body = pc.binary_join_element_wise(*optional, "") if len(optional) > 1 else optional[0]
    return pc.binary_join_element_wise("{", pc.utf8_slice_codeunits(body, 1), "}", "")


def _json_literal(values: pa.Array) -> pa.Array:
    """Each value as a JSON string literal, or ``null``."""
    quoted = pc.binary_join_element_wise('"', _json_escaped(values), '"', "")
    return pc.fill_null(quoted, "null") if values.null_count else quoted


def _pg_array(values: list[str]) -> str:
    """A PostgreSQL text[] literal."""
    quoted = (v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return "{" + ",".join(f'"{v}"' for v in quoted) + "}"


def _iso_date(text: str | None) -> str | None:
    parsed = date_parse(text)
    return parsed.isoformat() if parsed else None


def _source_keys(
    arrays: dict[str, pa.Array], mapping: ColumnMapping, *, kind: str, size: int
) -> pa.Array:
    """The key template filled in per row; empty when a key column is empty."""
    if not mapping.key:
        return _constant("", size)
    parts: list[pa.Array | str] = []
    complete = _constant(True, size, pa.bool_())
    fields = 0
    for literal, field_name, _, _ in string.Formatter().parse(mapping.key):
        if literal:
            parts.append(literal)
        if field_name is None:
            continue
        fields += 1
        if field_name == "_kind":
            values = _constant(kind, size)
        else:
            values = _strip(_text(arrays.get(field_name), size))
        complete = pc.and_(complete, pc.not_equal(values, ""))
        parts.append(values)
    if not fields:
        return _constant("".join(str(p) for p in parts), size)
    keys = pc.binary_join_element_wise(*parts, "")
    return pc.if_else(complete, keys, "")


def _coordinates(
    values: pa.Array,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, pa.Array, list[str | None]]:
    """Parse one coordinate column as Python's ``float()`` would.

    Returns (value, present, finite, text for COPY, error) per row; ``present`` is False for
    an empty cell, ``error`` names a value that is not a number.
    """
    size = len(values)
    stripped = _strip(values)
    empty = pc.equal(stripped, "")
    nothing = pa.scalar(None, pa.string())
    try:
        numbers = pc.cast(pc.if_else(empty, nothing, stripped), pa.float64())
        plain = pc.invert(empty)
    except pa.ArrowInvalid:
        plain = pc.match_substring_regex(stripped, _PLAIN_NUMBER)
        numbers = pc.cast(pc.if_else(plain, stripped, nothing), pa.float64())
    value = numbers.to_numpy(zero_copy_only=False).copy()
    present = plain.to_numpy(zero_copy_only=False).astype(bool)
    with np.errstate(invalid="ignore"):
        # Arrow reads inf and nan too, but float() has the last word on anything unusual.
        plain_finite = present & np.isfinite(value)
    finite = plain_finite.copy()
    text = pc.if_else(pa.array(plain_finite), stripped, nothing)
    errors: list[str | None] = [None] * size
    odd = np.flatnonzero(~plain_finite & ~empty.to_numpy(zero_copy_only=False))
    if odd.size:
        texts = text.to_pylist()
        for i in odd:
            original = values[int(i)].as_py()
            try:
                number = float(original)
            except ValueError:
                present[i] = False
                errors[i] = f"not a number: {original[:40]!r}"
                continue
            value[i], present[i], finite[i] = number, True, math.isfinite(number)
            texts[i] = repr(number) if finite[i] else None
        text = pa.array(texts, pa.string())
    return value, present, finite, text, errors


def _fingerprints(
    fields: pa.Array, lon: pa.Array, lat: pa.Array, wkb: pa.Array, srid: int
) -> pa.Array:
    """A digest per row of everything the row gives a place (its fields and its geometry as
    written), so that a re-import can tell an unchanged row without recomputing it."""
    separator = "\x1e"
    text = pc.binary_join_element_wise(
        fields,
        pc.fill_null(lon, ""),
        pc.fill_null(lat, ""),
        pc.fill_null(wkb, ""),
        str(srid),
        separator,
    )
    return pa.array(
        [hashlib.blake2b(t.encode(), digest_size=16).hexdigest() for t in text.to_pylist()],
        _STRING,
    )


def batch_texts(batch: Batch) -> dict[str, pa.Array]:
    """The batch's columns as string arrays."""
    return {name: _text(values, batch.num_rows) for name, values in batch.arrays.items()}


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
    return _json_object(
        [
            (
                n,
                _json_literal(values) if values.null_count else _Text(_json_escaped(values)),
            )
            for n, values in arrays.items()
        ],
        size=size or 0,
    )


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
        return _strip(_text(arrays.get(name) if name else None, size))

    source_key = _source_keys(arrays, mapping, kind=geometry_kind, size=size)
    name = column(mapping.name)
    religion_raw = column(mapping.religion)
    denomination_raw = column(mapping.denomination)
    if mapping.packed_class:
        fclass = _text(arrays.get(mapping.packed_class), size)
        split = _map_distinct(
            fclass,
            lambda v: dict(zip(("r", "d"), packed_class_split(v), strict=True)),
            pa.struct([("r", pa.string()), ("d", pa.string())]),
        )
        packed_religion = pc.fill_null(pc.struct_field(split, "r"), "")
        packed_denomination = pc.fill_null(pc.struct_field(split, "d"), "")
        unset = pc.equal(religion_raw, "")
        denomination_raw = pc.if_else(
            pc.and_(unset, pc.equal(denomination_raw, "")), packed_denomination, denomination_raw
        )
        religion_raw = pc.if_else(unset, packed_religion, religion_raw)
    start_raw = column(mapping.start_date)
    end_raw = column(mapping.end_date)
    start_date = pc.cast(_map_distinct(start_raw, _iso_date, pa.string()), pa.date32())
    end_date = pc.cast(_map_distinct(end_raw, _iso_date, pa.string()), pa.date32())
    # An end before the start cannot both be right; the raw text stays, the parsed end goes.
    end_date = pc.if_else(
        pc.fill_null(pc.less(end_date, start_date), False), pa.scalar(None, pa.date32()), end_date
    )

    reject: list[pa.Array] = []  # reasons in order of precedence; the first that applies wins
    detail: list[pa.Array] = []
    null_text = pa.scalar(None, pa.string())
    if batch.rejects:
        # What the reader already refused (a cell over the size limit, bytes that are not
        # WKB) comes first: the rest of such a row cannot be trusted.
        given = [batch.rejects.get(i) for i in range(size)]
        reject.append(pa.array([g[0] if g else None for g in given], pa.string()))
        detail.append(pa.array([g[1] if g else None for g in given], pa.string()))

    def rule(condition: pa.Array | np.ndarray, reason: str, text: pa.Array | str) -> None:
        condition = pa.array(condition) if isinstance(condition, np.ndarray) else condition
        reject.append(pc.if_else(condition, reason, null_text))
        detail.append(pc.if_else(condition, text, null_text))

    if batch.wkb_array is None:
        lon, lon_ok, lon_finite, lon_text, lon_error = _coordinates(
            _text(arrays.get(mapping.lon) if mapping.lon else None, size)
        )
        lat, lat_ok, lat_finite, lat_text, lat_error = _coordinates(
            _text(arrays.get(mapping.lat) if mapping.lat else None, size)
        )
        unreadable = [
            f"lon {le}" if le else f"lat {ae}" if ae else None
            for le, ae in zip(lon_error, lat_error, strict=True)
        ]
        rule(pc.is_valid(pa.array(unreadable, pa.string())), "bad_coordinates", unreadable)
        rule(
            lon_ok & lat_ok & ~(lon_finite & lat_finite),
            "bad_coordinates",
            "coordinates must be finite numbers",
        )
        usable_lon, usable_lat = lon_ok & lon_finite, lat_ok & lat_finite
        lon_column = pc.if_else(pa.array(usable_lon), lon_text, null_text)
        lat_column = pc.if_else(pa.array(usable_lat), lat_text, null_text)
        wkb_column = pa.nulls(size, pa.string())
    else:
        usable_lon = usable_lat = np.zeros(size, dtype=bool)
        lon_column = lat_column = pa.nulls(size, pa.string())
        wkb_column = pa.array(
            [None if w is None else "\\x" + w.hex() for w in batch.wkb_array.to_pylist()],
            pa.string(),
        )
    key_length = pc.utf8_length(source_key)
    rule(pc.equal(source_key, ""), "missing_key", "the key columns are empty")
    rule(
        pc.greater(key_length, MAX_KEY_LENGTH),
        "key_too_long",
        pc.binary_join_element_wise(
            "key has ",
            pc.cast(key_length, pa.string()),
            f" characters; at most {MAX_KEY_LENGTH}",
            "",
        ),
    )
    no_point = pc.and_(pc.is_null(wkb_column), pa.array(~(usable_lon & usable_lat)))
    rule(no_point, "missing_geometry", "no longitude/latitude values")
    if batch.wkb_array is None:
        with np.errstate(invalid="ignore"):
            outside = (np.abs(lon) > 180) | (np.abs(lat) > 90)
        rule(
            outside & usable_lon & usable_lat,
            "bad_coordinates",
            pc.binary_join_element_wise(
                "lon ", lon_column, ", lat ", lat_column, " is outside WGS84 range", ""
            ),
        )

    used = mapping.used_columns()
    nothing = pa.scalar(None, pa.string())
    tags = _json_object(
        [
            (
                n,
                pc.binary_join_element_wise(
                    '"', pc.if_else(pc.equal(values, ""), nothing, _json_escaped(values)), '"', ""
                ),
            )
            for n, values in arrays.items()
            if n not in used
        ],
        size=size,
    )
    # Original values are kept for rows rejected here and, given ``repeated``, for valid rows
    # whose key may repeat an earlier row's (they may lose under the duplicate rule in SQL);
    # other valid rows never carry them.
    reject_reason = pc.coalesce(*reject)
    keep = pc.is_valid(reject_reason).to_numpy(zero_copy_only=False).copy()
    if repeated is not None:
        valid = np.flatnonzero(~keep)
        keep[valid[repeated.mark(source_key.take(pa.array(valid)))]] = True
    raw = pa.nulls(size, _STRING)
    if keep.any():
        picked = pa.array(np.flatnonzero(keep))
        raw = pc.replace_with_mask(
            raw,
            pa.array(keep),
            raw_values({n: values.take(picked) for n, values in arrays.items()}, len(picked)),
        )
    # Normalised once per distinct value, written both as JSON (fields) and as text[].
    encoded = pc.dictionary_encode(denomination_raw)
    normalised = [denominations_normalise(v) for v in encoded.dictionary.to_pylist()]
    denominations = pa.array([json.dumps(d, ensure_ascii=False) for d in normalised], _STRING).take(
        encoded.indices
    )
    denomination_array = pa.array([_pg_array(d) for d in normalised], _STRING).take(encoded.indices)
    fields = _json_object(
        [
            ("name", _Text(_json_escaped(name))),
            ("religion", _Text(_map_distinct(religion_raw, religion_normalise, _STRING))),
            ("religion_raw", _Text(_json_escaped(religion_raw))),
            ("denominations", denominations),
            ("denomination_raw", _Text(_json_escaped(denomination_raw))),
            ("tags", tags),
            ("start_date", _json_literal(pc.cast(start_date, pa.string()))),
            ("start_date_raw", _Text(_json_escaped(start_raw))),
            ("end_date", _json_literal(pc.cast(end_date, pa.string()))),
            ("end_date_raw", _Text(_json_escaped(end_raw))),
        ],
        size=size,
    )
    return pa.table(
        {
            "job_id": _constant(job_id, size, pa.int64()),
            "sid": pa.array(np.arange(first_sid, first_sid + size, dtype=np.int64)),
            "row_number": pa.array(
                row_numbers
                if row_numbers is not None
                else np.arange(first_row_number, first_row_number + size, dtype=np.int64)
            ),
            "layer": _constant(layer, size),
            "source_key": source_key,
            "denominations": denomination_array,
            "lon": lon_column,
            "lat": lat_column,
            "wkb": wkb_column,
            "srid": _constant(srid, size, pa.int64()),
            "fields": fields,
            "fingerprint": _fingerprints(fields, lon_column, lat_column, wkb_column, srid),
            "raw": raw,
            "reject": reject_reason,
            "reject_detail": pc.coalesce(*detail),
        }
    )


def _fields_found(text: str, delimiter: str) -> str:
    """How many fields a record's text holds, as the report words it ("" when its text
    was cut and the count would be wrong)."""
    if len(text) >= INVALID_ROW_TEXT:
        return ""
    try:
        found = len(next(csv.reader(io.StringIO(text), delimiter=delimiter), []))
    except csv.Error:
        return ""
    return f", found {found}"


def malformed_rows(
    rows: list[tuple[int | None, str]],
    *,
    job_id: int,
    first_sid: int,
    expected: int,
    delimiter: str = ",",
) -> pa.Table:
    """Staging rows for CSV records that could not be split into their columns."""
    size = len(rows)
    reason = f"expected {expected} fields"
    return pa.table(
        {
            "job_id": _constant(job_id, size, pa.int64()),
            "sid": pa.array(range(first_sid, first_sid + size), pa.int64()),
            "row_number": pa.array([line or 0 for line, _ in rows], pa.int64()),
            "layer": _constant("", size),
            "source_key": _constant("", size),
            "denominations": _constant("{}", size),
            "lon": pa.nulls(size, pa.string()),
            "lat": pa.nulls(size, pa.string()),
            "wkb": pa.nulls(size, pa.string()),
            "srid": _constant(4326, size, pa.int64()),
            "fields": _constant("{}", size),
            "fingerprint": _constant("", size),
            "raw": pa.array(
                [json.dumps({"_text": text}, ensure_ascii=False) for _, text in rows], pa.string()
            ),
            "reject": _constant("malformed_row", size),
            "reject_detail": pa.array(
                [
                    reason
                    + _fields_found(text, delimiter)
                    + ("" if line else " (line number unknown)")
                    for line, text in rows
                ],
                pa.string(),
            ),
        }
    )


def stage_csv(table: pa.Table) -> bytes:
    """The rows as CSV for ``COPY … (FORMAT csv)``: values quoted, so NULL stays apart from
    the empty string."""
    out = io.BytesIO()
    pacsv.write_csv(table, out, pacsv.WriteOptions(include_header=False, quoting_style="all_valid"))
    return out.getvalue()


class RepeatedKeys:
    """Finds, as the file streams by, the rows whose key an earlier row already carried.

    Only those rows can lose to an earlier one under the duplicate rule (decided in SQL, see
    ``STAGE_DUPLICATES``), so only they need their original values staged for the
    rejected-row report; the file is then not read a second time for them. Keys are kept as
    one bit per hash, 16 MB however long the file: a hash collision only makes a row a
    candidate that SQL then finds unique, and a real repeat is never missed.
    """

    BITS = 1 << 27

    def __init__(self) -> None:
        self._bits = np.zeros(self.BITS >> 3, dtype=np.uint8)

    def mark(self, keys: pa.Array) -> np.ndarray:
        """Per key: whether an earlier key (this call's or a previous one's) may equal it."""
        hashes = np.fromiter(
            (hash(k) for k in keys.to_pylist()), dtype=np.int64, count=len(keys)
        ).view(np.uint64) & np.uint64(self.BITS - 1)
        byte = (hashes >> np.uint64(3)).astype(np.int64)
        bit = np.left_shift(np.uint8(1), (hashes & np.uint64(7)).astype(np.uint8))
        repeated = (self._bits[byte] & bit) != 0
        _, first = np.unique(hashes, return_index=True)
        later = np.ones(len(keys), dtype=bool)
        later[first] = False
        np.bitwise_or.at(self._bits, byte, bit)
        return repeated | later

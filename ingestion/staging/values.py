"""Values a row gives by itself: its key, its coordinates, its dates, its fingerprint."""

from __future__ import annotations

import hashlib
import math
import string

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingestion.mapping import CONTENT_FIELD, LAYER_FIELD, ColumnMapping
from ingestion.normalize import date_parse
from ingestion.staging.arrow_text import STRING, constant, strip, text_array

# Numbers that Arrow and Python's float() read identically; anything else (inf, nan, 1_000,
# other scripts' digits, garbage) goes through float() itself, one value at a time.
_PLAIN_NUMBER = r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$"


def iso_date(text: str | None) -> str | None:
    parsed = date_parse(text)
    return parsed.isoformat() if parsed else None


def source_keys(
    arrays: dict[str, pa.Array],
    mapping: ColumnMapping,
    *,
    kind: str,
    size: int,
    geometry: pa.Array | None = None,
    layer: str = "",
) -> pa.Array:
    """The key template filled in per row; empty when a key column is empty.

    ``{_content}`` is filled with content_digests of the row's values and ``geometry`` (WKB),
    so identical rows share a key; ``{_layer}`` with ``layer``, the batch's layer name.
    """
    if not mapping.key:
        return constant("", size)
    parts: list[pa.Array | str] = []
    complete = constant(True, size, pa.bool_())
    fields = 0
    for literal, field_name, _, _ in string.Formatter().parse(mapping.key):
        if literal:
            parts.append(literal)
        if field_name is None:
            continue
        fields += 1
        if field_name == "_kind":
            values = constant(kind, size)
        elif field_name == CONTENT_FIELD:
            values = content_digests(arrays, geometry, size=size)
        elif field_name == LAYER_FIELD:
            values = constant(layer, size)
        else:
            values = strip(text_array(arrays.get(field_name), size))
        complete = pc.and_(complete, pc.not_equal(values, ""))
        parts.append(values)
    if not fields:
        return constant("".join(str(p) for p in parts), size)
    keys = pc.binary_join_element_wise(*parts, "")
    return pc.if_else(complete, keys, "")


def key_repeats(keys: pa.Array) -> int:
    """Non-empty keys that repeat an earlier one in ``keys``."""
    present = keys.filter(pc.not_equal(keys, ""))
    return len(present) - pc.count_distinct(present).as_py()


def content_digests(
    arrays: dict[str, pa.Array], geometry: pa.Array | None, *, size: int
) -> pa.Array:
    """A digest per row of its values (column names included, in file order) and its
    geometry as written: the same row always gets the same digest, a row that differs in any
    value or vertex another. Nothing else (row number, file) goes in, so a re-import of the
    same rows, in any order, gives the same keys."""
    separator = "\x1f"
    # The leading literal keeps the join well-formed for a file with no columns.
    parts: list[pa.Array | str] = ["content"]
    for name, values in arrays.items():
        # A null and an empty cell read alike, as everywhere else in staging.
        parts += [name.replace(separator, " "), text_array(values, size)]
    if geometry is not None:
        parts.append(
            pa.array([None if w is None else w.hex() for w in geometry.to_pylist()], STRING)
        )
    if len(parts) == 1:
        parts.append(constant("", size))
    texts = pc.binary_join_element_wise(
        *parts, separator, null_handling="replace", null_replacement=""
    )
    return pa.array(
        [hashlib.blake2b(t.encode(), digest_size=16).hexdigest() for t in texts.to_pylist()],
        STRING,
    )


def coordinates(
    values: pa.Array,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, pa.Array, list[str | None]]:
    """Parse one coordinate column as Python's ``float()`` would.

    Returns (value, present, finite, text for COPY, error) per row; ``present`` is False for
    an empty cell, ``error`` names a value that is not a number.
    """
    size = len(values)
    stripped = strip(values)
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


def fingerprints(
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
        STRING,
    )

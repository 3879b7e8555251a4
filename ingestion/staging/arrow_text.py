"""Arrow string columns turned into JSON and CSV text without a Python loop per row.

Helpers for ``ingestion.staging.rows``: trimming as ``str.strip()`` does, JSON escaping
decided by one byte scan of a column, objects joined column by column.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Exactly the characters str.strip() removes (str.isspace()), so trimming in Arrow gives the
# same values as the per-row code it replaced.
PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def text_array(values: pa.Array | Sequence[str | None] | None, size: int) -> pa.Array:
    """A string array of ``size`` values (all null when the column is absent)."""
    if values is None:
        return pa.nulls(size, pa.string())
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values if values.type == pa.string() else values.cast(pa.string())
    return pa.array(values, pa.string())


def strip(values: pa.Array) -> pa.Array:
    """Python's ``(value or "").strip()`` for a whole column."""
    return pc.utf8_trim(pc.fill_null(values, ""), characters=PY_WHITESPACE)


STRING = pa.string()


def constant(value: Any, size: int, type_: pa.DataType = STRING) -> pa.Array:
    return pa.array([value], type_).take(pa.array(np.zeros(size, dtype=np.int64)))


def map_distinct(values: pa.Array, fn: Callable[[Any], Any], type_: pa.DataType) -> pa.Array:
    """``fn`` applied once per distinct value of ``values`` and spread back over the rows."""
    encoded = pc.dictionary_encode(values)
    mapped = pa.array([fn(v) for v in encoded.dictionary.to_pylist()], type_)
    return mapped.take(encoded.indices)


def data_bytes(values: pa.Array) -> np.ndarray:
    """The UTF-8 bytes of a string array's values, without copying."""
    _, offsets, data = values.buffers()
    if data is None or len(values) == 0:
        return np.empty(0, dtype=np.uint8)
    bounds = np.frombuffer(offsets, dtype=np.int32)[values.offset : values.offset + len(values) + 1]
    return np.frombuffer(data, dtype=np.uint8)[bounds[0] : bounds[-1]]


def json_escaped(values: pa.Array) -> pa.Array:
    """Each value escaped for the inside of a JSON string (null stays null).

    A byte scan of the whole column decides which (rare) replacements are needed at all.
    """
    data = data_bytes(values)
    out = values
    if (data == ord("\\")).any():
        out = pc.replace_substring(out, "\\", "\\\\")
    if (data == ord('"')).any():
        out = pc.replace_substring(out, '"', '\\"')
    if (data < 0x20).any():
        for code in range(32):
            out = pc.replace_substring(out, chr(code), f"\\u{code:04x}")
    return out


def json_key(name: str) -> str:
    return json.dumps(name, ensure_ascii=False)


@dataclass(frozen=True)
class JsonText:
    """A member value given as escaped string content (never null): its quotes are written
    by the join that builds the object, saving a pass per column."""

    escaped: pa.Array


def json_object(members: list[tuple[str, pa.Array | JsonText]], *, size: int) -> pa.Array:
    """One JSON object per row from (key, JSON literal or JsonText per row).

    Members whose literal is null are left out. Members that are never null are joined in
    a single pass; only the others need one of their own. (Arrow's null_handling="skip"
    is avoided: it drops rows in which every argument is null.)
    """
    pieces: list[pa.Array | str] = []
    optional: list[pa.Array] = []
    pending = "{"  # text still to be written before the next piece
    for name, value in members:
        prefix = ("," if pieces else "") + json_key(name) + ":"
        if isinstance(value, JsonText):
            pieces += [pending + prefix + '"', value.escaped]
            pending = '"'
        elif value.null_count == 0:
            pieces += [pending + prefix, value]
            pending = ""
        else:
            member = pc.binary_join_element_wise("," + json_key(name) + ":", value, "")
            optional.append(pc.fill_null(member, ""))
    if pieces:
        return pc.binary_join_element_wise(*pieces, pending, *optional, "}", "")
    if not optional:
        return constant("{}", size)
    # Only optional members: each starts with a comma, and the first one must not.
    body = pc.binary_join_element_wise(*optional, "") if len(optional) > 1 else optional[0]
    return pc.binary_join_element_wise("{", pc.utf8_slice_codeunits(body, 1), "}", "")


def json_literal(values: pa.Array) -> pa.Array:
    """Each value as a JSON string literal, or ``null``."""
    quoted = pc.binary_join_element_wise('"', json_escaped(values), '"', "")
    return pc.fill_null(quoted, "null") if values.null_count else quoted


def pg_array(values: list[str]) -> str:
    """A PostgreSQL text[] literal."""
    quoted = (v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return "{" + ",".join(f'"{v}"' for v in quoted) + "}"

"""Staging rows for CSV records that could not be split into their columns."""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa

from ingestion.readers.delimited import INVALID_ROW_TEXT
from ingestion.staging.arrow_text import constant


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
            "job_id": constant(job_id, size, pa.int64()),
            "sid": pa.array(range(first_sid, first_sid + size), pa.int64()),
            "row_number": pa.array([line or 0 for line, _ in rows], pa.int64()),
            "layer": constant("", size),
            "source_key": constant("", size),
            "denominations": constant("{}", size),
            "lon": pa.nulls(size, pa.string()),
            "lat": pa.nulls(size, pa.string()),
            "wkb": pa.nulls(size, pa.string()),
            "srid": constant(4326, size, pa.int64()),
            "fields": constant("{}", size),
            "fingerprint": constant("", size),
            "raw": pa.array(
                [json.dumps({"_text": text}, ensure_ascii=False) for _, text in rows],
                pa.string(),
            ),
            "reject": constant("malformed_row", size),
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

"""Turn reader batches into staging rows a whole Arrow batch at a time.

Per-row Python was the import's main cost. Here every column is handled by pyarrow's compute
kernels, and the normalisers (religion, denominations, dates, packed classes) run once per
*distinct* value of a batch: these columns repeat heavily, so a 50,000-row batch needs a few
hundred calls instead of 200,000. The result is written as CSV by pyarrow for ``COPY``.

Rejections that need only the row's own values (key, coordinates) are decided here; the
ones that need PostGIS (reprojection, polygon repair) and duplicate keys are decided in SQL.

| module | what it does |
|---|---|
| ``rows`` | ``stage_batch``: one reader batch as staging rows; ``stage_csv`` for ``COPY`` |
| ``values`` | a row's key, coordinates, dates and fingerprint |
| ``arrow_text`` | Arrow string columns as JSON and CSV text |
| ``malformed`` | rows for CSV records that cannot be split |
| ``repeated`` | ``RepeatedKeys``: which rows' keys an earlier row may have used |
"""

from ingestion.staging.arrow_text import PY_WHITESPACE
from ingestion.staging.malformed import malformed_rows
from ingestion.staging.repeated import RepeatedKeys
from ingestion.staging.rows import (
    MAX_KEY_LENGTH,
    STAGE_COLUMNS,
    batch_texts,
    embedded_newlines,
    raw_values,
    stage_batch,
    stage_csv,
)

__all__ = [
    "MAX_KEY_LENGTH",
    "PY_WHITESPACE",
    "STAGE_COLUMNS",
    "RepeatedKeys",
    "batch_texts",
    "embedded_newlines",
    "malformed_rows",
    "raw_values",
    "stage_batch",
    "stage_csv",
]

"""A JSON array of flat objects with ``lat``/``lng`` keys, streamed with ijson.

This is the export format of the go-bayes/places-of-worship project (``id, osm_id, osm_type,
lat, lng, name, religion, denomination, confidence, country_code, start_date, tags_raw …``),
which users migrating from it bring. ijson parses the file incrementally (its C backend,
yajl2), so only one batch of objects is in memory however long the array is. Numbers keep
their text form; nested values (``tags_raw`` as an object, lists) become JSON text.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import ijson

from ingestion.readers.base import (
    BATCH_ROWS,
    MAX_CELL_BYTES,
    MAX_COLUMNS,
    Batch,
    Layer,
    UnreadableFile,
    cell_preview,
    check_columns,
    first_line,
    nested_text,
    too_large_detail,
    without_nul,
)
from ingestion.readers.safety import check_gzip, is_gzip

# Keys are gathered from the first objects for the inspect step and the proposed mapping;
# keys that only appear later still reach the rows (as tags).
_SAMPLE_OBJECTS = 1_000
# A batch is a dense table (rows × keys seen), so it is also cut by cells, not only by rows.
_BATCH_CELLS = 2_000_000
_MAX_KEY_CHARS = 1_000


class JsonArrayReader:
    format = "json"
    has_geometry = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.gzip = is_gzip(path)
        if self.gzip:
            check_gzip(path)
        keys: dict[str, None] = {}
        objects = 0
        with self._open() as fh:
            for item in self._items(fh):
                if isinstance(item, dict):
                    keys.update((without_nul(k), None) for k in item if len(k) <= _MAX_KEY_CHARS)
                    objects += 1
                    if len(keys) > MAX_COLUMNS:
                        break
                    if objects >= _SAMPLE_OBJECTS:
                        break
        self.header = list(keys)
        check_columns(self.header, what="JSON array")
        if not objects:
            raise UnreadableFile("the JSON array holds no objects")

    def _open(self) -> gzip.GzipFile | io.BufferedReader:
        return gzip.open(self.path, "rb") if self.gzip else open(self.path, "rb")

    def _items(self, fh: gzip.GzipFile | io.BufferedReader) -> Iterator[Any]:
        try:
            yield from ijson.items(fh, "item", use_float=True)
        except ijson.JSONError as exc:
            hint = (
                " (JSON has no NaN or Infinity: write null)"
                if "NaN" in str(exc) or "Infinity" in str(exc)
                else ""
            )
            raise UnreadableFile(f"the JSON is malformed: {first_line(exc)}{hint}") from None
        except UnreadableFile:
            raise
        except (OSError, EOFError, UnicodeError, ValueError) as exc:
            raise UnreadableFile(f"the JSON cannot be read: {first_line(exc)}") from None

    def layers(self) -> list[Layer]:
        return [Layer(name="", geometry_type=None, features=None, columns=self.header)]

    def batches(self, layer: str = "") -> Generator[Batch, None, None]:
        pending: list[Any] = []
        seen = dict.fromkeys(self.header)
        with self._open() as fh:
            for item in self._items(fh):
                pending.append(item)
                if isinstance(item, dict):
                    for key in map(without_nul, item):
                        if key not in seen and len(key) <= _MAX_KEY_CHARS:
                            seen[key] = None
                            if len(seen) > MAX_COLUMNS:
                                raise UnreadableFile(
                                    f"the JSON objects use more than {MAX_COLUMNS:,} different "
                                    f"keys; the limit is {MAX_COLUMNS:,} keys"
                                )
                if len(pending) >= BATCH_ROWS or len(pending) * len(seen) >= _BATCH_CELLS:
                    yield _batch(pending, list(seen))
                    pending = []
        if pending:
            yield _batch(pending, list(seen))


def _batch(items: list[Any], names: list[str]) -> Batch:
    rejects: dict[int, tuple[str, str]] = {}
    columns: dict[str, list[str | None]] = {n: [None] * len(items) for n in names}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            kind = "array" if isinstance(item, list) else type(item).__name__
            rejects[i] = ("malformed_row", f"array item is a {kind}, not an object")
            continue
        for key, value in item.items():
            if len(key) > _MAX_KEY_CHARS:
                rejects.setdefault(i, ("cell_too_large", f"a key of {len(key):,} characters"))
                continue
            text = _text(value)
            if text is not None and len(text) > MAX_CELL_BYTES // 4:
                size = len(text.encode("utf-8"))
                if size > MAX_CELL_BYTES:
                    rejects.setdefault(i, ("cell_too_large", too_large_detail(key, size)))
                    text = cell_preview(text)
            columns[without_nul(key)][i] = text
    return Batch.of(columns=columns, wkb=None, num_rows=len(items), rejects=rejects)


def _text(value: Any) -> str | None:
    """A JSON value as the text a CSV cell would hold: numbers and booleans as JSON writes them,
    strings unchanged (a ``tags_raw`` string of JSON stays as it is), nested values as JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return without_nul(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        try:
            return json.dumps(value)
        except ValueError:  # Python refuses to print integers of more than 4,300 digits
            raise UnreadableFile("a number in the JSON has thousands of digits") from None
    return nested_text(value)

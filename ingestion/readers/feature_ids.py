"""GeoJSON Feature ``id`` members as the file writes them, in the order GDAL reads features.

GDAL's GeoJSON driver does not keep integer ids as data: it makes them the feature's FID,
renumbers a repeat (with a warning, so the repeat can no longer be seen), gives a feature
without an id a free number (indistinguishable from a real id), and in a file mixing integer
and string ids drops the strings. Only when it decides the ids are text (or out of the FID's
range) does it expose them as a field ``id``, its own text of them. So the FIDs cannot serve
as keys: this module reads the ids from the file itself and ``GeoReader`` adds them as a
column (or puts them in GDAL's ``id``), whatever their type, exactly as written.

The file is read a second time, with ijson's C parser, one feature in memory at a time
(``json.load`` would hold a whole upload, and the event-by-event ``ijson.parse`` costs a
Python call per coordinate). GDAL skips every item of ``features`` that is not an object of
``"type": "Feature"``; so does ``feature_ids``, so the n-th id belongs to the n-th feature GDAL
yields. ``GeoReader.batches`` checks that both run out together and refuses the file if not.

A file ijson cannot parse in its first features (GDAL takes ``NaN``, JSON has none) is left
to GDAL's keys as before; one that fails further on is refused with the reason.

GeoJSONSeq files are left to GDAL: its rules for records (bare geometries become features,
unparsable records are passed over) are too loose to follow feature by feature with certainty.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Generator, Iterator
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any

import ijson

from ingestion.readers.base import UnreadableFile, first_line, without_nul
from ingestion.readers.safety import is_gzip

# The first features tell whether a file has Feature ids at all: only then is it read again
# for them. A file whose first thousand features have none is keyed without.
SAMPLE_FEATURES = 1_000
# The column's name: ``id`` unless a property already has it (any case), then the next free
# name key guessing recognises (mapping.ID_COLUMNS): GDAL's own word for a feature's id first.
COLUMN_NAMES = ("id", "fid", "@id")


def _open(path: Path) -> gzip.GzipFile | io.BufferedReader:
    # The caller (GeoReader) has already checked a gzip stream against bombs.
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def _top_level(fh: gzip.GzipFile | io.BufferedReader) -> str:
    """``collection``, ``feature`` or ``other``, from the first top-level member that says so.

    Writers put ``type`` first; a collection whose ``type`` comes last is recognised by the
    start of its ``features`` array instead, so the file is never read to its end here.
    """
    for prefix, event, value in ijson.parse(fh):
        if prefix == "features" and event == "start_array":
            return "collection"
        if prefix == "type" and event == "string":
            return {"FeatureCollection": "collection", "Feature": "feature"}.get(value, "other")
    return "other"


def _features(path: Path) -> Generator[dict[str, Any], None, None]:
    """The objects GDAL makes features of, in the file's order."""
    with _open(path) as fh:
        kind = _top_level(fh)
    if kind == "other":
        return
    with _open(path) as fh:
        prefix = "features.item" if kind == "collection" else ""
        for item in ijson.items(fh, prefix):
            if isinstance(item, dict) and item.get("type") == "Feature":
                yield item


def _guarded(items: Iterator[Any]) -> Iterator[Any]:
    try:
        yield from items
    except ijson.JSONError as exc:
        hint = (
            " (JSON has no NaN or Infinity: write null)"
            if "NaN" in str(exc) or "Infinity" in str(exc)
            else ""
        )
        raise UnreadableFile(f"the GeoJSON is malformed: {first_line(exc)}{hint}") from None
    except (OSError, EOFError, UnicodeError, ValueError) as exc:
        raise UnreadableFile(f"the GeoJSON cannot be read: {first_line(exc)}") from None


def id_text(value: Any) -> str | None:
    """A Feature id as the file writes it: a string unchanged, a number in its digits.

    RFC 7946 allows only strings and numbers; anything else (null, true, an object) is no id.
    Numbers come from ijson as ``int`` or ``Decimal``, which keep the file's digits (``1.50``
    stays ``1.50``; only an exponent is normalised, ``1e3`` → ``1E+3``).
    """
    if isinstance(value, str):
        return without_nul(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int | Decimal):
        return str(value)
    return None


def feature_id_column(path: Path, fmt: str, fields: list[str]) -> str | None:
    """The column the file's Feature ids are read into, or None when the first
    ``SAMPLE_FEATURES`` features have none. ``fields`` are GDAL's fields.

    ``id``, replacing GDAL's field of that name if it made one of the ids; when a property is
    called ``id`` (any case) it keeps the name, and the ids go to ``fid`` (or ``@id``).
    """
    if fmt != "geojson":
        return None
    has_id = property_id = False
    features = _features(path)
    try:
        for feature in _guarded(islice(features, SAMPLE_FEATURES)):
            has_id = has_id or id_text(feature.get("id")) is not None
            properties = feature.get("properties")
            if isinstance(properties, dict):
                property_id = property_id or any(str(k).lower() == "id" for k in properties)
    except UnreadableFile:
        # GDAL read what ijson cannot (it takes NaN, which JSON has not): keyed as before.
        return None
    finally:
        features.close()
    if not has_id:
        return None
    if not property_id:
        # A field ``id`` GDAL has is then its reading of the Feature ids (when it took them for
        # text), which the file's own text replaces: one rule whatever GDAL decided.
        return COLUMN_NAMES[0]
    taken = {f.lower() for f in fields}
    return next((name for name in COLUMN_NAMES if name not in taken), None)


def feature_ids(path: Path) -> Generator[str | None, None, None]:
    """Each feature's id as text (None when it has none), in the order GDAL reads features."""
    for feature in _guarded(_features(path)):
        yield id_text(feature.get("id"))

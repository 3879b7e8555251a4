"""Which source column feeds which field, and turning a batch into staging rows."""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

from ingestion.normalize import (
    date_parse,
    denominations_normalise,
    packed_class_split,
    religion_normalise,
)
from ingestion.readers import Batch

_FIELD = re.compile(r"[^{}!:\[\].]{1,100}")

_SYNONYMS: dict[str, tuple[str, ...]] = {
    "name": ("name", "title", "place_name"),
    "religion": ("religion", "faith"),
    "denomination": ("denomination", "denominations"),
    "packed_class": ("fclass",),
    "lon": ("lon", "lng", "long", "longitude", "x"),
    "lat": ("lat", "latitude", "y"),
    "start_date": ("start_date", "founded", "opening_date", "built"),
    "end_date": ("end_date", "closed", "demolished"),
}


@dataclass
class ColumnMapping:
    """How source columns map to place fields.

    ``key`` is a template over column names (``osm:{osm_type}/{osm_id}``); ``{_kind}`` stands
    for ``node`` on point layers and ``area`` on polygon layers (Geofabrik's convention for
    ids that come from nodes, and from ways or relations).
    """

    key: str
    name: str | None = None
    religion: str | None = None
    denomination: str | None = None
    packed_class: str | None = None
    lon: str | None = None
    lat: str | None = None
    start_date: str | None = None
    end_date: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ColumnMapping:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def key_fields(self) -> list[str]:
        """Column names in the key template; only plain ``{name}`` fields are allowed."""
        fields_: list[str] = []
        for _, name, spec, conversion in string.Formatter().parse(self.key):
            if name is None:
                continue
            if spec or conversion or not name or not _FIELD.fullmatch(name):
                raise ValueError(f"key template field {{{name}}} must be a plain column name")
            fields_.append(name)
        return fields_

    def used_columns(self) -> set[str]:
        """Columns consumed by fields; the rest become tags (a packed class stays in tags)."""
        used = {v for k, v in self.as_dict().items() if k not in {"key", "packed_class"} and v}
        used |= set(self.key_fields())
        return used


def mapping_propose(columns: list[str], *, has_geometry: bool) -> ColumnMapping:
    """A best guess from the column names; the user can correct it before applying."""
    lower = {c.lower(): c for c in columns}

    def pick(field_name: str) -> str | None:
        return next((lower[s] for s in _SYNONYMS[field_name] if s in lower), None)

    if "osm_type" in lower and "osm_id" in lower:
        key = f"osm:{{{lower['osm_type']}}}/{{{lower['osm_id']}}}"
    elif "osm_id" in lower:
        key = f"osm:{{_kind}}/{{{lower['osm_id']}}}"
    elif "id" in lower:
        key = f"{{{lower['id']}}}"
    else:
        key = ""
    religion = pick("religion")
    mapping = ColumnMapping(
        key=key,
        name=pick("name"),
        religion=religion,
        denomination=pick("denomination"),
        packed_class=None if religion else pick("packed_class"),
        start_date=pick("start_date"),
        end_date=pick("end_date"),
    )
    if not has_geometry:
        mapping.lon, mapping.lat = pick("lon"), pick("lat")
    return mapping


# Column order of the staging table (see ingestion.services.imports.STAGE_COLUMNS).
StageRow = tuple[Any, ...]


def _coordinate(text: str | None) -> tuple[float | None, str]:
    if text is None or not text.strip():
        return None, ""
    try:
        value = float(text)
    except ValueError:
        return None, f"not a number: {text[:40]!r}"
    return value, ""


def stage_rows(
    batch: Batch,
    mapping: ColumnMapping,
    *,
    layer: str,
    first_row_number: int,
    geometry_kind: str,
    srid: int,
) -> Iterator[StageRow]:
    """Turn one batch into staging rows: normalised values, raw values, early rejections."""
    names = list(batch.columns)
    used = mapping.used_columns()
    columns = batch.columns
    key_fields = mapping.key_fields()
    for i in range(batch.num_rows):
        raw = {n: columns[n][i] for n in names}
        values = {**raw, "_kind": geometry_kind}
        reject, detail = "", ""
        if mapping.key and all((values.get(f) or "").strip() for f in key_fields):
            source_key = mapping.key.format(**{f: values[f].strip() for f in key_fields})
        else:
            source_key = ""
        name = (raw.get(mapping.name) or "").strip() if mapping.name else ""
        religion_raw = (raw.get(mapping.religion) or "").strip() if mapping.religion else ""
        denomination_raw = (
            (raw.get(mapping.denomination) or "").strip() if mapping.denomination else ""
        )
        if mapping.packed_class and not religion_raw:
            religion_raw, packed_denomination = packed_class_split(raw.get(mapping.packed_class))
            denomination_raw = denomination_raw or packed_denomination
        lon = lat = None
        wkb = batch.wkb[i] if batch.wkb is not None else None
        if batch.wkb is None:
            lon, lon_error = _coordinate(raw.get(mapping.lon) if mapping.lon else None)
            lat, lat_error = _coordinate(raw.get(mapping.lat) if mapping.lat else None)
            if lon_error or lat_error:
                reject, detail = (
                    "bad_coordinates",
                    f"lon {lon_error}".strip() if lon_error else f"lat {lat_error}",
                )
            elif (
                lon is not None
                and lat is not None
                and not (math.isfinite(lon) and math.isfinite(lat))
            ):
                reject, detail = "bad_coordinates", "coordinates must be finite numbers"
        if i in batch.rejects:  # the reader already knows (over-long value, bad WKB …)
            reject, detail = batch.rejects[i]
        start_raw = (raw.get(mapping.start_date) or "").strip() if mapping.start_date else ""
        end_raw = (raw.get(mapping.end_date) or "").strip() if mapping.end_date else ""
        tags = {k: v for k, v in raw.items() if k not in used and v not in (None, "")}
        yield (
            first_row_number + i,
            layer,
            source_key,
            name,
            religion_normalise(religion_raw),
            religion_raw,
            denominations_normalise(denomination_raw),
            denomination_raw,
            lon if lon is None or math.isfinite(lon) else None,
            lat if lat is None or math.isfinite(lat) else None,
            wkb,
            srid,
            date_parse(start_raw),
            start_raw,
            date_parse(end_raw),
            end_raw,
            json.dumps(tags, ensure_ascii=False),
            json.dumps(raw, ensure_ascii=False, default=str),
            reject or None,
            detail or None,
        )


def malformed_stage_row(*, line: int | None, text: str, expected: int) -> StageRow:
    """A staging row for a CSV record that could not be split into its columns."""
    return (
        line or 0,
        "",
        "",
        "",
        "unknown",
        "",
        [],
        "",
        None,
        None,
        None,
        4326,
        None,
        "",
        None,
        "",
        "{}",
        json.dumps({"_text": text}, ensure_ascii=False),
        "malformed_row",
        f"expected {expected} fields" + ("" if line else " (line number unknown)"),
    )


def mapping_problems(
    mapping: ColumnMapping, *, columns: list[str], has_geometry: bool
) -> dict[str, str]:
    """What stops a mapping from working on a file with these columns, by field.

    Empty when the mapping is usable. The upload check and the admin's mapping form share
    these rules, so a mapping the form accepts is one the import can run.
    """
    try:
        key_columns = mapping.key_fields()
    except ValueError as exc:
        return {"key": str(exc)}
    known = set(columns) | {"_kind"}
    problems: dict[str, str] = {}
    if not mapping.key:
        problems["key"] = "no key column found (osm_type+osm_id, osm_id or id); give a key template"
    elif unknown := sorted(set(key_columns) - known):
        problems["key"] = f"the key template names columns not in the file: {', '.join(unknown)}"
    for name, column in mapping.as_dict().items():
        if name != "key" and column and column not in known:
            problems[name] = f"column {column!r} is not in the file"
    if not has_geometry and not (mapping.lon and mapping.lat):
        problems.setdefault(
            "lon" if not mapping.lon else "lat",
            "no longitude/latitude columns found (lon/lat, lng, longitude …)",
        )
    return problems

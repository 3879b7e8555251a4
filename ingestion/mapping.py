"""Which source column feeds which field (staging itself is in ingestion.staging)."""

from __future__ import annotations

import re
import string
from dataclasses import asdict, dataclass, fields
from typing import Any

_FIELD = re.compile(r"[^{}!:\[\].]{1,100}")

_SYNONYMS: dict[str, tuple[str, ...]] = {
    "name": ("name", "title", "place_name"),
    "religion": ("religion", "faith"),
    "denomination": ("denomination", "denominations"),
    "packed_class": ("fclass",),
    "lon": ("lon", "lng", "long", "longitude", "x"),
    "lat": ("lat", "latitude", "y"),
    "geometry": ("geom", "the_geom", "wkt", "geometry", "shape", "wkb"),
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
    # A column of WKT, EWKT or hex WKB in WGS84 (tables only; geo files carry their own).
    geometry: str | None = None
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
        mapping.geometry = pick("geometry")
    return mapping


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
    if not has_geometry and not mapping.geometry and not (mapping.lon and mapping.lat):
        problems.setdefault(
            "lon" if not mapping.lon else "lat",
            "no longitude/latitude columns found (lon/lat, lng, longitude …) "
            "and no geometry column (geom, wkt …)",
        )
    return problems

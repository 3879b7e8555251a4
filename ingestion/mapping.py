"""Which source column feeds which field (staging itself is in ingestion.staging)."""

from __future__ import annotations

import re
import string
from collections.abc import Collection
from dataclasses import asdict, dataclass, fields
from typing import Any

_FIELD = re.compile(r"[^{}!:\[\].]{1,100}")

# Identifier columns GIS tools write, in order of preference, compared case-insensitively:
# GeoJSON's Feature ``id`` (the reader's column ``id``, see readers.feature_ids), Overpass's
# ``@id``, Esri's ``OBJECTID``, GDAL/QGIS's ``fid``, PostGIS dumps' ``gid``, ogr2ogr's
# ``ogc_fid`` and a ``uuid``.
ID_COLUMNS = ("id", "@id", "objectid", "fid", "gid", "ogc_fid", "uuid")

# A key template field that is no column: each row's own values and geometry, digested
# (ingestion.staging.values.source_keys), for files that have no id column.
CONTENT_FIELD = "_content"
CONTENT_KEY = "{" + CONTENT_FIELD + "}"
# A key template field that is no column: the name of the row's layer. Files of several
# layers (shapefiles in one zip, GeoPackage tables) usually number each layer's rows from 1,
# so an id column is unique only together with its layer.
LAYER_FIELD = "_layer"
# Template fields that are no column of the file.
NON_COLUMN_FIELDS = frozenset({"_kind", CONTENT_FIELD, LAYER_FIELD})
CONTENT_KEY_NOTE = (
    "The key is derived from each row's content (its values and geometry), not read from an "
    "id column: re-importing a changed file cannot match rows by such a key, so a snapshot "
    "will retire and add places instead of updating them. Identical rows get the same key and "
    "are reported as duplicates. A key template naming a column replaces it."
)
_SEEN_COLUMNS_SHOWN = 30

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
    ids that come from nodes, and from ways or relations); ``{_content}`` for a digest of the
    row's own values and geometry (see CONTENT_KEY_NOTE); ``{_layer}`` for the name of the
    row's layer.
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
        used |= set(self.key_fields()) - NON_COLUMN_FIELDS
        return used

    def content_key(self) -> bool:
        """Whether the key is derived from the rows' content rather than read from a column."""
        try:
            return CONTENT_FIELD in self.key_fields()
        except ValueError:
            return False


def key_propose(columns: list[str], *, repeating: Collection[str] = ()) -> str:
    """The key template for these columns: an OSM id, else the first id column (ID_COLUMNS,
    any case), else the content key. Columns in ``repeating`` (their values repeat in the
    file) are passed over: as a key they would reject every repeat as a duplicate."""
    lower: dict[str, str] = {}
    for column in columns:
        if column not in repeating:
            lower.setdefault(column.lower(), column)
    if "osm_type" in lower and "osm_id" in lower:
        return f"osm:{{{lower['osm_type']}}}/{{{lower['osm_id']}}}"
    if "osm_id" in lower:
        return f"osm:{{_kind}}/{{{lower['osm_id']}}}"
    for name in ID_COLUMNS:
        if name in lower:
            return f"{{{lower[name]}}}"
    return CONTENT_KEY


def mapping_propose(
    columns: list[str], *, has_geometry: bool, repeating: Collection[str] = ()
) -> ColumnMapping:
    """A best guess from the column names; the user can correct it before applying.

    ``repeating`` names columns whose values repeat, which the key passes over.
    """
    lower = {c.lower(): c for c in columns}

    def pick(field_name: str) -> str | None:
        return next((lower[s] for s in _SYNONYMS[field_name] if s in lower), None)

    key = key_propose(columns, repeating=repeating)
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
    known = set(columns) | NON_COLUMN_FIELDS
    problems: dict[str, str] = {}
    if not mapping.key:
        problems["key"] = (
            f"no key column found; give a key template ({CONTENT_KEY} derives one from each "
            "row's content)"
        )
    elif unknown := sorted(set(key_columns) - known):
        problems["key"] = f"the key template names columns not in the file: {', '.join(unknown)}"
    for name, column in mapping.as_dict().items():
        if name != "key" and column and column not in known:
            problems[name] = f"column {column!r} is not in the file"
    if not has_geometry and not mapping.geometry and not (mapping.lon and mapping.lat):
        problems.setdefault(
            "lon" if not mapping.lon else "lat",
            "no longitude/latitude columns found (lon/lat, lng, longitude …) "
            "and no geometry column (geom, wkt …) among " + columns_seen(columns),
        )
    return problems


def columns_seen(columns: list[str]) -> str:
    """The file's columns, for a message that says what could not be found among them."""
    if not columns:
        return "no columns"
    shown = ", ".join(repr(c) for c in columns[:_SEEN_COLUMNS_SHOWN])
    more = len(columns) - _SEEN_COLUMNS_SHOWN
    return f"the columns {shown}" + (f" and {more} more" if more > 0 else "")

"""The place fields the API exposes: one list, from which every output is derived.

==================  =============================================================
output              what it takes from ``PLACE_FIELDS``
==================  =============================================================
GeoJSON, NDJSON     ``json``: the properties, in this order (``fields=`` picks)
CSV                 ``csv``: ``id,lon,lat``, then each field's columns
place detail        the names (``PlaceDetailSerializer``), then what only it shows
vector tiles        ``tile``: layer ``places``, and the fields its TileJSON declares
==================  =============================================================

A field added here appears in every output at once; tests compare each output with this list.
"""

from __future__ import annotations

from dataclasses import dataclass

from places.csv_cells import safe_cell_sql


@dataclass(frozen=True)
class TileColumn:
    """How a vector tile carries a field: its name there, its SQL, its TileJSON type."""

    name: str
    sql: str
    type: str


@dataclass(frozen=True)
class PlaceField:
    name: str
    json: str  # JSON value expression on ``p`` (places_place) and the field's join
    csv: tuple[tuple[str, str], ...]  # (header, cell expression): nested values flattened
    join: str | None = None  # alias of the join the expressions read (see features.JOINS)
    tile: TileColumn | None = None  # None: the tiles leave it out, to stay small


def csv_text(expression: str) -> str:
    """A quoted CSV cell, spreadsheet-safe by ``places.csv_cells`` (OSM names and tags are
    free text)."""
    safe = safe_cell_sql(f"coalesce(({expression})::text, '')")
    return f"""'"' || replace({safe}, '"', '""') || '"'"""


def _field(
    name: str,
    json: str,
    *,
    csv: list[tuple[str, str]] | None = None,
    join: str | None = None,
    tile: TileColumn | None = None,
) -> PlaceField:
    columns = csv if csv is not None else [(name, csv_text(json))]
    return PlaceField(name=name, json=json, csv=tuple(columns), join=join, tile=tile)


PLACE_FIELDS: tuple[PlaceField, ...] = (
    _field("name", "p.name", tile=TileColumn("name", "p.name", "String")),
    _field("religion", "p.religion", tile=TileColumn("religion", "p.religion", "String")),
    _field("religion_raw", "p.religion_raw"),
    _field(
        "denominations",
        "p.denominations",
        csv=[("denominations", csv_text("array_to_string(p.denominations, ';')"))],
    ),
    _field("denomination_raw", "p.denomination_raw"),
    # Tiles carry the dataset's id: a number per feature, and no join on the hot path.
    _field("dataset", "d.slug", join="d", tile=TileColumn("dataset_id", "p.dataset_id", "Number")),
    _field("source_key", "p.source_key"),
    _field(
        "country",
        "cs.j",
        join="c",
        csv=[("country_code", csv_text("c.code")), ("country_name", csv_text("c.name"))],
    ),
    _field(
        "region",
        "rs.j",
        join="r",
        csv=[
            ("region_id", "coalesce(r.id::text, '')"),
            ("region_code", csv_text("r.code")),
            ("region_name", csv_text("r.name")),
        ],
    ),
    _field("status", "p.status"),
    _field("start_date", "p.start_date"),
    _field("start_date_raw", "p.start_date_raw"),
    _field("end_date", "p.end_date"),
    _field("end_date_raw", "p.end_date_raw"),
    _field("tags", "p.tags"),
    _field("version", "p.version", csv=[("version", "p.version::text")]),
    # ISO 8601 in CSV like the JSON formats, not PostgreSQL's own text form.
    _field(
        "updated_at",
        "p.updated_at",
        csv=[("updated_at", csv_text("to_json(p.updated_at) #>> '{}'"))],
    ),
)

FIELDS: dict[str, PlaceField] = {field.name: field for field in PLACE_FIELDS}
# The property names in their order: the order of every output.
PROPERTIES: tuple[str, ...] = tuple(FIELDS)
TILE_COLUMNS: tuple[TileColumn, ...] = tuple(f.tile for f in PLACE_FIELDS if f.tile is not None)


def csv_header(properties: list[str]) -> list[str]:
    """The CSV columns for these properties: ``id``, ``lon``, ``lat``, then theirs."""
    return ["id", "lon", "lat", *(header for name in properties for header, _ in FIELDS[name].csv)]

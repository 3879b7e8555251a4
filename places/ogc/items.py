"""Pages of a collection's features as GeoJSON text written by PostgreSQL.

Places reuse the places list's fast path: the condition of ``PlaceQuery`` (box, dataset,
status), the feature SQL of ``places.serving.features`` (one list of fields) and its
``numberMatched`` (exact up to 10,000, the planner's estimate above). What the OGC API adds
(dates, filters, another sort order) is more terms on the same condition.

Pages are keyset pages on (sort key, id), never offsets: the cursor names the last row of
the previous page, so a deep page costs what the first does, and a write between two pages
neither repeats nor skips a row that did not itself move.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from django.db import connection

from places.geo import BBox
from places.ogc.collections import PLACES, SENSORS, Collection
from places.ogc.cql import SQL_TYPES, Condition, Queryable
from places.ogc.sensors import SENSOR_TABLE, sensor_times_where
from places.serving import features
from places.serving.query import (
    PlaceQuery,
    bbox_condition,
    dataset_ids_of,
    point_in_bbox_condition,
)

DECIMALS = features.DECIMALS


class CursorError(ValueError):
    """A cursor this API did not hand out (or handed out for another sort order)."""


@dataclass(frozen=True)
class Sort:
    key: str = "id"
    descending: bool = False


@dataclass(frozen=True)
class ItemsQuery:
    """A validated items request on one collection."""

    collection: Collection
    bbox: BBox | None = None
    # The dated places whose span [start_date, end_date] meets [start, end] (None: open;
    # a place without an end date is still standing).
    dates: tuple[date | None, date | None] | None = None
    # Sensors: those with a reading in [start, end) (None: open).
    times: tuple[datetime | None, datetime | None] | None = None
    condition: Condition = field(default_factory=Condition)
    status: str | None = "active"
    properties: tuple[str, ...] = ()
    sort: Sort = Sort()
    limit: int = 10

    def place_query(self) -> PlaceQuery:
        return PlaceQuery(
            bbox=self.bbox,
            dataset_ids=dataset_ids_of(self.collection.dataset_id),
            status=self.status,
        )

    def key(self) -> str:
        """What the page depends on besides the data and the cursor, for cache keys."""
        parts = [
            self.collection.id,
            self.place_query().key() if self.collection.kind == PLACES else str(self.bbox),
            str(self.dates),
            str(self.times),
            self.condition.sql,
            json.dumps(self.condition.params, sort_keys=True, default=str),
            ",".join(self.properties),
            f"{self.sort.key}:{self.sort.descending}",
            str(self.limit),
        ]
        return "|".join(parts)


def cursor_encode(key: str, last_key: str, last_id: int) -> str:
    text = json.dumps([key, last_key, last_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def cursor_decode(token: str, *, sort: Sort) -> tuple[str, int]:
    """The (sort key as text, id) a page starts after."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        key, last_key, last_id = json.loads(raw)
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
        raise CursorError("is not a cursor this API handed out") from None
    if key != sort.key or not isinstance(last_key, str) or not isinstance(last_id, int):
        raise CursorError("is not a cursor this API handed out for this sortby")
    return last_key, last_id


@dataclass(frozen=True)
class Page:
    features: str  # the features as JSON text, comma-separated
    returned: int
    more: bool
    cursor: str | None  # of the next page
    matched: int
    exact: bool


def _where(query: ItemsQuery) -> tuple[str, dict[str, Any]]:
    """The condition on the collection's alias (``p`` or ``r``) and its parameters."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if query.collection.kind == PLACES:
        where, params = query.place_query().where()
        clauses.append(where)
        if query.dates is not None:
            start, end = query.dates
            clauses.append("p.start_date IS NOT NULL")
            if end is not None:
                clauses.append("p.start_date <= %(dt_end)s")
                params["dt_end"] = end
            if start is not None:
                # No end date: still standing.
                clauses.append("(p.end_date IS NULL OR p.end_date >= %(dt_start)s)")
                params["dt_start"] = start
    else:
        if query.bbox is not None:
            clause, box_params = (
                point_in_bbox_condition("s.location", query.bbox)
                if query.collection.kind == SENSORS
                else bbox_condition("r.geom", query.bbox)
            )
            clauses.append(clause)
            params.update(box_params)
        if query.times is not None:
            where, more = sensor_times_where(*query.times)
            clauses.append(where)
            params.update(more)
    clauses.append(query.condition.sql)
    params.update(query.condition.params)
    return " AND ".join(clauses), params


def _feature_sql(alias: str, queryables: dict[str, Queryable], properties: tuple[str, ...]) -> str:
    """A feature as GeoJSON text built from the queryables' SQL (regions and sensors)."""
    pairs = ", ".join(f"'{name}', {queryables[name].sql}" for name in properties)
    props = f"json_build_object({pairs})::text" if properties else "'{}'"
    # A sensor may have no location: GeoJSON's null geometry.
    geometry = f"coalesce(ST_AsGeoJSON({queryables['geometry'].sql}, {DECIMALS}), 'null')"
    return (
        f"""'{{"type":"Feature","id":' || {alias}.id || ',"geometry":' || {geometry} || """
        f"""',"properties":' || {props} || '}}'"""
    )


# Per kind: the table, its alias.
TABLES = {PLACES: ("places_place", "p"), SENSORS: (SENSOR_TABLE, "s")}


PAGE_SQL = """
WITH region_summary AS MATERIALIZED ({regions}),
rows AS MATERIALIZED (
    SELECT {alias}.id, ({key})::text AS k, {row} AS line
    FROM {table} {alias} {joins}
    WHERE {where} {keyset}
    ORDER BY {key} {direction}, {alias}.id {direction}
    LIMIT %(limit_plus_one)s
), page AS (
    SELECT id, k, line, row_number() OVER (ORDER BY {key_in_rows} {direction}, id {direction}) AS n
    FROM rows
)
SELECT (SELECT count(*) FROM rows),
       count(*) FILTER (WHERE n <= %(limit)s),
       string_agg(line, ',' ORDER BY n) FILTER (WHERE n <= %(limit)s),
       max(k) FILTER (WHERE n = %(limit)s),
       max(id) FILTER (WHERE n = %(limit)s)
FROM page
"""


def items_page(*, query: ItemsQuery, after: tuple[str, int] | None) -> Page:
    """One keyset page of the collection's features matching ``query``, after ``after``
    (the previous page's last sort key and id), with ``numberMatched``."""
    places = query.collection.kind == PLACES
    table, alias = TABLES.get(query.collection.kind, ("places_region", "r"))
    queryables = query.collection.queryables
    queryable = queryables[query.sort.key]
    where, filters = _where(query)
    params = dict(filters)
    if places:
        row, joins = features._record_sql(list(query.properties), "geojson")
    else:
        row, joins = _feature_sql(alias, queryables, query.properties), ""
    direction = "DESC" if query.sort.descending else "ASC"
    keyset = ""
    if after is not None:
        op = "<" if query.sort.descending else ">"
        keyset = (
            f"AND ({queryable.sql}, {alias}.id) {op} "
            f"(%(after_key)s::{SQL_TYPES[queryable.kind]}, %(after_id)s)"
        )
        params["after_key"], params["after_id"] = after
    sql = PAGE_SQL.format(
        regions=features.REGION_SUMMARIES if places else "SELECT 1 AS id",
        alias=alias,
        key=queryable.sql,
        # Text sorts as text in rows (the key's own type keeps the order of the page).
        key_in_rows="k" if queryable.kind == "string" else f"k::{SQL_TYPES[queryable.kind]}",
        row=row,
        table=table,
        joins=joins,
        where=where,
        keyset=keyset,
        direction=direction,
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, {**params, "limit": query.limit, "limit_plus_one": query.limit + 1})
        found, returned, lines, last_key, last_id = cursor.fetchone()
    more = found > query.limit
    if places:
        matched, exact = features.number_matched_where(where=where, params=filters)
    else:
        # Regions and sensors are thousands of rows: counted.
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT count(*) FROM {table} {alias} WHERE {where}",  # nosec B608 # values bound
                filters,
            )
            matched, exact = cursor.fetchone()[0], True
    return Page(
        features=lines or "",
        returned=returned,
        more=more,
        cursor=cursor_encode(query.sort.key, last_key, last_id) if more else None,
        matched=matched,
        exact=exact,
    )


def item_get(*, collection: Collection, feature_id: int, properties: tuple[str, ...]) -> str | None:
    """One feature of the collection as GeoJSON text, whatever its status; None when the
    collection has no such feature."""
    if collection.kind == PLACES:
        row, joins = features._record_sql(list(properties), "geojson")
        where, params = PlaceQuery(
            dataset_ids=dataset_ids_of(collection.dataset_id), status=None
        ).where()
        # Columns from FIELDS, WHERE from PlaceQuery; values bound.
        sql = (
            f"WITH region_summary AS MATERIALIZED ({features.REGION_SUMMARIES}) "  # nosec B608
            f"SELECT {row} FROM places_place p {joins} WHERE {where} AND p.id = %(fid)s"
        )
    else:
        params = {}
        table, alias = TABLES.get(collection.kind, ("places_region", "r"))
        row = _feature_sql(alias, collection.queryables, properties)
        sql = (
            f"SELECT {row} FROM {table} {alias} "  # nosec B608 # constant columns
            f"WHERE {alias}.id = %(fid)s"
        )
    with connection.cursor() as cursor:
        cursor.execute(sql, {**params, "fid": feature_id})
        row_found = cursor.fetchone()
    return row_found[0] if row_found else None

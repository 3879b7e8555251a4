"""Mapbox Vector Tiles built in PostGIS (``ST_AsMVT``): the map's hot path, as bytes.

Below ``CLUSTER_BELOW_ZOOM`` a tile carries clusters (a 64×64 grid per tile: position,
count, most common religion, count per religion) in layer ``clusters``; from that zoom on it
carries the places themselves in layer ``places``, at most ``MAX_FEATURES`` of them, thinned
by a stable priority (a hash of the id) so that the same places stay visible from one request
to the next. Every query finds its rows through the GiST index on ``location``.
"""

from __future__ import annotations

import math

from django.db import connection

from places.geo import BBox
from places.serving.fields import TILE_COLUMNS
from places.serving.query import PlaceQuery

CLUSTER_BELOW_ZOOM = 10
MAX_FEATURES = 20_000
MAX_ZOOM = 22
EXTENT = 4096
CLUSTER_GRID = 64


# Layer ``places`` carries the fields ``places.serving.fields`` gives a tile column.
_PLACE_COLUMNS = ", ".join(f"{column.sql} AS {column.name}" for column in TILE_COLUMNS)
_ROW_COLUMNS = ", ".join(f"r.{column.name}" for column in TILE_COLUMNS)
_BOUNDS = """bounds AS (
    SELECT ST_TileEnvelope(%(z)s, %(x)s, %(y)s) AS tile,
           ST_Transform(ST_TileEnvelope(%(z)s, %(x)s, %(y)s, margin => 0.015625), 4326) AS search
)"""
# A tile's places in no order, one over the cap at most, and the tile built from them only
# when they fit: the thinning order (a hash of the id) then costs nothing, where sorting the
# densest z10 tile's places by it was 2.5 of its 16 ms. The body is NULL when they do not
# fit; the count says which (PostgreSQL runs only the CASE branch taken).
PLACES_SQL = f"""
WITH {_BOUNDS},
rows AS (
    SELECT p.id, {_PLACE_COLUMNS}, p.location
    FROM places_place p, bounds
    WHERE p.location && bounds.search AND {{where}}
    LIMIT {{cap}} + 1
)
SELECT CASE WHEN counted.n <= {{cap}} THEN (
    SELECT ST_AsMVT(t, 'places', {{extent}}, 'geom', 'id') FROM (
        SELECT r.id, {_ROW_COLUMNS},
               ST_AsMVTGeom(ST_Transform(r.location, 3857), b.tile, {{extent}}, 64, true) AS geom
        FROM rows r, bounds b) t) END,
       counted.n
FROM (SELECT count(*) AS n FROM rows) AS counted
"""  # nosec B608 # columns from TILE_COLUMNS; values are bound
# A tile of more places than the cap: the first ``cap`` by a stable priority (a hash of the
# id), so that the same places stay visible from one request to the next.
PLACES_THINNED_SQL = f"""
WITH {_BOUNDS},
rows AS (
    SELECT p.id, {_PLACE_COLUMNS},
           ST_AsMVTGeom(ST_Transform(p.location, 3857), bounds.tile, {{extent}}, 64, true) AS geom
    FROM places_place p, bounds
    WHERE p.location && bounds.search AND {{where}}
    ORDER BY hashint8(p.id), p.id
    LIMIT {{cap}}
)
SELECT ST_AsMVT(rows, 'places', {{extent}}, 'geom', 'id') FROM rows
"""  # nosec B608 # columns from TILE_COLUMNS; values are bound

# Layer ``clusters``: what each cluster feature carries (the SELECT of ``rows`` below).
CLUSTER_FIELDS = {
    "count": "Number",
    "religion": "String (most common)",
    "religions": "String: religion:count pairs, most first (christian:12,muslim:3)",
}
# Each place counts in exactly one tile: candidates come from the index (a box a little
# larger than the tile), then a half-open test on the tile's own Web Mercator bounds decides.
# Cells are counted from the tile's corner, so no cell straddles two tiles.
# Each place is projected once (OFFSET 0 keeps the planner from pasting the projection into
# each of its uses) and the tile's bounds are read once: written inline, ST_Transform and
# the bounds' reads were repeated in every test that named them, and the z7 tile over
# Shanghai took 64 against 36 ms, the same bytes (issue 14,
# tests/benchmarks/results/session-2026-12-05.md).
CLUSTERS_SQL = """
WITH bounds AS (
    SELECT t.tile, ST_XMin(t.tile) AS x0, ST_XMax(t.tile) AS x1,
           ST_YMin(t.tile) AS y0, ST_YMax(t.tile) AS y1,
           ST_Transform(ST_TileEnvelope(%(z)s, %(x)s, %(y)s, margin => 0.001), 4326) AS search
    FROM (SELECT ST_TileEnvelope(%(z)s, %(x)s, %(y)s) AS tile) AS t
),
candidates AS MATERIALIZED (
    SELECT ST_X(m.m) AS mx, ST_Y(m.m) AS my, p.location, p.religion
    FROM places_place p, bounds,
         LATERAL (SELECT ST_Transform(p.location, 3857) AS m OFFSET 0) AS m
    WHERE p.location && bounds.search AND {where}
),
cells AS (
    SELECT floor((c.mx - b.x0) * {grid} / (b.x1 - b.x0)) AS cx,
           floor((c.my - b.y0) * {grid} / (b.y1 - b.y0)) AS cy,
           c.location, c.religion
    FROM candidates c, bounds b
    WHERE c.mx >= b.x0 AND c.mx < b.x1 AND c.my >= b.y0 AND c.my < b.y1
),
per_religion AS (
    SELECT cx, cy, religion::text AS religion, count(*) AS n,
           sum(ST_X(location)) AS sx, sum(ST_Y(location)) AS sy
    FROM cells GROUP BY cx, cy, religion
),
-- A cell's religions in one more small GROUP BY over at most a few rows per cell: what the
-- hover lists. The centre is the places' mean position (ST_Centroid of the points).
clusters AS (
    SELECT sum(n)::int AS count,
           (array_agg(religion ORDER BY n DESC, religion))[1] AS religion,
           string_agg(religion || ':' || n, ',' ORDER BY n DESC, religion) AS religions,
           ST_SetSRID(ST_MakePoint(sum(sx) / sum(n), sum(sy) / sum(n)), 4326) AS centre
    FROM per_religion GROUP BY cx, cy
),
rows AS (
    SELECT count, religion, religions,
           ST_AsMVTGeom(ST_Transform(centre, 3857), bounds.tile, {extent}, 64, true) AS geom
    FROM clusters, bounds
)
SELECT ST_AsMVT(rows, 'clusters', {extent}, 'geom') FROM rows
"""

# Layer ``regions``: each field is the region's column of that name.
REGION_FIELDS = {"name": "String", "code": "String", "level": "String"}
REGIONS_SQL = f"""
WITH bounds AS (
    SELECT ST_TileEnvelope(%(z)s, %(x)s, %(y)s) AS tile,
           ST_Transform(ST_TileEnvelope(%(z)s, %(x)s, %(y)s), 4326) AS search
),
rows AS (
    SELECT r.id, {", ".join(f"r.{name}" for name in REGION_FIELDS)},
           ST_AsMVTGeom(
               ST_Simplify(ST_Transform(r.geom, 3857),
                           (ST_XMax(bounds.tile) - ST_XMin(bounds.tile)) / {{extent}}),
               bounds.tile, {{extent}}, 16, true) AS geom
    FROM places_region r, bounds
    WHERE r.geom && bounds.search AND r.level = %(level)s
)
SELECT ST_AsMVT(rows, 'regions', {{extent}}, 'geom', 'id') FROM rows WHERE geom IS NOT NULL
"""  # nosec B608 # columns from REGION_FIELDS; values are bound


def place_vector_layers() -> list[dict[str, object]]:
    """The places tiles' layers as TileJSON declares them (``vector_layers``)."""
    return [
        {
            "id": "places",
            "minzoom": CLUSTER_BELOW_ZOOM,
            "fields": {column.name: column.type for column in TILE_COLUMNS},
        },
        {"id": "clusters", "maxzoom": CLUSTER_BELOW_ZOOM - 1, "fields": dict(CLUSTER_FIELDS)},
    ]


def region_vector_layers() -> list[dict[str, object]]:
    """The region tiles' layer as TileJSON declares it."""
    return [{"id": "regions", "fields": dict(REGION_FIELDS)}]


def tile_bbox(*, z: int, x: int, y: int) -> BBox:
    """The tile's WGS84 bounds, widened by the margin the places query reads around it."""
    n = 2**z
    margin = 1 / 64

    def lon(tx: float) -> float:
        return max(-180.0, min(180.0, tx / n * 360 - 180))

    def lat(ty: float) -> float:
        ty = max(0.0, min(float(n), ty))
        return math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * ty / n))))

    return BBox(lon(x - margin), lat(y + 1 + margin), lon(x + 1 + margin), lat(y - margin))


def place_tile(*, z: int, x: int, y: int, filters: PlaceQuery) -> bytes:
    """The places tile z/x/y: clusters below ``CLUSTER_BELOW_ZOOM``, places from there on."""
    # The tile's own envelope is the box; a bbox in the filters is not used here.
    where, params = filters.where(box=False)
    params = {"z": z, "x": x, "y": y, **params}
    with connection.cursor() as cursor:
        if z < CLUSTER_BELOW_ZOOM:
            cursor.execute(
                CLUSTERS_SQL.format(extent=EXTENT, grid=CLUSTER_GRID, where=where), params
            )
            return bytes(cursor.fetchone()[0] or b"")
        # A tile within the cap is one statement; a fuller one (rare from zoom 10 on) a second.
        sql = PLACES_SQL.format(extent=EXTENT, cap=MAX_FEATURES, where=where)
        cursor.execute(sql, params)
        body, count = cursor.fetchone()
        if count > MAX_FEATURES:
            sql = PLACES_THINNED_SQL.format(extent=EXTENT, cap=MAX_FEATURES, where=where)
            cursor.execute(sql, params)
            body = cursor.fetchone()[0]
        return bytes(body or b"")


def region_tile(*, z: int, x: int, y: int, level: str) -> bytes:
    """Region boundaries of one level, simplified to the tile's resolution."""
    with connection.cursor() as cursor:
        cursor.execute(REGIONS_SQL.format(extent=EXTENT), {"z": z, "x": x, "y": y, "level": level})
        return bytes(cursor.fetchone()[0] or b"")

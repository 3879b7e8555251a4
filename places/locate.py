"""Point in polygon: the region and the country that hold a point. The one rule.

Imports (a batch of points at a time), curator edits (one point, through
``selectors.regions_for_point``) and region maintenance (the places inside a changed
boundary, ``places.services.regions``) all answer with ``LOCATE``:

- the point is tested against the subdivided pieces (``RegionPart``) of regions, never the
  full outlines, so each test reads at most
  ``places.services.regions.SUBDIVIDE_MAX_VERTICES`` vertices;
- region: the district holding the point, else the first-level region (``admin1``); of
  several at one level (a point on a shared border) the lowest region id;
- country: that region's parent, else (points in no district or first-level region, e.g.
  off a generalised coast, or a region without a parent) the lowest id among the countries
  whose pieces hold the point;
- a point in nothing has neither. Regions of level ``other`` are never assigned.

``LOCATE`` is a query over a relation ``{points}`` of ``(sid, geom)`` rows: a temporary
table for sets (``points_locate``), a one-row sub-select for a single point.
"""

from __future__ import annotations

import re
from typing import Any

# The most detailed level wins; the country comes from the region's parent, and the
# country pieces are only probed for points whose region gave none (COALESCE evaluates
# the sub-select only then). Each region piece looks up the points in {points}: with a
# spatial index on them PostGIS tests many points against one piece in a row, which it
# caches, three to four times faster than one index probe per point.
LOCATE = """
WITH hit AS (
    SELECT p.sid,
           COALESCE(min(rp.region_id) FILTER (WHERE rp.level = 'district'),
                    min(rp.region_id) FILTER (WHERE rp.level = 'admin1')) AS region_id
    FROM places_regionpart rp JOIN {points} p ON ST_Intersects(rp.geom, p.geom)
    WHERE rp.level IN ('district', 'admin1')
    GROUP BY p.sid
)
SELECT p.sid, p.geom, h.region_id,
       COALESCE(r.parent_id, (
           SELECT min(c.region_id) FROM places_regionpart c
           WHERE c.level = 'country' AND ST_Intersects(c.geom, p.geom))) AS country_id
FROM {points} p
LEFT JOIN hit h ON h.sid = p.sid
LEFT JOIN places_region r ON r.id = h.region_id
"""

# A temporary table of points gets a spatial index, which LOCATE's join looks up.
INDEX_POINTS = "CREATE INDEX ON {points} USING gist (geom)"

# The answer for a set of points: (sid, geom, region_id, country_id), one row per point.
CREATE_LOCATED = "CREATE TEMP TABLE {located} ON COMMIT DROP AS " + LOCATE

# One point, bound as %(lon)s and %(lat)s (WGS84).
LOCATE_POINT = LOCATE.format(
    points="(SELECT 1 AS sid, ST_SetSRID(ST_MakePoint(%(lon)s, %(lat)s), 4326) AS geom)"
)

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _table(name: str) -> str:
    # Table names cannot be bound as parameters; only plain lower-case names are let in.
    if not _NAME.match(name):
        raise ValueError(f"not a plain table name: {name!r}")
    return name


def points_locate(
    *, cursor: Any, points_table: str, located_table: str, index: bool = True
) -> None:
    """Create the temporary table ``located_table`` (sid, geom, region_id, country_id): one
    row per row of ``points_table`` (sid, geom in SRID 4326), by the rule of this module.

    Both tables are temporary and dropped at commit, so the caller runs inside a
    transaction and drops them itself when it locates again in the same transaction.
    ``index`` adds the spatial index the join uses (leave it on for more than a few points).
    """
    points, located = _table(points_table), _table(located_table)
    if index:
        cursor.execute(INDEX_POINTS.format(points=points))
    cursor.execute(CREATE_LOCATED.format(points=points, located=located))

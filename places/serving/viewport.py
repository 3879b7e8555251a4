"""The viewport payload: what a WebGL map needs for one view, as columns and bytes.

At zoom below ``CLUSTER_BELOW_ZOOM``, or when the box holds more than ``MAX_POINTS`` places,
the answer is clusters on a grid of cells 1/8 of a 256-pixel tile wide (about 32 px on
screen): each cluster has its places' mean position, their count, the count per religion
and their bounds (to zoom into). Every place in the box is in exactly one cluster, so the
counts add up to the places in the box. Otherwise the answer is every place: id, position
and religion code.

Binary layout (``format=bin``, little-endian), for typed arrays in a WebGL client:

    offset 0   4 bytes  magic "PLV1"
    offset 4   uint8    kind: 0 = points, 1 = clusters
    offset 5   3 bytes  zero
    offset 8   uint32   n, the number of points or clusters
    offset 12  uint32   L, the length of the legend in bytes
    offset 16  L bytes  legend: UTF-8 JSON array of religion values (code i = legend[i]),
                        then zero bytes up to a multiple of 8
    then, for points:   n × int64 id, n × float32 lon, n × float32 lat, n × uint8 religion
         for clusters:  n × uint32 count, n × float32 lon, n × float32 lat,
                        n × uint8 most common religion
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import psycopg
from django.conf import settings
from django.db import connection

from places.geo import BBox
from places.models import Religion
from places.serving.query import PlaceQuery

CLUSTER_BELOW_ZOOM = 10
MAX_POINTS = 250_000
LEGEND = list(Religion.values)
MAGIC = b"PLV1"
UNKNOWN_CODE = LEGEND.index(Religion.UNKNOWN)
# A view spans at most this many 256-px tiles per side at its zoom; wider boxes would ask
# for millions of clusters (a 4K screen is about 15 tiles wide).
MAX_TILES_ACROSS = 16


def box_fits_zoom(bbox: BBox, zoom: int) -> bool:
    """Whether a screen could show this box at this zoom (see ``MAX_TILES_ACROSS``)."""
    width = (bbox.max_lon - bbox.min_lon) % 360 or (360 if bbox.min_lon != bbox.max_lon else 0)
    height = bbox.max_lat - bbox.min_lat
    tiles_per_degree = 2**zoom / 360
    return max(width, height) * tiles_per_degree <= MAX_TILES_ACROSS


@dataclass
class Viewport:
    kind: str  # "points" or "clusters"
    total: int
    # Points come as numpy arrays straight from the database's bytes; clusters as lists.
    ids: Sequence[int] | np.ndarray = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    lon: Sequence[float] | np.ndarray = field(default_factory=list)
    lat: Sequence[float] | np.ndarray = field(default_factory=list)
    religion: Sequence[int] | np.ndarray = field(default_factory=list)
    by_religion: list[dict[str, int]] = field(default_factory=list)
    bounds: list[list[float]] = field(default_factory=list)


def viewport_query(*, query: PlaceQuery, zoom: int) -> Viewport:
    """Clusters or points for one map view (see the module docstring); ``query`` has a box."""
    condition, args = query.where()
    with connection.cursor() as cursor:
        if zoom >= CLUSTER_BELOW_ZOOM:
            prepare = settings.DB_PREPARED_STATEMENTS and box_only(query)
            view = _points(cursor, condition, args, prepare=prepare)
            if view is not None:
                return view
        return _clusters(cursor, condition, args, cell=360 / (2**zoom * 8))


# Religions most places have first: a CASE stops at the first WHEN that matches (OSM's places
# of worship are mostly Christian, then Muslim, Buddhist, Hindu). Every value of the legend is
# listed; the order changes no code.
_RELIGIONS_BY_FREQUENCY = [
    Religion.CHRISTIAN,
    Religion.MUSLIM,
    Religion.BUDDHIST,
    Religion.HINDU,
    Religion.UNKNOWN,
    Religion.OTHER,
    Religion.JEWISH,
]
_CASE_ORDER = [*_RELIGIONS_BY_FREQUENCY, *(r for r in LEGEND if r not in _RELIGIONS_BY_FREQUENCY)]
# A place's religion code as one byte, from constants: unknown for a value not in the legend.
# Looking it up with array_position() in the legend parameter cast to text[] was a tenth of
# the 100K view's SQL (77 against 69 ms) and 7 % of a 1K view's (issue 14).
RELIGION_CODE_SQL = (
    "CASE p.religion "
    + " ".join(
        f"WHEN '{value}' THEN '\\x{LEGEND.index(value):02x}'::bytea" for value in _CASE_ORDER
    )
    + f" ELSE '\\x{UNKNOWN_CODE:02x}'::bytea END"
)

# One fixed-width record per place (big-endian int64 id, float64 lon, float64 lat, uint8
# religion code), all in one bytea read in binary (no hex text) and split into columns by
# numpy. One aggregate instead of one per column, and no ORDER BY: the parallel scan hands
# rows to one aggregate unsorted and numpy sorts the ids, which was cheaper than the sort
# and the ordered gather in SQL. Positions stay float64 (the JSON rounds them to 6
# decimals; the binary payload narrows them to float32 in numpy), so both bodies are the
# same as when SQL sorted.
POINTS_SQL = f"""
SELECT count(*),
       coalesce(string_agg(
           int8send(p.id) || float8send(ST_X(p.location)) || float8send(ST_Y(p.location))
           || {RELIGION_CODE_SQL},
           ''::bytea), ''::bytea)
FROM (SELECT p.id, p.location, p.religion FROM places_place p WHERE {{condition}}
      LIMIT {{limit}}) AS p
"""  # nosec B608 # the religion codes are this module's constants; values are bound
POINT_RECORD = np.dtype([("id", ">i8"), ("lon", ">f8"), ("lat", ">f8"), ("religion", "u1")])


def box_only(query: PlaceQuery) -> bool:
    """Whether the query is a box and nothing else (any status): what maps send.

    Its points statement is prepared on the connection (``DB_PREPARED_STATEMENTS``):
    PostgreSQL parses it once, and after five executions may plan it once too, when it
    estimates its generic plan cheaper than the plans it made for each box, planning
    counted. That plan does not know the box (a default selectivity stands for it); on the
    bench's million places it is the same bitmap scan of the location index a box of its
    own gets, and the 100K-place and densest views took as long either way (issue 14).
    Parsing and planning were a quarter of PostgreSQL's CPU for a 1,000-place view. A
    filter (a name, a religion, datasets) may deserve another plan for each value: such
    statements are planned afresh each time, as before.
    """
    return query.bbox is not None and replace(query, bbox=None, status=None) == _NOTHING_BUT


_NOTHING_BUT = PlaceQuery(status=None)
# psycopg prepares nothing while a connection's threshold is None (Django's default, kept for
# every other query, which then pays none of psycopg's bookkeeping of statements seen); the
# points statement lends its connection one that counting never reaches, so that it is
# prepared because it asks, and only then. psycopg, which then looks at no other statement,
# would not notice a DEALLOCATE or DISCARD ALL sent through a Django cursor (none is): the
# statement would be gone from the server, and each plain view on that connection would
# fail until it closes. Its own rollback() deallocates and forgets them together.
_ASKED_ONLY = 2**31 - 1


def _points(cursor: Any, condition: str, args: dict[str, Any], *, prepare: bool) -> Viewport | None:
    """Every place in the box, or None when there are more than ``MAX_POINTS``."""
    # Django's cursors bind on the client, which cannot ask for binary results: this one
    # statement goes through a plain psycopg cursor on the same connection (and transaction),
    # its errors turned into Django's as for any other query.
    pg = cursor.connection
    threshold = pg.prepare_threshold
    if prepare:
        pg.prepare_threshold = _ASKED_ONLY
    try:
        with connection.wrap_database_errors, psycopg.Cursor(pg) as raw:
            raw.execute(
                POINTS_SQL.format(condition=condition, limit=MAX_POINTS + 1),
                args,
                binary=True,
                prepare=prepare,
            )
            row = raw.fetchone()
    finally:
        pg.prepare_threshold = threshold
    if row is None:  # an aggregate always answers one row
        raise RuntimeError("the points query returned no row")
    n, records = row
    if n > MAX_POINTS:
        return None
    rows = np.frombuffer(records, dtype=POINT_RECORD)
    rows = rows[np.argsort(rows["id"], kind="stable")]
    return Viewport(
        kind="points",
        total=n,
        ids=rows["id"],
        lon=rows["lon"],
        lat=rows["lat"],
        religion=rows["religion"],
    )


# Clusters on a grid of ``%(cell)s`` degrees, with their counts per religion and bounds.
# One pass over the places, grouped by cell and religion (a few rows per cell), then the
# cells from those: each cluster's mean position is its sums over its count. Grouping the
# places twice (per cell, and per cell and religion) and joining the two read every place
# twice from a materialised list: the world at zoom 2 (1,000,000 places) took 1,042 against
# 814 ms, 185,000 places at zoom 6 186 against 159 ms, the same clusters to about 1e-12 degrees
# (issue 14, tests/benchmarks/results/session-2026-12-05.md).
CLUSTERS_SQL = """
WITH per_religion AS (
    SELECT floor(ST_X(p.location) / %(cell)s) AS cx,
           floor(ST_Y(p.location) / %(cell)s) AS cy,
           p.religion, count(*) AS n,
           sum(ST_X(p.location)) AS sx, sum(ST_Y(p.location)) AS sy,
           min(ST_X(p.location)) AS x0, min(ST_Y(p.location)) AS y0,
           max(ST_X(p.location)) AS x1, max(ST_Y(p.location)) AS y1
    FROM places_place p WHERE {condition}
    GROUP BY 1, 2, 3
)
SELECT sum(n)::bigint, sum(sx) / sum(n)::float8, sum(sy) / sum(n)::float8,
       min(x0), min(y0), max(x1), max(y1),
       jsonb_object_agg(religion, n),
       (array_agg(religion ORDER BY n DESC, religion))[1]
FROM per_religion GROUP BY cx, cy
ORDER BY cy, cx
"""


def _clusters(cursor: Any, condition: str, args: dict[str, Any], *, cell: float) -> Viewport:
    cursor.execute(CLUSTERS_SQL.format(condition=condition), {**args, "cell": cell})
    counts: list[int] = []
    lon: list[float] = []
    lat: list[float] = []
    religion: list[int] = []
    by_religion: list[dict[str, int]] = []
    bounds: list[list[float]] = []
    for n, x, y, x0, y0, x1, y1, per_religion, top in cursor.fetchall():
        counts.append(n)
        lon.append(round(x, 6))
        lat.append(round(y, 6))
        bounds.append([x0, y0, x1, y1])
        # Django's psycopg setup hands jsonb back as text.
        by_religion.append(
            json.loads(per_religion) if isinstance(per_religion, str) else per_religion
        )
        religion.append(LEGEND.index(top) if top in LEGEND else UNKNOWN_CODE)
    return Viewport(
        kind="clusters",
        total=sum(counts),
        counts=counts,
        lon=lon,
        lat=lat,
        religion=religion,
        by_religion=by_religion,
        bounds=bounds,
    )


def viewport_json(view: Viewport) -> bytes:
    """Compact columnar JSON."""
    body: dict[str, object] = {"kind": view.kind, "total": view.total, "legend": LEGEND}
    if view.kind == "points":
        body.update(
            ids=np.asarray(view.ids, dtype=np.int64).tolist(),
            lon=np.round(np.asarray(view.lon, dtype=np.float64), 6).tolist(),
            lat=np.round(np.asarray(view.lat, dtype=np.float64), 6).tolist(),
            religion=np.asarray(view.religion, dtype=np.uint8).tolist(),
        )
    else:
        body.update(
            count=view.counts,
            lon=view.lon,
            lat=view.lat,
            religion=view.religion,
            by_religion=view.by_religion,
            bounds=view.bounds,
        )
    return json.dumps(body, separators=(",", ":")).encode()


def viewport_binary(view: Viewport) -> bytes:
    """The little-endian layout in the module docstring."""
    legend = json.dumps(LEGEND, separators=(",", ":")).encode()
    legend_padded = legend + b"\0" * (-len(legend) % 8)
    n = len(view.lon)
    header = MAGIC + struct.pack("<B3xII", 0 if view.kind == "points" else 1, n, len(legend))
    first = (
        np.asarray(view.ids, dtype="<i8")
        if view.kind == "points"
        else np.asarray(view.counts, dtype="<u4")
    )
    return b"".join(
        [
            header,
            legend_padded,
            first.tobytes(),
            np.asarray(view.lon, dtype="<f4").tobytes(),
            np.asarray(view.lat, dtype="<f4").tobytes(),
            np.asarray(view.religion, dtype="u1").tobytes(),
        ]
    )

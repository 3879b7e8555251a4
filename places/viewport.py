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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.db import connection

from places.geo import BBox
from places.models import Religion
from places.query import PlaceQuery

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
    ids: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    lon: list[float] = field(default_factory=list)
    lat: list[float] = field(default_factory=list)
    religion: list[int] = field(default_factory=list)
    by_religion: list[dict[str, int]] = field(default_factory=list)
    bounds: list[list[float]] = field(default_factory=list)


def viewport_query(*, query: PlaceQuery, zoom: int) -> Viewport:
    """Clusters or points for one map view (see the module docstring); ``query`` has a box."""
    condition, args = query.where()
    with connection.cursor() as cursor:
        if zoom >= CLUSTER_BELOW_ZOOM:
            # Bounded count: stop reading once the box is known to be too full for points.
            cursor.execute(
                f"SELECT count(*) FROM (SELECT 1 FROM places_place p WHERE {condition} "
                f"LIMIT {MAX_POINTS + 1}) AS capped",
                args,
            )
            if cursor.fetchone()[0] <= MAX_POINTS:
                return _points(cursor, condition, args)
        return _clusters(cursor, condition, args, cell=360 / (2**zoom * 8))


def _points(cursor: Any, condition: str, args: dict[str, object]) -> Viewport:
    cursor.execute(
        "SELECT coalesce(array_agg(p.id ORDER BY p.id), '{}'), "
        "coalesce(array_agg(ST_X(p.location) ORDER BY p.id), '{}'), "
        "coalesce(array_agg(ST_Y(p.location) ORDER BY p.id), '{}'), "
        "coalesce(array_agg(coalesce(array_position(%(legend)s::text[], p.religion::text), "
        "%(unknown)s) - 1 ORDER BY p.id), '{}') "
        f"FROM places_place p WHERE {condition}",
        {**args, "legend": LEGEND, "unknown": UNKNOWN_CODE + 1},
    )
    ids, lon, lat, codes = cursor.fetchone()
    return Viewport(kind="points", total=len(ids), ids=ids, lon=lon, lat=lat, religion=codes)


def _clusters(cursor: Any, condition: str, args: dict[str, object], *, cell: float) -> Viewport:
    cursor.execute(
        f"""
        WITH cells AS (
            SELECT floor(ST_X(p.location) / %(cell)s) AS cx,
                   floor(ST_Y(p.location) / %(cell)s) AS cy,
                   ST_X(p.location) AS x, ST_Y(p.location) AS y, p.religion
            FROM places_place p WHERE {condition}
        ),
        per_religion AS (
            SELECT cx, cy, religion, count(*) AS n FROM cells GROUP BY cx, cy, religion
        ),
        religions AS (
            SELECT cx, cy, jsonb_object_agg(religion, n) AS by_religion,
                   (array_agg(religion ORDER BY n DESC, religion))[1] AS top
            FROM per_religion GROUP BY cx, cy
        ),
        clusters AS (
            SELECT cx, cy, count(*) AS n, avg(x) AS x, avg(y) AS y,
                   min(x) AS x0, min(y) AS y0, max(x) AS x1, max(y) AS y1
            FROM cells GROUP BY cx, cy
        )
        SELECT c.n, c.x, c.y, c.x0, c.y0, c.x1, c.y1, r.by_religion, r.top
        FROM clusters c JOIN religions r USING (cx, cy)
        ORDER BY c.cy, c.cx
        """,
        {**args, "cell": cell},
    )
    view = Viewport(kind="clusters", total=0)
    for n, x, y, x0, y0, x1, y1, by_religion, top in cursor.fetchall():
        view.counts.append(n)
        view.lon.append(round(x, 6))
        view.lat.append(round(y, 6))
        view.bounds.append([x0, y0, x1, y1])
        # Django's psycopg setup hands jsonb back as text.
        view.by_religion.append(
            json.loads(by_religion) if isinstance(by_religion, str) else by_religion
        )
        view.religion.append(LEGEND.index(top) if top in LEGEND else UNKNOWN_CODE)
        view.total += n
    return view


def viewport_json(view: Viewport) -> bytes:
    """Compact columnar JSON."""
    body: dict[str, object] = {"kind": view.kind, "total": view.total, "legend": LEGEND}
    if view.kind == "points":
        body.update(
            ids=view.ids,
            lon=[round(v, 6) for v in view.lon],
            lat=[round(v, 6) for v in view.lat],
            religion=view.religion,
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

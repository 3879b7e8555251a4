"""Boxes and tiles the serving benchmark asks for, chosen from the loaded data.

Everything is picked from the places' own positions (read once from the database), so the
figures name how many places each request really covers, whatever the data set's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from django.db import connection

# The viewport API shows points from zoom 10 and lets a view span at most 16 tiles; at zoom
# 10 that is a square of 16 × 360 / 1024 = 5.625 degrees, the widest legal points view.
POINTS_ZOOM = 10
MAX_TILES_ACROSS = 16
LEGAL_SIDE = MAX_TILES_ACROSS * 360 / 2**POINTS_ZOOM
CELL = LEGAL_SIDE / 24  # grid of the search for dense squares


@dataclass(frozen=True)
class Box:
    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float
    places: int
    zoom: int = POINTS_ZOOM

    @property
    def text(self) -> str:
        return f"{self.min_lon:.6f},{self.min_lat:.6f},{self.max_lon:.6f},{self.max_lat:.6f}"

    @property
    def tiles_across(self) -> int:
        side = max(self.max_lon - self.min_lon, self.max_lat - self.min_lat)
        return math.ceil(side * 2**self.zoom / 360)

    def shifted(self, degrees: float) -> str:
        """The same box moved by a fraction of a metre: another cache key, the same work."""
        return (
            f"{self.min_lon + degrees:.7f},{self.min_lat + degrees:.7f},"
            f"{self.max_lon + degrees:.7f},{self.max_lat + degrees:.7f}"
        )

    def as_dict(self) -> dict[str, object]:
        return {"bbox": self.text, "places": self.places, "zoom": self.zoom}


@dataclass(frozen=True)
class Tile:
    z: int
    x: int
    y: int
    places: int

    @property
    def path(self) -> str:
        return f"{self.z}/{self.x}/{self.y}"


def positions() -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude of every active place."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT array_agg(ST_X(location)), array_agg(ST_Y(location)) "
            "FROM places_place WHERE status = 'active'"
        )
        lon, lat = cursor.fetchone()
    return np.asarray(lon or [], dtype=float), np.asarray(lat or [], dtype=float)


def _count(lon: np.ndarray, lat: np.ndarray, box: tuple[float, float, float, float]) -> int:
    x0, y0, x1, y1 = box
    return int(np.count_nonzero((lon >= x0) & (lon <= x1) & (lat >= y0) & (lat <= y1)))


def densest_square(lon: np.ndarray, lat: np.ndarray, *, cells: int) -> Box:
    """The square of ``cells`` × ``CELL`` degrees (on the grid) holding the most places."""
    nx, ny = round(360 / CELL), round(180 / CELL)
    grid, _, _ = np.histogram2d(lon, lat, bins=[nx, ny], range=[[-180, 180], [-90, 90]])
    summed = np.pad(grid.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    windows = (
        summed[cells:, cells:]
        - summed[:-cells, cells:]
        - summed[cells:, :-cells]
        + summed[:-cells, :-cells]
    )
    i, j = np.unravel_index(int(windows.argmax()), windows.shape)
    edges = (-180 + i * CELL, -90 + j * CELL, -180 + (i + cells) * CELL, -90 + (j + cells) * CELL)
    return Box(*edges, places=_count(lon, lat, edges))


def box_holding(lon: np.ndarray, lat: np.ndarray, *, places: int) -> Box:
    """A square holding ``places`` places where they are densest: centred on the smallest
    grid square that holds as many, then sized to the number exactly."""
    low, high = 1, round(180 / CELL)
    while low < high:
        middle = (low + high) // 2
        if densest_square(lon, lat, cells=middle).places >= places:
            high = middle
        else:
            low = middle + 1
    coarse = densest_square(lon, lat, cells=low)
    return _square_around(
        lon,
        lat,
        cx=(coarse.min_lon + coarse.max_lon) / 2,
        cy=(coarse.min_lat + coarse.max_lat) / 2,
        places=places,
        zoom=POINTS_ZOOM,
    )


def _square_around(
    lon: np.ndarray, lat: np.ndarray, *, cx: float, cy: float, places: int, zoom: int | None
) -> Box:
    """The square centred on (cx, cy) just wide enough to hold ``places`` places, its edges
    rounded outwards to 6 decimals; ``zoom=None`` picks the zoom of a screen about eight
    tiles wide."""
    half = float(np.partition(np.maximum(abs(lon - cx), abs(lat - cy)), places - 1)[places - 1])
    if zoom is None:
        zoom = min(22, max(POINTS_ZOOM, math.floor(math.log2(8 * 360 / max(2 * half, 1e-9)))))
    edges = (
        math.floor((cx - half) * 1e6) / 1e6,
        math.floor((cy - half) * 1e6) / 1e6,
        math.ceil((cx + half) * 1e6) / 1e6,
        math.ceil((cy + half) * 1e6) / 1e6,
    )
    return Box(*edges, places=_count(lon, lat, edges), zoom=zoom)


def boxes_of_about(
    lon: np.ndarray, lat: np.ndarray, *, places: int, count: int, seed: int
) -> list[Box]:
    """``count`` square views, each holding about ``places`` places, centred on random places
    (so, like map users, mostly where places are dense), each at the zoom a screen about
    eight tiles wide would show it."""
    rng = np.random.default_rng(seed)
    boxes: list[Box] = []
    for centre in rng.permutation(len(lon)):
        box = _square_around(lon, lat, cx=lon[centre], cy=lat[centre], places=places, zoom=None)
        side = box.max_lon - box.min_lon
        inside = -180 < box.min_lon < box.max_lon < 180 and -85 < box.min_lat < box.max_lat < 85
        if 0 < side <= LEGAL_SIDE and inside:
            boxes.append(box)
        if len(boxes) == count:
            break
    return boxes


def _tile_xy(lon: np.ndarray, lat: np.ndarray, z: int) -> tuple[np.ndarray, np.ndarray]:
    n = 2**z
    clipped = np.radians(np.clip(lat, -85.0511, 85.0511))
    x = np.clip(((lon + 180) / 360 * n).astype(np.int64), 0, n - 1)
    y = np.clip(((1 - np.arcsinh(np.tan(clipped)) / math.pi) / 2 * n).astype(np.int64), 0, n - 1)
    return x, y


def densest_tile(lon: np.ndarray, lat: np.ndarray, *, z: int) -> Tile:
    """The Web Mercator tile at zoom ``z`` holding the most places."""
    n = 2**z
    x, y = _tile_xy(lon, lat, z)
    keys, counts = np.unique(x * n + y, return_counts=True)
    best = int(counts.argmax())
    return Tile(z=z, x=int(keys[best] // n), y=int(keys[best] % n), places=int(counts[best]))


def tile_at(lon: np.ndarray, lat: np.ndarray, *, z: int, x: int, y: int) -> Tile:
    """The tile z/x/y with the number of places inside it."""
    tx, ty = _tile_xy(lon, lat, z)
    return Tile(z=z, x=x, y=y, places=int(np.count_nonzero((tx == x) & (ty == y))))

"""Pure geometry helpers: no database, no Django models."""

from __future__ import annotations

import math
from dataclasses import dataclass


class BBoxError(ValueError):
    """A bounding box that cannot be used; the message says why, for the API client."""


@dataclass(frozen=True)
class BBox:
    """A WGS84 box. ``min_lon > max_lon`` means it crosses the antimeridian."""

    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float

    @property
    def crosses_antimeridian(self) -> bool:
        return self.min_lon > self.max_lon

    def parts(self) -> list[tuple[float, float, float, float]]:
        """Boxes that never cross the antimeridian: one, or two split at ±180."""
        if not self.crosses_antimeridian:
            return [(self.min_lon, self.min_lat, self.max_lon, self.max_lat)]
        return [
            (self.min_lon, self.min_lat, 180.0, self.max_lat),
            (-180.0, self.min_lat, self.max_lon, self.max_lat),
        ]


def parse_bbox(text: str) -> BBox:
    """Parse ``minLon,minLat,maxLon,maxLat``; raise ``BBoxError`` with a clear reason.

    A box whose minLon is greater than its maxLon is taken to cross the antimeridian
    (``170,-48,-175,-34`` covers New Zealand and the Chatham Islands).
    """
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise BBoxError(
            f"expected 4 comma-separated numbers minLon,minLat,maxLon,maxLat; got {len(parts)}"
        )
    values: list[float] = []
    for label, part in zip(("minLon", "minLat", "maxLon", "maxLat"), parts, strict=True):
        try:
            value = float(part)
        except ValueError:
            raise BBoxError(f"{label} is not a number: {part[:40]!r}") from None
        if not math.isfinite(value):
            raise BBoxError(f"{label} must be a finite number, got {part[:40]!r}")
        values.append(value)
    min_lon, min_lat, max_lon, max_lat = values
    for label, lon in (("minLon", min_lon), ("maxLon", max_lon)):
        if not -180.0 <= lon <= 180.0:
            raise BBoxError(f"{label} must be between -180 and 180, got {lon}")
    for label, lat in (("minLat", min_lat), ("maxLat", max_lat)):
        if not -90.0 <= lat <= 90.0:
            raise BBoxError(f"{label} must be between -90 and 90, got {lat}")
    if min_lat > max_lat:
        raise BBoxError(f"minLat ({min_lat}) is greater than maxLat ({max_lat})")
    return BBox(min_lon, min_lat, max_lon, max_lat)

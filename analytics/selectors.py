"""Reads for researchers: live aggregates from the replica alias, and the stored results.

``replica`` is the read replica when REPLICA_DATABASE_URL is set and a read-only session on
the primary otherwise; either way these queries cannot write and never touch ``default``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from django.contrib.gis.db.models import Extent
from django.db import connections

from analytics.models import Interval, RegionSensorRollup, RegionSummary, SensorRollup
from config.routers import REPLICA
from ingestion.edge.models import Sensor
from places.models import Region, RegionLevel

COUNTS_BY_REGION = """
SELECT r.id, r.code, r.name, r.population, r.area_km2,
       count(p.id) AS places
FROM places_region r
LEFT JOIN places_place p ON p.{column} = r.id AND p.status = 'active'
WHERE r.level = %(level)s
GROUP BY r.id
ORDER BY r.code
"""

RELIGIONS_BY_REGION = """
SELECT p.{column}, p.religion, count(*)
FROM places_place p JOIN places_region r ON r.id = p.{column}
WHERE r.level = %(level)s AND p.status = 'active'
GROUP BY 1, 2
"""


def region_place_counts(*, level: str) -> list[dict[str, Any]]:
    """Active places per region of ``level``, with density and per-capita figures.

    Countries count by the place's country; other levels by its most detailed region.
    """
    column = "country_id" if level == RegionLevel.COUNTRY else "region_id"
    with connections[REPLICA].cursor() as cursor:
        cursor.execute(COUNTS_BY_REGION.format(column=column), {"level": level})
        rows = cursor.fetchall()
        cursor.execute(RELIGIONS_BY_REGION.format(column=column), {"level": level})
        religions: dict[int, dict[str, int]] = {}
        for region_id, religion, count in cursor.fetchall():
            religions.setdefault(region_id, {})[religion] = count
    result = []
    for region_id, code, name, population, area_km2, places in rows:
        result.append(
            {
                "region_id": region_id,
                "code": code,
                "name": name,
                "places": places,
                "by_religion": religions.get(region_id, {}),
                "per_100k_people": round(places / population * 100_000, 2) if population else None,
                "per_1000_km2": round(places / area_km2 * 1000, 2) if area_km2 else None,
            }
        )
    return result


# --- Stored results (written by analytics.services; read on the primary, where they are
# written, so an answer's key and its rows agree). --------------------------------------

RANKING_ORDERS = {
    # A value per region from its stored row; ``n`` is its places, or those of one religion.
    "places": "n",
    "per_100k_people": "n::float8 / nullif(population, 0) * 100000",
    "per_1000_km2": "n / nullif(area_km2, 0) * 1000",
    "share": "n::float8 / nullif(places, 0)",
    "shannon": "shannon",
    "simpson": "simpson",
    "dated_places": "dated_places",
    "unnamed_rate": "unnamed::float8 / nullif(places, 0)",
    "unknown_religion_rate": "unknown_religion::float8 / nullif(places, 0)",
    "outside_region_rate": "outside_region::float8 / nullif(places, 0)",
    "duplicate_coordinates_rate": "duplicate_coordinates::float8 / nullif(places, 0)",
}
# The orders that count places (``n``), which a religion filter narrows to that religion.
RELIGION_ORDERS = frozenset({"places", "per_100k_people", "per_1000_km2", "share"})

RANKING = """
SELECT region_id, value FROM (
    SELECT region_id, code, {value} AS value
    FROM (
        SELECT s.*,
               CASE WHEN %(religion)s::text IS NULL THEN s.places
                    ELSE coalesce((s.by_religion ->> %(religion)s::text)::int, 0) END AS n
        FROM analytics_regionsummary s WHERE s.level = %(level)s
    ) counted
) ranked
ORDER BY value {direction} NULLS LAST, code
LIMIT %(limit)s
"""


def region_summaries(
    *, level: str | None = None, region_ids: Sequence[int] | None = None
) -> list[RegionSummary]:
    """Stored summaries of a level, or of the given regions in the order given."""
    qs = RegionSummary.objects.all()
    if level is not None:
        qs = qs.filter(level=level)
    if region_ids is not None:
        found = {s.region_id: s for s in qs.filter(region_id__in=region_ids)}
        return [found[rid] for rid in region_ids if rid in found]
    return list(qs.order_by("code"))


def region_ranking(
    *, level: str, order: str, religion: str | None, descending: bool, limit: int
) -> list[tuple[RegionSummary, float | None]]:
    """Regions of ``level`` by one figure of their stored summaries, best first (nulls,
    e.g. an unknown population, last), ties by code. ``order`` is a key of RANKING_ORDERS."""
    sql = RANKING.format(value=RANKING_ORDERS[order], direction="DESC" if descending else "ASC")
    with connections["default"].cursor() as cursor:
        cursor.execute(sql, {"level": level, "religion": religion, "limit": limit})
        ranked = cursor.fetchall()
    found = RegionSummary.objects.in_bulk([rid for rid, _ in ranked])
    return [(found[rid], value) for rid, value in ranked if rid in found]


def region_sensor_series(
    *,
    region_id: int,
    parameter_id: int,
    interval: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> list[RegionSensorRollup]:
    qs = RegionSensorRollup.objects.filter(
        region_id=region_id, parameter_id=parameter_id, interval=interval
    )
    if since is not None:
        qs = qs.filter(bucket__gte=since)
    if until is not None:
        qs = qs.filter(bucket__lt=until)
    return list(qs.order_by("bucket"))


def sensor_series(
    *,
    sensor_id: int,
    parameter_id: int,
    interval: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> list[SensorRollup]:
    qs = SensorRollup.objects.filter(
        sensor_id=sensor_id, parameter_id=parameter_id, interval=interval
    )
    if since is not None:
        qs = qs.filter(bucket__gte=since)
    if until is not None:
        qs = qs.filter(bucket__lt=until)
    return list(qs.order_by("bucket"))


# --- The admin dashboard -----------------------------------------------------------------

# Figures a choropleth can show, by their path in a summary's JSON (``summary_json``): the
# dashboard reads them from the summaries list, so it shows exactly what the API answers.
DASHBOARD_FIGURES: dict[str, str] = {
    "per_1000_km2": "Places per 1,000 km²",
    "per_100k_people": "Places per 100,000 people",
    "places": "Places",
    "diversity.shannon": "Religious diversity (Shannon index)",
    "diversity.simpson": "Religious diversity (Simpson index)",
    "quality.unknown_religion.rate": "Share of places with an unknown religion",
    "quality.unnamed.rate": "Share of places with no name",
    "quality.duplicate_coordinates.rate": "Share of places on another's coordinates",
}


def sensors_with_rollups() -> list[dict[str, Any]]:
    """Sensors that have stored daily rollups of any parameter, for the dashboard's series
    picker: rollups outlive their readings, so the sensors are found through them."""
    ids = SensorRollup.objects.filter(interval=Interval.DAY).values("sensor_id").distinct()
    found = Sensor.objects.filter(pk__in=ids).order_by("external_id")
    return [{"id": s.pk, "external_id": s.external_id, "kind": s.kind} for s in found]


def region_extent(*, level: str) -> tuple[float, float, float, float] | None:
    """West, south, east, north around every region of ``level``: the dashboard's first
    view of its map (None without regions)."""
    found = Region.objects.filter(level=level).aggregate(extent=Extent("geom"))["extent"]
    return tuple(found) if found else None

"""Aggregate reads for researchers, always from the replica alias.

``replica`` is the read replica when REPLICA_DATABASE_URL is set and a read-only session on
the primary otherwise; either way these queries cannot write and never touch ``default``.
"""

from __future__ import annotations

from typing import Any

from django.db import connections

from config.routers import REPLICA
from places.models import RegionLevel

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

"""Region summaries: figures per country, first-level region and district, recomputed only for
the regions whose own data version moved.

**Which places count for a region.** A place counts for its most detailed region
(``Place.region``), that region's parent (a district's first-level region) and its country
(``Place.country``), each once: a country's figures cover every place located in it, a
first-level region's those of its districts too. Only active places count.

**A region's version key** (``REGION_KEYS``) is a digest of the region version (any region
added, removed or rewritten, which may move places between regions or change a region's
area, population or parent) and of the ``AreaVersion`` rows of every dataset in the grid
cells that the bounding boxes of its pieces (``RegionPart``; its outline's box where it has
no pieces) touch, widened by 0.1° on each side. Every committed change to a place moves the
cells of its new and old position (``places.dbobjects``); a place counting for a region lies
inside that region's boundary, so inside one of its pieces and those cells: no change to a
region's places can leave its key alone. The 0.1° (about 11 km) of margin covers places of a
district whose country polygon is generalised more coarsely than the district (a coastal
place can sit just outside the Natural Earth 1:50m outline); a place filed by hand under a
region farther away than that from its boundary is the one case a key can miss, until the
next full recompute. Versions are summed, not maxed: each cell's version
only ever grows, so the sum moves with any one of them, whatever order commits land in. A
change in a neighbouring region inside the same cells recomputes this one too (harmless: the
figures come out equal).

**Figures** (``SUMMARY``), all over the region's active places:
- ``by_religion``, ``by_denomination`` (a place with two denominations counts for both);
  shares are these counts over ``places`` (the API divides).
- Shannon ``H = −Σ pᵢ ln pᵢ`` and Simpson ``1 − Σ pᵢ²`` over religions, the places of unknown
  religion left out (they would count as one more "religion"); null without a known religion.
- ``per_1000_km2`` over the region's geodesic area; ``per_100k_people`` where its population
  is known (and not 0).
- ``founding_decades``: places with a ``start_date`` by decade of that date (``1850`` holds
  1850–1859); ``dated_places`` their number.
- Data quality: ``unnamed`` (empty name), ``unknown_religion``, ``outside_region`` (its point
  is in none of the region's pieces, ``RegionPart``: e.g. it was placed there by hand or the
  boundary moved since) and ``duplicate_coordinates`` (another active place has exactly the
  same longitude and latitude). Rates are these counts over ``places`` (the API divides).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import connections, transaction

from analytics.replica import ReadSource, read_source
from analytics.services.results import provenance, results_bump, rows_as_json, snapshot

logger = logging.getLogger(__name__)

SUMMARY_LEVELS = ("country", "admin1", "district")

# The cell arithmetic is places_area_cell's (places.dbobjects), on the corners of each box.
# The boxes are those of the region's pieces (RegionPart, at most 64 vertices each), or of its
# outline where it has none: one box around a whole country covers far more than the country
# (the United States' reaches round the world with the Aleutians, France's from French Guiana
# to Réunion, China's holds Bangladesh), and every place added in it recomputed the country.
REGION_KEYS = """
WITH pieces AS (
    SELECT rp.region_id AS id, rp.geom FROM places_regionpart rp
    WHERE rp.level = ANY(%(levels)s)
    UNION ALL
    SELECT r.id, r.geom FROM places_region r
    WHERE r.level = ANY(%(levels)s)
      AND NOT EXISTS (SELECT 1 FROM places_regionpart rp WHERE rp.region_id = r.id)
),
box AS (
    SELECT id,
           greatest(0, floor((ST_YMin(geom) - 0.1 + 90) / 1.40625)::int) AS row0,
           least(127, floor((ST_YMax(geom) + 0.1 + 90) / 1.40625)::int) AS row1,
           greatest(0, floor((ST_XMin(geom) - 0.1 + 180) / 1.40625)::int) AS col0,
           least(255, floor((ST_XMax(geom) + 0.1 + 180) / 1.40625)::int) AS col1
    FROM pieces
),
cells AS (
    SELECT DISTINCT box.id, y * 256 + x AS cell
    FROM box, generate_series(box.row0, box.row1) y, generate_series(box.col0, box.col1) x
),
cell_versions AS (
    SELECT cell, sum(version) AS total, count(*) AS n, NULL AS mark
    FROM places_areaversion GROUP BY cell
    UNION ALL
    -- Marks of the reader's own open transaction (the versions move at its commit), so a
    -- transaction that wrote places sees its regions as changed.
    SELECT cell, 0, 0, concat_ws(':', cell, dataset_id, xact, marks)
    FROM places_areaversion_pending
)
SELECT cells.id,
       left(md5(concat_ws('|', %(region_version)s::text,
                          coalesce(sum(cv.total), 0), coalesce(sum(cv.n), 0),
                          string_agg(cv.mark, ',' ORDER BY cv.mark))), 32)
FROM cells LEFT JOIN cell_versions cv ON cv.cell = cells.cell
GROUP BY cells.id
"""

# %(ids)s is null for every region of SUMMARY_LEVELS. The place set is narrowed by indexes
# first (the regions, their children, and places whose country is one of them).
SUMMARY = """
WITH target AS (
    SELECT r.id, r.level, r.code, r.name, r.population, r.area_km2
    FROM places_region r
    WHERE r.level = ANY(%(levels)s)
      AND (%(ids)s::bigint[] IS NULL OR r.id = ANY(%(ids)s::bigint[]))
),
scoped AS (
    SELECT p.id, p.name, p.religion, p.denominations, p.start_date, p.location,
           p.region_id, p.country_id, reg.parent_id
    FROM places_place p
    LEFT JOIN places_region reg ON reg.id = p.region_id
    WHERE p.status = 'active'
      AND (%(ids)s::bigint[] IS NULL
           OR p.region_id = ANY(ARRAY(
               SELECT r.id FROM places_region r
               WHERE r.id = ANY(%(ids)s::bigint[]) OR r.parent_id = ANY(%(ids)s::bigint[])
           ))
           OR p.country_id = ANY(%(ids)s::bigint[]))
),
-- Points shared by two places or more: a hash aggregate, cheaper than a sort of every row.
-- Identical points lie in the same regions, so the scope loses none.
shared_points AS (
    SELECT ST_X(location) AS x, ST_Y(location) AS y FROM scoped
    GROUP BY 1, 2 HAVING count(*) > 1
),
placeset AS (
    SELECT s.*, sp.x IS NOT NULL AS duplicate
    FROM scoped s
    LEFT JOIN shared_points sp ON sp.x = ST_X(s.location) AND sp.y = ST_Y(s.location)
),
member AS (
    SELECT ps.*, ps.region_id AS member_id FROM placeset ps WHERE ps.region_id IS NOT NULL
    UNION ALL
    SELECT ps.*, ps.parent_id FROM placeset ps
    WHERE ps.parent_id IS NOT NULL AND ps.parent_id IS DISTINCT FROM ps.country_id
    UNION ALL
    SELECT ps.*, ps.country_id FROM placeset ps
    WHERE ps.country_id IS NOT NULL AND ps.country_id IS DISTINCT FROM ps.region_id
),
base AS MATERIALIZED (
    SELECT m.member_id, m.id, m.name, m.religion, m.denominations, m.start_date, m.duplicate
    FROM member m JOIN target t ON t.id = m.member_id
),
-- A region's places inside its pieces, found from the pieces: each piece is tested against
-- the points in its box one after another, so PostGIS prepares the piece once (testing each
-- place against its region's pieces instead was most of the statement's time).
inside AS (
    SELECT rp.region_id AS member_id, count(DISTINCT p.id) AS n
    FROM places_regionpart rp
    JOIN places_place p ON ST_Intersects(rp.geom, p.location)
    LEFT JOIN places_region reg ON reg.id = p.region_id
    WHERE rp.region_id IN (SELECT id FROM target)
      AND p.status = 'active'
      AND (p.region_id = rp.region_id OR p.country_id = rp.region_id
           OR reg.parent_id = rp.region_id)
    GROUP BY rp.region_id
),
counts AS (
    SELECT member_id, count(*) AS places,
           count(*) FILTER (WHERE name = '') AS unnamed,
           count(*) FILTER (WHERE religion = 'unknown') AS unknown_religion,
           count(*) FILTER (WHERE duplicate) AS duplicate_coordinates,
           count(start_date) AS dated_places
    FROM base GROUP BY member_id
),
religions AS (
    SELECT member_id, religion, n,
           nullif(sum(n) FILTER (WHERE religion <> 'unknown') OVER (PARTITION BY member_id), 0)
               AS known
    FROM (SELECT member_id, religion, count(*)::float8 AS n FROM base GROUP BY 1, 2) g
),
religion_figures AS (
    SELECT member_id,
           jsonb_object_agg(religion, n::bigint) AS by_religion,
           -sum(n / known * ln(n / known)) FILTER (WHERE religion <> 'unknown') + 0.0
               AS shannon,
           1 - sum((n / known) ^ 2) FILTER (WHERE religion <> 'unknown') AS simpson
    FROM religions GROUP BY member_id
),
denominations AS (
    SELECT member_id, jsonb_object_agg(denomination, n) AS by_denomination
    FROM (
        SELECT member_id, d AS denomination, count(*) AS n
        FROM base, unnest(denominations) d GROUP BY 1, 2
    ) g
    GROUP BY member_id
),
decades AS (
    SELECT member_id, jsonb_object_agg(decade::text, n) AS founding_decades
    FROM (
        SELECT member_id, (floor(extract(year FROM start_date) / 10) * 10)::int AS decade,
               count(*) AS n
        FROM base WHERE start_date IS NOT NULL GROUP BY 1, 2
    ) g
    GROUP BY member_id
)
SELECT t.id AS region_id, t.level, t.code, t.name, t.population, t.area_km2,
       coalesce(c.places, 0) AS places,
       coalesce(rf.by_religion, '{}') AS by_religion,
       coalesce(d.by_denomination, '{}') AS by_denomination,
       rf.shannon, rf.simpson,
       CASE WHEN t.area_km2 > 0 THEN coalesce(c.places, 0) / t.area_km2 * 1000 END
           AS per_1000_km2,
       CASE WHEN t.population > 0 THEN coalesce(c.places, 0)::float8 / t.population * 100000 END
           AS per_100k_people,
       coalesce(c.dated_places, 0) AS dated_places,
       coalesce(dc.founding_decades, '{}') AS founding_decades,
       coalesce(c.unnamed, 0) AS unnamed,
       coalesce(c.unknown_religion, 0) AS unknown_religion,
       coalesce(c.places, 0) - coalesce(i.n, 0) AS outside_region,
       coalesce(c.duplicate_coordinates, 0) AS duplicate_coordinates
FROM target t
LEFT JOIN counts c ON c.member_id = t.id
LEFT JOIN religion_figures rf ON rf.member_id = t.id
LEFT JOIN denominations d ON d.member_id = t.id
LEFT JOIN decades dc ON dc.member_id = t.id
LEFT JOIN inside i ON i.member_id = t.id
"""

SUMMARY_COLUMNS = (
    "region_id",
    "level",
    "code",
    "name",
    "population",
    "area_km2",
    "places",
    "by_religion",
    "by_denomination",
    "shannon",
    "simpson",
    "per_1000_km2",
    "per_100k_people",
    "dated_places",
    "founding_decades",
    "unnamed",
    "unknown_religion",
    "outside_region",
    "duplicate_coordinates",
)

JSON_COLUMNS = ("by_religion", "by_denomination", "founding_decades")

STORED_KEYS = "SELECT region_id, version_key FROM analytics_regionsummary"

# Every column from the JSON rows, the provenance from parameters; one statement.
UPSERT_SUMMARIES = """
INSERT INTO analytics_regionsummary (
    region_id, level, code, name, population, area_km2, places, by_religion, by_denomination,
    shannon, simpson, per_1000_km2, per_100k_people, dated_places, founding_decades, unnamed,
    unknown_religion, outside_region, duplicate_coordinates, version_key,
    computed_on, data_version, region_version, computed_at
)
SELECT j.region_id, j.level, j.code, j.name, j.population, j.area_km2, j.places, j.by_religion,
       j.by_denomination, j.shannon, j.simpson, j.per_1000_km2, j.per_100k_people,
       j.dated_places, j.founding_decades, j.unnamed, j.unknown_religion, j.outside_region,
       j.duplicate_coordinates, j.version_key,
       %(computed_on)s, %(data_version)s, %(region_version)s, now()
FROM jsonb_to_recordset(%(rows)s::jsonb) AS j(
    region_id bigint, level text, code text, name text, population bigint, area_km2 float8,
    places int, by_religion jsonb, by_denomination jsonb, shannon float8, simpson float8,
    per_1000_km2 float8, per_100k_people float8, dated_places int, founding_decades jsonb,
    unnamed int, unknown_religion int, outside_region int, duplicate_coordinates int,
    version_key text
)
-- A region deleted on the primary since the replica's snapshot has nothing to summarise.
WHERE EXISTS (SELECT 1 FROM places_region r WHERE r.id = j.region_id)
ON CONFLICT (region_id) DO UPDATE SET
    level = EXCLUDED.level, code = EXCLUDED.code, name = EXCLUDED.name,
    population = EXCLUDED.population, area_km2 = EXCLUDED.area_km2, places = EXCLUDED.places,
    by_religion = EXCLUDED.by_religion, by_denomination = EXCLUDED.by_denomination,
    shannon = EXCLUDED.shannon, simpson = EXCLUDED.simpson,
    per_1000_km2 = EXCLUDED.per_1000_km2, per_100k_people = EXCLUDED.per_100k_people,
    dated_places = EXCLUDED.dated_places, founding_decades = EXCLUDED.founding_decades,
    unnamed = EXCLUDED.unnamed, unknown_religion = EXCLUDED.unknown_religion,
    outside_region = EXCLUDED.outside_region,
    duplicate_coordinates = EXCLUDED.duplicate_coordinates, version_key = EXCLUDED.version_key,
    computed_on = EXCLUDED.computed_on, data_version = EXCLUDED.data_version,
    region_version = EXCLUDED.region_version, computed_at = EXCLUDED.computed_at
"""

# Summaries of regions gone from the levels (or from the source) since the last full run.
DELETE_STALE = """
DELETE FROM analytics_regionsummary WHERE NOT (region_id = ANY(%(ids)s::bigint[]))
"""


@dataclass(frozen=True)
class SummaryRun:
    regions: int  # regions of the summarised levels on the source
    recomputed: int  # summaries written
    region_ids: tuple[int, ...]  # their regions
    computed_on: str


def region_keys(*, source: ReadSource) -> dict[int, str]:
    """Every summarised region's version key as ``source`` sees it (see the module text)."""
    with connections[source.alias].cursor() as cursor:
        cursor.execute(
            REGION_KEYS,
            {"levels": list(SUMMARY_LEVELS), "region_version": source.region_version},
        )
        return dict(cursor.fetchall())


def region_summaries_recompute(
    *, full: bool = False, source: ReadSource | None = None
) -> SummaryRun:
    """Recompute the summaries of the regions whose version key moved (every region when
    ``full``), reading on the read source and writing on the primary.

    Keys are read before the figures, in the same snapshot: a summary is never stored under a
    key newer than the data it was computed from, so a change is at worst counted twice,
    never missed. Rerunning with nothing changed writes nothing.
    """
    source = source or read_source()
    with snapshot(source.alias):
        keys = region_keys(source=source)
        if full:
            changed = sorted(keys)
        else:
            with connections["default"].cursor() as cursor:
                cursor.execute(STORED_KEYS)
                stored = dict(cursor.fetchall())
            changed = sorted(rid for rid, key in keys.items() if stored.get(rid) != key)
        rows: list[tuple] = []
        if changed:
            with connections[source.alias].cursor() as cursor:
                cursor.execute(
                    SUMMARY,
                    {"levels": list(SUMMARY_LEVELS), "ids": None if full else changed},
                )
                rows = [(*row, keys[row[0]]) for row in cursor.fetchall()]
    with transaction.atomic(using="default"):
        with connections["default"].cursor() as cursor:
            if rows:
                cursor.execute(
                    UPSERT_SUMMARIES,
                    {
                        "rows": rows_as_json(
                            (*SUMMARY_COLUMNS, "version_key"), rows, json_columns=JSON_COLUMNS
                        )
                    }
                    | provenance(source),
                )
            if full:
                cursor.execute(DELETE_STALE, {"ids": list(keys)})
        if rows or full:
            results_bump()
    run = SummaryRun(
        regions=len(keys),
        recomputed=len(rows),
        region_ids=tuple(row[0] for row in rows),
        computed_on=provenance(source)["computed_on"],
    )
    logger.info(
        "analytics: %s of %s region summaries recomputed on the %s",
        run.recomputed,
        run.regions,
        run.computed_on,
    )
    return run

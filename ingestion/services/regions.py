"""Load boundary files into regions: read the features, stage and repair them, write them.

Only regions whose name, geometry or figures changed are rewritten, so loading the same
file twice changes nothing. What follows from a write (pieces, area, parents, version, the
places inside old and new boundaries) is kept by ``places.services.regions_refresh``, the
service the admin's region form uses too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import connection, transaction

from ingestion.readers import UnreadableFile, detect_format, srid_from_crs
from ingestion.readers.geo import GeoReader
from places.models import Dataset, RegionLevel
from places.services import regions_hold_for_writing, regions_refresh

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegionSource:
    """How a boundary file's attributes map onto regions."""

    level: str
    code_field: str
    name_field: str
    code_system: str
    population_field: str | None = None
    extra_code_fields: dict[str, str] = field(default_factory=dict)


PRESETS: dict[str, RegionSource] = {
    # Natural Earth: ISO_A3 is "-99" for France, Norway and others; ADM0_A3 is always set.
    "ne-countries": RegionSource(
        level=RegionLevel.COUNTRY,
        code_field="ADM0_A3",
        name_field="NAME",
        code_system="ne-adm0-a3",
        population_field="POP_EST",
        extra_code_fields={"iso_a2": "ISO_A2", "iso_a3": "ISO_A3"},
    ),
    "ne-admin1": RegionSource(
        level=RegionLevel.ADMIN1,
        code_field="adm1_code",
        name_field="name",
        code_system="ne-adm1-code",
        extra_code_fields={"iso_3166_2": "iso_3166_2"},
    ),
    "ons-lad": RegionSource(
        level=RegionLevel.DISTRICT,
        code_field="LAD24CD",
        name_field="LAD24NM",
        code_system="gss",
    ),
}


@dataclass
class RegionLoadResult:
    read: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[str] = field(default_factory=list)
    places_reassigned: int = 0


CREATE_STAGE = """
CREATE TEMP TABLE region_stage (
    sid bigint GENERATED ALWAYS AS IDENTITY,
    feature bigint,
    code text, name text, population bigint, extra_codes jsonb, wkb bytea, srid int,
    geom geometry(MultiPolygon, 4326)
) ON COMMIT DROP
"""

# Repair invalid rings (Natural Earth 110m Sudan, 50m Goiás), keep only the polygons, in 2D.
REPAIR = """UPDATE region_stage SET geom = ST_Multi(ST_CollectionExtract(ST_MakeValid(ST_Force2D(
       CASE WHEN srid = 4326 THEN ST_GeomFromWKB(wkb, 4326)
            ELSE ST_Transform(ST_GeomFromWKB(wkb, srid), 4326) END)), 3))"""

COPY_STAGE = (
    "COPY region_stage (feature, code, name, population, extra_codes, wkb, srid) FROM STDIN"
)

# Features that cannot become a region: no polygon left after repair, or a code already used
# by an earlier feature of the same file (the first one wins, as in place imports).
REJECT = """
WITH bad AS (
    SELECT sid, feature, code, CASE
        WHEN geom IS NULL OR ST_IsEmpty(geom) THEN 'no polygon after repair'
        WHEN row_number() OVER (PARTITION BY code ORDER BY sid) > 1
            THEN 'code already used by an earlier feature' END AS reason
    FROM region_stage
)
DELETE FROM region_stage s USING bad
WHERE s.sid = bad.sid AND bad.reason IS NOT NULL
RETURNING bad.feature, s.code, bad.reason
"""

# Writes new and changed regions and says which of them have a new boundary (or level):
# the ``before`` CTE reads the rows as they were, since every part of one statement sees
# the same snapshot. Area and version are the region service's.
UPSERT = """
WITH before AS MATERIALIZED (
    SELECT r.id, (r.level <> %(level)s OR NOT ST_Equals(r.geom, s.geom)) AS moved
    FROM region_stage s
    JOIN places_region r ON r.code_system = %(code_system)s AND r.code = s.code
), up AS (
    INSERT INTO places_region (name, level, code, code_system, extra_codes, population,
                               geom, dataset_id)
    SELECT name, %(level)s, code, %(code_system)s, extra_codes, population, geom, %(dataset)s
    FROM region_stage
    ON CONFLICT (code_system, code) DO UPDATE SET
        name = EXCLUDED.name, level = EXCLUDED.level, extra_codes = EXCLUDED.extra_codes,
        population = EXCLUDED.population, geom = EXCLUDED.geom,
        dataset_id = EXCLUDED.dataset_id
    WHERE (places_region.name, places_region.level, places_region.extra_codes,
           places_region.population, places_region.dataset_id)
          IS DISTINCT FROM
          (EXCLUDED.name, EXCLUDED.level, EXCLUDED.extra_codes, EXCLUDED.population,
           EXCLUDED.dataset_id)
       OR NOT ST_Equals(places_region.geom, EXCLUDED.geom)
    RETURNING id, (xmax = 0) AS inserted
)
SELECT up.id, up.inserted, COALESCE(b.moved, true) FROM up LEFT JOIN before b ON b.id = up.id
"""

# Regions of this code system that have no pieces (e.g. deleted by hand): cut them again.
WITHOUT_PIECES = """
SELECT r.id FROM places_region r WHERE r.code_system = %s AND NOT EXISTS
(SELECT 1 FROM places_regionpart p WHERE p.region_id = r.id)
"""


def region_load(*, path: Path, source: RegionSource, dataset: Dataset) -> RegionLoadResult:
    """Load every feature of a boundary file as regions of one level (idempotent), in one
    transaction with the upkeep of what changed (``places.services.regions_refresh``)."""
    fmt = detect_format(path)
    if fmt == "csv":
        raise UnreadableFile("a boundary file needs polygons: GeoJSON, Shapefile or GeoPackage")
    reader = GeoReader(path, fmt)
    result = RegionLoadResult()
    with transaction.atomic(), connection.cursor() as cursor:
        # Before any region row is locked: the admin's region writer locks in this order too.
        regions_hold_for_writing()
        cursor.execute("DROP TABLE IF EXISTS pg_temp.region_stage")
        cursor.execute(CREATE_STAGE)
        with cursor.cursor.copy(COPY_STAGE) as copy:
            _copy_features(reader, source, copy, result)
        cursor.execute(REPAIR)
        cursor.execute(REJECT)
        for feature, code, reason in cursor.fetchall():
            result.rejected.append(f"feature {feature} (code {code}): {reason}")
        staged = result.read - len(result.rejected)
        cursor.execute(
            UPSERT,
            {"level": source.level, "code_system": source.code_system, "dataset": dataset.pk},
        )
        changed = cursor.fetchall()
        result.added = sum(1 for row in changed if row[1])
        result.updated = len(changed) - result.added
        result.unchanged = staged - len(changed)
        cursor.execute(WITHOUT_PIECES, [source.code_system])
        recut = {row[0] for row in changed if row[2]} | {row[0] for row in cursor.fetchall()}
        if recut or changed:
            kept = regions_refresh(recut_ids=recut, touched_ids=[row[0] for row in changed])
            result.places_reassigned = kept.places_reassigned
    if result.added or result.updated:
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE places_region, places_regionpart")
    logger.info(
        "regions %s: %s read, %s added, %s updated, %s unchanged, %s places re-assigned",
        source.code_system,
        result.read,
        result.added,
        result.updated,
        result.unchanged,
        result.places_reassigned,
    )
    return result


def _copy_features(
    reader: GeoReader, source: RegionSource, copy: Any, result: RegionLoadResult
) -> None:
    """Every feature of every layer into ``region_stage``; features without a code or a
    geometry are rejected here, with their number."""
    for layer in reader.layers():
        missing = {source.code_field, source.name_field} - set(layer.columns)
        if missing:
            raise UnreadableFile(f"layer {layer.name!r} lacks {', '.join(sorted(missing))}")
        srid = srid_from_crs(layer.crs)
        first_feature = 1
        for batch in reader.batches(layer.name):
            for i in range(batch.num_rows):
                result.read += 1
                code = (batch.columns[source.code_field][i] or "").strip()
                if not code or batch.wkb is None or batch.wkb[i] is None:
                    result.rejected.append(f"feature {first_feature + i}: no code or no geometry")
                    continue
                copy.write_row(
                    (
                        first_feature + i,
                        code,
                        (batch.columns[source.name_field][i] or code).strip(),
                        _int_or_none(
                            batch.columns[source.population_field][i]
                            if source.population_field
                            else None
                        ),
                        json.dumps(_extra_codes(batch, source, i)),
                        batch.wkb[i],
                        srid,
                    )
                )
            first_feature += batch.num_rows


def _extra_codes(batch: Any, source: RegionSource, i: int) -> dict[str, Any]:
    return {
        key: batch.columns[column][i]
        for key, column in source.extra_code_fields.items()
        if column in batch.columns and batch.columns[column][i] not in (None, "", "-99")
    }


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(float(value)) if value not in (None, "") else None
    except (ValueError, OverflowError):  # text, NaN or infinity
        return None

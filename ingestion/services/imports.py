"""Import a file of places into a dataset: stream, COPY, validate, diff and upsert in SQL.

The whole apply runs in one transaction: places, their change-log entries, the rejected
rows and the job's final state commit together or not at all. A crashed worker therefore
leaves nothing half-applied, and the redelivered task simply runs again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.cache import cache
from django.core.files import File
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Count, F
from django.db.models.functions import Now
from django.utils import timezone

from ingestion.mapping import (
    ColumnMapping,
    malformed_stage_row,
    mapping_problems,
    mapping_propose,
    stage_rows,
)
from ingestion.models import ImportJob, ImportMode, ImportState
from ingestion.normalize import NOT_WORSHIP_NAME_SQL, worship_class_heads
from ingestion.readers import UnreadableFile, detect_format, open_reader, srid_from_crs
from ingestion.selectors import PROGRESS_KEY
from ingestion.services.dry_run import dry_run_samples
from places.models import Dataset

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 2 * 1024**3
MAX_ATTEMPTS = 5
# Errors worth another try: the connection dropped, a deadlock, a serialization failure.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)
ADVISORY_LOCK_CLASS = 0x494D5054  # "IMPT": one import at a time per dataset

STAGE_COLUMNS = (
    "row_number",
    "layer",
    "source_key",
    "name",
    "religion",
    "religion_raw",
    "denominations",
    "denomination_raw",
    "lon",
    "lat",
    "wkb",
    "srid",
    "start_date",
    "start_date_raw",
    "end_date",
    "end_date_raw",
    "tags",
    "raw",
    "reject",
    "reject_detail",
)

DROP_TEMP = "DROP TABLE IF EXISTS pg_temp.import_stage, pg_temp.import_diff"

CREATE_STAGE = """
CREATE TEMP TABLE import_stage (
    sid bigint GENERATED ALWAYS AS IDENTITY,
    row_number bigint NOT NULL,
    layer text NOT NULL,
    source_key text NOT NULL,
    name text NOT NULL,
    religion text NOT NULL,
    religion_raw text NOT NULL,
    denominations text[] NOT NULL,
    denomination_raw text NOT NULL,
    lon float8,
    lat float8,
    wkb bytea,
    srid integer NOT NULL,
    start_date date,
    start_date_raw text NOT NULL,
    end_date date,
    end_date_raw text NOT NULL,
    tags jsonb NOT NULL,
    raw jsonb NOT NULL,
    reject text,
    reject_detail text,
    geom_any geometry,
    geom geometry(Point, 4326),
    footprint geometry(MultiPolygon, 4326),
    region_id bigint,
    country_id bigint
) ON COMMIT DROP
"""

# Validation, repair and region assignment: each statement handles every row at once.
VALIDATE = [
    """UPDATE import_stage SET reject = 'missing_key',
           reject_detail = 'the key columns are empty'
       WHERE reject IS NULL AND source_key = ''""",
    """UPDATE import_stage SET reject = 'key_too_long',
           reject_detail = format('key has %s characters; at most 255', length(source_key))
       WHERE reject IS NULL AND length(source_key) > 255""",
    # Points given as lon/lat columns.
    """UPDATE import_stage SET
           reject = CASE
               WHEN lon IS NULL OR lat IS NULL THEN 'missing_geometry'
               WHEN lon NOT BETWEEN -180 AND 180 OR lat NOT BETWEEN -90 AND 90
                   THEN 'bad_coordinates' END,
           reject_detail = CASE
               WHEN lon IS NULL OR lat IS NULL THEN 'no longitude/latitude values'
               WHEN lon NOT BETWEEN -180 AND 180 OR lat NOT BETWEEN -90 AND 90
                   THEN format('lon %s, lat %s is outside WGS84 range', lon, lat) END,
           geom = CASE WHEN lon BETWEEN -180 AND 180 AND lat BETWEEN -90 AND 90
                       THEN ST_SetSRID(ST_MakePoint(lon, lat), 4326) END
       WHERE reject IS NULL AND wkb IS NULL""",
    # Geometries from geo files, reprojected to WGS84.
    # Heights (Z) and measures (M) are dropped: places are stored in 2D.
    """UPDATE import_stage SET geom_any = ST_Force2D(CASE
           WHEN srid = 4326 THEN ST_GeomFromWKB(wkb, 4326)
           ELSE ST_Transform(ST_GeomFromWKB(wkb, srid), 4326) END)
       WHERE reject IS NULL AND wkb IS NOT NULL""",
    """UPDATE import_stage SET reject = 'missing_geometry', reject_detail = 'empty geometry'
       WHERE reject IS NULL AND wkb IS NOT NULL AND ST_IsEmpty(geom_any)""",
    """UPDATE import_stage SET reject = 'bad_coordinates',
           reject_detail = 'coordinates outside WGS84 range (wrong CRS, NaN or infinite?)'
       WHERE reject IS NULL AND geom_any IS NOT NULL
         AND NOT (ST_XMin(geom_any) >= -180 AND ST_XMax(geom_any) <= 180
                  AND ST_YMin(geom_any) >= -90 AND ST_YMax(geom_any) <= 90)""",
    # Polygons keep their (repaired) footprint and get a point guaranteed inside them.
    """UPDATE import_stage SET footprint = ST_Multi(ST_CollectionExtract(
           CASE WHEN ST_IsValid(geom_any) THEN geom_any ELSE ST_MakeValid(geom_any) END, 3))
       WHERE reject IS NULL AND geom_any IS NOT NULL AND ST_Dimension(geom_any) = 2""",
    """UPDATE import_stage SET reject = 'invalid_geometry',
           reject_detail = 'polygon is degenerate and cannot be repaired'
       WHERE reject IS NULL AND ST_Dimension(geom_any) = 2 AND ST_IsEmpty(footprint)""",
    """UPDATE import_stage SET geom = CASE
           WHEN footprint IS NOT NULL THEN ST_PointOnSurface(footprint)
           WHEN GeometryType(geom_any) = 'POINT' THEN geom_any
           ELSE ST_PointOnSurface(geom_any) END
       WHERE reject IS NULL AND geom_any IS NOT NULL""",
    # The first row with a key wins; later rows with the same key are reported.
    """UPDATE import_stage s SET reject = 'duplicate_key',
           reject_detail = format('key %s was already used by %s', s.source_key,
               CASE WHEN d.first_layer = '' THEN 'row ' || d.first_row
                    ELSE format('feature %s of layer %s', d.first_row, d.first_layer) END)
       FROM (SELECT sid, row_number() OVER w AS n,
                    first_value(row_number) OVER w AS first_row,
                    first_value(layer) OVER w AS first_layer
             FROM import_stage WHERE reject IS NULL
             WINDOW w AS (PARTITION BY source_key ORDER BY sid)) d
       WHERE s.sid = d.sid AND d.n > 1""",
    # An end before the start cannot both be right; keep the raw text, drop the parsed end.
    """UPDATE import_stage SET end_date = NULL
       WHERE reject IS NULL AND end_date < start_date""",
    # Point in polygon against subdivided regions: most detailed level first.
    """UPDATE import_stage s SET region_id = (
           SELECT rp.region_id FROM places_regionpart rp
           WHERE rp.level = 'district' AND ST_Intersects(rp.geom, s.geom)
           ORDER BY rp.region_id LIMIT 1)
       WHERE reject IS NULL""",
    """UPDATE import_stage s SET region_id = (
           SELECT rp.region_id FROM places_regionpart rp
           WHERE rp.level = 'admin1' AND ST_Intersects(rp.geom, s.geom)
           ORDER BY rp.region_id LIMIT 1)
       WHERE reject IS NULL AND region_id IS NULL""",
    # The region's country when it has one; else the country polygon (coasts can differ).
    """UPDATE import_stage s SET country_id = COALESCE(
           (SELECT r.parent_id FROM places_region r WHERE r.id = s.region_id),
           (SELECT rp.region_id FROM places_regionpart rp
            WHERE rp.level = 'country' AND ST_Intersects(rp.geom, s.geom)
            ORDER BY rp.region_id LIMIT 1))
       WHERE reject IS NULL""",
]

# Geofabrik's packed classes: rows that are no place of worship (the rule and its words are in
# ingestion.normalize, where packed_class_not_worship states it in Python).
NOT_PLACE_OF_WORSHIP = """
UPDATE import_stage SET reject = 'not_place_of_worship', reject_detail = CASE
    WHEN NOT (lower(split_part(btrim(raw ->> %(column)s), '_', 1)) = ANY(%(heads)s))
        THEN format('class %%s is not a place of worship', btrim(raw ->> %(column)s))
    ELSE format('%%s looks like a %%s, not a place of worship (class %%s)',
                name, lower(substring(name from %(pattern)s)), btrim(raw ->> %(column)s)) END
WHERE reject IS NULL AND btrim(raw ->> %(column)s) <> ''
  AND (NOT (lower(split_part(btrim(raw ->> %(column)s), '_', 1)) = ANY(%(heads)s))
       OR name ~ %(pattern)s)
"""


def _fields_json(alias: str, geom: str, footprint: str) -> str:
    """The logged/compared form of a place's source-fed fields (same for stage and place)."""
    a = alias
    return f"""jsonb_build_object(
        'name', {a}.name, 'religion', {a}.religion, 'religion_raw', {a}.religion_raw,
        'denominations', to_jsonb({a}.denominations), 'denomination_raw', {a}.denomination_raw,
        'location', ST_AsGeoJSON({geom})::jsonb, 'footprint', ST_AsGeoJSON({footprint})::jsonb,
        'country_id', {a}.country_id, 'region_id', {a}.region_id, 'tags', {a}.tags,
        'start_date', {a}.start_date, 'start_date_raw', {a}.start_date_raw,
        'end_date', {a}.end_date, 'end_date_raw', {a}.end_date_raw)"""


# Compare what the file says now with what the dataset said last time (source_values);
# only fields whose source value moved are written, so curators' fixes survive.
DIFF = f"""
CREATE TEMP TABLE import_diff ON COMMIT DROP AS
WITH j AS MATERIALIZED (
    SELECT s.*, p.id AS place_id, p.version AS old_version,
           {_fields_json("s", "s.geom", "s.footprint")} AS new_j,
           CASE WHEN p.id IS NULL THEN NULL
                ELSE {_fields_json("p", "p.location", "p.footprint")} END AS cur_j,
           p.source_values
    FROM import_stage s
    LEFT JOIN places_place p ON p.dataset_id = %(dataset)s AND p.source_key = s.source_key
    WHERE s.reject IS NULL
)
SELECT j.*,
       CASE WHEN j.source_values = j.new_j THEN '{{}}'::text[]  -- the common re-import case
            ELSE COALESCE((SELECT array_agg(k) FROM jsonb_object_keys(j.new_j) k
                           WHERE j.new_j -> k
                                 IS DISTINCT FROM COALESCE(j.source_values, j.cur_j) -> k),
                          '{{}}') END AS moved
FROM j
"""

_UPDATABLE = [
    ("name", "name"),
    ("religion", "religion"),
    ("religion_raw", "religion_raw"),
    ("denominations", "denominations"),
    ("denomination_raw", "denomination_raw"),
    ("location", "geom"),
    ("footprint", "footprint"),
    ("country_id", "country_id"),
    ("region_id", "region_id"),
    ("tags", "tags"),
    ("start_date", "start_date"),
    ("start_date_raw", "start_date_raw"),
    ("end_date", "end_date"),
    ("end_date_raw", "end_date_raw"),
]

CLASSIFY = """
ALTER TABLE import_diff ADD COLUMN op text, ADD COLUMN changes jsonb;
UPDATE import_diff SET op = 'create', changes = (
    SELECT jsonb_object_agg(k, jsonb_build_object('old', NULL, 'new', new_j -> k))
    FROM jsonb_object_keys(new_j) k WHERE jsonb_typeof(new_j -> k) <> 'null')
WHERE place_id IS NULL;
UPDATE import_diff SET changes = (
    SELECT jsonb_object_agg(k, jsonb_build_object('old', cur_j -> k, 'new', new_j -> k))
    FROM unnest(moved) k WHERE cur_j -> k IS DISTINCT FROM new_j -> k)
WHERE place_id IS NOT NULL AND cardinality(moved) > 0;
UPDATE import_diff SET op = CASE WHEN changes IS NULL THEN 'unchanged' ELSE 'update' END
WHERE place_id IS NOT NULL;
"""

INSERT_CREATED = """
WITH ins AS (
    INSERT INTO places_place (
        dataset_id, source_key, name, religion, religion_raw, denominations, denomination_raw,
        location, footprint, country_id, region_id, tags, start_date, start_date_raw,
        end_date, end_date_raw, status, source_values)
    SELECT %(dataset)s, source_key, name, religion, religion_raw, denominations,
           denomination_raw, geom, footprint, country_id, region_id, tags, start_date,
           start_date_raw, end_date, end_date_raw, 'active', new_j
    FROM import_diff WHERE op = 'create'
    -- Neighbours on the map become neighbours on disk: a map view then reads a few
    -- pages instead of one page per place (geohash order is a Z-order curve).
    ORDER BY ST_GeoHash(geom, 8), sid
    RETURNING id, source_key, version
)
INSERT INTO places_placechange (place_id, dataset_id, operation, changes, place_version,
                                source, import_job_id, device_id, comment)
SELECT ins.id, %(dataset)s, 'create', d.changes, ins.version, 'import', %(job)s, '', ''
FROM ins JOIN import_diff d ON d.source_key = ins.source_key
ORDER BY d.sid
"""

_SET_MOVED = ",\n        ".join(
    f"{key} = CASE WHEN '{key}' = ANY(d.moved) THEN d.{stage} ELSE p.{key} END"
    for key, stage in _UPDATABLE
)

# The version guard skips a row a curator changed after the diff was taken; it is reported
# as a conflict rather than overwritten with stale old values in the log.
UPDATE_CHANGED = f"""
WITH upd AS (
    UPDATE places_place p SET
        {_SET_MOVED},
        source_values = d.new_j,
        version = p.version + 1,
        updated_at = now()
    FROM import_diff d
    WHERE d.op = 'update' AND p.id = d.place_id AND p.version = d.old_version
    RETURNING p.id, p.version
)
INSERT INTO places_placechange (place_id, dataset_id, operation, changes, place_version,
                                source, import_job_id, device_id, comment)
SELECT upd.id, %(dataset)s, 'update', d.changes, upd.version, 'import', %(job)s, '', ''
FROM upd JOIN import_diff d ON d.place_id = upd.id
ORDER BY d.sid
"""

# Remember what the source says for places whose values already match it (including places
# that never had source values, e.g. created by a curator): later curator fixes then survive.
REFRESH_SOURCE_VALUES = """
UPDATE places_place p SET source_values = d.new_j
FROM import_diff d
WHERE d.op = 'unchanged' AND d.source_values IS DISTINCT FROM d.new_j AND p.id = d.place_id
"""

# Snapshot mode: places of the dataset that came from an import and are missing from the
# file are retired (never deleted). A key whose row was rejected still counts as present.
RETIRE_MISSING = """
WITH targets AS (
    SELECT p.id, p.end_date AS old_end FROM places_place p
    WHERE p.dataset_id = %(dataset)s AND p.status = 'active' AND p.source_values IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM import_stage s WHERE s.source_key = p.source_key)
    FOR UPDATE
), gone AS (
    UPDATE places_place p SET status = 'retired', end_date = COALESCE(p.end_date, CURRENT_DATE),
        version = p.version + 1, updated_at = now()
    FROM targets t WHERE p.id = t.id
    RETURNING p.id, p.version, p.end_date, t.old_end
)
INSERT INTO places_placechange (place_id, dataset_id, operation, changes, place_version,
                                source, import_job_id, device_id, comment)
SELECT id, %(dataset)s, 'retire',
       jsonb_build_object('status', jsonb_build_object('old', 'active', 'new', 'retired'))
       || CASE WHEN old_end IS NULL
               THEN jsonb_build_object('end_date', jsonb_build_object('old', NULL, 'new', end_date))
               ELSE '{}'::jsonb END,
       version, 'import', %(job)s, '', 'missing from snapshot import'
FROM gone ORDER BY id
"""

COUNT_MISSING = """
SELECT count(*) FROM places_place p
WHERE p.dataset_id = %(dataset)s AND p.status = 'active' AND p.source_values IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM import_stage s WHERE s.source_key = p.source_key)
"""

SAVE_REJECTIONS = """
INSERT INTO ingestion_importrejection (job_id, row_number, layer, reason, detail, raw)
SELECT %(job)s, row_number, layer, reject, COALESCE(reject_detail, ''), raw
FROM import_stage WHERE reject IS NOT NULL ORDER BY sid
"""


@dataclass
class ImportCounts:
    rows_read: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    retired: int = 0
    conflicts: int = 0
    step_seconds: dict[str, float] = field(default_factory=dict)
    samples: dict[str, Any] = field(default_factory=dict)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_job_create(
    *,
    path: Path,
    dataset: Dataset,
    user: Any = None,
    dry_run: bool = False,
    mode: str = ImportMode.UPSERT,
    mapping: dict[str, Any] | None = None,
    original_name: str | None = None,
    staged: bool = False,
) -> ImportJob:
    """Check the file, store a copy, propose a column mapping and queue the job.

    Raises ``UnreadableFile`` (nothing stored) when the file cannot be imported.
    ``staged`` (the admin's upload → inspect → dry run → apply steps) stores the job as
    ``uploaded`` instead, with the proposed mapping even when it is not usable yet: the user
    corrects it on the job's page, and it is checked again before anything runs.
    """
    size = path.stat().st_size
    if size == 0:
        raise UnreadableFile("the file is empty")
    if size > MAX_FILE_BYTES:
        raise UnreadableFile(f"the file is {size} bytes; the limit is {MAX_FILE_BYTES}")
    fmt = detect_format(path)
    reader = open_reader(path, fmt)
    layers = reader.layers()
    if not layers:
        raise UnreadableFile("the file holds no layers")
    proposed = mapping_propose(layers[0].columns, has_geometry=reader.has_geometry)
    chosen = ColumnMapping.from_dict({**proposed.as_dict(), **(mapping or {})})
    problems = mapping_problems(chosen, columns=layers[0].columns, has_geometry=reader.has_geometry)
    if problems and not staged:
        raise UnreadableFile("; ".join(f"{name}: {message}" for name, message in problems.items()))
    if reader.has_geometry:
        _check_crs(layers)
    job = ImportJob(
        dataset=dataset,
        original_name=original_name or path.name,
        size_bytes=size,
        sha256=file_sha256(path),
        format=fmt,
        options={
            "mapping": chosen.as_dict(),
            "layers": [
                {"name": layer.name, "geometry_type": layer.geometry_type, "crs": layer.crs}
                for layer in layers
            ],
            **(
                {"encoding": reader.encoding, "delimiter": reader.delimiter} if fmt == "csv" else {}
            ),
        },
        mode=mode,
        dry_run=dry_run,
        state=ImportState.UPLOADED if staged else ImportState.QUEUED,
        rows_total=sum(layer.features or 0 for layer in layers) or None,
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )
    with open(path, "rb") as fh:
        job.file.save(f"{job.sha256[:16]}-{path.name}", File(fh), save=False)
    job.save()
    return job


def _check_crs(layers: list[Any]) -> None:
    """Every layer's CRS must be known to GDAL and to PostGIS, before the job is queued."""
    srids = {srid_from_crs(layer.crs) for layer in layers}
    with connection.cursor() as cursor:
        cursor.execute("SELECT srid FROM spatial_ref_sys WHERE srid = ANY(%s)", [sorted(srids)])
        known = {row[0] for row in cursor.fetchall()}
    if srids - known:
        raise UnreadableFile(f"coordinate system EPSG:{min(srids - known)} is not supported")


def import_job_execute(*, job_id: int) -> ImportJob | None:
    """Run a queued job to the end. Safe to call twice, or again after a crash.

    A job already done is left alone. A job found ``applying`` is a redelivery after its
    worker died or a retry after a transient database error; the earlier attempt's
    transaction was rolled back, so it simply starts over. After ``MAX_ATTEMPTS`` deliveries
    the job fails instead of looping on a file that kills its worker every time.
    Transient database errors are re-raised with the job left ``applying`` so that the task
    can retry; any other error fails the job with its message.
    """
    claimed = ImportJob.objects.filter(
        pk=job_id,
        state__in=[ImportState.QUEUED, ImportState.APPLYING],
        attempts__lt=MAX_ATTEMPTS,
    ).update(state=ImportState.APPLYING, attempts=F("attempts") + 1, started_at=Now())
    if not claimed:
        job = ImportJob.objects.filter(pk=job_id).first()
        if job is not None and job.state == ImportState.APPLYING:
            _fail(job_id, f"gave up after {job.attempts} attempts (worker lost or retries used up)")
            job.refresh_from_db()
        logger.info("import job %s not runnable (%s)", job_id, job.state if job else "missing")
        return job
    started = time.perf_counter()
    try:
        with transaction.atomic():
            job = ImportJob.objects.select_for_update().get(pk=job_id)
            if job.state != ImportState.APPLYING:  # a duplicate delivery finished it first
                return job
            counts = _apply(job)
            job.rows_read = counts.rows_read
            job.added, job.updated = counts.added, counts.updated
            job.unchanged, job.rejected = counts.unchanged, counts.rejected
            job.retired = counts.retired
            job.report = _report(job, counts, time.perf_counter() - started)
            job.state = ImportState.DRY_RUN_READY if job.dry_run else ImportState.DONE
            job.finished_at = timezone.now()
            job.error = ""
            job.save()
    except UnreadableFile as exc:
        _fail(job_id, str(exc))
    except TRANSIENT_ERRORS:
        logger.warning("import job %s hit a transient database error; will retry", job_id)
        raise
    except Exception as exc:
        logger.exception("import job %s failed", job_id)
        _fail(job_id, f"internal error: {type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        cache.delete(PROGRESS_KEY.format(job_id))
    job = ImportJob.objects.get(pk=job_id)
    if job.state == ImportState.DONE and (job.added or job.updated):
        # Fresh planner statistics after a bulk load: the map queries and the admin's
        # estimated counts depend on them, and autovacuum may take minutes to get there.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE places_place")
    logger.info(
        "import job %s %s: %s read, %s added, %s updated, %s unchanged, %s rejected",
        job.pk,
        job.state,
        job.rows_read,
        job.added,
        job.updated,
        job.unchanged,
        job.rejected,
        extra={"import_job": job.pk},
    )
    return job


def _fail(job_id: int, message: str) -> None:
    ImportJob.objects.filter(pk=job_id).update(
        state=ImportState.FAILED, error=message, finished_at=Now()
    )


def _report(job: ImportJob, counts: ImportCounts, seconds: float) -> dict[str, Any]:
    return {
        "seconds": round(seconds, 3),
        "rows_per_second": round(counts.rows_read / seconds) if seconds else None,
        "rejected_by_reason": _rejection_counts(job),
        "conflicts": counts.conflicts,
        "step_seconds": counts.step_seconds,
        **({"samples": counts.samples} if counts.samples else {}),
    }


def _rejection_counts(job: ImportJob) -> dict[str, int]:
    return {
        row["reason"]: row["n"]
        for row in job.rejections.values("reason").annotate(n=Count("id")).order_by("reason")
    }


def _apply(job: ImportJob) -> ImportCounts:
    path = Path(job.file.path)
    mapping = ColumnMapping.from_dict(job.options["mapping"])
    reader = open_reader(path, job.format)
    counts = ImportCounts()
    params = {"dataset": job.dataset_id, "job": job.pk}
    with connection.cursor() as cursor:

        def run(step: str, sql: str, args: dict[str, Any] | None = None) -> int:
            started = time.perf_counter()
            cursor.execute(sql, args)
            counts.step_seconds[step] = round(
                counts.step_seconds.get(step, 0.0) + time.perf_counter() - started, 3
            )
            return cursor.rowcount

        run(
            "lock",
            "SELECT pg_advisory_xact_lock(%(lock)s, %(dataset)s)",
            {"lock": ADVISORY_LOCK_CLASS, **params},
        )
        run("lock", "DELETE FROM ingestion_importrejection WHERE job_id = %(job)s", params)
        # ON COMMIT DROP is not enough when the caller wraps several imports in one transaction.
        run("stage", DROP_TEMP)
        run("stage", CREATE_STAGE)
        started = time.perf_counter()
        counts.rows_read = _copy_into_stage(cursor, reader, mapping, job)
        counts.step_seconds["read_and_copy"] = round(time.perf_counter() - started, 3)
        if mapping.packed_class:
            run(
                "validate_class",
                NOT_PLACE_OF_WORSHIP,
                {
                    "column": mapping.packed_class,
                    "heads": worship_class_heads(),
                    "pattern": NOT_WORSHIP_NAME_SQL,
                },
            )
        for number, statement in enumerate(VALIDATE):
            run(f"validate_{number}", statement)
        counts.rejected = run("rejections", SAVE_REJECTIONS, params)
        run("diff", DIFF, params)
        run("classify", CLASSIFY)
        if job.mode == ImportMode.APPEND:
            # Append adds new places only; existing ones are left exactly as they are.
            run("classify", "UPDATE import_diff SET op = 'kept' WHERE op = 'update'")
        cursor.execute("SELECT op, count(*) FROM import_diff GROUP BY op")
        by_op = dict(cursor.fetchall())
        counts.unchanged = by_op.get("unchanged", 0) + by_op.get("kept", 0)
        if job.dry_run:
            counts.added, counts.updated = by_op.get("create", 0), by_op.get("update", 0)
            if job.mode == ImportMode.SNAPSHOT:
                cursor.execute(COUNT_MISSING, params)
                counts.retired = cursor.fetchone()[0]
            counts.samples = dry_run_samples(cursor=cursor, job=job)
        else:
            counts.added = run("insert", INSERT_CREATED, params)
            counts.updated = run("update", UPDATE_CHANGED, params)
            counts.conflicts = by_op.get("update", 0) - counts.updated
            if job.mode != ImportMode.APPEND:
                run("update", REFRESH_SOURCE_VALUES)
            if job.mode == ImportMode.SNAPSHOT:
                counts.retired = run("retire", RETIRE_MISSING, params)
        run("stage", DROP_TEMP)
    return counts


def _copy_into_stage(cursor: Any, reader: Any, mapping: ColumnMapping, job: ImportJob) -> int:
    """Stream every layer's batches into the staging table with COPY."""
    total = 0
    columns = ", ".join(STAGE_COLUMNS)
    # Layers are listed again from the stored copy: a GeoJSON layer is named after its file.
    layers = reader.layers()
    raw_cursor = cursor.cursor  # the psycopg cursor under Django's wrapper
    with raw_cursor.copy(f"COPY import_stage ({columns}) FROM STDIN") as copy:
        for layer in layers:
            geometry_type = (layer.geometry_type or "").lower()
            kind = "node" if geometry_type in {"point", "multipoint"} else "area"
            srid = srid_from_crs(layer.crs) if job.format != "csv" else 4326
            # Layer names are reported only where a file has several.
            label = layer.name if len(layers) > 1 else ""
            # CSV records are numbered as lines with the header as line 1.
            next_row = 2 if job.format == "csv" else 1
            for batch in reader.batches(layer.name):
                for row in stage_rows(
                    batch,
                    mapping,
                    layer=label,
                    first_row_number=next_row,
                    geometry_kind=kind,
                    srid=srid,
                ):
                    copy.write_row(row)
                next_row += batch.num_rows
                total += batch.num_rows
                cache.set(PROGRESS_KEY.format(job.pk), total, timeout=3600)
        for line, text in getattr(reader, "invalid_rows", []):
            copy.write_row(
                malformed_stage_row(line=line, text=text, expected=len(mapping_columns(reader)))
            )
            total += 1
    return total


def mapping_columns(reader: Any) -> list[str]:
    return getattr(reader, "header", [])

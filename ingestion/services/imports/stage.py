"""Stage: stream the file into ``ingestion_importstage``, then validate it as a whole.

Rows are copied a reader batch per transaction (the next batch is prepared meanwhile in a
thread), then checked in SQL over the whole file: geometries (reprojected, repaired), packed
classes that are no place of worship, repeated keys; rejected rows are saved with their
original values. The checkpoint records that staging is complete.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from django.db import connection, transaction
from django.db.models.functions import Now

from ingestion.mapping import ColumnMapping
from ingestion.models import ImportJob
from ingestion.normalize import NOT_WORSHIP_NAME_SQL, worship_class_heads
from ingestion.services.imports.progress import (
    IMPORT_WORK_MEM,
    ImportCounts,
    import_job_heartbeat,
    import_job_progress_publish,
    import_job_stop_if_cancelled,
)
from ingestion.services.imports.reading import prefetch, raw_chunks, stage_chunks
from ingestion.services.stored_files import import_job_local_file
from ingestion.staging import STAGE_COLUMNS

COPY_STAGE = f"COPY ingestion_importstage ({', '.join(STAGE_COLUMNS)}) FROM STDIN (FORMAT csv)"


CLEAR_STAGE = "DELETE FROM ingestion_importstage WHERE job_id = %(job)s"


# Geometries from geo files and tables' geometry columns, reprojected to WGS84, checked and
# repaired; each CTE is materialised so that a geometry is parsed, transformed and repaired
# once. Heights (Z) and measures (M) are dropped: places are stored in 2D. Polygons keep
# their (repaired) footprint and get a point guaranteed inside them.
STAGE_GEOMETRIES = """
WITH parsed AS MATERIALIZED (
    SELECT sid, ST_Force2D(CASE
               WHEN srid = 4326 THEN ST_GeomFromWKB(wkb, 4326)
               ELSE ST_Transform(ST_GeomFromWKB(wkb, srid), 4326) END) AS g
    FROM ingestion_importstage
    WHERE job_id = %(job)s AND wkb IS NOT NULL AND reject IS NULL
), checked AS MATERIALIZED (
    SELECT sid, g, CASE
               WHEN ST_IsEmpty(g) THEN 'missing_geometry'
               WHEN NOT (ST_XMin(g) >= -180 AND ST_XMax(g) <= 180
                         AND ST_YMin(g) >= -90 AND ST_YMax(g) <= 90) THEN 'bad_coordinates'
           END AS reject
    FROM parsed
), repaired AS MATERIALIZED (
    SELECT sid, g, reject,
           CASE WHEN reject IS NULL AND ST_Dimension(g) = 2 THEN ST_Multi(ST_CollectionExtract(
               CASE WHEN ST_IsValid(g) THEN g ELSE ST_MakeValid(g) END, 3)) END AS footprint
    FROM checked
), final AS (
    SELECT sid, g, footprint, COALESCE(reject,
               CASE WHEN ST_IsEmpty(footprint) THEN 'invalid_geometry' END) AS reject
    FROM repaired
)
UPDATE ingestion_importstage s SET
    reject = f.reject,
    reject_detail = CASE f.reject
        WHEN 'missing_geometry' THEN 'empty geometry'
        WHEN 'bad_coordinates'
            THEN 'coordinates outside WGS84 range (wrong CRS, NaN or infinite?)'
        WHEN 'invalid_geometry' THEN 'polygon is degenerate and cannot be repaired' END,
    geom = CASE WHEN f.reject IS NULL THEN CASE
        WHEN f.footprint IS NOT NULL THEN ST_PointOnSurface(f.footprint)
        WHEN GeometryType(f.g) = 'POINT' THEN f.g
        ELSE ST_PointOnSurface(f.g) END END,
    footprint = CASE WHEN f.reject IS NULL THEN f.footprint END,
    wkb = NULL
FROM final f
WHERE s.job_id = %(job)s AND s.sid = f.sid
"""


# The first valid row with a key wins; later rows with the same key are reported. Staging
# found the keys that may repeat (%(keys)s, a superset), so only their rows are ranked;
# among them, rows that SQL rejected since (geometries) no longer count.
STAGE_DUPLICATES = """
WITH repeated AS MATERIALIZED (
    SELECT source_key FROM ingestion_importstage
    WHERE job_id = %(job)s AND reject IS NULL AND source_key = ANY(%(keys)s)
    GROUP BY source_key HAVING count(*) > 1
), ranked AS MATERIALIZED (
    SELECT s.sid, row_number() OVER w AS n,
           first_value(s.row_number) OVER w AS first_row,
           first_value(s.layer) OVER w AS first_layer
    FROM ingestion_importstage s JOIN repeated r USING (source_key)
    WHERE s.job_id = %(job)s AND s.reject IS NULL
    WINDOW w AS (PARTITION BY s.source_key ORDER BY s.sid)
)
UPDATE ingestion_importstage s SET reject = 'duplicate_key',
    reject_detail = format('key %%s was already used by %%s', s.source_key,
        CASE WHEN d.first_layer = '' THEN 'row ' || d.first_row
             ELSE format('feature %%s of layer %%s', d.first_row, d.first_layer) END)
FROM ranked d
WHERE s.job_id = %(job)s AND s.sid = d.sid AND d.n > 1
"""


# CSV rows are numbered by file line as staging reads them, but records pyarrow could not
# split are skipped there and only found (with their lines) at the end of the file. Each
# such record k, at line L and m lines long, sits at L - (lines of the ones before it) in
# the numbering the other rows got, and every row numbered from there on moves down m
# lines. Updates nothing when the file has no such record (or none whose line was found).
RENUMBER_AFTER_MALFORMED = """
WITH bad AS MATERIALIZED (
    SELECT sid, row_number,
           1 + length(raw::jsonb ->> '_text')
             - length(replace(raw::jsonb ->> '_text', E'\\n', '')) AS lines
    FROM ingestion_importstage
    WHERE job_id = %(job)s AND reject = 'malformed_row' AND row_number > 0
), slots AS MATERIALIZED (
    SELECT row_number - COALESCE(sum(lines) OVER (
               ORDER BY sid ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS slot,
           lines
    FROM bad
)
UPDATE ingestion_importstage s
SET row_number = s.row_number + (SELECT sum(lines) FROM slots WHERE slot <= s.row_number)
WHERE s.job_id = %(job)s AND s.reject IS DISTINCT FROM 'malformed_row'
  AND s.row_number >= (SELECT min(slot) FROM slots)
"""


MISSING_RAW = """
SELECT sid FROM ingestion_importstage
WHERE job_id = %(job)s AND reject IS NOT NULL AND raw IS NULL ORDER BY sid
"""


FILL_RAW = """
UPDATE ingestion_importstage s SET raw = r.raw
FROM import_raw r WHERE s.job_id = %(job)s AND s.sid = r.sid
"""


SAVE_REJECTIONS = """
INSERT INTO ingestion_importrejection (job_id, row_number, layer, reason, detail, raw)
SELECT job_id, row_number, layer, reject, COALESCE(reject_detail, ''), raw::jsonb
FROM ingestion_importstage WHERE job_id = %(job)s AND reject IS NOT NULL ORDER BY sid
"""


STAGE_SUMMARY = """
SELECT count(*), COALESCE(max(sid), 0) FROM ingestion_importstage WHERE job_id = %(job)s
"""


# Geofabrik's packed classes: rows that are no place of worship (the rule and its words are in
# ingestion.normalize, where packed_class_not_worship states it in Python). The class stays
# in the row's tags (a packed class is not a consumed column).
NOT_PLACE_OF_WORSHIP = """
WITH c AS (
    SELECT sid, btrim(fields::jsonb -> 'tags' ->> %(column)s) AS class,
           fields::jsonb ->> 'name' AS name
    FROM ingestion_importstage
    WHERE job_id = %(job)s AND reject IS NULL
)
UPDATE ingestion_importstage s SET reject = 'not_place_of_worship', reject_detail = CASE
    WHEN NOT (lower(split_part(c.class, '_', 1)) = ANY(%(heads)s))
        THEN format('class %%s is not a place of worship', c.class)
    ELSE format('%%s looks like a %%s, not a place of worship (class %%s)',
                c.name, lower(substring(c.name from %(pattern)s)), c.class) END
FROM c
WHERE s.job_id = %(job)s AND s.sid = c.sid AND c.class <> ''
  AND (NOT (lower(split_part(c.class, '_', 1)) = ANY(%(heads)s)) OR c.name ~ %(pattern)s)
"""


STILL_STAGED = """
SELECT EXISTS (SELECT 1 FROM ingestion_importstage WHERE job_id = %(job)s AND sid = %(sid)s)
"""

CLEAR_REJECTIONS = "DELETE FROM ingestion_importrejection WHERE job_id = %(job)s"


def stage_file(job: ImportJob, counts: ImportCounts, checkpoint: dict[str, Any]) -> None:
    """Stream the file into the staging table, then validate it as a whole.

    A file stored in a bucket is fetched once, for the staging read and the read of
    rejected rows' values after it, and its local copy removed at the end
    (``ingestion.services.stored_files``).
    """
    with ExitStack() as stack:
        with counts.timed("fetch_file"):
            path = stack.enter_context(import_job_local_file(job=job))
        _stage(job, counts, checkpoint, path=path)


def _stage(job: ImportJob, counts: ImportCounts, checkpoint: dict[str, Any], *, path: Path) -> None:
    params = {"job": job.pk}
    # Staging starts over: the checkpoint stops saying it is complete (a run that dies
    # before validation ends must not take half-checked rows for staged ones), and what an
    # interrupted staging left behind goes. The apply progress (last_sid, applied) stays.
    checkpoint.pop("staged", None)
    checkpoint.pop("max_sid", None)
    with transaction.atomic(), connection.cursor() as cursor:
        ImportJob.objects.filter(pk=job.pk).update(checkpoint=checkpoint)
        cursor.execute(CLEAR_STAGE, params)
    with counts.timed("read_and_copy"):
        counts.rows_read, repeated, malformed = _copy_into_stage(job, path=path)
    if malformed:
        with counts.timed("renumber"), connection.cursor() as cursor:
            cursor.execute(RENUMBER_AFTER_MALFORMED, params)
    import_job_progress_publish(job.pk, rows=counts.rows_read, phase="checking rows")
    with counts.timed("analyze_stage"), connection.cursor() as cursor:
        # Validation and the batches' range scans and joins are planned from these.
        cursor.execute("ANALYZE ingestion_importstage")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL work_mem = '{IMPORT_WORK_MEM}'")
        mapping = ColumnMapping.from_dict(job.options["mapping"])
        # A CSV's rows carry WKB only when its mapping names a geometry column.
        if job.format != "csv" or mapping.geometry:
            with counts.timed("geometries"):
                cursor.execute(STAGE_GEOMETRIES, params)
        if mapping.packed_class:
            with counts.timed("validate_class"):
                cursor.execute(
                    NOT_PLACE_OF_WORSHIP,
                    {
                        **params,
                        "column": mapping.packed_class,
                        "heads": worship_class_heads(),
                        "pattern": NOT_WORSHIP_NAME_SQL,
                    },
                )
        if repeated:
            with counts.timed("duplicates"):
                cursor.execute(STAGE_DUPLICATES, {**params, "keys": repeated})
        with counts.timed("raw_values"):
            _fill_raw_values(cursor, job, path=path)
        with counts.timed("rejections"):
            cursor.execute(CLEAR_REJECTIONS, params)
            cursor.execute(SAVE_REJECTIONS, params)
            counts.rejected = cursor.rowcount
        cursor.execute(STAGE_SUMMARY, params)
        staged, max_sid = cursor.fetchone()
        checkpoint.update(staged=staged, max_sid=max_sid)
        checkpoint.setdefault("last_sid", 0)
        ImportJob.objects.filter(pk=job.pk).update(
            rows_read=counts.rows_read,
            rejected=counts.rejected,
            checkpoint=checkpoint,
            heartbeat_at=Now(),
        )


def _fill_raw_values(cursor: Any, job: ImportJob, *, path: Path) -> None:
    """Original values for the rows SQL rejected that staging did not keep them for (a
    geometry PostGIS refused, a Geofabrik class that is no place of worship), read again
    from the file. Staging keeps them for the rows it rejected itself and for every row that
    may lose under the duplicate rule."""
    cursor.execute(MISSING_RAW, {"job": job.pk})
    wanted = np.array([row[0] for row in cursor.fetchall()], dtype=np.int64)
    if not wanted.size:
        return
    cursor.execute("DROP TABLE IF EXISTS pg_temp.import_raw")
    cursor.execute("CREATE TEMP TABLE import_raw (sid bigint, raw text) ON COMMIT DROP")
    with cursor.cursor.copy("COPY import_raw (sid, raw) FROM STDIN (FORMAT csv)") as copy:
        for chunk in raw_chunks(job, wanted, path=path):
            copy.write(chunk)
    cursor.execute(FILL_RAW, {"job": job.pk})
    cursor.execute("DROP TABLE pg_temp.import_raw")


def _copy_into_stage(job: ImportJob, *, path: Path) -> tuple[int, list[str], int]:
    """Stream the file into the staging table with COPY, a reader batch per commit.

    The next batch is read and turned into CSV in a second thread while PostgreSQL takes
    in the current one: on two cores, staging then costs about what the server's part does.
    Returns the rows read, the keys that may repeat (a superset of those more than one
    valid row carries: only those need the duplicate rule in SQL) and the number of CSV
    records that could not be split.
    """
    total = malformed = 0
    keys: list[pa.Array] = []
    for chunk, rows, repeats, unsplit in prefetch(stage_chunks(job, path=path), depth=2):
        with transaction.atomic(), connection.cursor() as cursor:
            with cursor.cursor.copy(COPY_STAGE) as copy:  # the psycopg cursor under Django's
                copy.write(chunk)
            import_job_heartbeat(job.pk)
        total += rows
        malformed += unsplit
        keys.append(repeats)
        import_job_progress_publish(job.pk, rows=total, phase="reading rows")
        # Staging writes no place: a cancel stops it at once.
        import_job_stop_if_cancelled(job.pk)
    return total, _distinct(keys), malformed


def _distinct(keys: list[pa.Array]) -> list[str]:
    if not keys:
        return []
    return pc.unique(pa.chunked_array(keys, pa.string())).to_pylist()


def still_staged(job: ImportJob, checkpoint: dict[str, Any]) -> bool:
    """Staging finished in an earlier run and its rows are still there (a database server
    crash empties unlogged tables; the file is then staged again, identically)."""
    if not checkpoint.get("staged"):
        return False
    with connection.cursor() as cursor:
        cursor.execute(STILL_STAGED, {"job": job.pk, "sid": checkpoint["max_sid"]})
        return bool(cursor.fetchone()[0])

"""Diff one batch of staged rows against the dataset's places, in SQL.

The batch's rows whose fingerprint is unchanged are counted and dropped first; the rest go
through point in polygon and come out in ``import_diff`` (per row: op, the change-log entry,
the fields whose source value moved, new and current values), which the apply phase writes
and a dry run samples.
"""

from __future__ import annotations

from typing import Any

from ingestion.models import ImportJob, ImportMode
from ingestion.services.imports.progress import IMPORT_WORK_MEM, ImportCounts
from places.locate import points_locate
from places.services.places import SOURCE_FIELDS, place_log_key

# Source-fed fields of a place, by their key in the logged and compared JSON (foreign keys by
# column, ``country_id``), in the one list's order.
_KEYS = [place_log_key(field) for field in SOURCE_FIELDS]


def _fields_json(alias: str, geom: str, footprint: str, regions: str) -> str:
    """The logged/compared form of a place's source-fed fields (same for stage and place)."""
    a, r = alias, regions
    return f"""jsonb_build_object(
        'name', {a}.name, 'religion', {a}.religion, 'religion_raw', {a}.religion_raw,
        'denominations', to_jsonb({a}.denominations), 'denomination_raw', {a}.denomination_raw,
        'location', ST_AsGeoJSON({geom})::jsonb, 'footprint', ST_AsGeoJSON({footprint})::jsonb,
        'country_id', {r}.country_id, 'region_id', {r}.region_id, 'tags', {a}.tags,
        'start_date', {a}.start_date, 'start_date_raw', {a}.start_date_raw,
        'end_date', {a}.end_date, 'end_date_raw', {a}.end_date_raw)"""


def _new_json(stage: str, located: str) -> str:
    """The same form for a staged row: the values staging derived from the row itself, and
    those SQL derives (location, footprint, region and country)."""
    s, r = stage, located
    return f"""{s}.fields::jsonb || jsonb_build_object(
        'location', ST_AsGeoJSON({r}.geom)::jsonb, 'footprint', ST_AsGeoJSON({s}.footprint)::jsonb,
        'country_id', {r}.country_id, 'region_id', {r}.region_id,
        '_fingerprint', {s}.fingerprint)"""


# How import_diff (alias d) gives each field's new value.
NEW_VALUES = {
    "name": "d.new_j ->> 'name'",
    "religion": "d.new_j ->> 'religion'",
    "religion_raw": "d.new_j ->> 'religion_raw'",
    "denominations": "d.denominations",
    "denomination_raw": "d.new_j ->> 'denomination_raw'",
    "location": "d.geom",
    "footprint": "d.footprint",
    "country_id": "d.country_id",
    "region_id": "d.region_id",
    "tags": "d.new_j -> 'tags'",
    "start_date": "(d.new_j ->> 'start_date')::date",
    "start_date_raw": "d.new_j ->> 'start_date_raw'",
    "end_date": "(d.new_j ->> 'end_date')::date",
    "end_date_raw": "d.new_j ->> 'end_date_raw'",
}


# A new place logs every field it has, as {"old": null, "new": value}. Assembled as text
# from the values' own JSON output and parsed once: nesting fourteen jsonb_build_object()
# calls cost twice as much, and was the largest cost of the diff for new places.
_NULLABLE = {"footprint", "country_id", "region_id", "start_date", "end_date"}


def _create_changes(new_j: str) -> str:
    parts = []
    for k in _KEYS:
        member = f"""'"{k}":{{"old":null,"new":' || ({new_j} -> '{k}')::text || '}}'"""
        if k in _NULLABLE:
            parts.append(
                f"CASE WHEN jsonb_typeof({new_j} -> '{k}') <> 'null' THEN ',' || {member} END"
            )
        else:
            parts.append(member if not parts else f"',' || {member}")
    return "concat('{', " + ", ".join(parts) + ", '}')::jsonb"


_ALL_KEYS = "ARRAY[" + ", ".join(f"'{k}'" for k in _KEYS) + "]::text[]"


def fingerprint_hash(fingerprint: str) -> str:
    """SQL for ``Place.source_fingerprint`` from a fingerprint text expression: the batch's
    probe and the writes of ``apply`` must hash alike, or no row would ever look unchanged."""
    return f"hashtextextended({fingerprint}, 0)"


# The fingerprint a diffed row's place keeps (it rides in new_j under ``_fingerprint``).
NEW_FINGERPRINT = fingerprint_hash("d.new_j ->> '_fingerprint'")


# A range scan of the staging table's primary key: the planner, misled by a whole file's
# rows, would otherwise read them all for every batch.
SEQSCAN_OFF = "SET LOCAL enable_seqscan = off"
SEQSCAN_ON = "SET LOCAL enable_seqscan = on"

# The batch's rows that need a diff, copied out of the stage by a range scan of its primary
# key (a sequential scan would read the whole file's rows for every batch). A row needs
# none when its place's source values were made from a row with the same fingerprint under
# the same regions: then nothing can have moved, and a re-import of an unchanged file ends
# here, without point in polygon or JSON (a dry run, ``keep_all``, diffs every row).
BATCH_TABLE = f"""CREATE TEMP TABLE import_batch ON COMMIT DROP AS
       SELECT s.sid, s.row_number, s.source_key, s.denominations,
              COALESCE(s.geom, ST_SetSRID(ST_MakePoint(s.lon, s.lat), 4326)) AS geom,
              s.footprint, s.fields, s.fingerprint || ':' || %(stamp)s AS fingerprint
       FROM ingestion_importstage s
       LEFT JOIN LATERAL (
           SELECT p.source_fingerprint FROM places_place p
           WHERE p.dataset_id = (SELECT %(dataset)s::bigint) AND p.source_key = s.source_key
           OFFSET 0) p ON true
       WHERE s.job_id = %(job)s AND s.sid > %(after)s AND s.sid <= %(upto)s
         AND s.reject IS NULL
         AND (%(keep_all)s OR p.source_fingerprint
              IS DISTINCT FROM {fingerprint_hash("s.fingerprint || ':' || %(stamp)s")})"""  # nosec B608 # constant SQL; values bound

# Every valid staged row of the batch, changed or not (the difference is the rows the
# fingerprint found unchanged).
BATCH_VALID_ROWS = """SELECT count(*) FROM ingestion_importstage
       WHERE job_id = %(job)s AND sid > %(after)s AND sid <= %(upto)s AND reject IS NULL"""


# Point in polygon for the rows that need it, by the one rule (``places.locate``) that
# curator edits and region maintenance use too.
BATCH_POINTS = """CREATE TEMP TABLE import_points ON COMMIT DROP AS
       SELECT sid, geom FROM import_batch"""


DROP_BATCH = (
    "DROP TABLE IF EXISTS pg_temp.import_batch, pg_temp.import_points, pg_temp.import_located"
)


# What the file says now (new_j) against what the dataset said last time (source_values):
# only fields whose source value moved are written, so curators' fixes survive. Each lateral
# subquery is evaluated once per row (OFFSET 0 keeps it from being inlined into every
# reference). ``import_diff`` keeps, per row of import_batch: op (create / update /
# unchanged / kept / deferred), changes (the change-log entry), moved (fields whose source value
# moved), new_j, cur_j and source_values. The fingerprint rides in source_values under
# ``_fingerprint``; it is never a moved field nor logged.
DIFF = f"""
CREATE TEMP TABLE import_diff ON COMMIT DROP AS
SELECT s.sid, s.row_number, s.source_key, n.new_j ->> 'name' AS name, s.denominations,
       l.geom, s.footprint, l.region_id, l.country_id, n.new_j,
       p.id AS place_id, p.key_id, p.version AS old_version, p.key_values AS source_values,
       c.cur_j, m.moved,
       ch.changes,
       CASE WHEN p.id IS NULL THEN 'create'
            WHEN ch.changes IS NULL THEN 'unchanged'
            -- Append adds new places only; existing ones are left exactly as they are.
            WHEN %(append)s THEN 'kept'
            ELSE 'update' END AS op
FROM import_batch s
JOIN import_located l ON l.sid = s.sid
CROSS JOIN LATERAL (
    SELECT {_new_json("s", "l")} AS new_j OFFSET 0) n
-- A lateral probe of the unique key, so that no plan hashes all the dataset's places (the
-- dataset given as a sub-select: statistics taken before the import began would make the
-- planner walk all the dataset's places for every row instead). The key's place (k) gives
-- the source values last delivered; the place written (p) is k itself, or for a key that
-- was merged away the place it was merged into (``merged_into`` never names a merged place):
-- a re-import updates the survivor and never brings the merged place back.
LEFT JOIN LATERAL (
    SELECT t.*, k.id AS key_id, ks.source_values AS key_values FROM places_place k
    JOIN places_place t ON t.id = COALESCE(k.merged_into_id, k.id)
    LEFT JOIN places_placesource ks ON ks.place_id = k.id
    WHERE k.dataset_id = (SELECT %(dataset)s::bigint) AND k.source_key = s.source_key
           OFFSET 0) p ON true
CROSS JOIN LATERAL (
    SELECT CASE WHEN p.id IS NOT NULL AND p.key_values IS DISTINCT FROM n.new_j
                THEN {_fields_json("p", "p.location", "p.footprint", "p")} END AS cur_j
    OFFSET 0) c
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN p.id IS NULL THEN {_ALL_KEYS}
        WHEN c.cur_j IS NULL THEN '{{}}'::text[]  -- nothing moved
        ELSE COALESCE((SELECT array_agg(k) FROM unnest({_ALL_KEYS}) k
                       WHERE n.new_j -> k
                             IS DISTINCT FROM COALESCE(p.key_values, c.cur_j) -> k),
                      '{{}}') END AS moved
    OFFSET 0) m
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN p.id IS NULL THEN {_create_changes("n.new_j")}
        WHEN cardinality(m.moved) > 0 THEN (
            SELECT jsonb_object_agg(k, jsonb_build_object('old', c.cur_j -> k, 'new', n.new_j -> k))
            FROM unnest(m.moved) k WHERE c.cur_j -> k IS DISTINCT FROM n.new_j -> k) END
        AS changes
    OFFSET 0) ch
"""  # nosec B608 # SQL from this module's constants; values are bound


# Two rows of a batch may write one place: a merged-away key and the survivor's own key (or
# two merged-away keys). The survivor's own row, else the first, is applied; the others wait
# ("deferred", counted as conflicts) and, their key's source values left as they were, are
# applied by the next import.
DEFER_SHARED_SURVIVORS = """
UPDATE import_diff d SET op = 'deferred'
WHERE d.op = 'update' AND d.key_id <> d.place_id
  AND EXISTS (SELECT 1 FROM import_diff o
              WHERE o.op = 'update' AND o.place_id = d.place_id AND o.sid <> d.sid
                AND (o.key_id = o.place_id OR o.sid < d.sid))
"""

DIFF_COUNTS = "SELECT op, count(*) FROM import_diff GROUP BY op"


def batch_diff(
    cursor: Any,
    job: ImportJob,
    counts: ImportCounts,
    *,
    region_stamp: str,
    after: int,
    upto: int,
    keep_all: bool = False,
) -> dict[str, int]:
    """Build ``import_diff`` for staged rows ``(after, upto]``; counts per op.

    Rows whose fingerprint shows them unchanged are counted and left out, unless
    ``keep_all`` (a dry run, which reports samples of every kind).
    """
    params = {
        "job": job.pk,
        "dataset": job.dataset_id,
        "after": after,
        "upto": upto,
        "append": job.mode == ImportMode.APPEND,
        "stamp": region_stamp,
        "keep_all": keep_all,
    }
    cursor.execute(f"SET LOCAL work_mem = '{IMPORT_WORK_MEM}'")
    # Memoize would cache the per-row JSON under keys as large as the rows: all cost, no hits.
    cursor.execute("SET LOCAL enable_memoize = off")
    # ON COMMIT DROP is not enough when the caller wraps several imports in one transaction.
    cursor.execute("DROP TABLE IF EXISTS pg_temp.import_diff")
    cursor.execute(DROP_BATCH)
    with counts.timed("batch"):
        cursor.execute(SEQSCAN_OFF)
        cursor.execute(BATCH_TABLE, params)
        other = cursor.rowcount
        cursor.execute(BATCH_VALID_ROWS, params)
        same = cursor.fetchone()[0] - other
        cursor.execute(SEQSCAN_ON)
    by_op = {"unchanged": same, "fingerprint": same}
    # With nothing left (other == 0) these statements cost milliseconds, and import_diff
    # exists with its columns all the same.
    with counts.timed("locate"):
        cursor.execute(BATCH_POINTS)
        points_locate(cursor=cursor, points_table="import_points", located_table="import_located")
    with counts.timed("diff"):
        cursor.execute(DIFF, params)
        cursor.execute(DEFER_SHARED_SURVIVORS)
    cursor.execute(DIFF_COUNTS)
    for op, n in cursor.fetchall():
        by_op[op] = by_op.get(op, 0) + n
    cursor.execute(DROP_BATCH)
    return by_op

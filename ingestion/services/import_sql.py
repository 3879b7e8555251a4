"""The set-based SQL of place imports (see ingestion.services.imports for the flow).

Rows live in ``ingestion_importstage`` (UNLOGGED, keyed by job and ``sid``, the row's position
in the file) from staging until the job ends. Each statement handles every row of the job, or
of one apply batch (``sid`` in ``(after, upto]``), at once.
"""

from __future__ import annotations

from ingestion.staging import STAGE_COLUMNS

COPY_STAGE = f"COPY ingestion_importstage ({', '.join(STAGE_COLUMNS)}) FROM STDIN (FORMAT csv)"

CLEAR_STAGE = "DELETE FROM ingestion_importstage WHERE job_id = %(job)s"

# Geometries from geo files, reprojected to WGS84, checked and repaired; each CTE is
# materialised so that a geometry is parsed, transformed and repaired once. Heights (Z) and
# measures (M) are dropped: places are stored in 2D. Polygons keep their (repaired)
# footprint and get a point guaranteed inside them.
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

# Two probes of the primary key rather than a scan for job_id <> %(job)s.
OTHER_JOBS_STAGED = """
SELECT EXISTS (SELECT 1 FROM ingestion_importstage WHERE job_id < %(job)s)
    OR EXISTS (SELECT 1 FROM ingestion_importstage WHERE job_id > %(job)s)
"""

STAGE_SUMMARY = """
SELECT count(*), COALESCE(max(sid), 0) FROM ingestion_importstage WHERE job_id = %(job)s
"""

# Source-fed fields of a place, by their key in the logged and compared JSON.
_KEYS = [
    "name",
    "religion",
    "religion_raw",
    "denominations",
    "denomination_raw",
    "location",
    "footprint",
    "country_id",
    "region_id",
    "tags",
    "start_date",
    "start_date_raw",
    "end_date",
    "end_date_raw",
]


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

# Regions as they are now, in one short value: it goes into every row's fingerprint, so
# that a change to any region, its pieces or its parent sends rows through point in polygon
# again.
REGION_STAMP = """
SELECT md5(concat_ws('|',
    (SELECT string_agg(concat_ws(',', id, parent_id, updated_at), ';' ORDER BY id)
     FROM places_region),
    (SELECT concat_ws(',', count(*), max(id)) FROM places_regionpart)))
"""

# The batch's rows that need a diff, copied out of the stage by a range scan of its primary
# key (a sequential scan would read the whole file's rows for every batch). A row needs
# none when its place's source values were made from a row with the same fingerprint under
# the same regions: then nothing can have moved, and a re-import of an unchanged file ends
# here, without point in polygon or JSON (a dry run, ``keep_all``, diffs every row).
BATCH = [
    "SET LOCAL enable_seqscan = off",
    """CREATE TEMP TABLE import_batch ON COMMIT DROP AS
       SELECT s.sid, s.row_number, s.source_key, s.denominations,
              COALESCE(s.geom, ST_SetSRID(ST_MakePoint(s.lon, s.lat), 4326)) AS geom,
              s.footprint, s.fields, s.fingerprint || ':' || %(stamp)s AS fingerprint
       FROM ingestion_importstage s
       LEFT JOIN LATERAL (
           SELECT p.source_values FROM places_place p
           WHERE p.dataset_id = (SELECT %(dataset)s::bigint) AND p.source_key = s.source_key
           OFFSET 0) p ON true
       WHERE s.job_id = %(job)s AND s.sid > %(after)s AND s.sid <= %(upto)s
         AND s.reject IS NULL
         AND (%(keep_all)s OR (p.source_values ->> '_fingerprint')
                              IS DISTINCT FROM s.fingerprint || ':' || %(stamp)s)""",
    """SELECT count(*) FROM ingestion_importstage
       WHERE job_id = %(job)s AND sid > %(after)s AND sid <= %(upto)s AND reject IS NULL""",
    "SET LOCAL enable_seqscan = on",
]

# Point in polygon for the rows that need it, against the subdivided regions. The points
# get a temporary spatial index and each region piece looks up the points in it: PostGIS
# then tests many points against the same polygon in a row, which it caches, three to four
# times faster than one index probe per point. The most detailed level wins; the country
# comes from the region's parent, else (points in no district or first-level region, e.g.
# off the coast) from the country polygons.
LOCATE = [
    """CREATE TEMP TABLE import_points ON COMMIT DROP AS
       SELECT sid, geom FROM import_batch""",
    "CREATE INDEX ON import_points USING gist (geom)",
    """CREATE TEMP TABLE import_located ON COMMIT DROP AS
       WITH hit AS (
           SELECT p.sid,
                  COALESCE(min(rp.region_id) FILTER (WHERE rp.level = 'district'),
                           min(rp.region_id) FILTER (WHERE rp.level = 'admin1')) AS region_id
           FROM places_regionpart rp JOIN import_points p ON ST_Intersects(rp.geom, p.geom)
           WHERE rp.level IN ('district', 'admin1')
           GROUP BY p.sid
       )
       SELECT p.sid, p.geom, h.region_id, r.parent_id AS country_id
       FROM import_points p
       LEFT JOIN hit h ON h.sid = p.sid
       LEFT JOIN places_region r ON r.id = h.region_id""",
    """UPDATE import_located l SET country_id = (
           SELECT min(rp.region_id) FROM places_regionpart rp
           WHERE rp.level = 'country' AND ST_Intersects(rp.geom, l.geom))
       WHERE l.country_id IS NULL""",
]
DROP_BATCH = (
    "DROP TABLE IF EXISTS pg_temp.import_batch, pg_temp.import_points, pg_temp.import_located"
)

# What the file says now (new_j) against what the dataset said last time (source_values):
# only fields whose source value moved are written, so curators' fixes survive. Each lateral
# subquery is evaluated once per row (OFFSET 0 keeps it from being inlined into every
# reference). ``import_diff`` keeps, per row of import_batch: op (create / update /
# unchanged / kept), changes (the change-log entry), moved (fields whose source value
# moved), new_j, cur_j and source_values. The fingerprint rides in source_values under
# ``_fingerprint``; it is never a moved field nor logged.
DIFF = f"""
CREATE TEMP TABLE import_diff ON COMMIT DROP AS
SELECT s.sid, s.row_number, s.source_key, n.new_j ->> 'name' AS name, s.denominations,
       l.geom, s.footprint, l.region_id, l.country_id, n.new_j,
       p.id AS place_id, p.version AS old_version, p.source_values, c.cur_j, m.moved,
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
-- planner walk all the dataset's places for every row instead).
LEFT JOIN LATERAL (
    SELECT * FROM places_place p
    WHERE p.dataset_id = (SELECT %(dataset)s::bigint) AND p.source_key = s.source_key
           OFFSET 0) p ON true
CROSS JOIN LATERAL (
    SELECT CASE WHEN p.id IS NOT NULL AND p.source_values IS DISTINCT FROM n.new_j
                THEN {_fields_json("p", "p.location", "p.footprint", "p")} END AS cur_j
    OFFSET 0) c
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN p.id IS NULL THEN {_ALL_KEYS}
        WHEN c.cur_j IS NULL THEN '{{}}'::text[]  -- nothing moved
        ELSE COALESCE((SELECT array_agg(k) FROM unnest({_ALL_KEYS}) k
                       WHERE n.new_j -> k
                             IS DISTINCT FROM COALESCE(p.source_values, c.cur_j) -> k),
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
"""

DIFF_COUNTS = "SELECT op, count(*) FROM import_diff GROUP BY op"

INSERT_CREATED = f"""
WITH ins AS (
    INSERT INTO places_place (
        dataset_id, source_key, name, religion, religion_raw, denominations, denomination_raw,
        location, footprint, country_id, region_id, tags, start_date, start_date_raw,
        end_date, end_date_raw, status, source_values)
    SELECT %(dataset)s, d.source_key, {NEW_VALUES["name"]}, {NEW_VALUES["religion"]},
           {NEW_VALUES["religion_raw"]}, d.denominations, {NEW_VALUES["denomination_raw"]},
           d.geom, d.footprint, d.country_id, d.region_id, {NEW_VALUES["tags"]},
           {NEW_VALUES["start_date"]}, {NEW_VALUES["start_date_raw"]}, {NEW_VALUES["end_date"]},
           {NEW_VALUES["end_date_raw"]}, 'active', d.new_j
    FROM import_diff d WHERE d.op = 'create'
    -- Neighbours on the map become neighbours on disk: a map view then reads a few
    -- pages instead of one page per place. PostGIS sorts geometries along a Hilbert
    -- curve, three times faster than sorting by geohash text.
    ORDER BY d.geom, d.sid
    RETURNING id, source_key, version
)
INSERT INTO places_placechange (place_id, dataset_id, operation, changes, place_version,
                                source, import_job_id, device_id, comment)
SELECT ins.id, %(dataset)s, 'create', d.changes, ins.version, 'import', %(job)s, '', ''
FROM ins JOIN import_diff d ON d.source_key = ins.source_key
ORDER BY d.sid
"""

_SET_MOVED = ",\n        ".join(
    f"{key} = CASE WHEN '{key}' = ANY(d.moved) THEN {value} ELSE p.{key} END"
    for key, value in NEW_VALUES.items()
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
_MISSING = """
    SELECT p.id, p.end_date AS old_end FROM places_place p
    WHERE p.dataset_id = %(dataset)s AND p.status = 'active' AND p.source_values IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM ingestion_importstage s
                      WHERE s.job_id = %(job)s AND s.source_key = p.source_key)
"""

RETIRE_MISSING = f"""
WITH targets AS ({_MISSING} FOR UPDATE
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
               ELSE '{{}}'::jsonb END,
       version, 'import', %(job)s, '', 'missing from snapshot import'
FROM gone ORDER BY id
"""

COUNT_MISSING = f"SELECT count(*) FROM ({_MISSING}) missing"

# Staging rows of jobs that ended without cleaning up (a worker died at the wrong moment).
SWEEP_STAGE = """
DELETE FROM ingestion_importstage
WHERE job_id IN (SELECT id FROM ingestion_importjob WHERE state = ANY(%(final)s))
"""

# Claim jobs whose run went silent (lost message, dead worker) for re-queueing: the
# conditional UPDATE lets only one caller claim a job per stale period.
CLAIM_STALE = """
UPDATE ingestion_importjob SET heartbeat_at = now()
WHERE state IN ('queued', 'running')
  AND COALESCE(heartbeat_at, created_at) < now() - make_interval(secs => %(seconds)s)
RETURNING id
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

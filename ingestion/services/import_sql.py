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

# The first valid row with a key wins; later rows with the same key are reported. Only keys
# that repeat are sorted, so the common case (no repeats) is one hashed pass.
STAGE_DUPLICATES = """
WITH repeated AS MATERIALIZED (
    SELECT source_key FROM ingestion_importstage
    WHERE job_id = %(job)s AND reject IS NULL
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

SAVE_REJECTIONS = """
INSERT INTO ingestion_importrejection (job_id, row_number, layer, reason, detail, raw)
SELECT job_id, row_number, layer, reject, COALESCE(reject_detail, ''), raw::jsonb
FROM ingestion_importstage WHERE job_id = %(job)s AND reject IS NOT NULL ORDER BY sid
"""

STAGE_SUMMARY = """
SELECT count(*), COALESCE(max(sid), 0) FROM ingestion_importstage WHERE job_id = %(job)s
"""

# Source-fed fields of a place: (key in the logged/compared JSON, column of the stage).
UPDATABLE = [
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
_KEYS = [key for key, _ in UPDATABLE]


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


# A new place logs every field it has, as {"old": null, "new": value}; built directly rather
# than by iterating the object, which cost more than the rest of the diff.
_CREATE_CHANGES = (
    "jsonb_build_object("
    + ", ".join(f"'{k}', jsonb_build_object('old', NULL, 'new', new_j -> '{k}')" for k in _KEYS)
    + ") - ARRAY["
    + ", ".join(f"CASE WHEN jsonb_typeof(new_j -> '{k}') = 'null' THEN '{k}' END" for k in _KEYS)
    + "]::text[]"
)
_ALL_KEYS = "ARRAY[" + ", ".join(f"'{k}'" for k in _KEYS) + "]::text[]"

# One apply batch (or, for a dry run, the whole file): point in polygon against the
# subdivided regions (one index probe per row gives every level; the most detailed wins,
# the country comes from the region's parent, else from the country polygons), then the
# comparison of what the file says now with what the dataset said last time (source_values):
# only fields whose source value moved are written, so curators' fixes survive.
# ``import_diff`` keeps, per row: op (create / update / unchanged / kept), changes (the
# change-log entry), moved (fields whose source value moved), new_j, cur_j and source_values.
DIFF = f"""
CREATE TEMP TABLE import_diff ON COMMIT DROP AS
WITH staged AS MATERIALIZED (
    SELECT sid, row_number, source_key, name, religion, religion_raw, denominations,
           denomination_raw, COALESCE(geom, ST_SetSRID(ST_MakePoint(lon, lat), 4326)) AS geom,
           footprint, tags, start_date, start_date_raw, end_date, end_date_raw
    FROM ingestion_importstage
    WHERE job_id = %(job)s AND sid > %(after)s AND sid <= %(upto)s AND reject IS NULL
), located AS MATERIALIZED (
    SELECT s.*, COALESCE(pip.district, pip.admin1) AS region_id,
           COALESCE(r.parent_id, pip.country) AS country_id
    FROM staged s
    CROSS JOIN LATERAL (
        SELECT min(rp.region_id) FILTER (WHERE rp.level = 'district') AS district,
               min(rp.region_id) FILTER (WHERE rp.level = 'admin1') AS admin1,
               min(rp.region_id) FILTER (WHERE rp.level = 'country') AS country
        FROM places_regionpart rp WHERE ST_Intersects(rp.geom, s.geom)) pip
    LEFT JOIN places_region r ON r.id = COALESCE(pip.district, pip.admin1)
), built AS MATERIALIZED (
    SELECT l.*, {_fields_json("l", "l.geom", "l.footprint")} AS new_j FROM located l
), fed AS MATERIALIZED (
    SELECT b.*, p.id AS place_id, p.version AS old_version, p.source_values,
           CASE WHEN p.id IS NOT NULL AND p.source_values IS DISTINCT FROM b.new_j
                THEN {_fields_json("p", "p.location", "p.footprint")} END AS cur_j
    FROM built b
    LEFT JOIN places_place p ON p.dataset_id = %(dataset)s AND p.source_key = b.source_key
), moving AS MATERIALIZED (
    SELECT f.*, CASE
        WHEN f.place_id IS NULL THEN {_ALL_KEYS}
        WHEN f.cur_j IS NULL THEN '{{}}'::text[]  -- the common re-import case: nothing moved
        ELSE COALESCE((SELECT array_agg(k) FROM jsonb_object_keys(f.new_j) k
                       WHERE f.new_j -> k
                             IS DISTINCT FROM COALESCE(f.source_values, f.cur_j) -> k),
                      '{{}}') END AS moved
    FROM fed f
), changed AS MATERIALIZED (
    SELECT m.*, CASE
        WHEN m.place_id IS NULL THEN {_CREATE_CHANGES}
        WHEN cardinality(m.moved) > 0 THEN (
            SELECT jsonb_object_agg(k, jsonb_build_object('old', m.cur_j -> k, 'new', m.new_j -> k))
            FROM unnest(m.moved) k WHERE m.cur_j -> k IS DISTINCT FROM m.new_j -> k) END AS changes
    FROM moving m
)
SELECT c.*, CASE
    WHEN c.place_id IS NULL THEN 'create'
    WHEN c.changes IS NULL THEN 'unchanged'
    -- Append adds new places only; existing ones are left exactly as they are.
    WHEN %(append)s THEN 'kept'
    ELSE 'update' END AS op
FROM changed c
"""

DIFF_COUNTS = "SELECT op, count(*) FROM import_diff GROUP BY op"

INSERT_CREATED = """
WITH ins AS (
    INSERT INTO places_place (
        dataset_id, source_key, name, religion, religion_raw, denominations, denomination_raw,
        location, footprint, country_id, region_id, tags, start_date, start_date_raw,
        end_date, end_date_raw, status, source_values)
    SELECT %(dataset)s, source_key, name, religion, religion_raw, denominations,
           denomination_raw, geom, footprint, country_id, region_id, tags, start_date,
           start_date_raw, end_date, end_date_raw, 'active', new_j
    FROM import_diff WHERE op = 'create' ORDER BY sid
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
    for key, stage in UPDATABLE
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
WHERE state IN ('queued', 'applying')
  AND COALESCE(heartbeat_at, created_at) < now() - make_interval(secs => %(seconds)s)
RETURNING id
"""

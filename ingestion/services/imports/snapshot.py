"""Snapshot mode's one rule: which of the dataset's places a file misses.

Places of the dataset that came from an import (they have source values, ``PlaceSource``),
are active and whose key no staged row of the job carries (a rejected row's key still counts
as present) are missing, unless the file carries the key of a place of the dataset merged
into them (that key now stands for the survivor). The apply retires them, the dry run counts
them and samples a few: all three statements are built on ``MISSING_IN_SNAPSHOT``.
"""

from __future__ import annotations

MISSING_IN_SNAPSHOT = """
    SELECT p.id, p.end_date AS old_end FROM places_place p
    WHERE p.dataset_id = %(dataset)s AND p.status = 'active'
      AND EXISTS (SELECT 1 FROM places_placesource ps WHERE ps.place_id = p.id)
      AND NOT EXISTS (SELECT 1 FROM ingestion_importstage s
                      WHERE s.job_id = %(job)s AND s.source_key = p.source_key)
      AND NOT EXISTS (SELECT 1 FROM places_place m
                      JOIN ingestion_importstage s
                        ON s.job_id = %(job)s AND s.source_key = m.source_key
                      WHERE m.merged_into_id = p.id AND m.dataset_id = %(dataset)s)
"""

RETIRE_MISSING = f"""
WITH targets AS ({MISSING_IN_SNAPSHOT} FOR UPDATE
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
"""  # nosec B608 # SQL from this module's constants; values are bound


COUNT_MISSING = f"SELECT count(*) FROM ({MISSING_IN_SNAPSHOT}) missing"  # nosec B608 # a constant; values are bound

# A few of them for the dry run's report, picked across the dataset by a stable hash of the
# id (the same places on every dry run) and shown in id order.
SAMPLE_MISSING = f"""
SELECT id, source_key, name FROM (
    SELECT p.id, p.source_key, p.name
    FROM places_place p JOIN ({MISSING_IN_SNAPSHOT}) missing ON missing.id = p.id
    ORDER BY hashint8(p.id), p.id LIMIT %(limit)s
) picked ORDER BY id
"""  # nosec B608 # a constant; values are bound

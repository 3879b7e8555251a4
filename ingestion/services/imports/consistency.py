"""Consistency: after a snapshot apply, the file compared with the dataset as it now is.

Run by the finish phase while the job's staged rows are still there. Rows in the source
(valid staged keys) and active places of the dataset should be the same set; what differs
is counted and a few keys of each side are named, so that a curator can look them up:

- ``in_source_not_active``: a valid row whose place is not active (a curator retired it
  while the import ran, and the import left it alone as a conflict);
- ``active_not_in_source``: an active place the file does not carry as a valid row (its row
  was rejected, which a snapshot counts as present, or a curator added it by hand).
"""

from __future__ import annotations

from typing import Any

from ingestion.models import ImportJob

EXAMPLES = 10

CONSISTENCY_COUNTS = """
SELECT
    (SELECT count(DISTINCT source_key) FROM ingestion_importstage
     WHERE job_id = %(job)s AND reject IS NULL),
    (SELECT count(*) FROM places_place WHERE dataset_id = %(dataset)s AND status = 'active')
"""

IN_SOURCE_NOT_ACTIVE = """
SELECT DISTINCT s.source_key FROM ingestion_importstage s
WHERE s.job_id = %(job)s AND s.reject IS NULL
  AND NOT EXISTS (SELECT 1 FROM places_place p
                  WHERE p.dataset_id = %(dataset)s AND p.source_key = s.source_key
                    AND p.status = 'active')
"""

ACTIVE_NOT_IN_SOURCE = """
SELECT p.source_key FROM places_place p
WHERE p.dataset_id = %(dataset)s AND p.status = 'active'
  AND NOT EXISTS (SELECT 1 FROM ingestion_importstage s
                  WHERE s.job_id = %(job)s AND s.source_key = p.source_key
                    AND s.reject IS NULL)
"""

# Each side's count and its first keys, for the report.
DIFFERENCES = {
    name: f"""
SELECT count(*), (array_agg(source_key ORDER BY source_key))[1:%(examples)s]
FROM ({query}) differing
"""  # nosec B608 # SQL from this module's constants; values are bound
    for name, query in (
        ("in_source_not_active", IN_SOURCE_NOT_ACTIVE),
        ("active_not_in_source", ACTIVE_NOT_IN_SOURCE),
    )
}


def consistency_report(cursor: Any, *, job: ImportJob) -> dict[str, Any]:
    """Rows in the source, places active in the dataset and the keys where they differ."""
    params = {"job": job.pk, "dataset": job.dataset_id, "examples": EXAMPLES}
    cursor.execute(CONSISTENCY_COUNTS, params)
    source_keys, active = cursor.fetchone()
    report: dict[str, Any] = {
        "source_rows": job.rows_read,
        "source_keys": source_keys,
        "rejected": job.rejected,
        "active_places": active,
    }
    for name, statement in DIFFERENCES.items():
        cursor.execute(statement, params)
        count, examples = cursor.fetchone()
        report[name] = {"count": count, "examples": examples or []}
    report["consistent"] = not (
        report["in_source_not_active"]["count"] or report["active_not_in_source"]["count"]
    )
    return report


def consistency_summary(report: dict[str, Any]) -> str:
    """The report in one line, for the command's output and the admin."""
    return (
        f"{report['source_keys']} rows in the source ({report['rejected']} rejected), "
        f"{report['active_places']} places active; "
        f"{report['in_source_not_active']['count']} in the source but not active, "
        f"{report['active_not_in_source']['count']} active but not in the source"
    )

"""Samples of what a dry run would do, read from the import's temporary tables.

Called by the import service while the job's staging rows and ``import_diff`` still exist (they go
when the dry run's transaction ends), so the job's report can show real rows next to the
counts: places that would be added, updated (field by field, old and new), left unchanged
or retired, and rows rejected with their reason.

Each outcome's samples are spread over the whole file, not its first rows: rows are picked
by a hash of their position (the same rows on every dry run of the file) and shown in file
order. The first rows of a file are often its tidiest, or all from one region.
"""

from __future__ import annotations

import json
from typing import Any

from django.db.models.expressions import RawSQL

from ingestion.models import ImportJob, ImportMode
from ingestion.selectors import import_job_columns
from ingestion.services.imports.snapshot import SAMPLE_MISSING

SAMPLE_SIZE = 20
MAX_TEXT = 300

ADDED = """
SELECT d.row_number, st.layer, d.source_key, d.name, d.new_j ->> 'religion',
       array_to_string(d.denominations, '; '),
       ST_X(d.geom), ST_Y(d.geom), d.footprint IS NOT NULL, d.new_j ->> 'start_date_raw',
       r.name, c.name
FROM import_diff d
JOIN ingestion_importstage st ON st.job_id = %(job)s AND st.sid = d.sid
LEFT JOIN places_region r ON r.id = d.region_id
LEFT JOIN places_region c ON c.id = d.country_id
WHERE d.op = 'create' AND d.sid = ANY(%(create)s) ORDER BY d.sid
"""

UPDATED = """
SELECT d.row_number, st.layer, d.source_key, d.place_id, d.changes FROM import_diff d
JOIN ingestion_importstage st ON st.job_id = %(job)s AND st.sid = d.sid
WHERE d.op = 'update' AND d.sid = ANY(%(update)s) ORDER BY d.sid
"""

UNCHANGED = """
SELECT d.row_number, st.layer, d.source_key, d.place_id FROM import_diff d
JOIN ingestion_importstage st ON st.job_id = %(job)s AND st.sid = d.sid
WHERE d.op IN ('unchanged', 'kept') AND d.sid = ANY(%(unchanged)s) ORDER BY d.sid
"""

# Up to ``limit`` rows of each outcome, picked by a hash of the row's position: spread over
# the file, and the same rows each time. One pass over the diff for all outcomes.
SPREAD = """
SELECT op, array_agg(sid) FROM (
    SELECT CASE WHEN op = 'kept' THEN 'unchanged' ELSE op END AS op, sid,
           row_number() OVER (PARTITION BY CASE WHEN op = 'kept' THEN 'unchanged' ELSE op END
                              ORDER BY hashint8(sid::bigint), sid) AS n
    FROM import_diff
) picked WHERE n <= %(limit)s GROUP BY op
"""

# How many of the file's keys are already used in each other dataset: the same records
# imported twice under two datasets is usually a mistake. One index probe per key and dataset
# (places are unique by dataset and key).
KEYS_IN_OTHER_DATASETS = """
SELECT ds.id, ds.name, n FROM places_dataset ds
CROSS JOIN LATERAL (
    SELECT count(*) AS n FROM import_diff d
    JOIN places_place p ON p.dataset_id = ds.id AND p.source_key = d.source_key
) used
WHERE ds.id <> %(dataset)s AND n > 0 ORDER BY n DESC, ds.name
"""


def dry_run_samples(*, cursor: Any, job: ImportJob, limit: int = SAMPLE_SIZE) -> dict[str, Any]:
    """Up to ``limit`` rows of each outcome, spread over the file and shown in file order,
    small enough for the job's report; and the file's keys already used in other datasets.

    Long texts are cut and footprints summarised: the report is JSON on the job's row.
    """
    params: dict[str, Any] = {"limit": limit, "dataset": job.dataset_id, "job": job.pk}
    cursor.execute(SPREAD, params)
    picked = dict(cursor.fetchall())
    params.update({op: picked.get(op, []) for op in ("create", "update", "unchanged")})
    retired: list[dict[str, Any]] = []
    if job.mode == ImportMode.SNAPSHOT:
        cursor.execute(SAMPLE_MISSING, params)
        retired = [
            {"place_id": pk, "key": key, "name": _short(name)}
            for pk, key, name in cursor.fetchall()
        ]
    cursor.execute(UNCHANGED, params)
    unchanged = [
        {"row": row, "layer": layer, "key": key, "place_id": place_id}
        for row, layer, key, place_id in cursor.fetchall()
    ]
    return {
        "limit": limit,
        "added": _added(cursor, params),
        "updated": _updated(cursor, params),
        "unchanged": unchanged,
        "retired": retired,
        "rejected": _rejected(job, limit),
        "keys_in_other_datasets": _keys_in_other_datasets(cursor, params),
    }


def _keys_in_other_datasets(cursor: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    cursor.execute(KEYS_IN_OTHER_DATASETS, params)
    return [{"id": pk, "name": name, "keys": n} for pk, name, n in cursor.fetchall()]


def _added(cursor: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    cursor.execute(ADDED, params)
    return [
        {
            "row": row,
            "layer": layer,
            "key": key,
            "name": _short(name),
            "religion": religion,
            "denominations": denominations,
            "location": f"POINT ({x:.6f} {y:.6f})" if x is not None else "",
            "footprint": footprint,
            "start_date": _short(start),
            "region": region or "",
            "country": country or "",
        }
        for (
            row,
            layer,
            key,
            name,
            religion,
            denominations,
            x,
            y,
            footprint,
            start,
            region,
            country,
        ) in cursor.fetchall()
    ]


def _updated(cursor: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Updates field by field, with the old and the new value."""
    cursor.execute(UPDATED, params)
    return [
        {
            "row": row,
            "layer": layer,
            "key": key,
            "place_id": place_id,
            "changes": [
                {"field": name, "old": _display(change["old"]), "new": _display(change["new"])}
                for name, change in sorted(_json(changes).items())
            ],
        }
        for row, layer, key, place_id, changes in cursor.fetchall()
    ]


def _rejected(job: ImportJob, limit: int) -> list[dict[str, Any]]:
    # Original values as pairs in the file's column order: jsonb objects keep their own order.
    position = {name: i for i, name in enumerate(import_job_columns(job=job))}
    return [
        {
            "row": rejection.row_number,
            "layer": rejection.layer,
            "reason": rejection.reason,
            "detail": _short(rejection.detail),
            "values": [
                [k, _display(rejection.raw[k])]
                for k in sorted(rejection.raw, key=lambda k: (position.get(k, len(position)), k))
            ],
        }
        for rejection in sorted(
            job.rejections.order_by(RawSQL("hashint8(id::bigint)", ()), "id")[:limit],
            key=lambda r: (r.row_number, r.id),
        )
    ]


def _json(value: Any) -> Any:
    # Django's psycopg setup hands jsonb over as text.
    return json.loads(value) if isinstance(value, str) else value


def _short(text: str | None) -> str:
    if text is None:
        return ""
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _display(value: Any) -> str | None:
    """A field's value as a short text: points as WKT, polygons by their size, lists joined."""
    if value is None:
        return None
    if isinstance(value, dict) and "coordinates" in value and "type" in value:
        if value["type"] == "Point":
            x, y = value["coordinates"][:2]
            return f"POINT ({x:.6f} {y:.6f})"
        return f"{value['type']} ({_vertices(value['coordinates'])} vertices)"
    if isinstance(value, list):
        return _short("; ".join(str(v) for v in value))
    if isinstance(value, dict):
        return _short(json.dumps(value, ensure_ascii=False, sort_keys=True))
    return _short(str(value))


def _vertices(coordinates: Any) -> int:
    if coordinates and isinstance(coordinates[0], int | float):
        return 1
    return sum(_vertices(part) for part in coordinates)

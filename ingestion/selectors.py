"""Reads of import jobs: progress, and the rejected rows as a spreadsheet-safe CSV."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from django.core.cache import cache
from django.db import connection
from django.db.models import Q

from ingestion.mapping import ColumnMapping, mapping_problems
from ingestion.models import ImportJob, ImportRejection, ImportState, RejectionReason
from places.csv_cells import safe_cell
from places.models import Dataset

PROGRESS_KEY = "import-progress:{}"

RUNNING_STATES = frozenset({ImportState.QUEUED, ImportState.RUNNING})
# Cancelled at once (the task, when it arrives, finds nothing to run).
NOT_STARTED_STATES = frozenset(
    {ImportState.UPLOADED, ImportState.INSPECTED, ImportState.DRY_RUN_READY, ImportState.QUEUED}
)
# States a job ends in when it stopped before the end (a resume may go on from there).
STOPPED_STATES = frozenset({ImportState.FAILED, ImportState.CANCELLED})

REJECTION_COLUMNS = ("row", "layer", "reason", "detail")


def import_job_last_applied(*, dataset: Dataset, sha256: str) -> ImportJob | None:
    """The latest finished, non-dry-run import of this exact file into this dataset."""
    return (
        ImportJob.objects.filter(
            dataset=dataset, sha256=sha256, state=ImportState.DONE, dry_run=False
        )
        .order_by("-id")
        .first()
    )


def _live_progress(job_id: int) -> dict[str, Any] | None:
    """What the running task last published: a row count, or ``{"rows": n, "phase": …}``."""
    value = cache.get(PROGRESS_KEY.format(job_id))
    if value is None:
        return None
    if isinstance(value, dict):
        return value
    return {"rows": int(value)}


def import_job_resumable(*, job: ImportJob) -> bool:
    """Whether the job failed or was cancelled after a worker had begun it, so a resume can
    go on from its checkpoint (a dry run is run again). A job that failed or was cancelled
    before it ever ran has nothing to go on from."""
    return job.state in STOPPED_STATES and job.started_at is not None


def import_job_cancellable(*, job: ImportJob) -> bool:
    """Whether cancel does something: it closes a job that is not running yet, and asks a
    running one to stop after its batch (once)."""
    if job.state == ImportState.RUNNING:
        return job.cancel_requested_at is None
    return job.state in NOT_STARTED_STATES


@dataclass(frozen=True)
class AppliedPart:
    """What the committed batches of a job that stopped part-way applied."""

    added: int
    updated: int
    unchanged: int
    retired: int
    batches: int
    batches_total: int | None


def import_job_applied_part(*, job: ImportJob) -> AppliedPart | None:
    """The counts of a failed or cancelled apply that ran: every batch commits with its
    counts, so they say what stays applied. Snapshot retirement runs only after the last
    batch, so such a job retired nothing. None for dry runs and jobs that never ran."""
    if job.dry_run or job.state not in STOPPED_STATES or job.started_at is None:
        return None
    checkpoint = job.checkpoint or {}
    return AppliedPart(
        added=job.added,
        updated=job.updated,
        unchanged=job.unchanged,
        retired=job.retired,
        batches=int(checkpoint.get("batches", 0)),
        batches_total=import_batches_total(checkpoint=checkpoint),
    )


def import_batches_total(*, checkpoint: dict[str, Any]) -> int | None:
    """How many batches a job's staged rows make: the fixed grid of ``batch_rows`` over
    sids 1 … ``max_sid`` (None until staging and the apply have both begun)."""
    if not checkpoint.get("batch_rows") or "max_sid" not in checkpoint:
        return None
    return math.ceil(checkpoint["max_sid"] / checkpoint["batch_rows"])


def import_job_state_help(*, job: ImportJob) -> str:
    """What the job's state means for the person looking at it, and what they can do."""
    state = ImportState(job.state)
    if state == ImportState.RUNNING:
        if job.cancel_requested_at:
            if job.dry_run:
                return "Cancel requested: the dry run stops at its next check and writes nothing."
            return (
                "Cancel requested: the worker stops after the batch it is applying; the job "
                "then ends cancelled, keeping what committed."
            )
        if job.dry_run:
            return (
                "A worker is running the dry run: it reads and compares the file and changes "
                "nothing. Stop the dry run ends it."
            )
        return (
            "A worker is applying the file in batches; each commits with the job's "
            "checkpoint. Stop after the current batch ends it there: what committed stays "
            "applied, and the job can be resumed."
        )
    if state in STOPPED_STATES:
        return _stopped_help(job)
    return STATE_HELP[state]


def _stopped_help(job: ImportJob) -> str:
    what = "failed" if job.state == ImportState.FAILED else "was cancelled"
    if not import_job_resumable(job=job):
        if job.state == ImportState.FAILED:
            return (
                "The job failed before it ran, so nothing changed. Fix the file and upload it "
                "again."
            )
        return "The job was cancelled before it ran; nothing changed. The file is kept."
    if job.dry_run:
        return f"The dry run {what}; it changed nothing. Resume runs it again."
    return (
        f"The job {what} part-way. The batches that committed before it stopped stay "
        "applied (counts below); the rest of the file is not. Resume applies the rest from "
        "the checkpoint, or upload the file again."
    )


STATE_HELP = {
    ImportState.UPLOADED: "The file is stored. Inspect it to see its columns and rows.",
    ImportState.INSPECTED: (
        "Check the columns and sample rows, correct the mapping if needed, then run a dry run: "
        "it shows what the import would do and changes nothing."
    ),
    ImportState.QUEUED: (
        "Waiting for a worker on the ingestion queue. If it stays here, check that a worker "
        "is running (celery -A config worker -Q ingestion). A queued job can be cancelled."
    ),
    ImportState.DRY_RUN_READY: (
        "The dry run is ready below. Apply to make these changes (they are computed again, "
        "so edits made since then are taken into account), change the mapping and run "
        "another dry run, or cancel."
    ),
    ImportState.DONE: "The import is applied. Its changes are in each place's history.",
}


@dataclass(frozen=True)
class ImportStatus:
    """Where a job stands, for the admin's progress bar."""

    state: str
    state_label: str
    dry_run: bool
    phase: str
    rows_read: int
    rows_total: int | None
    rows_total_estimated: bool
    percent: int | None
    running: bool
    error: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_job_status(*, job: ImportJob) -> ImportStatus:
    """State, phase and progress of ``job``, live from the cache while a task runs.

    The bar follows the phase the run publishes: rows read while staging, then batches
    committed while applying (each batch commits on its own). Row totals of large CSV files
    are estimates, so the bar stops at 99 % until the end.
    """
    live = _live_progress(job.pk) if job.state == ImportState.RUNNING else None
    rows_read = int(live.get("rows", 0)) if live else job.rows_read
    total = job.rows_total
    percent: int | None = None
    if job.state == ImportState.QUEUED:
        phase, percent = "waiting for a worker", 0
    elif job.state != ImportState.RUNNING:
        phase = job.get_state_display()
        if job.state in (ImportState.DONE, ImportState.DRY_RUN_READY):
            percent = 100
    else:
        phase = str(live.get("phase") or "reading rows") if live else "starting"
        if live and live.get("batches_total"):
            percent = min(99, int(100 * live.get("batches", 0) / live["batches_total"]))
        elif total:
            percent = min(99, int(100 * rows_read / total))
    return ImportStatus(
        state=job.state,
        state_label=_state_label(job),
        dry_run=job.dry_run,
        phase=phase,
        rows_read=rows_read,
        rows_total=total,
        rows_total_estimated=bool(job.inspection.get("row_count_estimated")),
        percent=percent,
        running=job.state in RUNNING_STATES,
        error=job.error,
    )


def import_job_step_outcome(*, job: ImportJob, step: str) -> str:
    """What a cancel or a resume just did, in words (after "Job #n ")."""
    if step == "cancel" and job.state == ImportState.RUNNING:
        if job.dry_run:
            return "stops at its next check; a dry run writes nothing"
        return "stops after the batch it is applying; what committed stays applied"
    if step == "resume":
        if job.dry_run:
            return "queued to run the dry run again"
        return "queued to go on from its checkpoint"
    return "cancelled" if step == "cancel" else step


def _state_label(job: ImportJob) -> str:
    if job.state != ImportState.RUNNING:
        return job.get_state_display()
    if job.cancel_requested_at:
        return "Stopping" if job.dry_run else "Stopping after the current batch"
    # A dry run changes nothing; calling it "applying" would scare a curator.
    return "Running the dry run" if job.dry_run else "Applying"


def spreadsheet_safe(value: Any) -> str:
    """``value`` as CSV cell text that a spreadsheet shows rather than evaluates (the rule
    is ``places.csv_cells``, shared with the places CSV)."""
    if value is None:
        text = ""
    elif isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = str(value)
    return safe_cell(text)


def import_job_columns(*, job: ImportJob) -> list[str]:
    """The file's columns in file order: from the inspection, else (a job started outside
    the admin) from the first layer, as recorded when the job was created."""
    return (job.inspection or {}).get("columns") or (job.options or {}).get("columns", [])


def import_rejection_value_keys(*, job: ImportJob) -> list[str]:
    """Every original-value key of the job's rejected rows: the file's columns in their order
    first, then keys no column has (such as the text of an unparsable CSV record)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT DISTINCT k FROM ingestion_importrejection r, jsonb_object_keys(r.raw) k
               WHERE r.job_id = %s""",
            [job.pk],
        )
        keys = {row[0] for row in cursor.fetchall()}
    ordered = [c for c in import_job_columns(job=job) if c in keys]
    return ordered + sorted(keys - set(ordered))


def import_rejections_iter(*, job: ImportJob, batch_size: int = 2000) -> Iterator[ImportRejection]:
    """The job's rejected rows in row order, fetched in keyset pages (memory stays flat)."""
    last: tuple[int, int] | None = None
    while True:
        page = ImportRejection.objects.filter(job=job)
        if last is not None:
            # The redundant lower bound lets the (job, row_number) index start at the page.
            page = page.filter(row_number__gte=last[0]).filter(
                Q(row_number__gt=last[0]) | Q(row_number=last[0], id__gt=last[1])
            )
        rows = list(page.order_by("row_number", "id")[:batch_size])
        yield from rows
        if len(rows) < batch_size:
            return
        last = (rows[-1].row_number, rows[-1].pk)


class _Line:
    """A file-like object whose ``write`` hands the line back, for ``csv.writer``."""

    def write(self, text: str) -> str:
        return text


def import_rejections_csv(*, job: ImportJob) -> Iterator[str]:
    """The rejected rows as CSV lines: row (line or feature number), layer, reason, detail,
    then the original values. Every cell, headers included, is spreadsheet-safe.

    A byte-order mark comes first so that spreadsheets read the file as UTF-8.
    """
    keys = import_rejection_value_keys(job=job)
    writer = csv.writer(_Line())
    # A file column named like one of ours is told apart rather than shadowing it.
    value_headers = [f"{k} (original)" if k in REJECTION_COLUMNS else k for k in keys]
    header = [*REJECTION_COLUMNS, *value_headers]
    yield "\ufeff" + writer.writerow([spreadsheet_safe(h) for h in header])
    for rejection in import_rejections_iter(job=job):
        raw = rejection.raw
        cells = [rejection.row_number, rejection.layer, rejection.reason, rejection.detail]
        cells += [raw.get(k) for k in keys]
        yield writer.writerow([spreadsheet_safe(c) for c in cells])


def import_job_mapping_problems(*, job: ImportJob) -> dict[str, str]:
    """What stops the job's current mapping from working on its file, by field."""
    if not job.inspection:
        return {}
    return mapping_problems(
        ColumnMapping.from_dict({"key": "", **job.options.get("mapping", {})}),
        columns=job.inspection.get("columns", []),
        has_geometry=job.inspection.get("has_geometry", job.format != "csv"),
    )


def import_job_rejections_by_reason(*, job: ImportJob) -> list[tuple[str, str, int]]:
    """(label, code, count) of the job's rejected rows, most frequent first, for people:
    the report stores codes."""
    counts = (job.report or {}).get("rejected_by_reason", {})
    labels = dict(RejectionReason.choices)
    return sorted(
        ((labels.get(code, code), code, int(n)) for code, n in counts.items()),
        key=lambda item: (-item[2], item[1]),
    )


JOB_EXTENT = """
SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e)
FROM (SELECT ST_Extent(p.location) AS e FROM places_place p
      WHERE p.id IN (SELECT c.place_id FROM places_placechange c
                     WHERE c.import_job_id = %(job)s AND c.operation IN ('create', 'update'))) x
"""


def import_job_same_file(*, job: ImportJob) -> list[ImportJob]:
    """Earlier applied imports of the very same file (same SHA-256) into any dataset, newest
    first, this job's dataset before the others: staff are warned before importing a file
    twice, or into a second dataset by mistake."""
    earlier = (
        ImportJob.objects.filter(sha256=job.sha256, state=ImportState.DONE, dry_run=False)
        .filter(id__lt=job.pk)
        .select_related("dataset")
        .order_by("-id")
    )
    same = import_job_last_applied(dataset=job.dataset, sha256=job.sha256)
    others: dict[int, ImportJob] = {}
    for other in earlier.exclude(dataset=job.dataset)[:20]:
        others.setdefault(other.dataset_id, other)
    return ([same] if same is not None and same.pk < job.pk else []) + list(others.values())


def import_job_extent(*, job: ImportJob) -> tuple[float, float, float, float] | None:
    """(west, south, east, north) of the places the job added or changed, or None."""
    with connection.cursor() as cursor:
        cursor.execute(JOB_EXTENT, {"job": job.pk})
        row = cursor.fetchone()
    if row is None or row[0] is None:
        return None
    return (row[0], row[1], row[2], row[3])

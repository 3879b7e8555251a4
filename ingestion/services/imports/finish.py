"""Finish: end a run in one transaction with its final state, report and the removal of its
staging rows; an apply also retires, in snapshot mode, the places missing from the file.

A dry run diffs the whole file here in one statement and writes no place. A cancelled run
ends ``cancelled`` with what its committed batches applied.
"""

from __future__ import annotations

import time
from typing import Any

from django.db import OperationalError, connection, transaction
from django.db.models import Count
from django.utils import timezone

from ingestion.models import ImportJob, ImportMode, ImportState
from ingestion.services.imports.consistency import consistency_report
from ingestion.services.imports.diff import batch_diff
from ingestion.services.imports.progress import ImportCounts
from ingestion.services.imports.samples import dry_run_samples
from ingestion.services.imports.snapshot import COUNT_MISSING, RETIRE_MISSING
from ingestion.services.imports.stage import CLEAR_STAGE
from places.models_access import SecurityEventKind
from places.services.audit import security_event
from places.services.regions import regions_hold_for_locating

# Two probes of the primary key rather than a scan for job_id <> %(job)s.
OTHER_JOBS_STAGED = """
SELECT EXISTS (SELECT 1 FROM ingestion_importstage WHERE job_id < %(job)s)
    OR EXISTS (SELECT 1 FROM ingestion_importstage WHERE job_id > %(job)s)
"""


def finish_apply(
    job: ImportJob, counts: ImportCounts, checkpoint: dict[str, Any], started: float
) -> None:
    """Every batch is applied: retire what a snapshot misses, and end the job ``done``.
    A cancel that came after the last batch still stops the job here, before retiring:
    stopping a snapshot whose file turned out short is what cancel is most wanted for."""
    params = {"job": job.pk, "dataset": job.dataset_id}
    with transaction.atomic(), connection.cursor() as cursor:
        job = ImportJob.objects.select_for_update().get(pk=job.pk)
        if job.cancel_requested_at:
            _end_cancelled(cursor, job, counts, checkpoint, started)
            return
        if job.mode == ImportMode.SNAPSHOT:
            with counts.timed("retire"):
                cursor.execute(RETIRE_MISSING, params)
                job.retired = cursor.rowcount
        job.state = ImportState.DONE
        _close(job, counts, checkpoint, started)
        # In the apply's own transaction: the trail names an import only if it committed.
        security_event(
            SecurityEventKind.IMPORT_APPLIED,
            job.created_by,
            dataset=job.dataset_id,
            job=job.pk,
            file=job.original_name,
            mode=job.mode,
            added=job.added,
            updated=job.updated,
            retired=job.retired,
            rejected=job.rejected,
        )
        if job.mode == ImportMode.SNAPSHOT:
            # While the staged rows are here: the file against the dataset as it now is.
            job.report["consistency"] = consistency_report(cursor, job=job)
            job.save(update_fields=["report"])
        _clear_stage(cursor, job.pk)


def finish_dry_run(
    job: ImportJob, counts: ImportCounts, checkpoint: dict[str, Any], started: float
) -> None:
    """Every count of a real run, from one diff of the whole file; no place is written."""
    params = {"job": job.pk, "dataset": job.dataset_id}
    with transaction.atomic(), connection.cursor() as cursor:
        regions_hold_for_locating()
        by_op = batch_diff(
            cursor,
            job,
            counts,
            region_stamp=checkpoint["region_stamp"],
            after=0,
            upto=checkpoint["max_sid"],
            keep_all=True,
        )
        job = ImportJob.objects.select_for_update().get(pk=job.pk)
        if job.cancel_requested_at:
            cursor.execute("DROP TABLE pg_temp.import_diff")
            _end_cancelled(cursor, job, counts, checkpoint, started)
            return
        job.added, job.updated = by_op.get("create", 0), by_op.get("update", 0)
        job.unchanged = by_op.get("unchanged", 0) + by_op.get("kept", 0)
        if job.mode == ImportMode.SNAPSHOT:
            cursor.execute(COUNT_MISSING, params)
            job.retired = cursor.fetchone()[0]
        # Until here import_diff holds every row of the file (op, changes, new_j …).
        counts.samples = dry_run_samples(cursor=cursor, job=job)
        cursor.execute("DROP TABLE pg_temp.import_diff")
        job.state = ImportState.DRY_RUN_READY
        _close(job, counts, checkpoint, started)
        _clear_stage(cursor, job.pk)


def finish_cancelled(
    job: ImportJob, counts: ImportCounts, checkpoint: dict[str, Any], started: float
) -> None:
    """A cancel stopped the run between batches: the job ends ``cancelled`` and keeps the
    counts of the batches that committed (a dry run wrote nothing); snapshot retirement,
    which runs only after the last batch, did not happen."""
    with transaction.atomic(), connection.cursor() as cursor:
        job = ImportJob.objects.select_for_update().get(pk=job.pk)
        _end_cancelled(cursor, job, counts, checkpoint, started)


def _end_cancelled(
    cursor: Any, job: ImportJob, counts: ImportCounts, checkpoint: dict[str, Any], started: float
) -> None:
    job.state = ImportState.CANCELLED
    if job.dry_run:
        job.added = job.updated = job.unchanged = job.retired = 0
    _close(job, counts, checkpoint, started)
    _clear_stage(cursor, job.pk)


def _clear_stage(cursor: Any, job_id: int) -> None:
    """Remove the job's staging rows, last thing before the job's final commit.

    When no other job has rows there and the table can be had at once, TRUNCATE empties it
    in an instant (deleting a million rows takes about a second); the exclusive lock then
    lasts only until the commit. Otherwise the rows are deleted.
    """
    try:
        with transaction.atomic():
            cursor.execute("LOCK TABLE ingestion_importstage IN ACCESS EXCLUSIVE MODE NOWAIT")
    except OperationalError:  # another job is staging or applying right now
        cursor.execute(CLEAR_STAGE, {"job": job_id})
        return
    cursor.execute(OTHER_JOBS_STAGED, {"job": job_id})
    if cursor.fetchone()[0]:
        cursor.execute(CLEAR_STAGE, {"job": job_id})
    else:
        cursor.execute("TRUNCATE ingestion_importstage")


def _close(
    job: ImportJob, counts: ImportCounts, checkpoint: dict[str, Any], started: float
) -> None:
    seconds = time.perf_counter() - started
    job.checkpoint = checkpoint
    job.report = {
        "seconds": round(seconds, 3),
        "rows_per_second": round(job.rows_read / seconds) if seconds else None,
        "rejected_by_reason": _rejection_counts(job),
        "conflicts": checkpoint.get("conflicts", 0),
        "batches": checkpoint.get("batches", 0),
        "unchanged_by_fingerprint": checkpoint.get("by_fingerprint", 0),
        "resumed_after": checkpoint.get("resumed_after", []),
        "step_seconds": counts.step_seconds,
        **({"samples": counts.samples} if counts.samples else {}),
    }
    job.finished_at = timezone.now()
    job.heartbeat_at = job.finished_at
    job.error = ""
    job.save()


def _rejection_counts(job: ImportJob) -> dict[str, int]:
    return {
        row["reason"]: row["n"]
        for row in job.rejections.values("reason").annotate(n=Count("id")).order_by("reason")
    }

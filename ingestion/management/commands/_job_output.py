"""Following and printing an import job from a management command."""

from __future__ import annotations

import time

from django.core.management.base import CommandError, OutputWrapper

from ingestion import selectors
from ingestion.mapping import CONTENT_KEY_NOTE, ColumnMapping
from ingestion.models import ImportJob, ImportState
from ingestion.services import imports
from ingestion.services.imports import FINAL_STATES
from ingestion.services.imports.consistency import consistency_summary


def job_run_here(job: ImportJob) -> None:
    """Run the job in this process (``--sync``). An error the run recorded on the job is
    reported by the caller from the job, like any other outcome; only one that left the job
    unfinished (a transient database error) is raised."""
    try:
        imports.import_job_execute(job_id=job.pk)
    except Exception:
        job.refresh_from_db()
        if job.state not in FINAL_STATES:
            raise


def job_wait(job: ImportJob, *, timeout: int, out: OutputWrapper) -> ImportJob:
    """Print the job's progress until it ends; CommandError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.state in FINAL_STATES:
            return job
        status = selectors.import_job_status(job=job)
        line = f"  {status.state_label}: {status.phase}"
        if status.phase == "reading rows":
            total = f" of {job.rows_total}" if job.rows_total else ""
            line += f", {status.rows_read}{total}"
        if line != last:
            out.write(line)
            last = line
        time.sleep(0.5)
    raise CommandError(
        f"job #{job.pk} still {job.state} after {timeout}s; is a worker running "
        "(celery -A config worker -Q ingestion)?"
    )


def job_follow(job: ImportJob, *, run_here: bool, timeout: int, out: OutputWrapper) -> ImportJob:
    """Run the job here (``--sync``) or wait for a worker, print its outcome, and raise
    CommandError when it failed: what every command that starts a job does."""
    if run_here:
        job_run_here(job)
    job = job_wait(job, timeout=timeout, out=out)
    job_print(job, out=out)
    if job.state == ImportState.FAILED:
        raise CommandError(f"import job #{job.pk} failed: {job.error}")
    return job


def job_print(job: ImportJob, *, out: OutputWrapper) -> None:
    """The job's outcome: counts, what a part-way stop left applied, a snapshot's
    consistency, rejections."""
    out.write(
        f"job #{job.pk} {job.state}: {job.rows_read} rows read; {job.added} added, "
        f"{job.updated} updated, {job.unchanged} unchanged, {job.retired} retired, "
        f"{job.rejected} rejected"
        + (" (dry run: what an import would do; nothing was written)" if job.dry_run else "")
    )
    if ColumnMapping.from_dict(job.options.get("mapping") or {"key": ""}).content_key():
        out.write(f"  {CONTENT_KEY_NOTE}")
    if "consistency" in (job.report or {}):
        out.write(f"consistency: {consistency_summary(job.report['consistency'])}")
    applied = selectors.import_job_applied_part(job=job)
    if applied is not None:
        out.write(
            f"  stopped part-way: {applied.batches} of {applied.batches_total or '?'} batches "
            f"committed and stay applied; resume with: manage.py import_job resume {job.pk}"
        )
    if job.retired:
        out.write(f"  {job.retired} place(s) missing from the snapshot retired")
    conflicts = (job.report or {}).get("conflicts", 0)
    if conflicts:
        out.write(
            f"  {conflicts} place(s) changed by someone else during the import were left "
            "as they are; import again to apply the file's values"
        )
    for reason, count in (job.report or {}).get("rejected_by_reason", {}).items():
        out.write(f"  rejected {count} × {reason}")
    for rejection in job.rejections.all()[:10]:
        out.write(f"    row {rejection.row_number}: {rejection.reason}: {rejection.detail}")

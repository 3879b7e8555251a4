"""Celery tasks of the ingestion app: thin, idempotent wrappers around services."""

from __future__ import annotations

import logging

from celery import shared_task

from ingestion.services import imports

logger = logging.getLogger(__name__)


@shared_task(
    name="ingestion.tasks.import_job_run",
    # Redeliver when the worker dies mid-import; the service applies what did not commit.
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=imports.TRANSIENT_ERRORS,
    retry_backoff=10,
    # One more delivery than the service allows attempts, so the last one marks it failed.
    retry_kwargs={"max_retries": imports.MAX_ATTEMPTS},
)
def import_job_run(job_id: int) -> str | None:
    job = imports.import_job_execute(job_id=job_id)
    return job.state if job else None


@shared_task(name="ingestion.tasks.import_jobs_recover")
def import_jobs_recover() -> list[int]:
    """Re-queue imports whose message or worker was lost; clear staging rows left behind.

    Run by beat every minute. Safe to run twice at once: each stale job is claimed by one.
    """
    job_ids = imports.import_jobs_stale_claim()
    for job_id in job_ids:
        logger.warning("import job %s went silent; queued again", job_id)
        import_job_run.delay(job_id)
    imports.import_stage_sweep()
    return job_ids

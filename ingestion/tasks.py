"""Celery tasks of the ingestion app: thin, idempotent wrappers around services."""

from __future__ import annotations

import logging

from celery import shared_task

from ingestion.services import imports

logger = logging.getLogger(__name__)


@shared_task(
    name="ingestion.tasks.import_job_run",
    # Redeliver when the worker dies mid-import; the service restarts the job cleanly.
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

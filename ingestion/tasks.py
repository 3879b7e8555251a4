"""Celery tasks of the ingestion app: thin, idempotent wrappers around services."""

from __future__ import annotations

import logging

from celery import shared_task

# Celery's autodiscovery imports ingestion.tasks only; the edge queue's tasks live apart.
from ingestion.edge import tasks as edge_tasks  # noqa: F401

# sync imports this module (it queues import_job_run): a module import, read at call time.
from ingestion.services import imports, sync
from places.models import Dataset

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


@shared_task(name="ingestion.tasks.dataset_sync_run")
def dataset_sync_run(dataset_id: int) -> str | None:
    """Check one dataset's sync URL now (the admin's "sync now"); see datasets_sync."""
    dataset = Dataset.objects.filter(pk=dataset_id).first()
    if dataset is None:
        logger.info("dataset %s is gone; nothing to sync", dataset_id)
        return None
    return sync.dataset_sync(dataset=dataset).status


@shared_task(name="ingestion.tasks.datasets_sync")
def datasets_sync() -> list[int]:
    """Queue a check of every dataset whose sync is due, one task each (a slow source holds
    up no other). Run by beat; safe to run twice: each check takes its dataset's lock, and
    one whose earlier job is still pending queues no other job."""
    dataset_ids = list(sync.datasets_sync_due().values_list("pk", flat=True))
    for dataset_id in dataset_ids:
        dataset_sync_run.delay(dataset_id)
    return dataset_ids

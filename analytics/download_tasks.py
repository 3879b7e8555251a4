"""Celery tasks of the downloads (``analytics.downloads.services``): thin, idempotent wrappers.

Named under ``analytics.tasks`` so that the task routes send them to the ``analytics`` queue
with the other tasks that read the replica.
"""

from __future__ import annotations

import logging

from celery import shared_task

from analytics.downloads import services
from analytics.replica import ReplicaUnavailable

logger = logging.getLogger(__name__)


@shared_task(
    name="analytics.tasks.download_job_build",
    # Redelivered when the worker dies mid-build; the claim takes a silent job again.
    acks_late=True,
    reject_on_worker_lost=True,
    # The replica down or lagging past its limit: wait for it (the job stays pending).
    autoretry_for=(ReplicaUnavailable,),
    retry_backoff=30,
    retry_backoff_max=600,
    retry_kwargs={"max_retries": 10},
)
def download_job_build(job_id: int) -> str | None:
    job = services.download_job_build(job_id=job_id)
    return job.status if job else None


@shared_task(name="analytics.tasks.downloads_maintain")
def downloads_maintain() -> list[int]:
    """Run by beat: remove the files of versions that have passed, and queue again the jobs
    whose task was lost (each is claimed by one build). Safe to run twice at once."""
    cleaned = services.downloads_clean()
    for job_id in services.download_jobs_stale():
        logger.warning("download job %s went silent; queued again", job_id)
        download_job_build.delay(job_id)
    return cleaned

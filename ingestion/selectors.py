"""Reads of import jobs."""

from __future__ import annotations

from django.core.cache import cache

from ingestion.models import ImportJob, ImportState
from places.models import Dataset

PROGRESS_KEY = "import-progress:{}"


def import_job_last_applied(*, dataset: Dataset, sha256: str) -> ImportJob | None:
    """The latest finished, non-dry-run import of this exact file into this dataset."""
    return (
        ImportJob.objects.filter(
            dataset=dataset, sha256=sha256, state=ImportState.DONE, dry_run=False
        )
        .order_by("-id")
        .first()
    )


def import_job_progress(*, job: ImportJob) -> int:
    """Rows read so far: live from the cache while the job runs, else from the row."""
    value = cache.get(PROGRESS_KEY.format(job.pk))
    return int(value) if value is not None else job.rows_read

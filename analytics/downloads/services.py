"""Download jobs: asked for by the API, built by a task from the read source, cleaned up by
beat. One job per selection, format and data version (``analytics.models_downloads``)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import IO

from django.conf import settings
from django.core.cache import cache
from django.core.files import File
from django.core.files.storage import default_storage
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils import timezone

from analytics.downloads.files import EXTENSIONS, selection_write
from analytics.downloads.selectors import (
    Selection,
    read_snapshot,
    selection_facts,
    selection_versions,
)
from analytics.models_downloads import DownloadJob, DownloadStatus
from analytics.replica import read_source
from ingestion.services.stored_files import storage_local_path, stored_file_stream

logger = logging.getLogger(__name__)

FOLDER = "downloads"
MAX_ATTEMPTS = 3


def download_job_path(job: DownloadJob) -> Path:
    """The job's file on the local disk, under ``MEDIA_ROOT`` (when files are stored there)."""
    return Path(settings.MEDIA_ROOT) / job.file_name


def _files_in_bucket() -> bool:
    """Files are stored in a bucket (UPLOADS_S3_BUCKET), not under MEDIA_ROOT: the worker
    that builds a file and the web process that serves it share no disk."""
    return storage_local_path(storage=default_storage, name=FOLDER) is None


def download_file_exists(job: DownloadJob) -> bool:
    return bool(job.file_name) and default_storage.exists(job.file_name)


def download_file_open(job: DownloadJob) -> IO[bytes]:
    """The built file for reading, streamed from a bucket rather than copied first."""
    return stored_file_stream(storage=default_storage, name=job.file_name)


def download_file_delete(job: DownloadJob) -> None:
    """Remove the job's file; one already gone is no error."""
    if job.file_name:
        default_storage.delete(job.file_name)


class DownloadsBusy(Exception):
    """``DOWNLOADS_MAX_ACTIVE_JOBS`` jobs are pending or running: a new one must wait."""


def download_job_request(
    *, selection: Selection, fmt: str, rows_estimate: int
) -> tuple[DownloadJob, bool]:
    """The job of this selection and format at the versions the read source shows now, made
    if there is none, and whether it needs a task: new; failed or expired and worth another
    try (a lagging source can show a version again after a build saw a newer one); or built
    but its file lost.

    The caller queues ``download_job_build`` for it after commit. Raises
    ``ReplicaUnavailable`` when the read source says to retry later, and ``DownloadsBusy``
    rather than make a job beyond ``DOWNLOADS_MAX_ACTIVE_JOBS`` (anyone may ask for one, and
    each distinct selection is a job of its own).
    """
    source = read_source()
    versions = selection_versions(query=selection.query, using=source.alias)
    key = {
        "selection_key": selection.key(),
        "format": fmt,
        "data_version": versions[0],
        "region_version": versions[1],
    }
    job = DownloadJob.objects.filter(**key).first()
    if job is None:
        active = DownloadJob.objects.filter(
            status__in=[DownloadStatus.PENDING, DownloadStatus.RUNNING]
        ).count()
        if active >= settings.DOWNLOADS_MAX_ACTIVE_JOBS:
            raise DownloadsBusy
        job, created = DownloadJob.objects.get_or_create(
            **key, defaults={"selection": selection.to_json(), "rows_estimate": rows_estimate}
        )
        if created:
            return job, True
    retried = DownloadJob.objects.filter(
        pk=job.pk,
        status__in=[DownloadStatus.FAILED, DownloadStatus.EXPIRED],
        attempts__lt=MAX_ATTEMPTS,
    ).update(status=DownloadStatus.PENDING, error="", updated_at=Now())
    if job.status == DownloadStatus.READY and not download_file_exists(job):
        # The file was lost (a volume not shared or emptied): build it again.
        retried = DownloadJob.objects.filter(pk=job.pk, status=DownloadStatus.READY).update(
            status=DownloadStatus.PENDING, attempts=0, updated_at=Now()
        )
    if retried:
        job.refresh_from_db()
    return job, bool(retried)


def _claim(job_id: int) -> bool:
    """Take the job for this worker: pending, or running with a silent worker (its progress
    clock stopped). A conditional UPDATE, so two deliveries never build it side by side."""
    stale = timezone.now() - timedelta(seconds=settings.DOWNLOADS_STALE_SECONDS)
    return bool(
        DownloadJob.objects.filter(
            Q(status=DownloadStatus.PENDING)
            | Q(status=DownloadStatus.RUNNING, updated_at__lt=stale),
            pk=job_id,
        ).update(
            status=DownloadStatus.RUNNING,
            attempts=F("attempts") + 1,
            rows_done=0,
            updated_at=Now(),
        )
    )


def download_job_build(*, job_id: int) -> DownloadJob | None:
    """Build the job's file from the read source, if the job is still to be built.

    Idempotent: a job that is ready, taken by another worker or gone is left as it is. The
    file is written beside its final name and renamed when complete, so a reader never sees
    half a file. When the source no longer shows the job's versions (the data moved on since
    it was asked for), the job expires instead: its file would not be what it names.
    Raises ``ReplicaUnavailable`` (before taking the job) for the task to retry.
    """
    source = read_source()
    if not _claim(job_id):
        logger.info("download job %s is not to be built (gone, done or taken)", job_id)
        return DownloadJob.objects.filter(pk=job_id).first()
    job = DownloadJob.objects.get(pk=job_id)
    selection = Selection.from_json(job.selection)
    job.file_name = f"{FOLDER}/places-{job.pk}-{job.data_version}.{EXTENSIONS[job.format]}"
    final = download_job_path(job)
    scratch = None
    if _files_in_bucket():
        # Written on the worker's own disk, then stored in the bucket whole.
        scratch = Path(tempfile.mkdtemp(prefix="places-download-"))
        final = scratch / final.name
    final.parent.mkdir(parents=True, exist_ok=True)
    # Each attempt writes its own partial file: a worker thought lost may still be writing.
    partial = final.with_name(f"{final.name}.part{job.attempts}")

    estimate = job.rows_estimate

    def progress(done: int) -> None:
        cache.set(progress_key(job_id), [done, estimate], timeout=settings.DOWNLOADS_STALE_SECONDS)

    # Nothing is written to the database inside the snapshot: the source may be the primary
    # (the fallback), whose read-only transaction would refuse it. Progress goes to Redis.
    try:
        with read_snapshot(source.alias):
            versions = selection_versions(query=selection.query, using=source.alias)
            moved = versions != (job.data_version, job.region_version)
            if not moved:
                facts = selection_facts(query=selection.query, using=source.alias)
                estimate = facts.rows
                progress(0)
                with partial.open("wb") as out:
                    rows = selection_write(
                        out=out,
                        selection=selection,
                        fmt=job.format,
                        facts=facts,
                        versions=versions,
                        using=source.alias,
                        progress=progress,
                    )
        if not moved:
            os.replace(partial, final)
            size = final.stat().st_size
            if scratch is not None:
                _store_in_bucket(job=job, path=final)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        logger.exception("download job %s failed", job_id)
        DownloadJob.objects.filter(pk=job_id).update(
            status=DownloadStatus.FAILED, error=str(exc)[:2000], updated_at=Now()
        )
        raise
    finally:
        cache.delete(progress_key(job_id))
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if moved:
        DownloadJob.objects.filter(pk=job_id).update(
            status=DownloadStatus.EXPIRED,
            error="The data changed before the file was built; ask again.",
            finished_at=Now(),
            updated_at=Now(),
        )
        return DownloadJob.objects.get(pk=job_id)
    DownloadJob.objects.filter(pk=job_id).update(
        status=DownloadStatus.READY,
        file_name=job.file_name,
        size_bytes=size,
        rows_done=rows,
        rows_estimate=rows,
        datasets=facts.datasets,
        computed_on="replica" if source.on_replica else "primary",
        finished_at=Now(),
        updated_at=Now(),
    )
    return DownloadJob.objects.get(pk=job_id)


def _store_in_bucket(*, job: DownloadJob, path: Path) -> None:
    """Put the built file in the bucket under the job's name. A copy an earlier attempt
    stored is replaced: no one reads a job's file before the job is ready."""
    default_storage.delete(job.file_name)
    with path.open("rb") as fh:
        stored = default_storage.save(job.file_name, File(fh))
    if stored != job.file_name:  # the bucket kept an object the delete did not remove
        raise RuntimeError(f"the bucket stored {stored!r} instead of {job.file_name!r}")


def progress_key(job_id: int) -> str:
    return f"download:{job_id}:rows"


def download_job_progress(job: DownloadJob) -> tuple[int, int]:
    """Places written so far and places expected: counted in Redis while the job runs (the
    expected ones exactly, once the build has counted them), stored once it is done."""
    if job.status == DownloadStatus.RUNNING:
        done, estimate = cache.get(progress_key(job.pk)) or [0, job.rows_estimate]
        return int(done), int(estimate)
    return job.rows_done, job.rows_estimate


def download_job_current(job: DownloadJob) -> bool:
    """Whether the job's versions are still those of its selection (on the primary)."""
    query = Selection.from_json(job.selection).query
    return selection_versions(query=query, using="default") == (
        job.data_version,
        job.region_version,
    )


def downloads_clean() -> list[int]:
    """Expire the files of jobs whose versions have passed (kept ``DOWNLOADS_KEEP_SECONDS``
    after they were built, for downloads under way), remove partial files of builds whose
    worker died, delete expired and failed jobs after ``DOWNLOADS_FORGET_DAYS``, and return
    the ids of the jobs whose files were removed.

    Safe to run twice at once: a file already gone is no error, and each update is
    conditional on the status it found.
    """
    kept = timezone.now() - timedelta(seconds=settings.DOWNLOADS_KEEP_SECONDS)
    cleaned = []
    for job in DownloadJob.objects.filter(status=DownloadStatus.READY, finished_at__lt=kept):
        if download_job_current(job):
            continue
        if DownloadJob.objects.filter(pk=job.pk, status=DownloadStatus.READY).update(
            status=DownloadStatus.EXPIRED, updated_at=Now()
        ):
            download_file_delete(job)
            cleaned.append(job.pk)
    # Partial files of builds whose worker died (a finished build renames its own).
    stale = timezone.now() - timedelta(seconds=settings.DOWNLOADS_STALE_SECONDS)
    for partial in (Path(settings.MEDIA_ROOT) / FOLDER).glob("*.part*"):
        with contextlib.suppress(FileNotFoundError):
            if partial.stat().st_mtime < stale.timestamp():
                partial.unlink()
    forget = timezone.now() - timedelta(days=settings.DOWNLOADS_FORGET_DAYS)
    DownloadJob.objects.filter(
        status__in=[DownloadStatus.EXPIRED, DownloadStatus.FAILED], updated_at__lt=forget
    ).delete()
    return cleaned


def download_jobs_stale() -> list[int]:
    """Jobs whose task was lost (pending or running, silent for ``DOWNLOADS_STALE_SECONDS``):
    the periodic task queues them again, and the build's claim takes each once."""
    stale = timezone.now() - timedelta(seconds=settings.DOWNLOADS_STALE_SECONDS)
    return list(
        DownloadJob.objects.filter(
            status__in=[DownloadStatus.PENDING, DownloadStatus.RUNNING], updated_at__lt=stale
        ).values_list("pk", flat=True)
    )

"""Run an import job: claim it, hold its locks, go through the phases, record the outcome.

A run is safe to repeat: a second delivery while one is alive returns at once (a per-job
advisory lock), a redelivery after a crash goes on from the checkpoint, and jobs whose
heartbeat went silent are re-queued by the beat task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.db.models import F
from django.db.models.functions import Coalesce, Now

from analytics.tasks import analytics_recompute_soon
from ingestion.models import ImportJob, ImportState
from ingestion.readers import UnreadableFile
from ingestion.services.imports.apply import apply_batches
from ingestion.services.imports.checkpoint import checkpoint_resume_note
from ingestion.services.imports.finish import finish_apply, finish_cancelled, finish_dry_run
from ingestion.services.imports.progress import (
    ImportCancelled,
    ImportCounts,
    import_job_heartbeat,
    import_job_progress_clear,
    import_job_progress_publish,
    import_job_stop_if_cancelled,
)
from ingestion.services.imports.stage import CLEAR_STAGE, stage_file, still_staged
from places import metrics
from places.locks import AdvisoryLock
from places.models import Place
from places.selectors import region_version, table_row_estimate
from places.tasks import duplicates_find_soon

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
# Errors worth another try: the connection dropped, a deadlock, a serialization failure.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)
FINAL_STATES = [
    ImportState.DONE,
    ImportState.DRY_RUN_READY,
    ImportState.FAILED,
    ImportState.CANCELLED,
]
# How long a redelivered run waits for the job lock that a dead worker's session may still
# hold (its server process notices the lost client within client_connection_check_interval).
JOB_LOCK_WAIT_SECONDS = 15

# Staging rows of jobs that ended without cleaning up (a worker died at the wrong moment).
SWEEP_STAGE = """
DELETE FROM ingestion_importstage
WHERE job_id IN (SELECT id FROM ingestion_importjob WHERE state = ANY(%(final)s))
"""


# Claim jobs whose run went silent (lost message, dead worker) for re-queueing: the
# conditional UPDATE lets only one caller claim a job per stale period.
CLAIM_STALE = """
UPDATE ingestion_importjob SET heartbeat_at = now()
WHERE state IN ('queued', 'running')
  AND COALESCE(heartbeat_at, created_at) < now() - make_interval(secs => %(seconds)s)
RETURNING id
"""


def import_job_execute(*, job_id: int) -> ImportJob | None:
    """Run a queued job to the end. Safe to call twice, concurrently, or again after a crash.

    A job already done is left alone. A job found ``running`` is a redelivery after its
    worker died, a re-queue by ``import_jobs_stale_claim`` or a retry after a transient
    database error: it applies the batches that did not commit. A second delivery while a
    run is alive returns at once (the run holds a per-job advisory lock). After
    ``MAX_ATTEMPTS`` deliveries the job fails instead of looping on a file that kills its
    worker every time. Transient database errors are re-raised with the job left
    ``running`` so that the task can retry; any other error fails the job with its message.
    Batches that committed before a failure stay applied: the failed job says how many
    places they changed and can be resumed (``ingestion.services.jobs.import_job_resume``).
    """
    with _session_lock(
        AdvisoryLock.IMPORT_JOB, job_id, wait_seconds=JOB_LOCK_WAIT_SECONDS
    ) as locked:
        if not locked:
            logger.info("import job %s is being run by another worker", job_id)
            return ImportJob.objects.filter(pk=job_id).first()
        return _execute_locked(job_id)


def _execute_locked(job_id: int) -> ImportJob | None:
    claimed = ImportJob.objects.filter(
        pk=job_id,
        state__in=[ImportState.QUEUED, ImportState.RUNNING],
        attempts__lt=MAX_ATTEMPTS,
    ).update(
        state=ImportState.RUNNING,
        attempts=F("attempts") + 1,
        started_at=Coalesce("started_at", Now()),
        heartbeat_at=Now(),
    )
    if not claimed:
        job = ImportJob.objects.filter(pk=job_id).first()
        if job is not None and job.state == ImportState.RUNNING:
            if job.cancel_requested_at:
                # Asked to stop: it ends as the curator asked, not as a failure.
                _end(job_id, ImportState.CANCELLED, "")
            else:
                _end(
                    job_id,
                    ImportState.FAILED,
                    f"gave up after {job.attempts} attempts (worker lost or retries used up)",
                )
            job.refresh_from_db()
        logger.info("import job %s not runnable (%s)", job_id, job.state if job else "missing")
        return job
    job = ImportJob.objects.select_related("dataset").get(pk=job_id)
    started = time.perf_counter()
    counts = ImportCounts()
    try:
        with _session_lock(AdvisoryLock.IMPORT_DATASET, job.dataset_id, job_id=job.pk):
            _run(job, counts, started)
    except UnreadableFile as exc:
        _fail(job_id, str(exc))
    except TRANSIENT_ERRORS:
        logger.warning("import job %s hit a transient database error; will resume", job_id)
        raise
    except Exception as exc:
        logger.exception("import job %s failed", job_id)
        _fail(job_id, f"internal error: {type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        import_job_progress_clear(job_id)
    job = ImportJob.objects.get(pk=job_id)
    if job.state == ImportState.DONE:
        _analyze_after_bulk_load(job.added + job.updated)
        if job.added + job.updated + job.retired:
            analytics_recompute_soon()  # the regions whose places moved, once this commits
        if job.added + job.updated:
            duplicates_find_soon(job_id=job.pk)  # the places it wrote, against all others
    logger.info(
        "import job %s %s: %s read, %s added, %s updated, %s unchanged, %s rejected",
        job.pk,
        job.state,
        job.rows_read,
        job.added,
        job.updated,
        job.unchanged,
        job.rejected,
        extra={"import_job": job.pk},
    )
    # A run that failed went through _end, which counted it.
    if job.state == ImportState.CANCELLED:
        metrics.import_job_observe(state=job.state)
    elif job.state in (ImportState.DONE, ImportState.DRY_RUN_READY):
        metrics.import_job_observe(
            state=job.state,
            dry_run=job.dry_run,
            rows=job.rows_read,
            seconds=float((job.report or {}).get("seconds") or 0),
        )
    return job


# Fewer written rows than this, and than this share of the table, leave the statistics to
# autovacuum: they cannot have moved much, and ANALYZE reads a sample of the whole table.
ANALYZE_MIN_ROWS = 10_000
ANALYZE_MIN_SHARE = 0.05


def _analyze_after_bulk_load(written: int) -> None:
    """Fresh planner statistics after a bulk load: the map queries and the admin's estimated
    counts depend on them, and autovacuum may take minutes to get there."""
    if written < ANALYZE_MIN_ROWS and written < ANALYZE_MIN_SHARE * table_row_estimate(model=Place):
        return
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE places_place")


@contextmanager
def _session_lock(
    lock_class: int, key: int, *, wait_seconds: float | None = None, job_id: int | None = None
) -> Iterator[bool]:
    """A session-level advisory lock held across the run's many transactions.

    With ``wait_seconds`` it gives up after that long (yielding False); without, it waits as
    long as it takes, keeping ``job_id``'s heartbeat fresh meanwhile so that the waiting job
    is not taken for a lost one. The lock dies with the session if the worker does.
    """
    deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
    with connection.cursor() as cursor:
        # A killed worker's server process then notices within a second and lets go of locks.
        cursor.execute("SET client_connection_check_interval = '1s'")
        while True:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [int(lock_class), key])
            if cursor.fetchone()[0]:
                break
            if deadline is not None and time.monotonic() > deadline:
                yield False
                return
            if job_id is not None:
                import_job_heartbeat(job_id)
            time.sleep(0.5)
    try:
        yield True
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [int(lock_class), key])
        except TRANSIENT_ERRORS:
            pass  # the session is gone, and its locks with it


def _fail(job_id: int, message: str) -> None:
    _end(job_id, ImportState.FAILED, message)


def _end(job_id: int, state: str, message: str) -> None:
    """End a job outside a run's own finish: its committed batches stay, staging goes."""
    ImportJob.objects.filter(pk=job_id).update(state=state, error=message, finished_at=Now())
    metrics.import_job_observe(state=state)
    try:
        with connection.cursor() as cursor:
            cursor.execute(CLEAR_STAGE, {"job": job_id})
    except TRANSIENT_ERRORS:
        logger.warning("import job %s: staging rows left for the sweep", job_id)


def _run(job: ImportJob, counts: ImportCounts, started: float) -> None:
    """Stage (unless an earlier run's rows are still there), then apply and finish, or
    finish as a dry run. A cancel ends the run between batches."""
    checkpoint = dict(job.checkpoint or {})
    checkpoint_resume_note(job.pk, checkpoint)
    try:
        import_job_stop_if_cancelled(job.pk)
        if not still_staged(job, checkpoint):
            stage_file(job, counts, checkpoint)
        # Regions as they are now go into every row's fingerprint: a change to any region
        # or its pieces sends rows through point in polygon again.
        checkpoint["region_stamp"] = region_version()
        if job.dry_run:
            import_job_progress_publish(job.pk, rows=counts.rows_read, phase="comparing rows")
            finish_dry_run(job, counts, checkpoint, started)
            return
        apply_batches(job, counts, checkpoint)
    except ImportCancelled:
        logger.info("import job %s cancelled; it stops here", job.pk)
        finish_cancelled(job, counts, checkpoint, started)
        return
    finish_apply(job, counts, checkpoint, started)


def import_jobs_stale_claim(*, stale_seconds: int | None = None) -> list[int]:
    """Jobs queued or running whose heartbeat is older than ``stale_seconds``, claimed for
    re-queueing (their message was lost, e.g. in a Redis restart, or their worker died).

    The claim moves the heartbeat, so each job is handed out once per stale period however
    many callers run at once; re-running a live job is harmless (see import_job_execute).
    """
    seconds = settings.IMPORT_STALE_SECONDS if stale_seconds is None else stale_seconds
    with connection.cursor() as cursor:
        cursor.execute(CLAIM_STALE, {"seconds": seconds})
        return sorted(row[0] for row in cursor.fetchall())


def import_stage_sweep() -> int:
    """Remove staging rows of jobs that ended without cleaning up after themselves."""
    with connection.cursor() as cursor:
        cursor.execute(SWEEP_STAGE, {"final": FINAL_STATES})
        return cursor.rowcount

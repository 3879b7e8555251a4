"""Import a file of places into a dataset: stream, COPY, validate, diff and upsert in SQL.

A run has three phases, each crash-safe:

1. **Stage**: the file is streamed into ``ingestion_importstage`` (UNLOGGED, keyed by job), a
   reader batch per transaction, then validated and de-duplicated over the whole file and its
   rejected rows saved; the job's checkpoint records that staging is complete.
2. **Apply** in batches of ``IMPORT_BATCH_ROWS`` staged rows, ``IMPORT_APPLY_WORKERS`` at a
   time on connections of their own: regions, diff, places and their change-log entries,
   and the job's checkpoint (the applied prefix and the ranges committed past it, cumulative
   counts) commit together. A redelivered task applies the batches that did not commit, so
   nothing is lost or applied twice.
3. **Finish**: snapshot retirements, the final state and the removal of the staging rows
   commit together.

A dry run stages the file, diffs it in one statement and writes no place.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Full, Queue
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from django.conf import settings
from django.core.cache import cache
from django.core.files import File
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Count, F
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from ingestion.mapping import ColumnMapping, mapping_problems, mapping_propose
from ingestion.models import ImportJob, ImportMode, ImportState
from ingestion.normalize import NOT_WORSHIP_NAME_SQL, worship_class_heads
from ingestion.readers import Batch, UnreadableFile, detect_format, open_reader, srid_from_crs
from ingestion.selectors import PROGRESS_KEY
from ingestion.services import import_sql as q
from ingestion.services.dry_run import dry_run_samples
from ingestion.staging import (
    RepeatedKeys,
    batch_texts,
    embedded_newlines,
    malformed_rows,
    raw_values,
    stage_batch,
    stage_csv,
)
from places.locks import AdvisoryLock
from places.models import Dataset

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 2 * 1024**3
MAX_ATTEMPTS = 5
# Errors worth another try: the connection dropped, a deadlock, a serialization failure.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)
FINAL_STATES = [
    ImportState.DONE,
    ImportState.DRY_RUN_READY,
    ImportState.FAILED,
    ImportState.CANCELLED,
]
# Sorting and hashing a million keys in memory rather than in temporary files.
IMPORT_WORK_MEM = "256MB"
# How long a redelivered run waits for the job lock that a dead worker's session may still
# hold (its server process notices the lost client within client_connection_check_interval).
JOB_LOCK_WAIT_SECONDS = 15


@dataclass
class ImportCounts:
    """What one run did (the job row holds the totals across runs)."""

    rows_read: int = 0
    rejected: int = 0
    retired: int = 0
    step_seconds: dict[str, float] = field(default_factory=dict)
    samples: dict[str, Any] = field(default_factory=dict)

    # Batches may be applied by several threads at once (their step times add up).
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(step, time.perf_counter() - started)

    def add(self, step: str, seconds: float) -> None:
        with self._lock:
            self.step_seconds[step] = round(self.step_seconds.get(step, 0.0) + seconds, 3)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_job_create(
    *,
    path: Path,
    dataset: Dataset,
    user: Any = None,
    dry_run: bool = False,
    mode: str = ImportMode.UPSERT,
    mapping: dict[str, Any] | None = None,
    original_name: str | None = None,
    staged: bool = False,
) -> ImportJob:
    """Check the file, store a copy, propose a column mapping and queue the job.

    Raises ``UnreadableFile`` (nothing stored) when the file cannot be imported.
    ``staged`` (the admin's upload → inspect → dry run → apply steps) stores the job as
    ``uploaded`` instead, with the proposed mapping even when it is not usable yet: the user
    corrects it on the job's page, and it is checked again before anything runs.
    """
    size = path.stat().st_size
    if size == 0:
        raise UnreadableFile("the file is empty")
    if size > MAX_FILE_BYTES:
        raise UnreadableFile(f"the file is {size} bytes; the limit is {MAX_FILE_BYTES}")
    fmt = detect_format(path)
    reader = open_reader(path, fmt)
    layers = reader.layers()
    if not layers:
        raise UnreadableFile("the file holds no layers")
    proposed = mapping_propose(layers[0].columns, has_geometry=reader.has_geometry)
    chosen = ColumnMapping.from_dict({**proposed.as_dict(), **(mapping or {})})
    problems = mapping_problems(chosen, columns=layers[0].columns, has_geometry=reader.has_geometry)
    if problems and not staged:
        raise UnreadableFile("; ".join(f"{name}: {message}" for name, message in problems.items()))
    if reader.has_geometry:
        _check_crs(layers)
    job = ImportJob(
        dataset=dataset,
        original_name=original_name or path.name,
        size_bytes=size,
        sha256=file_sha256(path),
        format=fmt,
        options={
            "mapping": chosen.as_dict(),
            # The first layer's columns in file order: reports list original values so.
            "columns": list(layers[0].columns),
            "layers": [
                {"name": layer.name, "geometry_type": layer.geometry_type, "crs": layer.crs}
                for layer in layers
            ],
            **(
                {"encoding": reader.encoding, "delimiter": reader.delimiter} if fmt == "csv" else {}
            ),
        },
        mode=mode,
        dry_run=dry_run,
        state=ImportState.UPLOADED if staged else ImportState.QUEUED,
        rows_total=sum(layer.features or 0 for layer in layers) or None,
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )
    with open(path, "rb") as fh:
        job.file.save(f"{job.sha256[:16]}-{path.name}", File(fh), save=False)
    job.save()
    return job


def _check_crs(layers: list[Any]) -> None:
    """Every layer's CRS must be known to GDAL and to PostGIS, before the job is queued."""
    srids = {srid_from_crs(layer.crs) for layer in layers}
    with connection.cursor() as cursor:
        cursor.execute("SELECT srid FROM spatial_ref_sys WHERE srid = ANY(%s)", [sorted(srids)])
        known = {row[0] for row in cursor.fetchall()}
    if srids - known:
        raise UnreadableFile(f"coordinate system EPSG:{min(srids - known)} is not supported")


def import_job_execute(*, job_id: int) -> ImportJob | None:
    """Run a queued job to the end. Safe to call twice, concurrently, or again after a crash.

    A job already done is left alone. A job found ``applying`` is a redelivery after its
    worker died, a re-queue by ``import_jobs_stale_claim`` or a retry after a transient
    database error: it applies the batches that did not commit. A second delivery while a
    run is alive returns at once (the run holds a per-job advisory lock). After
    ``MAX_ATTEMPTS`` deliveries the job fails instead of looping on a file that kills its
    worker every time. Transient database errors are re-raised with the job left
    ``applying`` so that the task can retry; any other error fails the job with its message.
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
            _fail(job_id, f"gave up after {job.attempts} attempts (worker lost or retries used up)")
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
        cache.delete(PROGRESS_KEY.format(job_id))
    job = ImportJob.objects.get(pk=job_id)
    if job.state == ImportState.DONE and (job.added or job.updated):
        # Fresh planner statistics after a bulk load: the map queries and the admin's
        # estimated counts depend on them, and autovacuum may take minutes to get there.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE places_place")
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
    return job


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
                _heartbeat(job_id)
            time.sleep(0.5)
    try:
        yield True
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [int(lock_class), key])
        except TRANSIENT_ERRORS:
            pass  # the session is gone, and its locks with it


def _heartbeat(job_id: int) -> None:
    ImportJob.objects.filter(pk=job_id).update(heartbeat_at=Now())


def _fail(job_id: int, message: str) -> None:
    ImportJob.objects.filter(pk=job_id).update(
        state=ImportState.FAILED, error=message, finished_at=Now()
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(q.CLEAR_STAGE, {"job": job_id})
    except TRANSIENT_ERRORS:
        logger.warning("import job %s: staging rows left for the sweep", job_id)


def _run(job: ImportJob, counts: ImportCounts, started: float) -> None:
    checkpoint = dict(job.checkpoint or {})
    if checkpoint.get("last_sid") or checkpoint.get("applied"):
        logger.info(
            "import job %s resumes after row %s (and ranges %s)",
            job.pk,
            checkpoint.get("last_sid", 0),
            checkpoint.get("applied", []),
        )
        checkpoint.setdefault("resumed_after", []).append(checkpoint.get("last_sid", 0))
    if not _still_staged(job, checkpoint):
        _stage(job, counts, checkpoint)
    with connection.cursor() as cursor:
        cursor.execute(q.REGION_STAMP)
        checkpoint["region_stamp"] = cursor.fetchone()[0]
    if job.dry_run:
        _dry_run(job, counts, checkpoint, started)
        return
    _apply(job, counts, checkpoint)
    _finish(job, counts, checkpoint, started)


def _pending_batches(checkpoint: dict[str, Any]) -> list[tuple[int, int]]:
    """The staged row ranges ``(after, upto]`` still to apply: a fixed grid of
    ``batch_rows`` rows, less the prefix up to ``last_sid`` and the ranges past it that
    committed out of order (``applied``)."""
    size, last, end = checkpoint["batch_rows"], checkpoint.get("last_sid", 0), checkpoint["max_sid"]
    applied = {upto for _, upto in checkpoint.get("applied", [])}
    pending = []
    for start in range(0, end, size):
        after, upto = max(start, last), min(start + size, end)
        if after < upto and upto not in applied:
            pending.append((after, upto))
    return pending


def _apply(job: ImportJob, counts: ImportCounts, checkpoint: dict[str, Any]) -> None:
    """Apply every pending batch, ``IMPORT_APPLY_WORKERS`` at a time.

    The batches of a job touch disjoint places (staging rejected repeated keys), so each
    can be diffed and written on its own connection: the database server then works on
    as many cores as there are connections, where one connection kept it on one. Each
    batch commits with its place in the checkpoint; a run that dies resumes with the
    batches that did not commit, in whatever order the others did.
    """
    checkpoint.setdefault("batch_rows", settings.IMPORT_BATCH_ROWS)
    # What later batches merge their progress into (they read it back under a row lock).
    ImportJob.objects.filter(pk=job.pk).update(checkpoint=checkpoint, heartbeat_at=Now())
    pending = _pending_batches(checkpoint)
    workers = max(1, min(settings.IMPORT_APPLY_WORKERS, len(pending)))
    if connection.in_atomic_block:
        # The caller's open transaction holds the job row and the staged rows, which other
        # connections would wait for or not see: apply on this connection.
        workers = 1
    if workers == 1:
        for after, upto in pending:
            _apply_batch(job, counts, checkpoint, after=after, upto=upto)
    else:
        _apply_in_pool(job, counts, checkpoint, pending, workers)
    checkpoint.update(ImportJob.objects.get(pk=job.pk).checkpoint)


def _apply_in_pool(
    job: ImportJob,
    counts: ImportCounts,
    checkpoint: dict[str, Any],
    pending: list[tuple[int, int]],
    workers: int,
) -> None:
    """The batches on ``workers`` threads. The run's own connection, which holds its
    session locks, beats the job's heartbeat meanwhile (an idle connection may be dropped
    by the network or the server). On an error, batches not started are cancelled and
    those running finish (and commit) before the error is raised."""
    with ThreadPoolExecutor(workers, thread_name_prefix="import-apply") as pool:
        futures = {
            pool.submit(_apply_batch_on_own_connection, job, counts, checkpoint, after, upto)
            for after, upto in pending
        }
        try:
            while futures:
                done, futures = wait(futures, timeout=30, return_when=FIRST_EXCEPTION)
                for future in done:
                    future.result()
                _heartbeat(job.pk)
        except BaseException:
            for other in futures:
                other.cancel()
            for other in futures:
                if not other.cancelled() and other.exception() is not None:
                    logger.error(
                        "import job %s: another batch failed too",
                        job.pk,
                        exc_info=other.exception(),
                    )
            raise


def _apply_batch_on_own_connection(
    job: ImportJob, counts: ImportCounts, checkpoint: dict[str, Any], after: int, upto: int
) -> None:
    """One batch in a pool thread, on a connection of its own, opened for the batch and
    closed after it (a thread's connection would otherwise outlive the pool)."""
    try:
        with connection.cursor() as cursor:
            # If the worker dies, this session's server process lets go within a second.
            cursor.execute("SET client_connection_check_interval = '1s'")
        _apply_batch(job, counts, checkpoint, after=after, upto=upto)
    finally:
        connection.close()


def _still_staged(job: ImportJob, checkpoint: dict[str, Any]) -> bool:
    """Staging finished in an earlier run and its rows are still there (a database server
    crash empties unlogged tables; the file is then staged again, identically)."""
    if not checkpoint.get("staged"):
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM ingestion_importstage WHERE job_id = %s AND sid = %s)",
            [job.pk, checkpoint["max_sid"]],
        )
        return bool(cursor.fetchone()[0])


def _stage(job: ImportJob, counts: ImportCounts, checkpoint: dict[str, Any]) -> None:
    """Stream the file into the staging table, then validate it as a whole."""
    params = {"job": job.pk}
    with connection.cursor() as cursor:
        cursor.execute(q.CLEAR_STAGE, params)  # what an interrupted staging left behind
    with counts.timed("read_and_copy"):
        counts.rows_read, repeated, malformed = _copy_into_stage(job)
    if malformed:
        with counts.timed("renumber"), connection.cursor() as cursor:
            cursor.execute(q.RENUMBER_AFTER_MALFORMED, params)
    with counts.timed("analyze_stage"), connection.cursor() as cursor:
        # Validation and the batches' range scans and joins are planned from these.
        cursor.execute("ANALYZE ingestion_importstage")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL work_mem = '{IMPORT_WORK_MEM}'")
        if job.format != "csv":
            with counts.timed("geometries"):
                cursor.execute(q.STAGE_GEOMETRIES, params)
        mapping = ColumnMapping.from_dict(job.options["mapping"])
        if mapping.packed_class:
            with counts.timed("validate_class"):
                cursor.execute(
                    q.NOT_PLACE_OF_WORSHIP,
                    {
                        **params,
                        "column": mapping.packed_class,
                        "heads": worship_class_heads(),
                        "pattern": NOT_WORSHIP_NAME_SQL,
                    },
                )
        if repeated:
            with counts.timed("duplicates"):
                cursor.execute(q.STAGE_DUPLICATES, {**params, "keys": repeated})
        with counts.timed("raw_values"):
            _fill_raw_values(cursor, job)
        with counts.timed("rejections"):
            cursor.execute("DELETE FROM ingestion_importrejection WHERE job_id = %(job)s", params)
            cursor.execute(q.SAVE_REJECTIONS, params)
            counts.rejected = cursor.rowcount
        cursor.execute(q.STAGE_SUMMARY, params)
        staged, max_sid = cursor.fetchone()
        checkpoint.update(staged=staged, max_sid=max_sid)
        checkpoint.setdefault("last_sid", 0)
        ImportJob.objects.filter(pk=job.pk).update(
            rows_read=counts.rows_read,
            rejected=counts.rejected,
            checkpoint=checkpoint,
            heartbeat_at=Now(),
        )


def _fill_raw_values(cursor: Any, job: ImportJob) -> None:
    """Original values for the rows SQL rejected that staging did not keep them for (a
    geometry PostGIS refused, a Geofabrik class that is no place of worship), read again
    from the file. Staging keeps them for the rows it rejected itself and for every row that
    may lose under the duplicate rule."""
    cursor.execute(q.MISSING_RAW, {"job": job.pk})
    wanted = np.array([row[0] for row in cursor.fetchall()], dtype=np.int64)
    if not wanted.size:
        return
    cursor.execute("DROP TABLE IF EXISTS pg_temp.import_raw")
    cursor.execute("CREATE TEMP TABLE import_raw (sid bigint, raw text) ON COMMIT DROP")
    with cursor.cursor.copy("COPY import_raw (sid, raw) FROM STDIN (FORMAT csv)") as copy:
        for chunk in _raw_chunks(job, wanted):
            copy.write(chunk)
    cursor.execute(q.FILL_RAW, {"job": job.pk})
    cursor.execute("DROP TABLE pg_temp.import_raw")


def _copy_into_stage(job: ImportJob) -> tuple[int, list[str], int]:
    """Stream the file into the staging table with COPY, a reader batch per commit.

    The next batch is read and turned into CSV in a second thread while PostgreSQL takes
    in the current one: on two cores, staging then costs about what the server's part does.
    Returns the rows read, the keys that may repeat (a superset of those more than one
    valid row carries: only those need the duplicate rule in SQL) and the number of CSV
    records that could not be split.
    """
    total = malformed = 0
    keys: list[pa.Array] = []
    for chunk, rows, repeats, unsplit in _prefetch(_stage_chunks(job), depth=2):
        with transaction.atomic(), connection.cursor() as cursor:
            with cursor.cursor.copy(q.COPY_STAGE) as copy:  # the psycopg cursor under Django's
                copy.write(chunk)
            _heartbeat(job.pk)
        total += rows
        malformed += unsplit
        keys.append(repeats)
        cache.set(PROGRESS_KEY.format(job.pk), total, timeout=3600)
    return total, _distinct(keys), malformed


def _distinct(keys: list[pa.Array]) -> list[str]:
    if not keys:
        return []
    return pc.unique(pa.chunked_array(keys, pa.string())).to_pylist()


@dataclass
class _FileBatch:
    batch: Batch
    layer: str
    kind: str
    srid: int
    first_sid: int
    first_row: int
    # Set on the last item of a CSV with records that could not be split: their line and
    # text, and how many fields a record should have.
    malformed: list[tuple[int | None, str]] | None = None
    expected_fields: int = 0
    # CSV: each row's line in the file (before the records pyarrow skipped are counted in,
    # which RENUMBER_AFTER_MALFORMED does once they are staged).
    row_numbers: np.ndarray | None = None


def _file_batches(job: ImportJob, *, lines: bool = True) -> Iterator[_FileBatch]:
    """The file's batches in staging order, each with the sid of its first row (a second
    read of the file sees the same rows under the same sids), and for CSV with each row's
    file line unless ``lines`` is false (a reader after sids only)."""
    reader = open_reader(Path(job.file.path), job.format)
    total = 0
    # Layers are listed again from the stored copy: a GeoJSON layer is named after its file.
    layers = reader.layers()
    for layer in layers:
        geometry_type = (layer.geometry_type or "").lower()
        # CSV records are numbered as lines with the header as line 1.
        next_row = 2 if job.format == "csv" else 1
        for batch in reader.batches(layer.name):
            row_numbers = None
            advance = batch.num_rows
            if lines and job.format == "csv":
                # A value spanning lines pushes the rows after it down the file.
                extra = embedded_newlines(batch)
                before = np.concatenate(([0], np.cumsum(extra)[:-1])) if extra.size else extra
                row_numbers = next_row + np.arange(batch.num_rows, dtype=np.int64) + before
                advance += int(extra.sum())
            yield _FileBatch(
                batch=batch,
                # Layer names are reported only where a file has several.
                layer=layer.name if len(layers) > 1 else "",
                kind="node" if geometry_type in {"point", "multipoint"} else "area",
                srid=srid_from_crs(layer.crs) if job.format != "csv" else 4326,
                first_sid=total + 1,
                first_row=next_row,
                row_numbers=row_numbers,
            )
            next_row += advance
            total += batch.num_rows
    invalid = getattr(reader, "invalid_rows", [])
    if invalid:
        # Records that could not be split come last, as one batch without columns.
        yield _FileBatch(
            batch=Batch(arrays={}, wkb_array=None, num_rows=len(invalid)),
            layer="",
            kind="",
            srid=4326,
            first_sid=total + 1,
            first_row=0,
            malformed=invalid,
            expected_fields=len(getattr(reader, "header", [])),
        )


def _stage_chunks(job: ImportJob) -> Iterator[tuple[bytes, int, pa.Array, int]]:
    """Every batch as CSV for COPY, with its row count, the keys of its valid rows that may
    repeat an earlier row's (their original values staged) and its number of unsplittable
    CSV records (no database access: this runs in the prefetch thread)."""
    mapping = ColumnMapping.from_dict(job.options["mapping"])
    seen = RepeatedKeys()
    for item in _file_batches(job):
        if item.malformed is not None:
            rows = malformed_rows(
                item.malformed,
                job_id=job.pk,
                first_sid=item.first_sid,
                expected=item.expected_fields,
                delimiter=job.options.get("delimiter") or ",",
            )
            repeats = pa.array([], pa.string())
        else:
            rows = stage_batch(
                item.batch,
                mapping,
                job_id=job.pk,
                first_sid=item.first_sid,
                layer=item.layer,
                first_row_number=item.first_row,
                geometry_kind=item.kind,
                srid=item.srid,
                row_numbers=item.row_numbers,
                repeated=seen,
            )
            # Valid rows carry original values only where their key may repeat.
            may_repeat = pc.and_(pc.is_null(rows.column("reject")), pc.is_valid(rows.column("raw")))
            repeats = rows.column("source_key").filter(may_repeat).combine_chunks()
        unsplit = 0 if item.malformed is None else len(item.malformed)
        yield stage_csv(rows), item.batch.num_rows, repeats, unsplit


def _raw_chunks(job: ImportJob, wanted: np.ndarray) -> Iterator[bytes]:
    """The original values of the rows with sids ``wanted`` (sorted), as CSV (sid, raw).

    The file is read only as far as the last wanted row: closing the reader there also
    spares the CSV reader's closing pass that numbers unsplittable records (staged with
    their text already).
    """
    for item in _file_batches(job, lines=False):
        if item.malformed is not None:
            continue
        end = item.first_sid + item.batch.num_rows
        sids = wanted[np.searchsorted(wanted, item.first_sid) : np.searchsorted(wanted, end)]
        if sids.size:
            picked = pa.array(sids - item.first_sid)
            texts = {n: values.take(picked) for n, values in batch_texts(item.batch).items()}
            yield stage_csv(pa.table({"sid": pa.array(sids), "raw": raw_values(texts, sids.size)}))
        if end > wanted[-1]:
            return


_DONE = object()


def _prefetch(items: Iterator[Any], *, depth: int) -> Iterator[Any]:
    """Yield ``items``, computed up to ``depth`` ahead in a second thread.

    An error in the thread is raised here; if the consumer stops early, the thread stops
    at its next item.
    """
    queue: Queue[Any] = Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        queue.put(item, timeout=0.5)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(_DONE)
        except BaseException as exc:  # handed over to the consumer, who raises it
            queue.put(exc)

    thread = threading.Thread(target=produce, name="import-staging", daemon=True)
    thread.start()
    try:
        while True:
            item = queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # let a producer blocked on a full queue finish
            with suppress(Empty):
                queue.get(timeout=0.1)
        thread.join()


def _diff(
    cursor: Any,
    job: ImportJob,
    counts: ImportCounts,
    checkpoint: dict[str, Any],
    *,
    after: int,
    upto: int,
    keep_all: bool = False,
) -> dict[str, int]:
    """Build ``import_diff`` for staged rows ``(after, upto]``; counts per op.

    Rows whose fingerprint shows them unchanged are counted and left out, unless
    ``keep_all`` (a dry run, which reports samples of every kind).
    """
    params = {
        "job": job.pk,
        "dataset": job.dataset_id,
        "after": after,
        "upto": upto,
        "append": job.mode == ImportMode.APPEND,
        "stamp": checkpoint["region_stamp"],
        "keep_all": keep_all,
    }
    cursor.execute(f"SET LOCAL work_mem = '{IMPORT_WORK_MEM}'")
    # Memoize would cache the per-row JSON under keys as large as the rows: all cost, no hits.
    cursor.execute("SET LOCAL enable_memoize = off")
    # ON COMMIT DROP is not enough when the caller wraps several imports in one transaction.
    cursor.execute("DROP TABLE IF EXISTS pg_temp.import_diff")
    cursor.execute(q.DROP_BATCH)
    with counts.timed("batch"):
        cursor.execute(q.BATCH[0])
        cursor.execute(q.BATCH[1], params)
        other = cursor.rowcount
        cursor.execute(q.BATCH[2], params)
        same = cursor.fetchone()[0] - other
        cursor.execute(q.BATCH[3])
    by_op = {"unchanged": same, "fingerprint": same}
    # With nothing left (other == 0) these statements cost milliseconds, and import_diff
    # exists with its columns all the same.
    with counts.timed("locate"):
        for statement in q.LOCATE:
            cursor.execute(statement, params)
    with counts.timed("diff"):
        cursor.execute(q.DIFF, params)
    cursor.execute(q.DIFF_COUNTS)
    for op, n in cursor.fetchall():
        by_op[op] = by_op.get(op, 0) + n
    cursor.execute(q.DROP_BATCH)
    return by_op


def _apply_batch(
    job: ImportJob, counts: ImportCounts, checkpoint: dict[str, Any], *, after: int, upto: int
) -> None:
    """Apply staged rows ``(after, upto]`` and record the checkpoint, in one transaction."""
    params = {"job": job.pk, "dataset": job.dataset_id}
    with transaction.atomic(), connection.cursor() as cursor:
        by_op = _diff(cursor, job, counts, checkpoint, after=after, upto=upto)
        with counts.timed("insert"):
            cursor.execute(q.INSERT_CREATED, params)
            added = cursor.rowcount
        with counts.timed("update"):
            cursor.execute(q.UPDATE_CHANGED, params)
            updated = cursor.rowcount
            if job.mode != ImportMode.APPEND:
                cursor.execute(q.REFRESH_SOURCE_VALUES)
        cursor.execute("DROP TABLE pg_temp.import_diff")
        # The batch's writes and the checkpoint that records them commit together; the job
        # row's lock orders batches that commit at the same time.
        saved = ImportJob.objects.select_for_update().values_list("checkpoint", flat=True)
        done = _checkpoint_with_batch(
            saved.get(pk=job.pk),
            after=after,
            upto=upto,
            conflicts=by_op.get("update", 0) - updated,
            by_fingerprint=by_op["fingerprint"],
        )
        ImportJob.objects.filter(pk=job.pk).update(
            added=F("added") + added,
            updated=F("updated") + updated,
            unchanged=F("unchanged") + by_op.get("unchanged", 0) + by_op.get("kept", 0),
            checkpoint=done,
            heartbeat_at=Now(),
        )
        committing = time.perf_counter()
    # The commit runs the deferred triggers (data versions) of the rows written.
    counts.add("commit", time.perf_counter() - committing)


def _checkpoint_with_batch(
    checkpoint: dict[str, Any], *, after: int, upto: int, conflicts: int, by_fingerprint: int
) -> dict[str, Any]:
    """The checkpoint once rows ``(after, upto]`` are applied: ``last_sid`` is the end of
    the applied prefix, ``applied`` the ranges that committed past it."""
    last = checkpoint.get("last_sid", 0)
    beyond = []
    for start, end in sorted([*map(tuple, checkpoint.get("applied", [])), (after, upto)]):
        if start <= last:
            last = max(last, end)
        else:
            beyond.append([start, end])
    return {
        **checkpoint,
        "last_sid": last,
        "applied": beyond,
        "batches": checkpoint.get("batches", 0) + 1,
        "conflicts": checkpoint.get("conflicts", 0) + conflicts,
        "by_fingerprint": checkpoint.get("by_fingerprint", 0) + by_fingerprint,
    }


def _finish(
    job: ImportJob, counts: ImportCounts, checkpoint: dict[str, Any], started: float
) -> None:
    params = {"job": job.pk, "dataset": job.dataset_id}
    with transaction.atomic(), connection.cursor() as cursor:
        job = ImportJob.objects.select_for_update().get(pk=job.pk)
        if job.mode == ImportMode.SNAPSHOT:
            with counts.timed("retire"):
                cursor.execute(q.RETIRE_MISSING, params)
                job.retired = cursor.rowcount
        job.state = ImportState.DONE
        _close(job, counts, checkpoint, started)
        _clear_stage(cursor, job.pk)


def _dry_run(
    job: ImportJob, counts: ImportCounts, checkpoint: dict[str, Any], started: float
) -> None:
    """Every count of a real run, from one diff of the whole file; no place is written."""
    params = {"job": job.pk, "dataset": job.dataset_id}
    with transaction.atomic(), connection.cursor() as cursor:
        by_op = _diff(
            cursor, job, counts, checkpoint, after=0, upto=checkpoint["max_sid"], keep_all=True
        )
        job = ImportJob.objects.select_for_update().get(pk=job.pk)
        job.added, job.updated = by_op.get("create", 0), by_op.get("update", 0)
        job.unchanged = by_op.get("unchanged", 0) + by_op.get("kept", 0)
        if job.mode == ImportMode.SNAPSHOT:
            cursor.execute(q.COUNT_MISSING, params)
            job.retired = cursor.fetchone()[0]
        # Until here import_diff holds every row of the file (op, changes, new_j …).
        counts.samples = dry_run_samples(cursor=cursor, job=job)
        cursor.execute("DROP TABLE pg_temp.import_diff")
        job.state = ImportState.DRY_RUN_READY
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
        cursor.execute(q.CLEAR_STAGE, {"job": job_id})
        return
    cursor.execute(q.OTHER_JOBS_STAGED, {"job": job_id})
    if cursor.fetchone()[0]:
        cursor.execute(q.CLEAR_STAGE, {"job": job_id})
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


def import_jobs_stale_claim(*, stale_seconds: int | None = None) -> list[int]:
    """Jobs queued or applying whose heartbeat is older than ``stale_seconds``, claimed for
    re-queueing (their message was lost, e.g. in a Redis restart, or their worker died).

    The claim moves the heartbeat, so each job is handed out once per stale period however
    many callers run at once; re-running a live job is harmless (see import_job_execute).
    """
    seconds = settings.IMPORT_STALE_SECONDS if stale_seconds is None else stale_seconds
    with connection.cursor() as cursor:
        cursor.execute(q.CLAIM_STALE, {"seconds": seconds})
        return sorted(row[0] for row in cursor.fetchall())


def import_stage_sweep() -> int:
    """Remove staging rows of jobs that ended without cleaning up after themselves."""
    with connection.cursor() as cursor:
        cursor.execute(q.SWEEP_STAGE, {"final": FINAL_STATES})
        return cursor.rowcount

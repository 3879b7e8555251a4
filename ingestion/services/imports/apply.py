"""Apply: write each batch's diff to the places and the change log, with its checkpoint.

Each batch commits on its own with its record in the checkpoint, ``IMPORT_APPLY_WORKERS``
batches at a time on connections of their own. A run that stops (a crash, an error, a
cancel) leaves whole batches applied and the rest untouched; a resumed run applies the rest.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models.functions import Now

from ingestion.models import ImportJob, ImportMode
from ingestion.selectors import import_batches_total
from ingestion.services.imports.checkpoint import (
    checkpoint_pending_batches,
    checkpoint_record_batch,
)
from ingestion.services.imports.diff import NEW_FINGERPRINT, NEW_VALUES, batch_diff
from ingestion.services.imports.progress import (
    ImportCancelled,
    ImportCounts,
    import_job_heartbeat,
    import_job_progress_publish,
    import_job_stop_if_cancelled,
)
from places.services.regions import regions_hold_for_locating

logger = logging.getLogger(__name__)

INSERT_CREATED = f"""
WITH ins AS (
    INSERT INTO places_place (
        dataset_id, source_key, name, religion, religion_raw, denominations, denomination_raw,
        location, footprint, country_id, region_id, tags, start_date, start_date_raw,
        end_date, end_date_raw, status, source_fingerprint)
    SELECT %(dataset)s, d.source_key, {NEW_VALUES["name"]}, {NEW_VALUES["religion"]},
           {NEW_VALUES["religion_raw"]}, d.denominations, {NEW_VALUES["denomination_raw"]},
           d.geom, d.footprint, d.country_id, d.region_id, {NEW_VALUES["tags"]},
           {NEW_VALUES["start_date"]}, {NEW_VALUES["start_date_raw"]}, {NEW_VALUES["end_date"]},
           {NEW_VALUES["end_date_raw"]}, 'active', {NEW_FINGERPRINT}
    FROM import_diff d WHERE d.op = 'create'
    -- Neighbours on the map become neighbours on disk: a map view then reads a few
    -- pages instead of one page per place. PostGIS sorts geometries along a Hilbert
    -- curve, three times faster than sorting by geohash text.
    ORDER BY d.geom, d.sid
    RETURNING id, source_key, version
), sources AS (
    INSERT INTO places_placesource (place_id, source_values)
    SELECT ins.id, d.new_j FROM ins JOIN import_diff d ON d.source_key = ins.source_key
    ORDER BY ins.id
)
INSERT INTO places_placechange (place_id, dataset_id, operation, changes, place_version,
                                source, import_job_id, device_id, comment)
SELECT ins.id, %(dataset)s, 'create', d.changes, ins.version, 'import', %(job)s, '', ''
FROM ins JOIN import_diff d ON d.source_key = ins.source_key
ORDER BY d.sid
"""  # nosec B608 # SQL from this module's constants; values are bound


_SET_MOVED = ",\n        ".join(
    f"{key} = CASE WHEN '{key}' = ANY(d.moved) THEN {value} ELSE p.{key} END"
    for key, value in NEW_VALUES.items()
)


# The version guard skips a row a curator changed after the diff was taken; it is reported
# as a conflict rather than overwritten with stale old values in the log. A key merged away
# (key_id is not the place written) updates the survivor, which may be of another dataset:
# the survivor keeps its own source values, the merged place's key takes the file's, and
# the log names the key.
UPDATE_CHANGED = f"""
WITH upd AS (
    UPDATE places_place p SET
        {_SET_MOVED},
        source_fingerprint = CASE
            WHEN d.key_id = p.id THEN {NEW_FINGERPRINT}
            ELSE p.source_fingerprint END,
        version = p.version + 1,
        updated_at = now()
    FROM import_diff d
    WHERE d.op = 'update' AND p.id = d.place_id AND p.version = d.old_version
    RETURNING p.id, p.version, p.dataset_id
), sources AS (
    -- The key's place takes the file's values: the place written, or the merged place
    -- whose key this is (the survivor keeps its own).
    INSERT INTO places_placesource (place_id, source_values)
    SELECT d.key_id, d.new_j
    FROM upd JOIN import_diff d ON d.place_id = upd.id AND d.op = 'update'
    ORDER BY d.key_id
    ON CONFLICT (place_id) DO UPDATE SET source_values = EXCLUDED.source_values
), merged_keys AS (
    UPDATE places_place k SET source_fingerprint = {NEW_FINGERPRINT}
    FROM upd JOIN import_diff d ON d.place_id = upd.id AND d.op = 'update'
    WHERE k.id = d.key_id AND d.key_id <> d.place_id
)
INSERT INTO places_placechange (place_id, dataset_id, operation, changes, place_version,
                                source, import_job_id, device_id, comment)
SELECT upd.id, upd.dataset_id, 'update', d.changes, upd.version, 'import', %(job)s, '',
       CASE WHEN d.key_id <> upd.id
            THEN 'import of ' || d.source_key || ', a key merged into this place' ELSE '' END
FROM upd JOIN import_diff d ON d.place_id = upd.id AND d.op = 'update'
ORDER BY d.sid
"""  # nosec B608 # SQL from this module's constants; values are bound


# Remember what the source says for places whose values already match it (including places
# that never had source values, e.g. created by a curator): later curator fixes then survive.
REFRESH_SOURCE_VALUES = f"""
WITH fingerprints AS (
    UPDATE places_place p SET source_fingerprint = {NEW_FINGERPRINT}
    FROM import_diff d
    WHERE d.op = 'unchanged' AND d.source_values IS DISTINCT FROM d.new_j AND p.id = d.key_id
)
INSERT INTO places_placesource (place_id, source_values)
SELECT d.key_id, d.new_j FROM import_diff d
WHERE d.op = 'unchanged' AND d.source_values IS DISTINCT FROM d.new_j
ORDER BY d.key_id
ON CONFLICT (place_id) DO UPDATE SET source_values = EXCLUDED.source_values
"""  # nosec B608 # SQL from this module's constants


def apply_batches(job: ImportJob, counts: ImportCounts, checkpoint: dict[str, Any]) -> None:
    """Apply every pending batch, ``IMPORT_APPLY_WORKERS`` at a time.

    The batches of a job touch disjoint places (staging rejected repeated keys), so each
    can be diffed and written on its own connection: the database server then works on
    as many cores as there are connections, where one connection kept it on one. Each
    batch commits with its place in the checkpoint; a run that dies resumes with the
    batches that did not commit, in whatever order the others did. A cancel is noticed
    before each batch starts (``ImportCancelled``); batches already running commit.
    """
    checkpoint.setdefault("batch_rows", settings.IMPORT_BATCH_ROWS)
    # What later batches merge their progress into (they read it back under a row lock).
    ImportJob.objects.filter(pk=job.pk).update(checkpoint=checkpoint, heartbeat_at=Now())
    pending = checkpoint_pending_batches(checkpoint)
    progress = _BatchProgress(job, counts, checkpoint)
    workers = max(1, min(settings.IMPORT_APPLY_WORKERS, len(pending)))
    if connection.in_atomic_block:
        # The caller's open transaction holds the job row and the staged rows, which other
        # connections would wait for or not see: apply on this connection.
        workers = 1
    try:
        if workers == 1:
            for after, upto in pending:
                import_job_stop_if_cancelled(job.pk)
                apply_batch(job, counts, checkpoint, after=after, upto=upto)
                progress.one_more()
        else:
            _apply_in_pool(job, counts, checkpoint, pending, workers, progress)
    finally:
        checkpoint.update(ImportJob.objects.get(pk=job.pk).checkpoint)


# A statement is planned for the table as it is then. A diff planned while places_place
# holds (next to) nothing probes it by reading the whole table once per row: free when
# planned, and not while another connection fills it (measured on a table emptied and
# vacuumed, which the planner takes for empty: one 50,000-row batch's diff took 133 to 210 s
# where the others took 1.3, with the places' indexes built after the import,
# tests/benchmarks/import_bound.py; with enable_seqscan off the plan read the whole primary
# key instead). So on a table smaller than this the other batches start once the first
# batch has grown it to this many pages (1 MB: a probe by the unique key is then far
# cheaper than any scan), or ended.
PLANNABLE_PAGES = 128


def _places_table_pages() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_relation_size('places_place') / current_setting('block_size')::int"
        )
        return int(cursor.fetchone()[0])


def _await_plannable_places(job: ImportJob, first: Future[None]) -> None:
    """Until places_place has grown to ``PLANNABLE_PAGES`` pages, or the first batch ended."""
    beaten = time.monotonic()
    while not first.done() and _places_table_pages() < PLANNABLE_PAGES:
        wait([first], timeout=0.05)
        if time.monotonic() - beaten > 30:
            import_job_heartbeat(job.pk)
            beaten = time.monotonic()


class _BatchProgress:
    """Publishes "n of m batches applied" for the admin's progress bar."""

    def __init__(self, job: ImportJob, counts: ImportCounts, checkpoint: dict[str, Any]) -> None:
        self.job_id, self.rows = job.pk, counts.rows_read or job.rows_read
        self.done = checkpoint.get("batches", 0)
        self.total = import_batches_total(checkpoint=checkpoint) or 0
        self.publish()

    def one_more(self) -> None:
        self.done += 1
        self.publish()

    def publish(self) -> None:
        done = min(self.done, self.total)
        import_job_progress_publish(
            self.job_id,
            rows=self.rows,
            phase=f"{done} of {self.total} batches committed",
            batches=done,
            batches_total=self.total,
        )


def _apply_in_pool(
    job: ImportJob,
    counts: ImportCounts,
    checkpoint: dict[str, Any],
    pending: list[tuple[int, int]],
    workers: int,
    progress: _BatchProgress,
) -> None:
    """The batches on ``workers`` threads. The run's own connection, which holds its
    session locks, beats the job's heartbeat meanwhile (an idle connection may be dropped
    by the network or the server). On a places table of fewer than ``PLANNABLE_PAGES``
    pages the first batch starts alone, the others once the table has grown to them. On an
    error or a cancel, batches not started are cancelled and those running finish (and
    commit) before it is raised."""
    with ThreadPoolExecutor(workers, thread_name_prefix="import-apply") as pool:

        def submit(after: int, upto: int) -> Future[None]:
            return pool.submit(_apply_batch_on_own_connection, job, counts, checkpoint, after, upto)

        futures: set[Future[None]] = set()
        rest = list(pending)
        try:
            if _places_table_pages() < PLANNABLE_PAGES:
                first = submit(*rest.pop(0))
                futures.add(first)
                _await_plannable_places(job, first)
                if first.done() and first.exception() is not None:
                    rest = []  # a failed or cancelled first batch starts no other: raised below
                import_job_heartbeat(job.pk)
            futures |= {submit(after, upto) for after, upto in rest}
            while futures:
                done, futures = wait(futures, timeout=30, return_when=FIRST_EXCEPTION)
                for future in done:
                    if future.exception() is not None:
                        # The others that ended with it are waited for and logged below.
                        futures |= done - {future}
                        future.result()
                    progress.one_more()
                import_job_heartbeat(job.pk)
        except BaseException:
            for other in futures:
                other.cancel()
            for other in futures:
                if other.cancelled():
                    continue
                error = other.exception()
                if error is not None and not isinstance(error, ImportCancelled):
                    logger.error("import job %s: another batch failed too", job.pk, exc_info=error)
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
        import_job_stop_if_cancelled(job.pk)
        apply_batch(job, counts, checkpoint, after=after, upto=upto)
    finally:
        connection.close()


def apply_batch(
    job: ImportJob, counts: ImportCounts, checkpoint: dict[str, Any], *, after: int, upto: int
) -> None:
    """Apply staged rows ``(after, upto]`` and record the checkpoint, in one transaction."""
    params = {"job": job.pk, "dataset": job.dataset_id}
    with transaction.atomic(), connection.cursor() as cursor:
        # Regions stay as they are until the batch commits: a boundary edit waits, and then
        # re-assigns these places too (it sees them committed).
        regions_hold_for_locating()
        by_op = batch_diff(
            cursor, job, counts, region_stamp=checkpoint["region_stamp"], after=after, upto=upto
        )
        with counts.timed("insert"):
            cursor.execute(INSERT_CREATED, params)
            added = cursor.rowcount
        with counts.timed("update"):
            cursor.execute(UPDATE_CHANGED, params)
            updated = cursor.rowcount
            if job.mode != ImportMode.APPEND:
                cursor.execute(REFRESH_SOURCE_VALUES)
        cursor.execute("DROP TABLE pg_temp.import_diff")
        checkpoint_record_batch(
            job.pk,
            after=after,
            upto=upto,
            added=added,
            updated=updated,
            unchanged=by_op.get("unchanged", 0) + by_op.get("kept", 0),
            conflicts=by_op.get("update", 0) - updated + by_op.get("deferred", 0),
            by_fingerprint=by_op["fingerprint"],
        )
        committing = time.perf_counter()
    # The commit runs the deferred triggers (data versions) of the rows written.
    counts.add("commit", time.perf_counter() - committing)

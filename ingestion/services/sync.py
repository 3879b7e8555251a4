"""Datasets that follow a source URL: fetch it, and import it as a snapshot when it changed.

A check is a conditional GET (``If-None-Match`` / ``If-Modified-Since`` with what the source
answered for the file the dataset last applied), streamed to a temporary file under the
upload size limit, counted as it arrives (a ``Content-Length`` is not trusted), within a
timeout per read and a deadline for the whole download. A changed file goes through
``import_job_create`` like an upload (format from content, the same safety checks) and is
queued in snapshot mode; the finish phase records its consistency report. Every check
leaves its outcome on the dataset (``sync_result``, ``sync_checked_at``): unchanged, the
job it queued, or the error. An error never creates a job, so a source that went away or
answered short retires nothing.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.text import get_valid_filename
from kombu.exceptions import OperationalError as BrokerError

from ingestion import tasks
from ingestion.models import ImportJob, ImportMode, ImportState
from ingestion.readers import UnreadableFile
from ingestion.services import jobs
from places.locks import AdvisoryLock
from places.models import Dataset, SyncEvery

logger = logging.getLogger(__name__)

# Seconds one read (connect, a chunk) may take, and the whole download.
READ_TIMEOUT_SECONDS = 60.0
DOWNLOAD_SECONDS = 3600.0
CHUNK_BYTES = 1 << 20
SYNC_INTERVALS = {
    SyncEvery.HOURLY: timedelta(hours=1),
    SyncEvery.DAILY: timedelta(days=1),
    SyncEvery.WEEKLY: timedelta(weeks=1),
}
PENDING_STATES = (ImportState.QUEUED, ImportState.RUNNING)


class SyncError(Exception):
    """The source could not be fetched as a whole; the message says why."""


@dataclass(frozen=True)
class SyncOutcome:
    """What one check did: ``unchanged``, ``queued`` (with its job), ``skipped`` or ``error``."""

    status: str
    message: str
    job: ImportJob | None = None


@dataclass(frozen=True)
class _Fetched:
    path: Path
    sha256: str
    etag: str
    last_modified: str


def datasets_sync_due(*, now: datetime | None = None) -> QuerySet[Dataset]:
    """Datasets with a schedule whose last check is older than its interval (or never ran)."""
    now = now or timezone.now()
    due = Q(pk__in=[])
    for every, interval in SYNC_INTERVALS.items():
        due |= Q(sync_every=every) & (
            Q(sync_checked_at__isnull=True) | Q(sync_checked_at__lte=now - interval)
        )
    return Dataset.objects.exclude(sync_url="").filter(due).order_by("pk")


def dataset_sync(
    *,
    dataset: Dataset,
    enqueue: bool = True,
    max_bytes: int | None = None,
    read_timeout: float = READ_TIMEOUT_SECONDS,
    deadline_seconds: float = DOWNLOAD_SECONDS,
) -> SyncOutcome:
    """Check the dataset's sync URL once; queue a snapshot import when the file changed.

    One check per dataset at a time (an advisory lock; a second one is ``skipped``), and
    none while the job of an earlier check is still queued or running, so a check run twice
    queues at most one job. A 304, or a file with the SHA-256 of the dataset's last applied
    job, is ``unchanged``. ``enqueue=False`` leaves the job queued for the caller to run.
    """
    if not dataset.sync_url:
        return SyncOutcome("error", f"dataset {dataset.slug} has no sync URL")
    with _dataset_lock(dataset.pk) as locked:
        if not locked:
            return SyncOutcome("skipped", "another check of this dataset is running")
        pending = (
            ImportJob.objects.filter(
                dataset=dataset, options__has_key="sync", state__in=PENDING_STATES
            )
            .order_by("-pk")
            .first()
        )
        if pending is not None:
            return SyncOutcome("skipped", f"import job #{pending.pk} of a sync is not done yet")
        return _check(
            dataset,
            enqueue=enqueue,
            max_bytes=jobs.MAX_FILE_BYTES if max_bytes is None else max_bytes,
            read_timeout=read_timeout,
            deadline_seconds=deadline_seconds,
        )


def _check(
    dataset: Dataset,
    *,
    enqueue: bool,
    max_bytes: int,
    read_timeout: float,
    deadline_seconds: float,
) -> SyncOutcome:
    applied = (
        ImportJob.objects.filter(dataset=dataset, state=ImportState.DONE, dry_run=False)
        .order_by("-pk")
        .first()
    )
    # Ask "changed since?" only about the file the dataset holds now: validators of a file
    # whose job failed, or that a later manual import replaced, would hide a change.
    validators = applied.options.get("sync", {}) if applied else {}
    if validators.get("url") != dataset.sync_url:
        validators = {}
    with tempfile.TemporaryDirectory(prefix="places-sync-") as folder:
        try:
            fetched = _fetch(
                dataset.sync_url,
                folder=Path(folder),
                etag=validators.get("etag", ""),
                last_modified=validators.get("last_modified", ""),
                max_bytes=max_bytes,
                read_timeout=read_timeout,
                deadline_seconds=deadline_seconds,
            )
        except SyncError as exc:
            return _record(dataset, SyncOutcome("error", str(exc)))
        if fetched is None:
            return _record(dataset, SyncOutcome("unchanged", "not modified (HTTP 304)"))
        if applied is not None and applied.sha256 == fetched.sha256:
            return _record(
                dataset,
                SyncOutcome("unchanged", f"same file as import job #{applied.pk} (SHA-256)"),
                fetched=fetched,
            )
        try:
            with transaction.atomic():
                job = jobs.import_job_create(
                    path=fetched.path, dataset=dataset, mode=ImportMode.SNAPSHOT
                )
                job.options = {
                    **job.options,
                    "sync": {
                        "url": dataset.sync_url,
                        "etag": fetched.etag,
                        "last_modified": fetched.last_modified,
                    },
                }
                job.save(update_fields=["options"])
                if enqueue:
                    transaction.on_commit(partial(_enqueue, job.pk))
        except UnreadableFile as exc:
            return _record(dataset, SyncOutcome("error", f"the file was refused: {exc}"))
    outcome = SyncOutcome("queued", f"changed; snapshot import job #{job.pk} queued", job)
    return _record(dataset, outcome, fetched=fetched)


def _record(
    dataset: Dataset, outcome: SyncOutcome, *, fetched: _Fetched | None = None
) -> SyncOutcome:
    dataset.sync_checked_at = timezone.now()
    dataset.sync_result = (
        outcome.message if outcome.status != "error" else f"error: {outcome.message}"
    )
    fields = ["sync_checked_at", "sync_result"]
    if fetched is not None:
        dataset.sync_etag, dataset.sync_last_modified = fetched.etag, fetched.last_modified
        fields += ["sync_etag", "sync_last_modified"]
    dataset.save(update_fields=fields)
    log = logger.warning if outcome.status == "error" else logger.info
    log("sync of dataset %s: %s", dataset.slug, dataset.sync_result)
    return outcome


def _enqueue(job_id: int) -> None:
    # A broker that cannot be reached leaves the job queued: the recovery task re-queues it
    # once its heartbeat is stale.
    try:
        tasks.import_job_run.delay(job_id)
    except BrokerError as exc:
        logger.error("sync import job %s could not be queued yet: %s", job_id, exc)


class _NoRedirectToOtherSchemes(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> Any:
        if urlsplit(newurl).scheme not in ("http", "https"):
            raise SyncError(f"redirected to {newurl!r}, which is not HTTP(S)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# HTTP(S) only: no file://, ftp:// or data: handlers, whatever the URL or a redirect says.
_OPENER = urllib.request.OpenerDirector()
for _handler in (
    urllib.request.ProxyHandler(),
    urllib.request.HTTPHandler(),
    urllib.request.HTTPSHandler(),
    urllib.request.HTTPDefaultErrorHandler(),
    _NoRedirectToOtherSchemes(),
    urllib.request.HTTPErrorProcessor(),
):
    _OPENER.add_handler(_handler)


def _fetch(
    url: str,
    *,
    folder: Path,
    etag: str,
    last_modified: str,
    max_bytes: int,
    read_timeout: float,
    deadline_seconds: float,
) -> _Fetched | None:
    """Download ``url`` into ``folder``; None when the source says it has not changed."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise SyncError(f"{url!r} is not an HTTP(S) URL")
    request = urllib.request.Request(url, headers={"User-Agent": "places-sync/1"})  # noqa: S310
    if etag:
        request.add_header("If-None-Match", etag)
    if last_modified:
        request.add_header("If-Modified-Since", last_modified)
    deadline = time.monotonic() + deadline_seconds
    try:
        with _OPENER.open(request, timeout=read_timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise SyncError(f"the file is {declared} bytes; the limit is {max_bytes}")
            # Read to the end of the body the server sends, not to the length it announced:
            # http.client would stop there and hand on a cut file without a word (the
            # request says "Connection: close", so the body ends where the connection does).
            response.length = None
            path = folder / _file_name(url)
            digest = hashlib.sha256()
            size = 0
            with open(path, "wb") as out:
                # read1: what has arrived, up to a chunk, so that a source dripping bytes
                # meets the deadline (read would wait for a whole chunk first).
                while chunk := response.read1(CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:
                        raise SyncError(f"the file is over the limit of {max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise SyncError(f"the download took over {deadline_seconds:g} s")
                    digest.update(chunk)
                    out.write(chunk)
            if declared and declared.isdigit() and int(declared) != size:
                raise SyncError(f"the source announced {declared} bytes and sent {size}")
            return _Fetched(
                path=path,
                sha256=digest.hexdigest(),
                etag=response.headers.get("ETag", "")[:255],
                last_modified=response.headers.get("Last-Modified", "")[:64],
            )
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return None
        raise SyncError(f"the source answered HTTP {exc.code} {exc.reason}") from None
    except TimeoutError:
        raise SyncError(f"the source did not answer within {read_timeout:g} s") from None
    except http.client.HTTPException as exc:  # e.g. the connection closed before the end
        raise SyncError(f"the download broke off: {type(exc).__name__}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SyncError(f"the source could not be reached: {reason}") from None


def _file_name(url: str) -> str:
    """The URL's last path segment as a safe file name (the format comes from the content)."""
    name = get_valid_filename(unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or "source")
    return name[:100] or "source"


@contextmanager
def _dataset_lock(dataset_id: int) -> Iterator[bool]:
    """A session advisory lock for the length of the check (a fetch spans no transaction)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_try_advisory_lock(%s, %s)", [int(AdvisoryLock.DATASET_SYNC), dataset_id]
        )
        locked = bool(cursor.fetchone()[0])
    try:
        yield locked
    finally:
        if locked:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_advisory_unlock(%s, %s)",
                    [int(AdvisoryLock.DATASET_SYNC), dataset_id],
                )

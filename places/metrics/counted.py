"""Metrics counted where the work happens, in whichever process does it (a gunicorn worker,
a Celery pool process); summed across processes by the exposition (``places.metrics``)."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from prometheus_client import Counter, Histogram

# Tasks run from seconds (edge batches) to hours (a national import).
TASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 10800)

CACHE_REQUESTS = Counter(
    "places_cache_requests",
    "Cacheable responses by endpoint and outcome: hit (from Redis), miss (built), "
    "not_modified (304 from the ETag, nothing read).",
    ["endpoint", "result"],
)
TASK_DURATION = Histogram(
    "places_celery_task_duration_seconds",
    "Run time of Celery tasks by queue and task.",
    ["queue", "task"],
    buckets=TASK_BUCKETS,
)
TASKS = Counter(
    "places_celery_tasks",
    "Celery tasks ended, by queue, task and state.",
    ["queue", "task", "state"],
)
IMPORT_JOBS = Counter("places_import_jobs", "Import jobs ended, by final state.", ["state"])
# Every final state's series from the process's start, at 0 (ingestion.models.ImportState;
# a test checks the list): a series first seen at 1 has no increase() for Prometheus, so the
# first failed job after a worker starts would never fire PlacesImportsFailing.
IMPORT_JOB_STATES = ("done", "dry_run_ready", "failed", "cancelled")
for _state in IMPORT_JOB_STATES:
    IMPORT_JOBS.labels(state=_state)
IMPORT_ROWS = Counter(
    "places_import_rows", "Rows read by import runs that finished (apply or dry run).", ["kind"]
)
IMPORT_SECONDS = Counter(
    "places_import_seconds", "Run time of import runs that finished (apply or dry run).", ["kind"]
)


def cache_request_observe(*, endpoint: str, result: str) -> None:
    """Count one cacheable response (``places.serving.responses``)."""
    CACHE_REQUESTS.labels(endpoint=endpoint, result=result).inc()


def import_job_observe(
    *, state: str, dry_run: bool = False, rows: int = 0, seconds: float = 0.0
) -> None:
    """Count one import job that ended, and the rows and seconds of its run when it ran to
    its end (done or dry run ready); failures and cancellations count their state only."""
    IMPORT_JOBS.labels(state=state).inc()
    if rows or seconds:
        kind = "dry_run" if dry_run else "apply"
        IMPORT_ROWS.labels(kind=kind).inc(rows)
        IMPORT_SECONDS.labels(kind=kind).inc(seconds)


_task_started: dict[str, float] = {}


def _task_queue(task: Any) -> str:
    delivery = getattr(task.request, "delivery_info", None) or {}
    return str(delivery.get("routing_key") or settings.CELERY_TASK_DEFAULT_QUEUE)


def on_task_prerun(*, task_id: str, **_: Any) -> None:
    _task_started[task_id] = time.perf_counter()


def on_task_postrun(*, task_id: str, task: Any, state: str | None = None, **_: Any) -> None:
    started = _task_started.pop(task_id, None)
    queue, name = _task_queue(task), task.name
    TASKS.labels(queue=queue, task=name, state=state or "UNKNOWN").inc()
    if started is not None:
        TASK_DURATION.labels(queue=queue, task=name).observe(time.perf_counter() - started)

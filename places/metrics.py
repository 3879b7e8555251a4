"""Prometheus metrics of the site beyond django-prometheus's requests, queries and cache calls,
and the exposition that ``/metrics`` answers (``places.health.metrics``).

Two kinds of metric, and why:

- **Counted where the work happens**, in whichever process does it: cache hits and misses
  per endpoint (web), task durations per queue (a Celery pool process), imports finished,
  their rows and seconds (the ingestion worker). gunicorn and Celery's prefork pool run
  several processes, so these go through prometheus_client's multiprocess mode when
  ``PROMETHEUS_MULTIPROC_DIR`` is set: each process writes its values to a file there and
  the exposition adds them up. ``config/gunicorn.py`` sets the directory, empties it when
  gunicorn starts and marks dead workers; :func:`worker_metrics_init` does the same for a
  Celery worker and serves its figures on ``CELERY_METRICS_PORT``.
- **Read when scraped** from the system that knows the answer (the edge collector does the
  same, ``ingestion.edge.metrics``): queue lengths from the broker's Redis, connections and
  WAL archiving from PostgreSQL, backups from ``pgbackrest info``. A process-local copy
  would be stale or differ between workers. Each read is one cheap round trip; one that
  fails leaves its metrics out (and logs why) so the scrape still answers.

Exported here (besides django-prometheus's ``django_http_*``, ``django_db_*``, ``django_cache_*``
and the edge collector's ``edge_*``):

============================================  =============================================
``places_cache_requests_total``               {endpoint, result}: hit, miss, not_modified
``places_celery_queue_length``                {queue}: messages waiting in the broker
``places_celery_task_duration_seconds``       {queue, task}: histogram of run times
``places_celery_tasks_total``                 {queue, task, state}: tasks ended
``places_import_jobs_total``                  {state}: import jobs ended (done, failed, ...)
``places_import_rows_total``                  {kind}: rows read by finished runs (apply, dry_run)
``places_import_seconds_total``               {kind}: their run time (rows/s = rows / seconds)
``places_db_connections``                     client connections open on the server
``places_db_max_connections``                 max_connections minus the superuser reserve
``places_wal_archive_last_success_timestamp_seconds``  pg_stat_archiver, when archiving is on
``places_wal_archive_last_failure_timestamp_seconds``  idem (0 when it never failed)
``places_wal_archive_failed_total``           idem
``places_wal_archive_ready_segments``         segments waiting to be archived (pg_monitor)
``places_backup_info_up``                     1 when ``pgbackrest info`` answered
``places_backup_last_success_timestamp_seconds``  {type}: newest backup of each type
============================================  =============================================

The backup metrics exist only when ``PGBACKREST_STANZA`` is set; the WAL archive ones only
when the primary's ``archive_mode`` is on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess  # nosec B404 # runs pgbackrest with fixed arguments, no shell
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import connections
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# kombu's Redis transport keeps a queue's messages of priority 3, 6 and 9 in lists of their
# own, named queue + this separator + the priority (priority 0 is the bare name).
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITIES = (3, 6, 9)
REDIS_TIMEOUT_SECONDS = 1.0
# pgbackrest info reads the repository (a second or so); scrapes every 15 s from each web
# worker reuse the answer for this long, which is far below any backup alert's threshold.
BACKUP_INFO_CACHE_SECONDS = 60.0
BACKUP_INFO_TIMEOUT_SECONDS = 20.0

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
IMPORT_ROWS = Counter(
    "places_import_rows", "Rows read by import runs that finished (apply or dry run).", ["kind"]
)
IMPORT_SECONDS = Counter(
    "places_import_seconds", "Run time of import runs that finished (apply or dry run).", ["kind"]
)


# --- Counted where the work happens --------------------------------------------------------


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


# --- Read when scraped ---------------------------------------------------------------------


def celery_queues() -> list[str]:
    """The queues tasks are routed to, default first (from the settings, one home)."""
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    default = settings.CELERY_TASK_DEFAULT_QUEUE
    return [default, *sorted(routed - {default})]


_broker: redis.Redis | None = None
_broker_url: str | None = None


def _broker_client() -> redis.Redis:
    global _broker, _broker_url
    if _broker is None or _broker_url != settings.CELERY_BROKER_URL:
        _broker = redis.Redis.from_url(
            settings.CELERY_BROKER_URL,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        )
        _broker_url = settings.CELERY_BROKER_URL
    return _broker


def celery_queue_lengths() -> dict[str, int]:
    """Messages waiting in each queue (all priorities), in one pipelined round trip."""
    queues = celery_queues()
    keys = [
        [queue, *(f"{queue}{KOMBU_PRIORITY_SEP}{p}" for p in KOMBU_PRIORITIES)] for queue in queues
    ]
    pipe = _broker_client().pipeline(transaction=False)
    for names in keys:
        for key in names:
            pipe.llen(key)
    sizes = iter(pipe.execute())
    return {
        queue: sum(next(sizes) for _ in names) for queue, names in zip(queues, keys, strict=True)
    }


DB_CONNECTIONS_SQL = """
SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
       current_setting('max_connections')::int
         - current_setting('superuser_reserved_connections')::int,
       current_setting('archive_mode'),
       pg_has_role(current_user, 'pg_monitor', 'USAGE')
"""
ARCHIVER_SQL = """
SELECT failed_count,
       extract(epoch FROM last_archived_time),
       extract(epoch FROM last_failed_time)
FROM pg_stat_archiver
"""
# Listing the archive status folder needs pg_monitor (superusers have every role).
READY_SEGMENTS_SQL = "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"


def database_metric_families(cursor: Any) -> list[Metric]:
    """Connections and, when the server archives WAL, its archiver's state, read with
    ``cursor`` (any DB-API cursor on the primary)."""
    cursor.execute(DB_CONNECTIONS_SQL)
    used, usable, archive_mode, monitor = cursor.fetchone()
    families: list[Metric] = [
        GaugeMetricFamily(
            "places_db_connections", "Client connections open on the database server.", value=used
        ),
        GaugeMetricFamily(
            "places_db_max_connections",
            "Connections clients may open (max_connections minus the superuser reserve).",
            value=usable,
        ),
    ]
    if archive_mode == "off":
        return families
    cursor.execute(ARCHIVER_SQL)
    failed, last_archived, last_failed = cursor.fetchone()
    families += [
        GaugeMetricFamily(
            "places_wal_archive_last_success_timestamp_seconds",
            "When the primary last archived a WAL segment (0: never).",
            value=float(last_archived or 0),
        ),
        GaugeMetricFamily(
            "places_wal_archive_last_failure_timestamp_seconds",
            "When archiving a WAL segment last failed on the primary (0: never).",
            value=float(last_failed or 0),
        ),
        GaugeMetricFamily(
            "places_wal_archive_failed_total",
            "WAL segments whose archiving failed since the statistics were reset.",
            value=failed,
        ),
    ]
    if monitor:
        cursor.execute(READY_SEGMENTS_SQL)
        families.append(
            GaugeMetricFamily(
                "places_wal_archive_ready_segments",
                "Completed WAL segments not archived yet (what a lost primary would lose).",
                value=cursor.fetchone()[0],
            )
        )
    return families


def _database_families() -> list[Metric]:
    with connections["default"].cursor() as cursor:
        return database_metric_families(cursor)


def pgbackrest_info() -> list[dict[str, Any]]:
    """``pgbackrest info --output=json`` for the configured stanza (raises when it fails)."""
    binary = shutil.which("pgbackrest")
    if binary is None:
        raise FileNotFoundError("pgbackrest is not installed")
    command = [binary, f"--stanza={settings.PGBACKREST_STANZA}"]
    if settings.PGBACKREST_CONFIG:
        command.append(f"--config={settings.PGBACKREST_CONFIG}")
    command += ["info", "--output=json"]
    # Fixed arguments (the stanza and file from settings), no shell.
    done = subprocess.run(  # noqa: S603  # nosec B603
        command, capture_output=True, text=True, timeout=BACKUP_INFO_TIMEOUT_SECONDS, check=True
    )
    return json.loads(done.stdout)


def backup_stop_times(info: list[dict[str, Any]]) -> dict[str, float]:
    """The stop time of the newest backup of each type (full, diff, incr) in the stanza."""
    newest: dict[str, float] = {}
    for stanza in info:
        if stanza.get("name") != settings.PGBACKREST_STANZA:
            continue
        for backup in stanza.get("backup", []):
            if backup.get("error"):
                continue  # a backup pgBackRest found damaged is no backup
            kind, stop = backup["type"], float(backup["timestamp"]["stop"])
            newest[kind] = max(newest.get(kind, 0.0), stop)
    return newest


_backup_lock = threading.Lock()
_backup_cached: tuple[float, dict[str, float] | None] | None = None


def _backup_families() -> Iterator[Metric]:
    global _backup_cached
    with _backup_lock:
        now = time.monotonic()
        if _backup_cached is None or now - _backup_cached[0] > BACKUP_INFO_CACHE_SECONDS:
            try:
                stops: dict[str, float] | None = backup_stop_times(pgbackrest_info())
            except (OSError, ValueError, KeyError, subprocess.SubprocessError):
                logger.exception("pgbackrest info failed")
                stops = None
            _backup_cached = (now, stops)
        stops = _backup_cached[1]
    yield GaugeMetricFamily(
        "places_backup_info_up",
        "1 when pgbackrest info answered for the stanza, 0 when it failed.",
        value=0 if stops is None else 1,
    )
    if stops:
        family = GaugeMetricFamily(
            "places_backup_last_success_timestamp_seconds",
            "When the newest good backup of each type finished.",
            labels=["type"],
        )
        for kind, stop in sorted(stops.items()):
            family.add_metric([kind], stop)
        yield family


class ScrapeTimeCollector(Collector):
    """Figures read from Redis, PostgreSQL and pgBackRest at each scrape."""

    def describe(self) -> Iterator[Metric]:
        return iter(())  # registration must not touch the broker or the database

    def collect(self) -> Iterator[Metric]:
        try:
            lengths = celery_queue_lengths()
        except redis.RedisError:
            logger.exception("celery queue lengths could not be read")
        else:
            family = GaugeMetricFamily(
                "places_celery_queue_length", "Messages waiting in the queue.", labels=["queue"]
            )
            for queue, length in lengths.items():
                family.add_metric([queue], length)
            yield family
        try:
            yield from _database_families()
        except Exception:  # a scrape must still answer when the database cannot
            logger.exception("database metrics could not be read")
        if settings.PGBACKREST_STANZA:
            yield from _backup_families()


_scrape_collector: ScrapeTimeCollector | None = None


# --- Exposition ----------------------------------------------------------------------------


class _DefaultRegistryCollectors(Collector):
    """The scrape-time collectors registered on the default registry (this module's, the
    edge nodes', the replica's), without the per-process metrics the files already hold."""

    # The process, platform and GC collectors describe the one process answering the
    # scrape, not the service: left out in multiprocess mode.
    PER_PROCESS = (ProcessCollector, PlatformCollector, GCCollector)

    def collect(self) -> Iterator[Metric]:
        # prometheus_client offers no public list of a registry's collectors.
        with REGISTRY._lock:
            collectors = list(REGISTRY._collector_to_names)
        for collector in collectors:
            if not isinstance(collector, (MetricWrapperBase, *self.PER_PROCESS)):
                yield from collector.collect()


def multiprocess_dir() -> Path | None:
    path = os.environ.get(MULTIPROC_ENV)
    return Path(path) if path else None


def metrics_exposition() -> bytes:
    """The text exposition: every process's counted metrics (summed from the multiprocess
    files when there are several processes) and the scrape-time ones."""
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry(auto_describe=False)
    multiprocess.MultiProcessCollector(registry)
    registry.register(_DefaultRegistryCollectors())
    return generate_latest(registry)


def multiprocess_dir_reset() -> None:
    """Empty the multiprocess directory (made if missing) before any process writes to it:
    files left by a previous run would add their counts to this one's."""
    path = multiprocess_dir()
    if path is None:
        return
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def process_dead_mark(pid: int) -> None:
    """A worker process ended: its live gauges go; its counters stay in the sums."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)


# --- Celery worker ------------------------------------------------------------------------


def worker_metrics_init() -> None:
    """In a Celery worker's main process, before its pool starts (``config.celery``): with
    ``CELERY_METRICS_PORT`` set, serve the figures its pool processes write (task durations,
    imports) on that port. The pool processes inherit ``PROMETHEUS_MULTIPROC_DIR``; without
    it a prefork pool's figures stay in its processes, unseen."""
    port = settings.CELERY_METRICS_PORT
    if not port:
        return
    from prometheus_client import start_http_server

    multiprocess_dir_reset()
    registry = REGISTRY
    if multiprocess_dir() is not None:
        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr=settings.CELERY_METRICS_ADDRESS, registry=registry)
    logger.info("worker metrics on %s:%s", settings.CELERY_METRICS_ADDRESS, port)


def on_worker_process_shutdown(*, pid: int | None = None, **_: Any) -> None:
    process_dead_mark(pid or os.getpid())


def metrics_register() -> None:
    """Once per process (``PlacesConfig.ready``): the scrape-time collector on the default
    registry, and the Celery signals that time tasks."""
    global _scrape_collector
    if _scrape_collector is not None:
        return
    from celery.signals import task_postrun, task_prerun, worker_process_shutdown

    _scrape_collector = ScrapeTimeCollector()
    REGISTRY.register(_scrape_collector)
    for signal, receiver in (
        (task_prerun, on_task_prerun),
        (task_postrun, on_task_postrun),
        (worker_process_shutdown, on_worker_process_shutdown),
    ):
        signal.connect(receiver, weak=False, dispatch_uid=f"places-metrics-{receiver.__name__}")

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

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from places.metrics.counted import (
    cache_request_observe,
    import_job_observe,
    on_task_postrun,
    on_task_prerun,
)
from places.metrics.scraped import (
    ScrapeTimeCollector,
    backup_stop_times,
    celery_queues,
    database_metric_families,
)

__all__ = [
    "backup_stop_times",
    "cache_request_observe",
    "celery_queues",
    "database_metric_families",
    "import_job_observe",
    "metrics_exposition",
    "metrics_register",
    "multiprocess_dir_reset",
    "on_task_postrun",
    "on_task_prerun",
    "process_dead_mark",
    "worker_metrics_init",
]

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


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


# --- Celery worker and registration ------------------------------------------------------


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


_scrape_collector: ScrapeTimeCollector | None = None


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

"""Metrics read when scraped from the system that knows the answer: queue lengths from the
broker's Redis, connections and WAL archiving from PostgreSQL, backups from
``pgbackrest info``. Each read is one cheap round trip; one that fails leaves its metrics out
(and logs why) so the scrape still answers."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess  # nosec B404 # runs pgbackrest with fixed arguments, no shell
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
from django.conf import settings
from django.db import connections
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# kombu's Redis transport keeps a queue's messages of priority 3, 6 and 9 in lists of their
# own, named queue + this separator + the priority (priority 0 is the bare name).
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITIES = (3, 6, 9)
REDIS_TIMEOUT_SECONDS = 1.0
# pgbackrest info reads the repository (a second or so); scrapes every 15 s from each web
# worker reuse the answer for this long, which is far below any backup alert's threshold.
BACKUP_INFO_CACHE_SECONDS = 60.0
BACKUP_INFO_TIMEOUT_SECONDS = 20.0


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

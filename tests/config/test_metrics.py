"""The metrics beyond requests (places.metrics) against the real Redis broker, PostgreSQL and
cache: each figure is read back from the default registry, as /metrics exports it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from config.celery import app
from ingestion.models import ImportJob, ImportState
from ingestion.services.imports import import_job_execute
from ingestion.services.imports.run import MAX_ATTEMPTS
from ingestion.services.jobs import import_job_create
from places import metrics
from places.metrics import scraped
from places.models import Dataset
from places.services import dataset_get_or_create
from tests.db import database_url

pytestmark = pytest.mark.django_db


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _purge(queues: list[str]) -> None:
    with app.connection_for_write() as conn:
        for queue in queues:
            conn.default_channel.queue_purge(queue)


@pytest.fixture
def empty_queues():
    queues = metrics.celery_queues()
    _purge(queues)
    yield queues
    _purge(queues)


def test_queue_lengths_count_the_messages_waiting_in_each_queue(empty_queues):
    # given three messages on the ingestion queue and two on analytics, one of them with a
    # priority (kombu keeps those in a list of their own)
    assert empty_queues == ["default", "analytics", "edge", "ingestion"]
    for _ in range(3):
        app.send_task("ingestion.tasks.metrics_test", queue="ingestion")
    app.send_task("analytics.tasks.metrics_test", queue="analytics")
    app.send_task("analytics.tasks.metrics_test", queue="analytics", priority=9)
    # when the registry is scraped
    lengths = {q: _value("places_celery_queue_length", queue=q) for q in empty_queues}
    # then each queue shows what waits in it
    assert lengths == {"default": 0, "analytics": 2, "edge": 0, "ingestion": 3}


def test_queue_lengths_are_left_out_when_the_broker_does_not_answer(settings):
    # given a broker address where nothing listens
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    # when scraped, then the queue lengths are absent and the rest is still there
    assert REGISTRY.get_sample_value("places_celery_queue_length", {"queue": "default"}) is None
    assert REGISTRY.get_sample_value("places_db_max_connections") is not None


def test_cache_counts_a_miss_then_a_hit_then_not_modified_per_endpoint(clear_cache):
    # given an empty cache
    client = APIClient()
    url = "/tiles/places/0/0/0.pbf"
    before = {r: _value("places_cache_requests_total", endpoint="place-tile", result=r)
              for r in ("miss", "hit", "not_modified")}  # fmt: skip
    # when the same tile is asked for twice, then revalidated with its ETag
    first = client.get(url)
    second = client.get(url)
    third = client.get(url, HTTP_IF_NONE_MATCH=second["ETag"])
    # then the first was built, the second came from Redis, the third was a 304
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 304)
    after = {r: _value("places_cache_requests_total", endpoint="place-tile", result=r)
             for r in ("miss", "hit", "not_modified")}  # fmt: skip
    assert {r: after[r] - before[r] for r in after} == {"miss": 1, "hit": 1, "not_modified": 1}


def _csv(tmp_path: Path, rows: int) -> Path:
    path = tmp_path / "metrics.csv"
    lines = ["id,name,lon,lat"] + [
        f"m{i},Chapel {i},{-1.5 + i / 1000},{53.8 + i / 1000}" for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_finished_import_counts_its_job_rows_and_seconds(sample_regions, tmp_path):
    # given a file of 25 places
    dataset = dataset_get_or_create(slug="metrics-import")
    job = import_job_create(path=_csv(tmp_path, 25), dataset=dataset)
    jobs, rows, seconds = (
        _value("places_import_jobs_total", state="done"),
        _value("places_import_rows_total", kind="apply"),
        _value("places_import_seconds_total", kind="apply"),
    )
    # when it is imported
    job = import_job_execute(job_id=job.pk)
    # then one more job is done, with its rows read and a run time
    assert job.state == ImportState.DONE
    assert job.rows_read == 25
    assert _value("places_import_jobs_total", state="done") - jobs == 1
    assert _value("places_import_rows_total", kind="apply") - rows == 25
    assert _value("places_import_seconds_total", kind="apply") - seconds > 0


def test_a_job_that_fails_counts_as_failed_once(sample_regions, tmp_path):
    # given a job whose deliveries are used up (its worker died each time)
    dataset: Dataset = dataset_get_or_create(slug="metrics-failed")
    job = import_job_create(path=_csv(tmp_path, 2), dataset=dataset)
    ImportJob.objects.filter(pk=job.pk).update(state=ImportState.RUNNING, attempts=MAX_ATTEMPTS)
    failed = _value("places_import_jobs_total", state="failed")
    # when it is delivered again, then it fails and counts once
    assert import_job_execute(job_id=job.pk).state == ImportState.FAILED
    assert _value("places_import_jobs_total", state="failed") - failed == 1


def test_task_durations_and_ends_are_counted_per_queue():
    # given a task delivered from the edge queue
    task = app.tasks["ingestion.edge.tasks.edge_nodes_silent_mark"]
    labels = {"queue": "edge", "task": task.name}
    count = _value("places_celery_task_duration_seconds_count", **labels)
    ended = _value("places_celery_tasks_total", **labels, state="SUCCESS")
    task.push_request(id="metrics-test", delivery_info={"routing_key": "edge"})
    try:
        # when the worker's signals say it started and ended
        metrics.on_task_prerun(task_id="metrics-test", task=task)
        metrics.on_task_postrun(task_id="metrics-test", task=task, state="SUCCESS")
    finally:
        task.pop_request()
    # then one more run is in the edge queue's histogram and counted as a success
    assert _value("places_celery_task_duration_seconds_count", **labels) - count == 1
    assert _value("places_celery_tasks_total", **labels, state="SUCCESS") - ended == 1


def test_connections_are_reported_against_the_usable_maximum():
    # given the server's limits
    with connection.cursor() as cursor:
        cursor.execute("SHOW max_connections")
        most = int(cursor.fetchone()[0])
        cursor.execute("SHOW superuser_reserved_connections")
        reserved = int(cursor.fetchone()[0])
    # when scraped, then the usable maximum leaves the reserve out, and this test's own
    # connection is among those counted
    assert _value("places_db_max_connections") == most - reserved
    assert 1 <= _value("places_db_connections") <= most


def test_wal_archive_metrics_follow_archive_mode():
    with connection.cursor() as cursor:
        cursor.execute("SHOW archive_mode")
        archiving = cursor.fetchone()[0] != "off"
    present = REGISTRY.get_sample_value("places_wal_archive_failed_total") is not None
    assert present == archiving


def test_backup_metrics_exist_only_for_a_configured_stanza(settings, monkeypatch):
    # given no stanza: no backup metric at all
    settings.PGBACKREST_STANZA = ""
    assert REGISTRY.get_sample_value("places_backup_info_up") is None
    # given a stanza that pgbackrest cannot answer for (not installed here, or no such
    # stanza): the failure is a metric of its own, for an alert
    monkeypatch.setattr(scraped, "_backup_cached", None)
    settings.PGBACKREST_STANZA = "places-metrics-test-missing"
    settings.PGBACKREST_CONFIG = "/nonexistent/pgbackrest.conf"
    assert REGISTRY.get_sample_value("places_backup_info_up") == 0
    assert REGISTRY.get_sample_value("places_backup_last_success_timestamp_seconds") is None


def test_backup_stop_times_take_the_newest_good_backup_of_each_type(settings):
    # given pgbackrest info's answer: two fulls, an incremental and a damaged differential
    settings.PGBACKREST_STANZA = "places"

    def backup(kind: str, stop: int, *, error: bool = False) -> dict:
        return {"type": kind, "error": error, "timestamp": {"start": stop - 5, "stop": stop}}

    info = [
        {"name": "other", "backup": [backup("full", 9_999)]},
        {
            "name": "places",
            "backup": [
                backup("full", 1_000),
                backup("full", 2_000),
                backup("incr", 2_500),
                backup("diff", 3_000, error=True),
            ],
        },
    ]
    # then each type's newest good stop time is kept, of this stanza only
    assert metrics.backup_stop_times(info) == {"full": 2_000.0, "incr": 2_500.0}


def test_queues_follow_the_task_routes():
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    assert set(metrics.celery_queues()) == routed | {settings.CELERY_TASK_DEFAULT_QUEUE}


def test_a_one_off_command_with_a_multiprocess_folder_that_is_not_there_yet_runs(tmp_path):
    # given PROMETHEUS_MULTIPROC_DIR naming a folder nobody made (a manage.py run in a
    # container where gunicorn has not started)
    folder = tmp_path / "not-yet" / "prometheus"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url(dbname=connection.settings_dict["NAME"]),
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
    }
    # when it opens a database connection (django-prometheus counts it in a file there)
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c",
         "from django.db import connection; connection.ensure_connection()"],
        cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    # then it runs, and its counts are in the folder made for them
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(folder.glob("counter_*.db"))

"""Delivery through real Celery worker processes and a real Redis broker.

These tests commit to the test database (a worker is another process), so each uses its
own dataset.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from config.celery import app
from ingestion import tasks
from ingestion.models import ImportJob, ImportState
from ingestion.services.jobs import import_job_create
from places.models import Place, PlaceChange
from places.services import dataset_get_or_create
from tests.conftest import FIXTURES
from tests.db import database_url

pytestmark = pytest.mark.worker

StartWorker = Callable[..., subprocess.Popen]


def _purge_ingestion_queue() -> None:
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge("ingestion")


def _queued_messages() -> int:
    with app.connection_for_write() as conn:
        return conn.default_channel.client.llen("ingestion")


@pytest.fixture
def start_worker(django_db_blocker) -> Iterator[StartWorker]:
    """Start workers on the ingestion queue, reading the test database (extra settings as
    environment variables); all are stopped at the end."""
    with django_db_blocker.unblock():
        database = connection.settings_dict["NAME"]
    started: list[subprocess.Popen] = []

    def start(**environment: str) -> subprocess.Popen:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "DATABASE_URL": database_url(dbname=database),
            "MEDIA_ROOT": str(settings.MEDIA_ROOT),
            **environment,
        }
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                "ingestion",
                "--pool",
                "solo",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "WARNING",
            ],
            cwd=settings.BASE_DIR,
            env=env,
        )
        started.append(process)
        return process

    # A message left by an earlier run would be taken first.
    _purge_ingestion_queue()
    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def worker(start_worker: StartWorker) -> subprocess.Popen:
    return start_worker()


def _wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_import_command_is_carried_out_by_a_worker(sample_regions, worker, django_db_blocker):
    with django_db_blocker.unblock():
        # when the command queues the import and waits (no --sync)
        call_command(
            "import_places",
            str(FIXTURES / "nasty_places.csv"),
            "--dataset",
            "via-worker",
            "--timeout",
            "120",
        )
        job = ImportJob.objects.filter(dataset__slug="via-worker").latest("id")
        # then the worker ran it to the end
        assert job.state == ImportState.DONE, job.error
        assert job.attempts == 1
        assert Place.objects.filter(dataset=job.dataset).count() == 4
        # and running the task again (a redelivery) changes nothing
        log = PlaceChange.objects.filter(dataset=job.dataset).count()
        assert tasks.import_job_run(job.pk) == ImportState.DONE
        assert PlaceChange.objects.filter(dataset=job.dataset).count() == log
        job.refresh_from_db()
        assert job.attempts == 1


ROWS = 20_000


def _big_file(tmp_path: Path) -> Path:
    """ROWS places scattered over England (a grid, so every key and point is distinct)."""
    lines = ["id,name,religion,lon,lat"]
    for i in range(ROWS):
        lon, lat = -2.5 + (i % 200) * 0.01, 51.5 + (i // 200) * 0.01
        lines.append(f"k{i},Place {i},christian,{lon:.4f},{lat:.4f}")
    path = tmp_path / "big.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _assert_every_row_imported_once(job: ImportJob) -> None:
    places = Place.objects.filter(dataset=job.dataset)
    assert places.count() == ROWS
    assert places.values("source_key").distinct().count() == ROWS
    creates = PlaceChange.objects.filter(dataset=job.dataset, operation="create")
    assert creates.count() == ROWS
    assert not creates.values("place").annotate(n=Count("seq")).filter(n__gt=1).exists()
    assert not PlaceChange.objects.filter(dataset=job.dataset).exclude(operation="create").exists()
    assert (job.added, job.updated, job.unchanged, job.rejected) == (ROWS, 0, 0, 0)
    assert job.rows_read == ROWS


def test_import_survives_kill_9_of_its_worker_mid_apply(
    sample_regions, start_worker, django_db_blocker, tmp_path
):
    # Small batches, so that the apply phase spans many commits, two at a time on two
    # connections (as in production); a short visibility timeout, so that Redis hands the
    # unacknowledged message to the next worker within seconds.
    environment = {
        "IMPORT_BATCH_ROWS": "500",
        "IMPORT_APPLY_WORKERS": "2",
        "CELERY_VISIBILITY_TIMEOUT": "2",
    }
    with django_db_blocker.unblock():
        # given an import running on a worker, with at least one batch committed
        job = import_job_create(
            path=_big_file(tmp_path), dataset=dataset_get_or_create(slug="kill-9")
        )
        first = start_worker(**environment)
        tasks.import_job_run.delay(job.pk)

        def some_batch_committed() -> bool:
            job.refresh_from_db()
            return job.checkpoint.get("last_sid", 0) > 0

        _wait_for(some_batch_committed, timeout=180, what="the first batch")
        # when the worker is killed outright
        first.kill()
        first.wait()
        job.refresh_from_db()
        killed_at = job.checkpoint["last_sid"]
        assert job.state == ImportState.RUNNING
        assert 0 < killed_at < job.checkpoint["max_sid"], "the kill came too late to test"
        # and another worker starts
        start_worker(**environment)

        def finished() -> bool:
            job.refresh_from_db()
            return job.state != ImportState.RUNNING

        _wait_for(finished, timeout=300, what="the redelivered import")
        # then the import applied what had not committed and every row is in once
        assert job.state == ImportState.DONE, job.error
        assert job.attempts == 2
        assert job.report["resumed_after"][0] >= killed_at
        _assert_every_row_imported_once(job)
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM ingestion_importstage WHERE job_id = %s", [job.pk])
            assert cursor.fetchone()[0] == 0


def test_an_import_whose_message_was_lost_is_queued_again_by_the_beat_task(
    sample_regions, start_worker, django_db_blocker
):
    with django_db_blocker.unblock():
        # given a queued import whose message Redis lost (a restart empties the queue)
        job = import_job_create(
            path=FIXTURES / "nasty_places.csv", dataset=dataset_get_or_create(slug="lost-message")
        )
        tasks.import_job_run.delay(job.pk)
        _purge_ingestion_queue()
        assert _queued_messages() == 0
        ImportJob.objects.filter(pk=job.pk).update(
            heartbeat_at=timezone.now() - dt.timedelta(hours=1)
        )
        # when the beat task runs, twice
        requeued = tasks.import_jobs_recover()
        again = tasks.import_jobs_recover()
        # then the job was queued once more, and only once
        assert job.pk in requeued
        assert job.pk not in again
        assert _queued_messages() == 1
        # and a worker carries it out
        start_worker()

        def finished() -> bool:
            job.refresh_from_db()
            return job.state not in {ImportState.QUEUED, ImportState.RUNNING}

        _wait_for(finished, timeout=120, what="the requeued import")
        assert job.state == ImportState.DONE, job.error
        assert (job.added, job.rejected) == (4, 7)
        assert Place.objects.filter(dataset=job.dataset).count() == 4

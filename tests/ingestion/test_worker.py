"""Delivery through a real Celery worker process and a real Redis broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from config.celery import app
from ingestion import tasks
from ingestion.models import ImportJob, ImportState
from places.models import Place, PlaceChange
from tests.conftest import FIXTURES

pytestmark = pytest.mark.worker


@pytest.fixture
def worker(django_db_blocker) -> Iterator[subprocess.Popen]:
    """A worker on the ingestion queue, reading the test database through DATABASE_URL."""
    # A message left by an earlier run would be taken first.
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge("ingestion")
    with django_db_blocker.unblock():
        database = connection.settings_dict["NAME"]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": f"postgis://postgres@127.0.0.1:5432/{database}",
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
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
    yield process
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def test_import_command_is_carried_out_by_a_worker(sample_regions, worker, django_db_blocker):
    with django_db_blocker.unblock():
        # when the command queues the import and waits (no --sync)
        started = time.monotonic()
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
        assert time.monotonic() - started < 120
        # and running the task again (a redelivery) changes nothing
        log = PlaceChange.objects.filter(dataset=job.dataset).count()
        assert tasks.import_job_run(job.pk) == ImportState.DONE
        assert PlaceChange.objects.filter(dataset=job.dataset).count() == log
        job.refresh_from_db()
        assert job.attempts == 1

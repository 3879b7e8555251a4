"""Imports applied in batches: checkpoints, resuming after a crash, fingerprints, recovery.

A "crash" here is an exception that no handler in the service catches (as a killed process
would not run them), raised after a number of batches committed. The real kill -9 of a
worker is in test_worker.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import psycopg
import pytest
from django.db import OperationalError, connection
from django.db.models import Count
from django.utils import timezone

from ingestion.models import ImportJob, ImportMode, ImportState
from ingestion.services.imports import apply as apply_phase
from ingestion.services.imports import (
    import_job_execute,
    import_jobs_stale_claim,
    import_stage_sweep,
)
from ingestion.services.imports import run as run_phase
from ingestion.services.jobs import import_job_create
from places.locks import AdvisoryLock
from places.models import Place, PlaceChange, RegionPart
from places.services import dataset_get_or_create
from tests.conftest import FIXTURES
from tests.db import database_kwargs

pytestmark = pytest.mark.django_db

ROWS = 35  # valid rows p0..p34, plus a repeated key and a row without coordinates


class WorkerKilled(BaseException):
    """Stands for the process dying: nothing in the service handles it."""


def _file(tmp_path: Path) -> Path:
    lines = ["id,name,religion,lon,lat"]
    lines += [
        f"p{i},Chapel {i},christian,{-1 - i / 100:.2f},{52 + i / 100:.2f}" for i in range(ROWS)
    ]
    lines += ["p3,Repeated key,muslim,-1.5,52.5", "px,No coordinates,christian,,"]
    path = tmp_path / "places.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _stage_rows(job: ImportJob) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM ingestion_importstage WHERE job_id = %s", [job.pk])
        return cursor.fetchone()[0]


def _crash_after(monkeypatch: pytest.MonkeyPatch, batches: int, error: BaseException) -> None:
    """Make the run stop with ``error`` once ``batches`` batches have committed."""
    apply_batch = apply_phase.apply_batch
    done = []

    def apply_then_crash(*args, **kwargs):
        apply_batch(*args, **kwargs)
        done.append(1)
        if len(done) == batches:
            raise error

    monkeypatch.setattr(apply_phase, "apply_batch", apply_then_crash)


def _assert_imported_exactly_once(job: ImportJob) -> None:
    places = Place.objects.filter(dataset=job.dataset)
    assert places.count() == ROWS
    creates = PlaceChange.objects.filter(dataset=job.dataset, operation="create")
    assert creates.count() == ROWS
    assert not creates.values("place").annotate(n=Count("seq")).filter(n__gt=1).exists()
    assert (job.added, job.updated, job.unchanged, job.rejected) == (ROWS, 0, 0, 2)
    assert job.added + job.unchanged + job.rejected == job.rows_read
    assert sorted(job.rejections.values_list("reason", flat=True)) == [
        "duplicate_key",
        "missing_geometry",
    ]


def test_batches_commit_with_a_checkpoint_and_the_stage_is_emptied(
    sample_regions, settings, tmp_path
):
    # given batches of 10 staged rows
    settings.IMPORT_BATCH_ROWS = 10
    job = import_job_create(path=_file(tmp_path), dataset=dataset_get_or_create(slug="batched"))
    # when the job runs
    job = import_job_execute(job_id=job.pk)
    # then it took four batches, counted everything once and left no staging rows
    assert job.state == ImportState.DONE, job.error
    assert job.report["batches"] == 4
    assert job.checkpoint["last_sid"] == job.checkpoint["max_sid"] == ROWS + 2
    _assert_imported_exactly_once(job)
    assert _stage_rows(job) == 0


def test_a_run_killed_between_batches_resumes_after_the_last_checkpoint(
    sample_regions, settings, tmp_path, monkeypatch
):
    # given a run that dies after two committed batches
    settings.IMPORT_BATCH_ROWS = 10
    job = import_job_create(path=_file(tmp_path), dataset=dataset_get_or_create(slug="killed"))
    _crash_after(monkeypatch, 2, WorkerKilled())
    with pytest.raises(WorkerKilled):
        import_job_execute(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == ImportState.RUNNING
    assert job.checkpoint["last_sid"] == 20
    assert Place.objects.filter(dataset=job.dataset).count() == 20
    # when the task is delivered again
    monkeypatch.undo()
    job = import_job_execute(job_id=job.pk)
    # then it resumed after row 20: nothing lost, nothing applied twice
    assert job.state == ImportState.DONE, job.error
    assert job.attempts == 2
    assert job.report["resumed_after"] == [20]
    _assert_imported_exactly_once(job)
    assert _stage_rows(job) == 0


def test_a_transient_error_leaves_the_job_to_be_retried_where_it_stopped(
    sample_regions, settings, tmp_path, monkeypatch
):
    settings.IMPORT_BATCH_ROWS = 10
    job = import_job_create(path=_file(tmp_path), dataset=dataset_get_or_create(slug="flaky"))
    _crash_after(monkeypatch, 1, OperationalError("server closed the connection"))
    with pytest.raises(OperationalError):
        import_job_execute(job_id=job.pk)
    monkeypatch.undo()
    job = import_job_execute(job_id=job.pk)
    assert job.state == ImportState.DONE, job.error
    assert job.report["resumed_after"] == [10]
    _assert_imported_exactly_once(job)


def test_staging_rows_lost_with_the_database_server_are_staged_again(
    sample_regions, settings, tmp_path, monkeypatch
):
    # given a run that died after one batch, and a server crash that emptied the unlogged
    # staging table
    settings.IMPORT_BATCH_ROWS = 10
    job = import_job_create(path=_file(tmp_path), dataset=dataset_get_or_create(slug="lost"))
    _crash_after(monkeypatch, 1, WorkerKilled())
    with pytest.raises(WorkerKilled):
        import_job_execute(job_id=job.pk)
    monkeypatch.undo()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM ingestion_importstage WHERE job_id = %s", [job.pk])
    # when it runs again, the file is staged again and the rest applied
    job = import_job_execute(job_id=job.pk)
    assert job.state == ImportState.DONE, job.error
    _assert_imported_exactly_once(job)


def test_a_second_delivery_while_a_run_is_alive_changes_nothing(sample_regions, monkeypatch):
    # given a job whose run (another worker's session) holds the job lock
    job = import_job_create(
        path=FIXTURES / "nasty_places.csv", dataset=dataset_get_or_create(slug="busy")
    )
    monkeypatch.setattr(run_phase, "JOB_LOCK_WAIT_SECONDS", 0.2)
    with psycopg.connect(**database_kwargs(), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", [int(AdvisoryLock.IMPORT_JOB), job.pk])
        # when the task is delivered a second time
        result = import_job_execute(job_id=job.pk)
    # then the delivery leaves the job to the live run: not claimed, nothing imported
    assert result.state == ImportState.QUEUED
    assert result.attempts == 0
    assert not Place.objects.filter(dataset=job.dataset).exists()


def test_reimport_passes_unchanged_rows_by_fingerprint(sample_regions):
    dataset = dataset_get_or_create(slug="fingerprints")
    first = import_job_execute(
        job_id=import_job_create(path=FIXTURES / "nasty_places.csv", dataset=dataset).pk
    )
    again = import_job_execute(
        job_id=import_job_create(path=FIXTURES / "nasty_places.csv", dataset=dataset).pk
    )
    assert first.report["unchanged_by_fingerprint"] == 0
    assert (again.added, again.updated, again.unchanged) == (0, 0, 4)
    assert again.report["unchanged_by_fingerprint"] == 4
    place = Place.objects.get(dataset=dataset, source_key="p1")
    assert place.source.source_values["_fingerprint"]
    assert "_fingerprint" not in PlaceChange.objects.filter(place=place).get().changes


@pytest.mark.slow
def test_a_region_change_sends_unchanged_rows_through_point_in_polygon_again(sample_regions):
    # given places imported while Southwark had its district polygon
    dataset = dataset_get_or_create(slug="regions-move")
    import_job_execute(
        job_id=import_job_create(path=FIXTURES / "nasty_places.csv", dataset=dataset).pk
    )
    p1 = Place.objects.get(dataset=dataset, source_key="p1")
    southwark = p1.region
    assert southwark.code == "E09000028"
    in_southwark = Place.objects.filter(dataset=dataset, region=southwark).count()
    # when the district loses its pieces and the unchanged file is imported again
    RegionPart.objects.filter(region=southwark).delete()
    job = import_job_execute(
        job_id=import_job_create(path=FIXTURES / "nasty_places.csv", dataset=dataset).pk
    )
    # then p1 is found in no district any more (its country stays), and that is logged
    p1.refresh_from_db()
    assert p1.region is None
    assert p1.country.code == "GBR"
    assert job.report["unchanged_by_fingerprint"] == 0
    assert job.updated == in_southwark
    change = PlaceChange.objects.filter(place=p1).latest("seq")
    assert set(change.changes) == {"region_id"}


def test_dry_run_writes_no_place_and_leaves_no_staging_rows(sample_regions, settings, tmp_path):
    settings.IMPORT_BATCH_ROWS = 10
    path = _file(tmp_path)
    job = import_job_create(
        path=path, dataset=dataset_get_or_create(slug="dry-batches"), dry_run=True
    )
    job = import_job_execute(job_id=job.pk)
    assert job.state == ImportState.DRY_RUN_READY
    assert (job.added, job.rejected) == (ROWS, 2)
    assert not Place.objects.filter(dataset=job.dataset).exists()
    assert _stage_rows(job) == 0


def test_stale_jobs_are_claimed_for_requeueing_once(sample_regions):
    # given a queued job whose message was lost an hour ago, and one queued just now
    dataset = dataset_get_or_create(slug="stale")
    lost = import_job_create(path=FIXTURES / "nasty_places.csv", dataset=dataset)
    fresh = import_job_create(path=FIXTURES / "nasty_places.csv", dataset=dataset)
    hour_ago = timezone.now() - dt.timedelta(hours=1)
    ImportJob.objects.filter(pk=lost.pk).update(heartbeat_at=hour_ago)
    ImportJob.objects.filter(pk=fresh.pk).update(heartbeat_at=timezone.now())
    # when two beat runs look for stale jobs
    first = import_jobs_stale_claim(stale_seconds=600)
    second = import_jobs_stale_claim(stale_seconds=600)
    # then only the lost job is handed out, and only once
    assert lost.pk in first
    assert fresh.pk not in first
    assert lost.pk not in second


def test_finished_jobs_staging_rows_are_swept(sample_regions, settings, tmp_path, monkeypatch):
    # given a run that died, and a job that was then cancelled
    settings.IMPORT_BATCH_ROWS = 10
    job = import_job_create(path=_file(tmp_path), dataset=dataset_get_or_create(slug="swept"))
    _crash_after(monkeypatch, 1, WorkerKilled())
    with pytest.raises(WorkerKilled):
        import_job_execute(job_id=job.pk)
    assert _stage_rows(job) == ROWS + 2
    ImportJob.objects.filter(pk=job.pk).update(state=ImportState.CANCELLED)
    # when the sweep runs
    import_stage_sweep()
    # then its staging rows are gone
    assert _stage_rows(job) == 0


def test_append_mode_counts_kept_rows_as_unchanged_in_batches(sample_regions, settings, tmp_path):
    settings.IMPORT_BATCH_ROWS = 10
    dataset = dataset_get_or_create(slug="append-batches")
    path = _file(tmp_path)
    import_job_execute(job_id=import_job_create(path=path, dataset=dataset).pk)
    changed = tmp_path / "changed.csv"
    changed.write_text(path.read_text().replace("Chapel 1,", "Renamed 1,"), encoding="utf-8")
    job = import_job_execute(
        job_id=import_job_create(path=changed, dataset=dataset, mode=ImportMode.APPEND).pk
    )
    assert (job.added, job.updated, job.unchanged) == (0, 0, ROWS)
    assert Place.objects.get(dataset=dataset, source_key="p1").name == "Chapel 1"

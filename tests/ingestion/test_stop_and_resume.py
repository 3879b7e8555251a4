"""Jobs that stop part-way: what their committed batches applied, cancel, resume.

An apply commits batch by batch, so a job that fails or is cancelled keeps what committed.
Its page and the command say how much; resuming applies only the rest.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import OperationalError
from django.urls import reverse

from ingestion import selectors
from ingestion.models import ImportJob, ImportMode, ImportState
from ingestion.services import jobs
from ingestion.services.imports import apply as apply_phase
from ingestion.services.imports import import_job_execute
from ingestion.services.imports import stage as stage_phase
from ingestion.services.jobs import import_job_create
from places.models import Place
from places.services import dataset_get_or_create
from tests.ingestion.test_batches import ROWS, _assert_imported_exactly_once, _file, _stage_rows

pytestmark = pytest.mark.django_db


def _fail_after(monkeypatch: pytest.MonkeyPatch, batches: int) -> None:
    """The run fails with an ordinary error once ``batches`` batches have committed."""
    apply_batch = apply_phase.apply_batch
    done: list[int] = []

    def apply_then_fail(*args, **kwargs):
        apply_batch(*args, **kwargs)
        done.append(1)
        if len(done) == batches:
            raise RuntimeError("the disk is full")

    monkeypatch.setattr(apply_phase, "apply_batch", apply_then_fail)


def _cancel_after(monkeypatch: pytest.MonkeyPatch, batches: int) -> None:
    """Someone clicks cancel once ``batches`` batches have committed (the run goes on)."""
    apply_batch = apply_phase.apply_batch
    done: list[int] = []
    lock = threading.Lock()

    def apply_then_cancel(job, *args, **kwargs):
        apply_batch(job, *args, **kwargs)
        with lock:  # batches may commit on two connections at once
            done.append(1)
            now = len(done)
        if now == batches:
            cancelled = jobs.import_job_cancel(job=ImportJob.objects.get(pk=job.pk))
            assert cancelled.state == ImportState.RUNNING
            assert cancelled.cancel_requested_at is not None

    monkeypatch.setattr(apply_phase, "apply_batch", apply_then_cancel)


def _job(tmp_path: Path, slug: str, mode: str = ImportMode.UPSERT) -> ImportJob:
    return import_job_create(
        path=_file(tmp_path), dataset=dataset_get_or_create(slug=slug), mode=mode
    )


def test_a_failed_job_says_what_its_committed_batches_applied_and_resumes(
    sample_regions,
    settings,
    tmp_path,
    monkeypatch,
    admin_client,
    django_capture_on_commit_callbacks,
):
    # given a snapshot import in batches of 10 that fails after two batches committed
    settings.IMPORT_BATCH_ROWS = 10
    settings.IMPORT_APPLY_WORKERS = 1
    job = _job(tmp_path, "fails-part-way", ImportMode.SNAPSHOT)
    _fail_after(monkeypatch, 2)
    with pytest.raises(RuntimeError):
        import_job_execute(job_id=job.pk)
    monkeypatch.undo()
    job.refresh_from_db()
    # then the job failed, and says that 20 places were added before it stopped
    assert job.state == ImportState.FAILED
    assert "the disk is full" in job.error
    assert Place.objects.filter(dataset=job.dataset).count() == 20
    applied = selectors.import_job_applied_part(job=job)
    assert applied is not None
    assert (applied.added, applied.updated, applied.retired) == (20, 0, 0)
    assert (applied.batches, applied.batches_total) == (2, 4)
    page = admin_client.get(reverse("admin:ingestion_importjob_change", args=[job.pk]))
    text = page.content.decode()
    assert "Applied before the job stopped" in text
    assert "2 of 4 batches committed: <strong>20</strong> places added" in text
    assert "Places missing from the file are retired only after the last batch" in text
    assert "The job failed part-way. The batches that committed before it stopped stay" in text
    assert "Resume from the checkpoint" in text
    assert "changed nothing" not in text
    # when the curator resumes it
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = admin_client.post(
            reverse("admin:ingestion_importjob_resume", args=[job.pk]), follow=True
        )
    assert f"Job #{job.pk} queued to go on from its checkpoint." in response.content.decode()
    assert len(callbacks) == 1  # the task is sent once the transaction commits
    job.refresh_from_db()
    assert (job.state, job.error, job.added) == (ImportState.QUEUED, "", 20)
    job = import_job_execute(job_id=job.pk)
    # then only the other two batches were applied, each row exactly once
    assert job.state == ImportState.DONE, job.error
    assert job.report["resumed_after"] == [20]
    _assert_imported_exactly_once(job)
    assert _stage_rows(job) == 0


def test_a_running_job_cancelled_stops_after_its_batch_and_resumes_by_command(
    sample_regions, settings, tmp_path, monkeypatch, capsys
):
    # given a run in batches of 10, cancelled while the second batch is being applied
    settings.IMPORT_BATCH_ROWS = 10
    settings.IMPORT_APPLY_WORKERS = 1
    job = _job(tmp_path, "cancelled-part-way")
    _cancel_after(monkeypatch, 2)
    job = import_job_execute(job_id=job.pk)
    monkeypatch.undo()
    # then the run stopped after that batch: cancelled, with what committed kept
    assert job.state == ImportState.CANCELLED
    assert Place.objects.filter(dataset=job.dataset).count() == 20
    assert (job.added, job.checkpoint["batches"]) == (20, 2)
    assert _stage_rows(job) == 0
    assert selectors.import_job_resumable(job=job)
    assert "was cancelled part-way" in selectors.import_job_state_help(job=job)
    call_command("import_job", "status", str(job.pk))
    assert "stopped part-way: 2 of 4 batches committed" in capsys.readouterr().out
    # when it is resumed from the command line
    call_command("import_job", "resume", str(job.pk), "--sync")
    # then the rest was applied, each row once
    job.refresh_from_db()
    assert job.state == ImportState.DONE, job.error
    _assert_imported_exactly_once(job)
    assert f"job #{job.pk} done: {ROWS + 2} rows read; {ROWS} added" in capsys.readouterr().out


def test_a_dry_run_cancelled_while_reading_writes_nothing(sample_regions, tmp_path, monkeypatch):
    job = import_job_create(
        path=_file(tmp_path), dataset=dataset_get_or_create(slug="dry-cancel"), dry_run=True
    )
    stop = stage_phase.import_job_stop_if_cancelled

    def cancel_then_check(job_id: int) -> None:
        ImportJob.objects.filter(pk=job_id).update(cancel_requested_at="2026-12-03T12:00Z")
        stop(job_id)

    monkeypatch.setattr(stage_phase, "import_job_stop_if_cancelled", cancel_then_check)
    job = import_job_execute(job_id=job.pk)
    assert job.state == ImportState.CANCELLED
    assert (job.added, job.updated, job.retired) == (0, 0, 0)
    assert not Place.objects.filter(dataset=job.dataset).exists()
    assert _stage_rows(job) == 0
    assert selectors.import_job_applied_part(job=job) is None
    assert selectors.import_job_state_help(job=job) == (
        "The dry run was cancelled; it changed nothing. Resume runs it again."
    )


def test_cancel_of_a_running_job_in_the_admin_asks_it_to_stop(admin_client, tmp_path):
    job = import_job_create(path=_file(tmp_path), dataset=dataset_get_or_create(slug="click"))
    ImportJob.objects.filter(pk=job.pk).update(
        state=ImportState.RUNNING, started_at="2026-12-03T10:00Z"
    )
    page = admin_client.get(reverse("admin:ingestion_importjob_change", args=[job.pk]))
    assert "Stop after the current batch" in page.content.decode()
    response = admin_client.post(
        reverse("admin:ingestion_importjob_cancel", args=[job.pk]), follow=True
    )
    text = response.content.decode()
    assert f"Job #{job.pk} stops after the batch it is applying" in text
    assert "Stopping after the current batch" in text  # the state, as the page shows it
    job.refresh_from_db()
    assert job.state == ImportState.RUNNING
    assert job.cancel_requested_at is not None
    # a second click changes nothing: the job is already stopping
    asked = job.cancel_requested_at
    response = admin_client.post(
        reverse("admin:ingestion_importjob_cancel", args=[job.pk]), follow=True
    )
    assert f"Job #{job.pk} stops after the batch it is applying" in response.content.decode()
    job.refresh_from_db()
    assert job.cancel_requested_at == asked


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"state": ImportState.RUNNING}, "A worker is applying the file in batches"),
        ({"state": ImportState.RUNNING, "dry_run": True}, "A worker is running the dry run"),
        ({"state": ImportState.FAILED}, "The job failed before it ran, so nothing changed"),
        (
            {"state": ImportState.FAILED, "started_at": "2026-12-03T10:00Z"},
            "The job failed part-way. The batches that committed",
        ),
        ({"state": ImportState.CANCELLED}, "The job was cancelled before it ran; nothing changed"),
        ({"state": ImportState.DONE}, "The import is applied."),
    ],
)
def test_each_state_says_what_happened(tmp_path, admin_client, changes, expected):
    job = import_job_create(path=_file(tmp_path), dataset=dataset_get_or_create(slug="states"))
    ImportJob.objects.filter(pk=job.pk).update(**changes)
    job.refresh_from_db()
    assert selectors.import_job_state_help(job=job).startswith(expected)
    page = admin_client.get(reverse("admin:ingestion_importjob_change", args=[job.pk]))
    assert expected in page.content.decode()


def test_a_resumed_run_that_dies_while_validating_stages_again_before_applying(
    sample_regions, settings, tmp_path, monkeypatch
):
    # given a job that failed after one batch, resumed
    settings.IMPORT_BATCH_ROWS = 10
    settings.IMPORT_APPLY_WORKERS = 1
    job = _job(tmp_path, "resume-validate")
    _fail_after(monkeypatch, 1)
    with pytest.raises(RuntimeError):
        import_job_execute(job_id=job.pk)
    monkeypatch.undo()
    jobs.import_job_resume(job=ImportJob.objects.get(pk=job.pk), enqueue=False)
    # when the resumed run loses its connection while checking the staged rows
    fill = stage_phase._fill_raw_values

    def lost(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(stage_phase, "_fill_raw_values", lost)
    with pytest.raises(OperationalError):
        import_job_execute(job_id=job.pk)
    # then its checkpoint no longer says the file is staged
    job.refresh_from_db()
    assert job.state == ImportState.RUNNING
    assert "staged" not in job.checkpoint
    # and the retry stages and checks the file again: the repeated key is still refused
    monkeypatch.setattr(stage_phase, "_fill_raw_values", fill)
    job = import_job_execute(job_id=job.pk)
    assert job.state == ImportState.DONE, job.error
    _assert_imported_exactly_once(job)


def test_a_resumed_job_cancelled_while_queued_stays_resumable(sample_regions, settings, tmp_path):
    settings.IMPORT_BATCH_ROWS = 10
    job = _job(tmp_path, "resume-cancel")
    ImportJob.objects.filter(pk=job.pk).update(
        state=ImportState.FAILED, started_at="2026-12-03T10:00Z", added=20
    )
    job = jobs.import_job_resume(job=ImportJob.objects.get(pk=job.pk), enqueue=False)
    job = jobs.import_job_cancel(job=job)
    assert job.state == ImportState.CANCELLED
    assert selectors.import_job_resumable(job=job)
    assert selectors.import_job_applied_part(job=job).added == 20
    assert selectors.import_job_state_help(job=job).startswith("The job was cancelled part-way")


def test_a_cancel_after_the_last_batch_stops_a_snapshot_before_it_retires(
    sample_regions, settings, tmp_path, monkeypatch
):
    # given a snapshot import of a dataset that has a place the file no longer holds
    settings.IMPORT_BATCH_ROWS = 100
    settings.IMPORT_APPLY_WORKERS = 1
    first = _job(tmp_path, "snapshot-cancel", ImportMode.SNAPSHOT)
    assert import_job_execute(job_id=first.pk).state == ImportState.DONE
    shorter = tmp_path / "shorter.csv"
    shorter.write_text("\n".join(_file(tmp_path).read_text().splitlines()[:-5]) + "\n")
    job = import_job_create(path=shorter, dataset=first.dataset, mode=ImportMode.SNAPSHOT)
    # when the cancel comes once the only batch has committed
    _cancel_after(monkeypatch, 1)
    job = import_job_execute(job_id=job.pk)
    # then the job is cancelled and nothing was retired
    assert job.state == ImportState.CANCELLED
    assert job.retired == 0
    assert not Place.objects.filter(dataset=job.dataset, status="retired").exists()
    # and a resume only has the retirement left to do
    monkeypatch.undo()
    jobs.import_job_resume(job=job, enqueue=False)
    job = import_job_execute(job_id=job.pk)
    assert job.state == ImportState.DONE, job.error
    assert job.retired == Place.objects.filter(dataset=job.dataset, status="retired").count() > 0


def test_resume_and_cancel_messages_fit_a_dry_run(tmp_path):
    job = import_job_create(
        path=_file(tmp_path), dataset=dataset_get_or_create(slug="dry-words"), dry_run=True
    )
    ImportJob.objects.filter(pk=job.pk).update(state=ImportState.RUNNING)
    job = jobs.import_job_cancel(job=ImportJob.objects.get(pk=job.pk))
    assert selectors.import_job_step_outcome(job=job, step="cancel") == (
        "stops at its next check; a dry run writes nothing"
    )
    assert selectors.import_job_state_help(job=job).startswith("Cancel requested: the dry run")
    ImportJob.objects.filter(pk=job.pk).update(state=ImportState.FAILED, started_at=job.created_at)
    job = jobs.import_job_resume(job=ImportJob.objects.get(pk=job.pk), enqueue=False)
    assert selectors.import_job_step_outcome(job=job, step="resume") == (
        "queued to run the dry run again"
    )


def test_a_snapshot_job_page_shows_its_consistency_report(sample_regions, tmp_path, admin_client):
    job = import_job_execute(job_id=_job(tmp_path, "consistent", ImportMode.SNAPSHOT).pk)
    assert job.state == ImportState.DONE, job.error
    page = admin_client.get(reverse("admin:ingestion_importjob_change", args=[job.pk]))
    assert (
        f"After this snapshot: {ROWS} rows in the source (2 rejected), {ROWS} places active; "
        "0 in the source but not active, 0 active but not in the source (the dataset matches "
        "the file)."
    ) in page.content.decode()

"""Batches applied on several connections at once (``IMPORT_APPLY_WORKERS`` > 1).

The other connections see only committed rows, so these tests run outside the rolled-back
test transaction, each with a dataset of its own (the rows stay, like the session's sample
import). The real kill -9 of a worker applying on two connections is in test_worker.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from ingestion.models import ImportJob, ImportState
from ingestion.services.imports import apply as apply_phase
from ingestion.services.imports import import_job_execute
from ingestion.services.imports.checkpoint import (
    checkpoint_pending_batches,
    checkpoint_with_batch,
)
from ingestion.services.jobs import import_job_create
from places.models import Place
from places.services import dataset_get_or_create
from tests.ingestion.test_batches import WorkerKilled, _assert_imported_exactly_once, _file
from tests.ingestion.test_stop_and_resume import _cancel_after

# The function itself, for the test of it: every other test here pins its answer.
places_table_pages = apply_phase._places_table_pages


@pytest.fixture(autouse=True)
def _places_table_big_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    """A places table too small holds the other batches back until the first has grown it
    (the tests of that set it to 0): whether it is depends on which tests ran before, so
    here it is pinned, and two connections apply at once from the first batch."""
    monkeypatch.setattr(apply_phase, "_places_table_pages", lambda: apply_phase.PLANNABLE_PAGES)


@pytest.fixture
def committed(sample_regions, django_db_blocker) -> Iterator[None]:
    with django_db_blocker.unblock():
        yield
        connection.close()


def test_out_of_order_commits_leave_a_checkpoint_to_resume_from():
    checkpoint = {"last_sid": 0, "max_sid": 45, "batch_rows": 10}
    # batches 3 and 2 commit before batch 1
    for after, upto in [(20, 30), (10, 20)]:
        checkpoint = checkpoint_with_batch(
            checkpoint, after=after, upto=upto, conflicts=0, by_fingerprint=1
        )
    assert (checkpoint["last_sid"], checkpoint["applied"]) == (0, [[10, 20], [20, 30]])
    assert checkpoint_pending_batches(checkpoint) == [(0, 10), (30, 40), (40, 45)]
    checkpoint = checkpoint_with_batch(checkpoint, after=0, upto=10, conflicts=2, by_fingerprint=0)
    assert (checkpoint["last_sid"], checkpoint["applied"]) == (30, [])
    assert (checkpoint["batches"], checkpoint["conflicts"], checkpoint["by_fingerprint"]) == (
        3,
        2,
        2,
    )
    assert checkpoint_pending_batches(checkpoint) == [(30, 40), (40, 45)]


def test_batches_run_at_once_on_their_own_connections(committed, settings, tmp_path, monkeypatch):
    settings.IMPORT_BATCH_ROWS = 10
    settings.IMPORT_APPLY_WORKERS = 2
    job = import_job_create(
        path=_file(tmp_path), dataset=dataset_get_or_create(slug=f"two-{uuid.uuid4().hex[:8]}")
    )
    # The first two batches wait for each other: applied one after the other, they would
    # never meet and the barrier would break.
    meet = threading.Barrier(2, timeout=60)
    backends: set[int] = set()
    apply_batch = apply_phase.apply_batch

    def apply_together(*args, **kwargs):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backends.add(cursor.fetchone()[0])
        if kwargs["after"] < 20:
            meet.wait()
        apply_batch(*args, **kwargs)

    monkeypatch.setattr(apply_phase, "apply_batch", apply_together)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        own = cursor.fetchone()[0]
    job = import_job_execute(job_id=job.pk)
    assert job.state == ImportState.DONE, job.error
    assert own not in backends
    assert len(backends) >= 2
    assert job.report["batches"] == 4
    assert (job.checkpoint["last_sid"], job.checkpoint["applied"]) == (37, [])
    _assert_imported_exactly_once(job)


def _noting_batches(
    monkeypatch: pytest.MonkeyPatch,
    events: list[tuple[str, int, int]],
    before_first: Callable[[], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> None:
    """Record each batch's start and end with its backend; ``on_start`` is told each batch's
    start once recorded, ``before_first`` runs in the first batch's thread before it is
    applied."""
    lock = threading.Lock()
    apply_batch = apply_phase.apply_batch

    def apply_noted(*args: Any, **kwargs: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]
        with lock:
            events.append(("start", kwargs["after"], backend))
        if on_start is not None:
            on_start(kwargs["after"])
        if kwargs["after"] == 0 and before_first is not None:
            before_first()
        apply_batch(*args, **kwargs)
        with lock:
            events.append(("end", kwargs["after"], backend))

    monkeypatch.setattr(apply_phase, "apply_batch", apply_noted)


def _job_of_four_batches(settings: Any, tmp_path: Path, name: str) -> ImportJob:
    """The test file's job in four batches of 10 rows, to apply on two connections."""
    settings.IMPORT_BATCH_ROWS = 10
    settings.IMPORT_APPLY_WORKERS = 2
    return import_job_create(
        path=_file(tmp_path), dataset=dataset_get_or_create(slug=f"{name}-{uuid.uuid4().hex[:8]}")
    )


def test_into_a_places_table_without_pages_the_others_wait_for_the_first_batch(
    committed, settings, tmp_path, monkeypatch
):
    # given a places table that has no page (emptied and vacuumed), where a diff planned
    # then would probe places by reading the whole table once per row, and a first batch
    # that takes its time
    monkeypatch.setattr(apply_phase, "_places_table_pages", lambda: 0)
    job = _job_of_four_batches(settings, tmp_path, "alone")
    events: list[tuple[str, int, int]] = []
    _noting_batches(monkeypatch, events, before_first=lambda: time.sleep(0.5))
    # when it is imported on two connections
    job = import_job_execute(job_id=job.pk)
    # then no other batch began before the first had committed
    assert job.state == ImportState.DONE, job.error
    assert [event[:2] for event in events[:2]] == [("start", 0), ("end", 0)]
    assert {after for kind, after, _ in events[2:] if kind == "start"} == {10, 20, 30}
    assert job.report["batches"] == 4
    _assert_imported_exactly_once(job)


def test_the_others_start_once_the_first_batch_has_written_enough_pages(
    committed, settings, tmp_path, monkeypatch
):
    # given a places table without pages until the first batch has begun to write
    writing = threading.Event()
    monkeypatch.setattr(
        apply_phase,
        "_places_table_pages",
        lambda: apply_phase.PLANNABLE_PAGES if writing.is_set() else 0,
    )
    job = _job_of_four_batches(settings, tmp_path, "pages")
    second_began = threading.Event()
    events: list[tuple[str, int, int]] = []

    def write_then_wait_for_another() -> None:
        writing.set()
        # the first batch ends only once another has begun: both run at once
        assert second_began.wait(timeout=60)

    def tell_a_second(after: int) -> None:
        if after != 0:
            second_began.set()

    _noting_batches(
        monkeypatch, events, before_first=write_then_wait_for_another, on_start=tell_a_second
    )
    # when it is imported on two connections
    job = import_job_execute(job_id=job.pk)
    # then a second batch began while the first was still running
    assert job.state == ImportState.DONE, job.error
    first_end = events.index(next(e for e in events if e[:2] == ("end", 0)))
    assert any(kind == "start" and after != 0 for kind, after, _ in events[:first_end])
    _assert_imported_exactly_once(job)


def test_a_first_batch_that_fails_on_a_table_without_pages_starts_no_other(
    committed, settings, tmp_path, monkeypatch
):
    # given a places table without pages and a first batch that fails
    monkeypatch.setattr(apply_phase, "_places_table_pages", lambda: 0)
    job = _job_of_four_batches(settings, tmp_path, "fails")
    events: list[tuple[str, int, int]] = []

    def fail() -> None:
        raise WorkerKilled

    _noting_batches(monkeypatch, events, before_first=fail)
    # when it is imported on two connections
    with pytest.raises(WorkerKilled):
        import_job_execute(job_id=job.pk)
    # then no other batch began, and nothing was written
    assert [event[:2] for event in events] == [("start", 0)]
    assert not Place.objects.filter(dataset=job.dataset).exists()
    # and a run again applies every batch
    monkeypatch.undo()
    job = import_job_execute(job_id=job.pk)
    assert job.state == ImportState.DONE, job.error
    assert job.report["batches"] == 4
    _assert_imported_exactly_once(job)


@pytest.mark.django_db
def test_the_places_table_has_pages_from_its_first_row():
    with connection.cursor() as cursor:
        # Inside the test's transaction, rolled back after it: a new, empty file. A lock
        # held elsewhere makes it fail rather than wait.
        cursor.execute("SET LOCAL lock_timeout = '5s'")
        cursor.execute("TRUNCATE places_place CASCADE")
    assert places_table_pages() == 0
    Place.objects.create(
        dataset=dataset_get_or_create(slug="pages"), source_key="k:1", location="POINT(0 0)"
    )
    assert places_table_pages() == 1


def test_a_run_killed_while_applying_on_two_connections_resumes_once(
    committed, settings, tmp_path, monkeypatch
):
    settings.IMPORT_BATCH_ROWS = 5
    settings.IMPORT_APPLY_WORKERS = 2
    job = import_job_create(
        path=_file(tmp_path), dataset=dataset_get_or_create(slug=f"kill-{uuid.uuid4().hex[:8]}")
    )
    apply_batch = apply_phase.apply_batch
    committed_batches: list[int] = []
    lock = threading.Lock()

    def apply_then_die(*args, **kwargs):
        apply_batch(*args, **kwargs)
        with lock:
            committed_batches.append(kwargs["upto"])
            if len(committed_batches) == 3:
                raise WorkerKilled

    monkeypatch.setattr(apply_phase, "apply_batch", apply_then_die)
    with pytest.raises(WorkerKilled):
        import_job_execute(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == ImportState.RUNNING
    assert 3 <= job.checkpoint["batches"] < 8
    monkeypatch.undo()
    job = import_job_execute(job_id=job.pk)
    assert job.state == ImportState.DONE, job.error
    assert job.attempts == 2
    # the resumed run applied only the batches that had not committed: eight in all
    assert job.report["batches"] == 8
    _assert_imported_exactly_once(job)


def test_cancel_on_two_apply_connections_lets_running_batches_commit(
    committed, settings, tmp_path, monkeypatch
):
    # given two apply connections, and a cancel once the first batch has committed
    settings.IMPORT_BATCH_ROWS = 5
    settings.IMPORT_APPLY_WORKERS = 2
    job = import_job_create(
        path=_file(tmp_path), dataset=dataset_get_or_create(slug=f"cancel-{uuid.uuid4().hex[:8]}")
    )
    _cancel_after(monkeypatch, 1)
    job = import_job_execute(job_id=job.pk)
    # then what committed is counted exactly
    assert job.state == ImportState.CANCELLED
    created = Place.objects.filter(dataset=job.dataset).count()
    assert job.added == created == job.checkpoint["batches"] * 5
    # It stopped early: the batch the cancel came in, the one running beside it and at most
    # one the other connection began in the instant before the cancel was written.
    assert 1 <= job.checkpoint["batches"] <= 3 < 8

"""What a run keeps while it goes: step times, the heartbeat, the live progress shown in the
admin, and whether someone asked it to stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.core.cache import cache
from django.db.models.functions import Now

from ingestion.models import ImportJob
from ingestion.selectors import PROGRESS_KEY

# Sorting and hashing a million keys in memory rather than in temporary files.
IMPORT_WORK_MEM = "256MB"
PROGRESS_SECONDS = 3600


class ImportCancelled(Exception):
    """Someone cancelled the job while it ran; the run stops at a batch boundary."""


@dataclass
class ImportCounts:
    """What one run did (the job row holds the totals across runs)."""

    rows_read: int = 0
    rejected: int = 0
    retired: int = 0
    step_seconds: dict[str, float] = field(default_factory=dict)
    samples: dict[str, Any] = field(default_factory=dict)

    # Batches may be applied by several threads at once (their step times add up).
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(step, time.perf_counter() - started)

    def add(self, step: str, seconds: float) -> None:
        with self._lock:
            self.step_seconds[step] = round(self.step_seconds.get(step, 0.0) + seconds, 3)


def import_job_heartbeat(job_id: int) -> None:
    """The run is alive: a job whose heartbeat goes stale is re-queued by the beat task."""
    ImportJob.objects.filter(pk=job_id).update(heartbeat_at=Now())


def import_job_progress_publish(
    job_id: int, *, rows: int, phase: str, batches: int = 0, batches_total: int = 0
) -> None:
    """Rows read, what the run is doing now and, while applying, the batches committed,
    for the admin's progress bar (``ingestion.selectors.import_job_status``)."""
    value = {"rows": rows, "phase": phase, "batches": batches, "batches_total": batches_total}
    cache.set(PROGRESS_KEY.format(job_id), value, PROGRESS_SECONDS)


def import_job_progress_clear(job_id: int) -> None:
    cache.delete(PROGRESS_KEY.format(job_id))


def import_job_stop_if_cancelled(job_id: int) -> None:
    """Raise ``ImportCancelled`` when a cancel was asked for (checked between batches, so
    every batch either commits whole or does not start)."""
    if ImportJob.objects.filter(pk=job_id, cancel_requested_at__isnull=False).exists():
        raise ImportCancelled

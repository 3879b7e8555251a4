"""The job's checkpoint: which staged rows are applied, so that a resumed or redelivered run
applies only the rest.

Keys: ``staged`` and ``max_sid`` (staging finished: how many rows, the last sid),
``batch_rows`` (the grid of batches), ``last_sid`` (every row up to it is applied),
``applied`` (ranges ``[after, upto]`` committed past ``last_sid``, out of order),
``batches``, ``conflicts`` and ``by_fingerprint`` (cumulative), ``region_stamp`` (the
regions the fingerprints were taken under), ``resumed_after`` (where each resumed run began).
"""

from __future__ import annotations

import logging
from typing import Any

from django.db.models import F
from django.db.models.functions import Now

from ingestion.models import ImportJob

logger = logging.getLogger(__name__)


def checkpoint_resume_note(job_id: int, checkpoint: dict[str, Any]) -> None:
    """Record in the checkpoint that this run goes on from an earlier one's batches."""
    if not (checkpoint.get("last_sid") or checkpoint.get("applied")):
        return
    logger.info(
        "import job %s resumes after row %s (and ranges %s)",
        job_id,
        checkpoint.get("last_sid", 0),
        checkpoint.get("applied", []),
    )
    checkpoint.setdefault("resumed_after", []).append(checkpoint.get("last_sid", 0))


def checkpoint_pending_batches(checkpoint: dict[str, Any]) -> list[tuple[int, int]]:
    """The staged row ranges ``(after, upto]`` still to apply: a fixed grid of
    ``batch_rows`` rows, less the prefix up to ``last_sid`` and the ranges past it that
    committed out of order (``applied``)."""
    size, last, end = checkpoint["batch_rows"], checkpoint.get("last_sid", 0), checkpoint["max_sid"]
    applied = {upto for _, upto in checkpoint.get("applied", [])}
    pending = []
    for start in range(0, end, size):
        after, upto = max(start, last), min(start + size, end)
        if after < upto and upto not in applied:
            pending.append((after, upto))
    return pending


def checkpoint_with_batch(
    checkpoint: dict[str, Any], *, after: int, upto: int, conflicts: int, by_fingerprint: int
) -> dict[str, Any]:
    """The checkpoint once rows ``(after, upto]`` are applied: ``last_sid`` is the end of
    the applied prefix, ``applied`` the ranges that committed past it."""
    last = checkpoint.get("last_sid", 0)
    beyond = []
    for start, end in sorted([*map(tuple, checkpoint.get("applied", [])), (after, upto)]):
        if start <= last:
            last = max(last, end)
        else:
            beyond.append([start, end])
    return {
        **checkpoint,
        "last_sid": last,
        "applied": beyond,
        "batches": checkpoint.get("batches", 0) + 1,
        "conflicts": checkpoint.get("conflicts", 0) + conflicts,
        "by_fingerprint": checkpoint.get("by_fingerprint", 0) + by_fingerprint,
    }


def checkpoint_record_batch(
    job_id: int,
    *,
    after: int,
    upto: int,
    added: int,
    updated: int,
    unchanged: int,
    conflicts: int,
    by_fingerprint: int,
) -> None:
    """Add a batch's counts to the job and its rows to the checkpoint, inside the batch's
    own transaction: the batch's writes and their record commit together. The job row's
    lock orders batches that commit at the same time."""
    saved = ImportJob.objects.select_for_update().values_list("checkpoint", flat=True)
    done = checkpoint_with_batch(
        saved.get(pk=job_id),
        after=after,
        upto=upto,
        conflicts=conflicts,
        by_fingerprint=by_fingerprint,
    )
    ImportJob.objects.filter(pk=job_id).update(
        added=F("added") + added,
        updated=F("updated") + updated,
        unchanged=F("unchanged") + unchanged,
        checkpoint=done,
        heartbeat_at=Now(),
    )

"""Celery tasks of the edge nodes (queue ``edge``): thin, idempotent wrappers around services.

A batch of readings is durable before its answer; nothing here is needed for it to be kept.
"""

from __future__ import annotations

import datetime as dt
import logging

from celery import shared_task
from django.conf import settings

from ingestion.edge.services import batches, nodes, partitions

logger = logging.getLogger(__name__)


@shared_task(name="ingestion.edge.tasks.edge_batch_follow_up", acks_late=True)
def edge_batch_follow_up(batch_id: int) -> bool:
    """Queued when a batch commits: add its readings to the counters behind the metrics.
    Counting marks the batch, so a redelivery or a second run adds nothing."""
    counted = batches.observation_batch_count(batch_id=batch_id)
    if not counted:
        logger.info("batch %s already counted or gone", batch_id)
    return counted


@shared_task(name="ingestion.edge.tasks.edge_batches_count_pending")
def edge_batches_count_pending() -> int:
    """Count batches whose follow-up was lost (beat; safe to overlap: each batch is claimed
    by one counter)."""
    return batches.observation_batches_count_pending(older_than=dt.timedelta(minutes=5))


@shared_task(name="ingestion.edge.tasks.edge_partitions_maintain")
def edge_partitions_maintain() -> dict[str, list[str]]:
    """Create the readings partitions EDGE_PARTITION_MONTHS_AHEAD months ahead and drop those
    wholly older than EDGE_RETENTION_DAYS, a day late (beat, daily; a second run does
    nothing)."""
    return partitions.observation_partitions_maintain(
        months_ahead=settings.EDGE_PARTITION_MONTHS_AHEAD,
        retention_days=settings.EDGE_RETENTION_DAYS,
    )


@shared_task(name="ingestion.edge.tasks.edge_nodes_silent_mark")
def edge_nodes_silent_mark() -> list[int]:
    """Mark nodes silent after EDGE_SILENT_AFTER_SECONDS without contact (beat, every minute)."""
    marked = nodes.edge_nodes_silent_mark(
        silent_after=dt.timedelta(seconds=settings.EDGE_SILENT_AFTER_SECONDS)
    )
    if marked:
        logger.warning("edge nodes marked silent: %s", marked)
    return marked

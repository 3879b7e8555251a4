"""Analytics tasks, on the ``analytics`` queue (``CELERY_TASK_ROUTES``): thin wrappers around
``analytics.services``. Beat runs an incremental recompute every few minutes and a full one
nightly; an import that changed places asks for one when it commits."""

from __future__ import annotations

import logging

from celery import Task, shared_task
from django.core.cache import cache
from django.db import transaction
from kombu.exceptions import OperationalError as BrokerError

from analytics.replica import ReplicaUnavailable
from analytics.services import analytics_recompute as recompute
from analytics.services.results import Busy

logger = logging.getLogger(__name__)

# While an incremental recompute is queued, further requests for one are dropped: it will
# see their data too (it reads after they committed).
QUEUED_KEY = "analytics:recompute:queued"
QUEUED_SECONDS = 600
RETRY_SECONDS = 60


@shared_task(
    bind=True,
    name="analytics.tasks.analytics_recompute",
    acks_late=True,
    max_retries=10,
    ignore_result=True,
)
def analytics_recompute(self: Task, full: bool = False) -> None:
    """Recompute what moved (everything when ``full``). Idempotent: a rerun finds nothing
    moved. Retried later when the replica may not be read, or when another recompute holds
    the lock (it may have read before the data this one was queued for)."""
    if not full:
        cache.delete(QUEUED_KEY)
    try:
        run = recompute(full=full)
    except (ReplicaUnavailable, Busy) as exc:
        logger.info("analytics recompute deferred: %s", type(exc).__name__)
        raise self.retry(exc=exc, countdown=RETRY_SECONDS) from exc
    logger.info(
        "analytics recompute done: %s summaries, %s sensor rollups",
        run.summaries.recomputed,
        run.sensors.sensor_rollups,
    )


def analytics_recompute_soon() -> None:
    """Queue an incremental recompute once the caller's transaction commits (at most one
    queued at a time). A broker that cannot be reached costs only freshness: beat runs one
    within minutes anyway."""

    def send() -> None:
        if not cache.add(QUEUED_KEY, 1, timeout=QUEUED_SECONDS):
            return
        try:
            analytics_recompute.delay()
        except BrokerError:
            cache.delete(QUEUED_KEY)
            logger.warning("analytics recompute not queued: broker unreachable")

    transaction.on_commit(send)


# The downloads' tasks live beside their service; autodiscovery imports this module only.
from analytics import download_tasks  # noqa: E402, F401

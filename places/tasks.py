"""Celery tasks of the places app: thin wrappers around services."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import transaction
from kombu.exceptions import OperationalError as BrokerError

from places import services
from places.services import quality

logger = logging.getLogger(__name__)


@shared_task(name="places.tasks.quality_flags_refresh_due")
def quality_flags_refresh_due() -> list[int]:
    """Compute again the data-quality flags of the datasets that imports or region upkeep
    changed since their last computation (idempotent, beat-scheduled)."""
    return quality.quality_flags_refresh_due()


@shared_task(name="places.tasks.place_attribute_partitions_ensure")
def place_attribute_partitions_ensure(years_ahead: int = 2) -> list[str]:
    """Create next years' attribute partitions ahead of time (idempotent, beat-scheduled)."""
    return services.place_attribute_partitions_ensure(years_ahead=years_ahead)


@shared_task(name="places.tasks.duplicates_find")
def duplicates_find() -> dict[str, int | None]:
    """Look for likely duplicates among all active places (idempotent, beat-scheduled)."""
    found = services.duplicates_find()
    return {"stored": found.stored, "dropped": found.dropped, "places": found.places}


@shared_task(name="places.tasks.duplicates_find_for_job")
def duplicates_find_for_job(job_id: int) -> dict[str, int | None]:
    """Look again at the places one import job created or changed (idempotent)."""
    found = services.duplicates_find_for_job(job_id=job_id)
    return {"stored": found.stored, "dropped": found.dropped, "places": found.places}


def duplicates_find_soon(*, job_id: int) -> None:
    """Queue ``duplicates_find_for_job`` once the caller's transaction commits. A broker
    that cannot be reached costs only freshness: beat's full search finds them later."""

    def send() -> None:
        try:
            duplicates_find_for_job.delay(job_id)
        except BrokerError:
            logger.warning("duplicates of import job %s not queued: broker unreachable", job_id)

    transaction.on_commit(send)

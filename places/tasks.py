"""Celery tasks of the places app: thin wrappers around services."""

from __future__ import annotations

import logging

from celery import shared_task

from places import services

logger = logging.getLogger(__name__)


@shared_task(name="places.tasks.place_attribute_partitions_ensure")
def place_attribute_partitions_ensure(years_ahead: int = 2) -> list[str]:
    """Create next years' attribute partitions ahead of time (idempotent, beat-scheduled)."""
    return services.place_attribute_partitions_ensure(years_ahead=years_ahead)

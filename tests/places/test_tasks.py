"""Beat tasks are idempotent: running one twice leaves the same state as running it once."""

from __future__ import annotations

import pytest
from django.db import connection
from django.utils import timezone

from places import tasks

pytestmark = pytest.mark.django_db


def _partitions() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits "
            "WHERE inhparent = 'places_placeattribute'::regclass"
        )
        return {row[0] for row in cursor.fetchall()}


def test_partition_task_twice_keeps_next_years_present():
    year = timezone.now().year
    tasks.place_attribute_partitions_ensure(years_ahead=3)
    first = _partitions()
    tasks.place_attribute_partitions_ensure(years_ahead=3)
    assert _partitions() == first
    assert {f"places_placeattribute_y{y}" for y in range(year, year + 4)} <= first

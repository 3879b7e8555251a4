"""Yearly partitions of the place attribute table, created ahead of the data."""

from __future__ import annotations

import datetime as dt
import logging

from django.db import connection, transaction
from django.utils import timezone

from places.locks import AdvisoryLock
from places.models import PlaceAttribute

logger = logging.getLogger(__name__)

ATTRIBUTE_TABLE = PlaceAttribute._meta.db_table
ATTRIBUTE_DEFAULT_PARTITION = f"{ATTRIBUTE_TABLE}_default"


def place_attribute_partitions_ensure(
    *, years_ahead: int = 2, today: dt.date | None = None
) -> list[str]:
    """Make sure yearly partitions exist from this year to ``years_ahead`` years ahead.

    Rows that landed in the default partition for a year that now gets its own partition are
    moved into it in the same transaction, so nothing is lost and the call is idempotent.
    Years skipped while the task did not run (after the newest yearly partition) are
    created too. Returns the names of the partitions it created.
    """
    year = (today or timezone.now().date()).year
    created: list[str] = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_try_advisory_xact_lock(%s)", [AdvisoryLock.ATTRIBUTE_PARTITIONS.value]
        )
        if not cursor.fetchone()[0]:
            logger.info("partition maintenance already running elsewhere; skipped")
            return created
        # Writers wait for the few milliseconds this takes, so no row can slip into the
        # default partition between moving its rows out and creating the new partition.
        cursor.execute(f"LOCK TABLE {ATTRIBUTE_TABLE} IN SHARE ROW EXCLUSIVE MODE")
        cursor.execute(
            "SELECT max(substring(c.relname FROM '_y([0-9]{4})$')::int) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            [ATTRIBUTE_TABLE],
        )
        newest = cursor.fetchone()[0]
        first = min(year, newest + 1) if newest else year
        columns = ", ".join(str(f.column) for f in PlaceAttribute._meta.concrete_fields)
        for y in range(first, year + years_ahead + 1):
            name = f"{ATTRIBUTE_TABLE}_y{y}"
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
            if cursor.fetchone()[0]:
                continue
            start, end = f"{y}-01-01", f"{y + 1}-01-01"
            cursor.execute(
                f"CREATE TEMP TABLE _moved ON COMMIT DROP AS WITH d AS ("
                f" DELETE FROM {ATTRIBUTE_DEFAULT_PARTITION}"
                f" WHERE observed_on >= %s AND observed_on < %s RETURNING *) SELECT * FROM d",  # nosec B608 # table names are constants; values are bound
                [start, end],
            )
            cursor.execute(
                f"CREATE TABLE {name} PARTITION OF {ATTRIBUTE_TABLE} FOR VALUES FROM (%s) TO (%s)",
                [start, end],
            )
            cursor.execute(
                f"INSERT INTO {ATTRIBUTE_TABLE} ({columns}) SELECT {columns} FROM _moved"  # nosec B608 # table and model column names only
            )
            cursor.execute("DROP TABLE _moved")
            created.append(name)
            logger.info("created partition %s", name)
    return created

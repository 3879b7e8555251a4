"""Monthly partitions of the readings table: created on demand, ahead of time, and dropped
past retention.

A partition is named ``ingestion_observation_yYYYYmMM`` and holds ``[month start, next month
start)`` in UTC. Creating one takes a transaction-level advisory lock keyed by the month, so
two batches that both need March 2019 create it once; the locks of one transaction are taken
in month order before any partition is created, so two batches needing overlapping months
cannot wait on each other in a cycle.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable
from contextlib import nullcontext

from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from ingestion.edge.models import Observation
from places.locks import AdvisoryLock

logger = logging.getLogger(__name__)

TABLE = Observation._meta.db_table
NAME_PATTERN = re.compile(rf"{TABLE}_y(?P<year>\d{{4}})m(?P<month>\d{{2}})")

MISSING = "SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NULL"
LOCK_MONTH = "SELECT pg_advisory_xact_lock(%s, %s)"
CREATE = "CREATE TABLE IF NOT EXISTS {name} PARTITION OF " + TABLE + " FOR VALUES FROM (%s) TO (%s)"
EXISTING = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = %s::regclass"
)
DROP = "DROP TABLE IF EXISTS {name}"
# A batch checks reading times against retention before it inserts them, and holds no lock
# on their partitions: a month is dropped only once it has been past retention this long,
# far longer than any batch takes, so a batch never finds the partition it checked gone.
DROP_GRACE = dt.timedelta(days=1)


def month_start(value: dt.datetime) -> dt.date:
    utc = value.astimezone(dt.UTC)
    return dt.date(utc.year, utc.month, 1)


def next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def partition_name(month: dt.date) -> str:
    return f"{TABLE}_y{month.year:04d}m{month.month:02d}"


def observation_partitions_missing(*, months: Iterable[dt.date]) -> list[dt.date]:
    """The months (first days) of ``months`` that have no partition yet, in order."""
    wanted = sorted(set(months))
    if not wanted:
        return []
    with connection.cursor() as cursor:
        cursor.execute(MISSING, [[partition_name(m) for m in wanted]])
        missing = {row[0] for row in cursor.fetchall()}
    return [m for m in wanted if partition_name(m) in missing]


def observation_partitions_ensure_months(
    *, months: Iterable[dt.date], cursor: CursorWrapper | None = None
) -> list[str]:
    """Make sure the partitions of ``months`` (first days) exist; returns those it created.

    Commits at once unless the caller holds a transaction: creating a partition takes an
    exclusive lock on the whole readings table, held until commit, so nothing else belongs
    in that transaction (the batch service calls this before its own). One query finds the
    missing months, so months that exist cost one statement.
    """
    wanted = sorted(set(months))
    if not wanted:
        return []
    own = connection.cursor() if cursor is None else nullcontext(cursor)
    with transaction.atomic(savepoint=False), own as cur:
        cur.execute(MISSING, [[partition_name(m) for m in wanted]])
        missing = {row[0] for row in cur.fetchall()}
        if not missing:
            return []
        todo = [m for m in wanted if partition_name(m) in missing]
        # Every lock first, in month order, then the tables (see the module docstring).
        for month in todo:
            cur.execute(LOCK_MONTH, [int(AdvisoryLock.EDGE_PARTITION), _month_key(month)])
        for month in todo:
            name = partition_name(month)
            cur.execute(
                CREATE.format(name=name),
                [_bound(month), _bound(next_month(month))],
            )
            logger.info("created readings partition %s", name)
    return [partition_name(m) for m in todo]


def observation_partitions_maintain(
    *, months_ahead: int, retention_days: int, now: dt.datetime | None = None
) -> dict[str, list[str]]:
    """Create this month's partition and ``months_ahead`` more; drop partitions wholly older
    than ``retention_days`` (0 keeps everything) by ``DROP_GRACE``. Idempotent: a second run
    does nothing."""
    now = now or timezone.now()
    first = month_start(now)
    months = [first]
    for _ in range(max(months_ahead, 0)):
        months.append(next_month(months[-1]))
    created = observation_partitions_ensure_months(months=months)
    dropped: list[str] = []
    if retention_days > 0:
        cutoff = now - dt.timedelta(days=retention_days) - DROP_GRACE
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(EXISTING, [TABLE])
            for (name,) in sorted(cursor.fetchall()):
                match = NAME_PATTERN.fullmatch(name)
                if match is None:
                    continue
                month = dt.date(int(match["year"]), int(match["month"]), 1)
                # Wholly older: its last instant is before the cutoff.
                if _bound(next_month(month)) <= cutoff:
                    cursor.execute(
                        LOCK_MONTH, [int(AdvisoryLock.EDGE_PARTITION), _month_key(month)]
                    )
                    cursor.execute(DROP.format(name=name))
                    dropped.append(name)
                    logger.info("dropped readings partition %s (past retention)", name)
    return {"created": created, "dropped": sorted(dropped)}


def observation_partitions() -> list[str]:
    """Names of the readings partitions that exist, oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(EXISTING, [TABLE])
        return sorted(row[0] for row in cursor.fetchall())


def _bound(month: dt.date) -> dt.datetime:
    return dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)


def _month_key(month: dt.date) -> int:
    return month.year * 100 + month.month

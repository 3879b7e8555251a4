"""A node's batch of readings: checked, stored once, durable before the answer.

``observation_batch_ingest`` is the whole write. First, outside any transaction and taking
no lock: read the parameters and the named sensors, and check every reading (a sensor the
batch declares but that does not exist yet stands in under a provisional id). Only the
months of the readings that will really be inserted get a partition, made in a short
transaction of its own (``partitions``) before the batch's: creating a partition locks the
whole readings table, and holding that lock until the batch commits would stall every other
batch and the map. A batch needing more new months than ``EDGE_MAX_NEW_MONTHS_PER_BATCH`` is
refused (``TooManyNewMonths``, 413) before any is made. Then, in one transaction:

1. claim the idempotency key (insert the batch row; a key already stored answers from it);
2. lock the node's existing sensors the batch writes, in id order (so two batches of one
   node cannot lock them in crossing orders), and upsert the sensors it declares;
3. ``COPY`` the valid readings into a session temporary table and move them into the readings
   table with ``INSERT ... ON CONFLICT DO NOTHING`` (the natural key decides what is new);
4. move the sensors' and the node's newest-reading times forward, store the answer (one
   statement).

No statement runs per reading: per-reading checks are Python over the batch, so a batch
costs about ten round trips whatever its size. A Celery follow-up (``edge`` queue) is queued
on commit; the batch does not depend on it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from ingestion.edge.models import (
    EdgeNode,
    EdgeReadingCount,
    ObservationBatch,
    Parameter,
    Sensor,
)
from ingestion.edge.services import partitions

logger = logging.getLogger(__name__)

BATCH_TABLE = ObservationBatch._meta.db_table
SENSOR_TABLE = Sensor._meta.db_table
NODE_TABLE = EdgeNode._meta.db_table
OBSERVATION_TABLE = partitions.TABLE
STAGE = "edge_readings_in"

CLAIM = (
    f"INSERT INTO {BATCH_TABLE} (node_id, idempotency_key, body_sha256, readings, accepted,"  # nosec B608 # table name is a constant
    " duplicate, rejected, response) VALUES (%s, %s, %s, 0, 0, 0, 0, '{}')"
    " ON CONFLICT (node_id, idempotency_key) DO NOTHING RETURNING id"
)
STORED = (
    f"SELECT body_sha256, response FROM {BATCH_TABLE} WHERE node_id = %s AND idempotency_key = %s"  # nosec B608 # table name is a constant
)
# Declared sensors: created for this node, or their kind/location updated, never taken from
# another node (the WHERE leaves such a row alone and it is not returned).
DECLARE = f"""
INSERT INTO {SENSOR_TABLE} (node_id, external_id, kind, location)
SELECT %(node)s, d.external_id, d.kind,
       CASE WHEN d.lon IS NULL THEN NULL ELSE ST_SetSRID(ST_MakePoint(d.lon, d.lat), 4326) END
FROM unnest(%(ids)s::text[], %(kinds)s::text[], %(lons)s::float8[], %(lats)s::float8[])
     AS d(external_id, kind, lon, lat)
ORDER BY d.external_id
ON CONFLICT (external_id) DO UPDATE
SET kind = COALESCE(NULLIF(EXCLUDED.kind, ''), {SENSOR_TABLE}.kind),
    location = COALESCE(EXCLUDED.location, {SENSOR_TABLE}.location)
WHERE {SENSOR_TABLE}.node_id = EXCLUDED.node_id
  AND ({SENSOR_TABLE}.kind, {SENSOR_TABLE}.location)
      IS DISTINCT FROM (COALESCE(NULLIF(EXCLUDED.kind, ''), {SENSOR_TABLE}.kind),
                        COALESCE(EXCLUDED.location, {SENSOR_TABLE}.location))
RETURNING external_id, id
"""  # nosec B608 # table names are constants; values are bound
# Taken before any other sensor row lock of the batch (the declaration's upsert, FINISH).
LOCK_SENSORS = f"SELECT id FROM {SENSOR_TABLE} WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE"  # nosec B608 # table name is a constant
# Session-lived, emptied at every commit; the move below empties it too, so a second batch
# inside one outer transaction (tests) starts empty.
CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGE} (sensor_id bigint, parameter_id bigint,"
    " time timestamptz, value float8) ON COMMIT DELETE ROWS"
)
COPY_STAGE = f"COPY {STAGE} (sensor_id, parameter_id, time, value) FROM STDIN"
# Key order on insert: two batches carrying the same readings lock them in the same order.
MOVE = f"""
WITH moved AS (DELETE FROM {STAGE} RETURNING sensor_id, parameter_id, time, value)
INSERT INTO {OBSERVATION_TABLE} (sensor_id, parameter_id, time, value, batch_id)
SELECT sensor_id, parameter_id, time, value, %s FROM moved
ORDER BY sensor_id, parameter_id, time
ON CONFLICT DO NOTHING
"""  # nosec B608 # table names are constants; values are bound
# The sensors' and the node's newest reading (only ever forward), the node's contact (a
# silent node is active again) and count of batches (the sensors layer's version), and the
# answer: one round trip.
FINISH = f"""
WITH sensors AS (
    UPDATE {SENSOR_TABLE} AS s SET last_reading_at = v.newest
    FROM unnest(%(sensor_ids)s::bigint[], %(sensor_newest)s::timestamptz[]) AS v(id, newest)
    WHERE s.id = v.id AND (s.last_reading_at IS NULL OR s.last_reading_at < v.newest)
), node AS (
    UPDATE {NODE_TABLE} SET last_seen_at = now(), batches_stored = batches_stored + 1,
        last_reading_at = GREATEST(last_reading_at, %(newest)s::timestamptz),
        status = CASE WHEN status = 'silent' THEN 'active' ELSE status END
    WHERE id = %(node)s
)
UPDATE {BATCH_TABLE} SET readings = %(readings)s, accepted = %(accepted)s,
    duplicate = %(duplicate)s, rejected = %(rejected)s, response = %(response)s::jsonb
WHERE id = %(batch)s
"""  # nosec B608 # table names are constants; values are bound

# Deadlocks between batches are retried (sensor rows are locked in id order first, so none
# is expected), and the loser's transaction was rolled back whole.
RETRYABLE_SQLSTATES = {"40P01", "40001"}
MAX_FINITE = sys.float_info.max
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class SensorDeclaration:
    external_id: str
    kind: str
    lon: float | None
    lat: float | None


@dataclass(frozen=True)
class ReadingIn:
    index: int
    sensor: str
    parameter: str
    time: dt.datetime
    value: float


@dataclass(frozen=True)
class ItemError:
    index: int
    field: str
    code: str
    message: str


@dataclass(frozen=True)
class BatchOutcome:
    response: dict[str, Any]
    replayed: bool


class IdempotencyKeyReused(Exception):
    """The key was used before for a different body (HTTP 422)."""

    code = "idempotency_key_reused"

    def __init__(self, idempotency_key: str) -> None:
        self.message = (
            f"The Idempotency-Key {idempotency_key!r} was already used for a different body; "
            "use a new key for a new batch."
        )
        super().__init__(self.message)


class SensorOfOtherNode(Exception):
    """The batch declares a sensor registered to another node (HTTP 403); nothing is stored.

    ``index`` is the position in ``sensors``; ``message`` names the sensor and the field.
    (A *reading* of another node's sensor is only that reading's ``sensor_of_other_node``.)
    """

    code = "sensor_of_other_node"

    def __init__(self, sensor: str, index: int | None, field: str) -> None:
        self.sensor = sensor
        self.index = index
        self.field = field
        self.message = f"Sensor {sensor!r} ({field}) is registered to another node."
        super().__init__(self.message)


class TooManyNewMonths(Exception):
    """The batch's readings need more new month partitions than one batch may create (HTTP
    413); nothing is stored and the key stays free: smaller batches get them a few at a
    time."""

    code = "too_many_months"

    def __init__(self, needed: int, limit: int) -> None:
        self.needed = needed
        self.limit = limit
        self.message = (
            f"The batch's readings fall in {needed} months that have no partition yet; one "
            f"batch may add at most {limit} (EDGE_MAX_NEW_MONTHS_PER_BATCH). Send fewer "
            "months per batch."
        )
        super().__init__(self.message)


class SensorDeclarationInvalid(ValueError):
    """A declaration in ``sensors`` breaks a rule the parser cannot know (HTTP 400)."""

    code = "invalid"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(message)


def observation_batch_ingest(
    *,
    node: EdgeNode,
    idempotency_key: str,
    body_sha256: str,
    sensors: list[SensorDeclaration],
    readings: list[ReadingIn],
    item_errors: list[ItemError],
) -> BatchOutcome:
    """Store a batch once per (node, idempotency key), committed before returning.

    Invariants: a reading is stored once by its natural key (sensor, parameter, time),
    whatever batch carried it; a stored key answers with the first answer (``replayed``) or
    ``IdempotencyKeyReused`` for another body; a batch declaring another node's sensor raises
    ``SensorOfOtherNode`` with nothing stored and the key left free (a reading naming one is
    rejected on its own, ``sensor_of_other_node``), so does one needing too many new months
    (``TooManyNewMonths``); any error rolls back the batch row and its readings together.
    Two concurrent calls with one key: the second waits on the first's key and replays its
    answer.
    """
    _check_declarations(sensors)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return _ingest(
                node=node,
                idempotency_key=idempotency_key,
                body_sha256=body_sha256,
                sensors=sensors,
                readings=readings,
                item_errors=item_errors,
            )
        except OperationalError as exc:
            sqlstate = getattr(exc.__cause__, "sqlstate", None)
            # Inside a caller's transaction the whole of it is lost: only a top-level call
            # can start again.
            if (
                sqlstate not in RETRYABLE_SQLSTATES
                or attempt == MAX_ATTEMPTS
                or connection.in_atomic_block
            ):
                raise
            logger.warning("batch %s of node %s: %s; retrying", idempotency_key, node.pk, exc)
    raise AssertionError("unreachable")  # pragma: no cover


def _ingest(
    *,
    node: EdgeNode,
    idempotency_key: str,
    body_sha256: str,
    sensors: list[SensorDeclaration],
    readings: list[ReadingIn],
    item_errors: list[ItemError],
) -> BatchOutcome:
    # Checks first, with no transaction and no lock (see the module docstring).
    window = _TimeWindow.at(timezone.now())
    parameters = {p.code: p for p in Parameter.objects.all()}
    known, foreign = _sensors_known(node=node, sensors=sensors, readings=readings)
    _refuse_other_nodes(foreign, sensors=sensors)
    provisional = {
        d.external_id: -(i + 1) for i, d in enumerate(sensors) if d.external_id not in known
    }
    checked = _readings_check(
        readings=readings,
        sensor_ids={**known, **provisional},
        foreign=foreign,
        parameters=parameters,
        window=window,
    )
    _partitions_prepare({partitions.month_start(row[2]) for row in checked.rows})

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(CLAIM, [node.pk, idempotency_key, body_sha256])
        claimed = cursor.fetchone()
        if claimed is None:
            return _replay(cursor, node=node, key=idempotency_key, body_sha256=body_sha256)
        batch_id = claimed[0]

        written = {sid for sid in checked.newest_by_sensor if sid > 0}
        locked = sorted(written | {known[d.external_id] for d in sensors if d.external_id in known})
        if locked:
            cursor.execute(LOCK_SENSORS, [locked])
        if sensors:
            declared = _sensors_declare(cursor, node=node, sensors=sensors, known=known)
            _resolve_provisional(checked, {provisional[n]: declared[n] for n in provisional})
        accepted = 0
        if checked.rows:
            cursor.execute(CREATE_STAGE)
            with cursor.cursor.copy(COPY_STAGE) as copy:
                copy.write(_copy_text(checked.rows))
            cursor.execute(MOVE, [batch_id])
            accepted = cursor.rowcount

        errors = sorted([*item_errors, *checked.errors], key=lambda e: (e.index, e.field))
        rejected = len(item_errors) + checked.rejected
        duplicate = checked.duplicate_in_batch + (len(checked.rows) - accepted)
        response: dict[str, Any] = {
            "batch": batch_id,
            "accepted": accepted,
            "duplicate": duplicate,
            "rejected": rejected,
            "errors": [
                {"index": e.index, "field": e.field, "code": e.code, "message": e.message}
                for e in errors
            ],
        }
        cursor.execute(
            FINISH,
            {
                "node": node.pk,
                "batch": batch_id,
                "newest": max(checked.newest_by_sensor.values(), default=None),
                "sensor_ids": list(checked.newest_by_sensor),
                "sensor_newest": list(checked.newest_by_sensor.values()),
                "readings": len(readings) + len(item_errors),
                "accepted": accepted,
                "duplicate": duplicate,
                "rejected": rejected,
                "response": _json(response),
            },
        )
        transaction.on_commit(lambda: _follow_up(batch_id), robust=True)
    return BatchOutcome(response=response, replayed=False)


def _partitions_prepare(months: set[dt.date]) -> None:
    """The partitions of ``months``, committed before the batch's own transaction (inside a
    caller's transaction, tests, they join it). Raises ``TooManyNewMonths`` past
    ``EDGE_MAX_NEW_MONTHS_PER_BATCH`` new ones."""
    if not months:
        return
    missing = partitions.observation_partitions_missing(months=months)
    limit = settings.EDGE_MAX_NEW_MONTHS_PER_BATCH
    if len(missing) > limit:
        raise TooManyNewMonths(len(missing), limit)
    if missing:
        partitions.observation_partitions_ensure_months(months=missing)


def _resolve_provisional(checked: _Checked, real: dict[int, int]) -> None:
    """Put the ids of the sensors the batch created in place of their provisional ids."""
    if not real:
        return
    checked.rows[:] = [
        (real[sid], pid, time, value) if sid < 0 else (sid, pid, time, value)
        for sid, pid, time, value in checked.rows
    ]
    checked.newest_by_sensor = {
        real.get(sid, sid): newest for sid, newest in checked.newest_by_sensor.items()
    }


def _replay(cursor: CursorWrapper, *, node: EdgeNode, key: str, body_sha256: str) -> BatchOutcome:
    cursor.execute(STORED, [node.pk, key])
    stored_sha, response = cursor.fetchone()
    if stored_sha != body_sha256:
        raise IdempotencyKeyReused(key)
    if isinstance(response, str):  # Django's psycopg setup leaves jsonb as text
        response = json.loads(response)
    return BatchOutcome(response=response, replayed=True)


def _check_declarations(sensors: list[SensorDeclaration]) -> None:
    seen: set[str] = set()
    for i, declared in enumerate(sensors):
        if not 1 <= len(declared.external_id) <= 64 or not declared.external_id.isprintable():
            raise SensorDeclarationInvalid(
                f"sensors[{i}].id",
                f"sensors[{i}].id must be 1 to 64 printable characters.",
            )
        if declared.external_id in seen:
            raise SensorDeclarationInvalid(
                f"sensors[{i}].id",
                f"sensors[{i}].id {declared.external_id!r} is declared twice in the batch.",
            )
        seen.add(declared.external_id)
        if len(declared.kind) > 32 or not declared.kind.isprintable():
            raise SensorDeclarationInvalid(
                f"sensors[{i}].kind",
                f"sensors[{i}].kind must be at most 32 printable characters.",
            )
        if (declared.lon is None) != (declared.lat is None):
            raise SensorDeclarationInvalid(
                f"sensors[{i}].location", f"sensors[{i}].location needs both lon and lat."
            )
        if declared.lon is not None and declared.lat is not None:
            lon, lat = declared.lon, declared.lat
            if not (math.isfinite(lon) and math.isfinite(lat)) or not (
                -180 <= lon <= 180 and -90 <= lat <= 90
            ):
                raise SensorDeclarationInvalid(
                    f"sensors[{i}].location",
                    f"sensors[{i}].location must be [lon, lat] within [-180, 180] and "
                    f"[-90, 90]; got [{lon}, {lat}].",
                )


def _sensors_known(
    *, node: EdgeNode, sensors: list[SensorDeclaration], readings: list[ReadingIn]
) -> tuple[dict[str, int], set[str]]:
    """The ids of this node's sensors the batch names, and the names it uses that are other
    nodes' sensors (a plain read: no lock).

    A declaration naming another node's sensor is refused as a whole (``SensorOfOtherNode``,
    by the caller): it is the node claiming the sensor, which only an operator can settle. A
    reading of such a sensor is that reading's error alone, so one stray id in a device's
    queue cannot hold back every batch after it.
    """
    # A name PostgreSQL could not compare (NUL, unpaired surrogates) or longer than any id
    # names no sensor: left out of the query, its readings are unknown_sensor.
    named = {
        name
        for name in {d.external_id for d in sensors} | {r.sensor for r in readings}
        if len(name) <= 64 and name.isprintable()
    }
    found = Sensor.objects.filter(external_id__in=named).values_list("external_id", "id", "node")
    ours: dict[str, int] = {}
    theirs: set[str] = set()
    for external_id, pk, node_id in found:
        if node_id == node.pk:
            ours[external_id] = pk
        else:
            theirs.add(external_id)
    return ours, theirs


def _sensors_declare(
    cursor: CursorWrapper,
    *,
    node: EdgeNode,
    sensors: list[SensorDeclaration],
    known: dict[str, int],
) -> dict[str, int]:
    """Upsert the declared sensors; their ids by name (``known``: this node's, read before).
    Raises ``SensorOfOtherNode`` for one that another node registered since that read."""
    cursor.execute(
        DECLARE,
        {
            "node": node.pk,
            "ids": [d.external_id for d in sensors],
            "kinds": [d.kind for d in sensors],
            "lons": [d.lon for d in sensors],
            "lats": [d.lat for d in sensors],
        },
    )
    ours: dict[str, int] = {**known, **dict(cursor.fetchall())}
    unresolved = {d.external_id for d in sensors} - ours.keys()
    if unresolved:
        # Unchanged rows of this node (the upsert returns only rows it wrote), or rows
        # registered since the first read, by another node or a concurrent batch of this one.
        theirs: set[str] = set()
        for external_id, pk, node_id in Sensor.objects.filter(
            external_id__in=unresolved
        ).values_list("external_id", "id", "node"):
            if node_id == node.pk:
                ours[external_id] = pk
            else:
                theirs.add(external_id)
        _refuse_other_nodes(theirs, sensors=sensors)
    return ours


def _refuse_other_nodes(theirs: set[str], *, sensors: list[SensorDeclaration]) -> None:
    if not theirs:
        return
    for i, declared in enumerate(sensors):
        if declared.external_id in theirs:
            raise SensorOfOtherNode(declared.external_id, i, f"sensors[{i}].id")


@dataclass
class _Checked:
    rows: list[tuple[int, int, dt.datetime, float]]
    errors: list[ItemError]
    rejected: int
    duplicate_in_batch: int
    newest_by_sensor: dict[int, dt.datetime]


@dataclass(frozen=True)
class _TimeWindow:
    """The reading times accepted now: from retention (or the earliest year) to the server's
    clock plus the skew allowed."""

    now: dt.datetime
    earliest: dt.datetime
    latest: dt.datetime

    @classmethod
    def at(cls, now: dt.datetime) -> _TimeWindow:
        earliest = dt.datetime(settings.EDGE_EARLIEST_READING_YEAR, 1, 1, tzinfo=dt.UTC)
        if settings.EDGE_RETENTION_DAYS > 0:
            earliest = max(earliest, now - dt.timedelta(days=settings.EDGE_RETENTION_DAYS))
        latest = now + dt.timedelta(seconds=settings.EDGE_CLOCK_SKEW_SECONDS)
        return cls(now=now, earliest=earliest, latest=latest)


def _readings_check(
    *,
    readings: Iterable[ReadingIn],
    sensor_ids: dict[str, int],
    foreign: set[str],
    parameters: dict[str, Parameter],
    window: _TimeWindow,
) -> _Checked:
    """Each reading against the domain rules, in order: the first of a repeated natural key
    counts, later ones are ``duplicate_in_batch`` (listed, counted as duplicates)."""
    now, latest, earliest = window.now, window.latest, window.earliest
    out = _Checked(rows=[], errors=[], rejected=0, duplicate_in_batch=0, newest_by_sensor={})
    seen: set[tuple[int, int, dt.datetime]] = set()
    rows, newest_by_sensor = out.rows, out.newest_by_sensor
    # The loop runs for every reading of every batch: plain locals, no per-reading queries.
    ranges = {code: (p.pk, p.min_value, p.max_value) for code, p in parameters.items()}
    utc = dt.UTC

    def reject(reading: ReadingIn, field: str, code: str, message: str) -> None:
        out.errors.append(ItemError(reading.index, field, code, message))
        out.rejected += 1

    for r in readings:
        sensor_id = sensor_ids.get(r.sensor)
        if sensor_id is None and r.sensor in foreign:
            reject(
                r,
                "sensor",
                "sensor_of_other_node",
                f"Sensor {r.sensor!r} is registered to another node.",
            )
            continue
        if sensor_id is None:
            reject(
                r,
                "sensor",
                "unknown_sensor",
                f"Sensor {r.sensor!r} is not registered to this node and not declared in "
                "the batch's sensors.",
            )
            continue
        bounds = ranges.get(r.parameter)
        if bounds is None:
            reject(
                r,
                "parameter",
                "unknown_parameter",
                f"Unknown parameter {r.parameter!r}; known: {', '.join(sorted(parameters))}.",
            )
            continue
        parameter_id, low, high = bounds
        time = r.time
        if time.tzinfo is not utc:
            if time.tzinfo is None or time.utcoffset() is None:
                reject(r, "time", "bad_time", "time must carry a zone (Z or an offset).")
                continue
            time = time.astimezone(utc)
        if time > latest:
            reject(
                r,
                "time",
                "future_time",
                f"time {_iso(time)} is later than the server's clock ({_iso(now)}) plus "
                f"{settings.EDGE_CLOCK_SKEW_SECONDS} s.",
            )
            continue
        if time < earliest:
            reject(
                r,
                "time",
                "too_old",
                f"time {_iso(time)} is older than the oldest time kept ({_iso(earliest)}).",
            )
            continue
        value = r.value
        if value.__class__ is not float:
            number = isinstance(value, int | float) and not isinstance(value, bool)
            # An integer beyond a float's range (JSON allows 400 digits) is not finite either.
            if not number or abs(value) >= MAX_FINITE:
                reject(r, "value", "bad_value", "value must be a finite number.")
                continue
            value = float(value)
        if not math.isfinite(value):
            reject(r, "value", "bad_value", "value must be a finite number.")
            continue
        if not low <= value <= high:
            parameter = parameters[r.parameter]
            reject(
                r,
                "value",
                "out_of_range",
                f"{parameter.code} must be between {low:g} and {high:g} {parameter.unit}; "
                f"got {value:g}.",
            )
            continue
        key = (sensor_id, parameter_id, time)
        if key in seen:
            out.errors.append(
                ItemError(
                    r.index,
                    "time",
                    "duplicate_in_batch",
                    "The same sensor, parameter and time came earlier in the batch; "
                    "this repeat is counted as a duplicate.",
                )
            )
            out.duplicate_in_batch += 1
            continue
        seen.add(key)
        rows.append((sensor_id, parameter_id, time, value))
        newest = newest_by_sensor.get(sensor_id)
        if newest is None or time > newest:
            newest_by_sensor[sensor_id] = time
    return out


def _copy_text(rows: list[tuple[int, int, dt.datetime, float]]) -> str:
    """The rows in COPY's text format, built in one pass: a tenth of the time psycopg's
    per-row adaptation takes. Ids are ints, times aware datetimes, values finite floats
    (repr keeps every digit), so nothing needs escaping."""
    return "".join(
        f"{sensor_id}\t{parameter_id}\t{time.isoformat()}\t{value!r}\n"
        for sensor_id, parameter_id, time, value in rows
    )


def _follow_up(batch_id: int) -> None:
    # Imported here: the tasks module imports the services.
    from ingestion.edge import tasks

    tasks.edge_batch_follow_up.delay(batch_id)


def _iso(value: dt.datetime) -> str:
    text = value.astimezone(dt.UTC).isoformat()
    return text.replace("+00:00", "Z")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


COUNT_CLAIM = f"""
UPDATE {BATCH_TABLE} SET counted_at = now()
WHERE id = %s AND counted_at IS NULL
RETURNING accepted, duplicate, response
"""  # nosec B608 # table name is a constant; values are bound
COUNT_ADD = f"""
INSERT INTO {EdgeReadingCount._meta.db_table} (outcome, reason, total)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[]) ORDER BY 1, 2
ON CONFLICT (outcome, reason)
DO UPDATE SET total = {EdgeReadingCount._meta.db_table}.total + EXCLUDED.total
"""  # nosec B608 # table name is a constant; values are bound
PENDING = f"""
SELECT id FROM {BATCH_TABLE}
WHERE counted_at IS NULL AND received_at < %s ORDER BY id LIMIT %s
"""  # nosec B608 # table name is a constant; values are bound


def observation_batch_count(*, batch_id: int) -> bool:
    """Add a stored batch's readings to the counters by outcome and reason, once: the batch
    is marked counted in the same transaction, so a second call (a redelivered task, the
    sweep) adds nothing. Returns whether this call counted it."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(COUNT_CLAIM, [batch_id])
        row = cursor.fetchone()
        if row is None:
            return False
        accepted, duplicate, response = row
        if isinstance(response, str):
            response = json.loads(response)
        totals: Counter[tuple[str, str]] = Counter()
        totals[("accepted", "")] += accepted
        for error in response.get("errors", []):
            if error["code"] == "duplicate_in_batch":
                totals[("duplicate", "duplicate_in_batch")] += 1
            else:
                totals[("rejected", error["code"])] += 1
        totals[("duplicate", "stored")] += duplicate - totals[("duplicate", "duplicate_in_batch")]
        kept = sorted((key, n) for key, n in totals.items() if n > 0)
        if kept:
            cursor.execute(
                COUNT_ADD,
                [[k[0] for k, _ in kept], [k[1] for k, _ in kept], [n for _, n in kept]],
            )
    return True


def observation_batches_count_pending(*, older_than: dt.timedelta, limit: int = 1000) -> int:
    """Count the batches whose follow-up task never ran (lost with Redis, say), oldest first;
    returns how many this call counted."""
    with connection.cursor() as cursor:
        cursor.execute(PENDING, [timezone.now() - older_than, limit])
        ids = [row[0] for row in cursor.fetchall()]
    return sum(observation_batch_count(batch_id=batch_id) for batch_id in ids)

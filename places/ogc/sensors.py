"""The ``sensors`` collection: the edge nodes' sensors as point features.

A sensor's properties are its own columns, its node's name, and the values it read at its
``last_reading_at`` (one property per measured parameter, ``pm2_5``, ``temperature``, …;
null when that reading had no such value). Each value is one primary-key lookup
``(sensor_id, parameter_id, time)`` into the readings table, so a page of sensors costs a
few lookups per sensor whatever the history holds.

``datetime`` selects the sensors with at least one reading in the interval. It is asked per
parameter, so each question is a range of the primary key, and only of the monthly
partitions the interval touches (an index on the sensor alone would walk every reading the
sensor ever sent). ``last_reading_at`` (the newest reading's time, kept by the batch
service) rules out at once the sensors that stopped before the interval.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connection

from ingestion.edge.models import EdgeNode, Observation, Parameter, Sensor
from places.ogc.cql import Queryable

SENSOR_TABLE = Sensor._meta.db_table
NODE_TABLE = EdgeNode._meta.db_table
OBSERVATION_TABLE = Observation._meta.db_table
PARAMETER_TABLE = Parameter._meta.db_table

# Of the newest reading: the values read at the sensor's last_reading_at.
LATEST_VALUE = (
    f"(SELECT o.value FROM {OBSERVATION_TABLE} o WHERE o.sensor_id = s.id "  # nosec B608
    "AND o.parameter_id = {parameter_id} AND o.time = s.last_reading_at)"
)
PARAMETERS_READ = (
    f"ARRAY(SELECT pa.code FROM {PARAMETER_TABLE} pa WHERE EXISTS ("  # nosec B608
    f"SELECT 1 FROM {OBSERVATION_TABLE} o WHERE o.sensor_id = s.id "
    "AND o.parameter_id = pa.id AND o.time = s.last_reading_at) ORDER BY pa.code)::text[]"
)

BASE_QUERYABLES = (
    Queryable("geometry", "s.location", "geometry", "Where the sensor is (null: not declared)."),
    Queryable("id", "s.id", "integer"),
    Queryable(
        "sensor", "s.external_id", "string", "The sensor's global id (e.g. sensor.community's)."
    ),
    Queryable("kind", "s.kind", "string", "The sensor's model, e.g. SDS011, BME280, DHT22."),
    Queryable(
        "node",
        f"(SELECT n.name FROM {NODE_TABLE} n WHERE n.id = s.node_id)",  # nosec B608
        "string",
        "The name of the edge node the sensor belongs to.",
    ),
    Queryable(
        "last_reading_at",
        "s.last_reading_at",
        "date-time",
        "Time of the sensor's newest reading (null: none yet).",
    ),
    Queryable(
        "parameters",
        PARAMETERS_READ,
        "array",
        "The parameters of the newest reading; `parameters = 'pm2_5'` means one of them is.",
    ),
)
# Keyset paging on (key, id): only keys that are never null.
SORTABLES = ("id", "sensor", "kind", "node")
LIMITS = (100, 1000)  # default, maximum


def sensor_queryables() -> dict[str, Queryable]:
    """The fixed queryables, then one per measured parameter (its value at the sensor's
    ``last_reading_at``), read from the parameters table: a parameter added there is a
    property at once."""
    found = {q.name: q for q in BASE_QUERYABLES}
    for pk, code, name, unit in Parameter.objects.order_by("code").values_list(
        "pk", "code", "name", "unit"
    ):
        if code in found:  # a parameter never hides a column
            continue
        found[code] = Queryable(
            code,
            LATEST_VALUE.format(parameter_id=int(pk)),
            "number",
            f"{name} ({unit}) of the newest reading; null when it had none.",
        )
    return found


def sensor_properties(queryables: dict[str, Queryable]) -> tuple[str, ...]:
    return tuple(name for name, q in queryables.items() if q.kind != "geometry" and name != "id")


# A reading in [start, end) of any parameter; each EXISTS is a range of the primary key.
READ_BETWEEN = f"""
EXISTS (
    SELECT 1 FROM {PARAMETER_TABLE} pa
    WHERE EXISTS (
        SELECT 1 FROM {OBSERVATION_TABLE} o
        WHERE o.sensor_id = s.id AND o.parameter_id = pa.id {{times}}
    )
)
"""  # nosec B608 # table names are constants


def sensor_times_where(start: datetime | None, end: datetime | None) -> tuple[str, dict[str, Any]]:
    """The condition "has a reading at or after ``start`` and before ``end``" (either open)
    on alias ``s``, and its parameters."""
    clauses = ["s.last_reading_at IS NOT NULL"]
    times = []
    params: dict[str, Any] = {}
    if start is not None:
        clauses.append("s.last_reading_at >= %(dt_start)s")
        times.append("AND o.time >= %(dt_start)s")
        params["dt_start"] = start
    if end is not None:
        times.append("AND o.time < %(dt_end)s")
        params["dt_end"] = end
    clauses.append(READ_BETWEEN.format(times=" ".join(times)))
    return " AND ".join(clauses), params


# The box of the located sensors and the span of the readings: the first reading of each
# sensor and parameter is the primary key read forwards (the oldest partition first), the
# last one is last_reading_at.
SENSOR_EXTENT = f"""
SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e),
       to_char((SELECT min(f.time) FROM {SENSOR_TABLE} s
                CROSS JOIN {PARAMETER_TABLE} pa
                CROSS JOIN LATERAL (
                    SELECT o.time FROM {OBSERVATION_TABLE} o
                    WHERE o.sensor_id = s.id AND o.parameter_id = pa.id
                    ORDER BY o.time LIMIT 1
                ) f
                WHERE s.last_reading_at IS NOT NULL) AT TIME ZONE 'UTC',
               'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       to_char(last AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
FROM (SELECT ST_Extent(location) AS e, max(last_reading_at) AS last FROM {SENSOR_TABLE}) found
"""  # nosec B608 # table names are constants


def sensor_extent_row() -> tuple[Any, ...]:
    with connection.cursor() as cursor:
        cursor.execute(SENSOR_EXTENT)
        return tuple(cursor.fetchone())

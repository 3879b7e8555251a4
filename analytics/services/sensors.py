"""Sensor rollups: hourly and daily figures per sensor and parameter, their means per region,
and each place's nearest PM2.5 sensor.

**Coverage.** A bucket's ``expected`` readings are its length divided by the sensor's typical
interval for that parameter, rounded up; the typical interval is the median gap between the
sensor's consecutive readings of the parameter over the window rolled up and the 7 days
before it. The median, not the mean, so that an outage (one long gap) does not make the
sensor look slower than it is. ``coverage`` is received over expected, at most 1; a sensor
with a single reading has no typical interval, so no expected count or coverage.

**Windows.** A full recompute rolls up every stored reading. An incremental one rolls up the
days since ``ANALYTICS_SENSOR_RECENT_HOURS`` ago (whole days, so a day's figures are always
computed from all of its readings): readings a device uploads later than that (an archive of
last year) reach the rollups at the next full recompute. Both only add and update rows, never
delete them, so rollups outlive the raw readings' partitions that retention drops.

**Regions.** A sensor belongs to every region whose pieces hold its location (district,
first-level region and country alike). A region's bucket mean is the mean of its sensors'
bucket means, so each sensor weighs the same however often it reports. These and the nearest
sensors are read from the stored rollups: the reader first waits for the replica to replay
the rollups just written (by LSN), rather than read stale ones.

**Nearest sensor.** For each active place, the nearest sensor with a daily PM2.5 rollup within
``ANALYTICS_SENSOR_RADIUS_M`` metres (geodesic), and that sensor's latest daily PM2.5 mean.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from django.conf import settings
from django.db import connections
from django.utils import timezone

from analytics.replica import ReadSource, primary_lsn, read_source
from analytics.services.results import rows_copy_upsert, snapshot

logger = logging.getLogger(__name__)

# The week before the window is read only for the sensors' typical interval.
SENSOR_ROLLUPS = """
WITH gaps AS (
    SELECT sensor_id, parameter_id,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY gap) AS typical
    FROM (
        SELECT sensor_id, parameter_id,
               extract(epoch FROM time - lag(time) OVER (
                   PARTITION BY sensor_id, parameter_id ORDER BY time)) AS gap
        FROM ingestion_observation
        WHERE time >= %(since)s::timestamptz - interval '7 days'
    ) g
    WHERE gap > 0
    GROUP BY 1, 2
),
buckets AS (
    SELECT o.sensor_id, o.parameter_id, i.name AS interval, i.seconds,
           date_trunc(i.name, o.time, 'UTC') AS bucket, o.value
    FROM ingestion_observation o
    CROSS JOIN (VALUES ('hour', 3600), ('day', 86400)) AS i(name, seconds)
    WHERE o.time >= %(since)s::timestamptz
)
SELECT b.sensor_id, b.parameter_id, b.interval, b.bucket, count(*), min(b.value), max(b.value),
       avg(b.value), percentile_cont(0.5) WITHIN GROUP (ORDER BY b.value),
       percentile_cont(0.98) WITHIN GROUP (ORDER BY b.value),
       ceil(b.seconds / g.typical)::int AS expected,
       least(1.0, count(*) / ceil(b.seconds / g.typical)) AS coverage
FROM buckets b LEFT JOIN gaps g USING (sensor_id, parameter_id)
GROUP BY b.sensor_id, b.parameter_id, b.interval, b.seconds, b.bucket, g.typical
"""
SENSOR_ROLLUP_COLUMNS = (
    "sensor_id",
    "parameter_id",
    "interval",
    "bucket",
    "count",
    "min",
    "max",
    "mean",
    "median",
    "p98",
    "expected",
    "coverage",
)

REGION_ROLLUPS = """
WITH sensor_regions AS (
    SELECT DISTINCT s.id AS sensor_id, rp.region_id
    FROM ingestion_sensor s JOIN places_regionpart rp ON ST_Intersects(rp.geom, s.location)
    WHERE s.location IS NOT NULL
)
SELECT sr.region_id, r.parameter_id, r.interval, r.bucket, avg(r.mean), count(*), sum(r.count)
FROM analytics_sensorrollup r JOIN sensor_regions sr USING (sensor_id)
WHERE r.bucket >= %(since)s::timestamptz
GROUP BY sr.region_id, r.parameter_id, r.interval, r.bucket
"""
REGION_ROLLUP_COLUMNS = (
    "region_id",
    "parameter_id",
    "interval",
    "bucket",
    "mean",
    "sensors",
    "readings",
)

# The box test lets the places' GiST index find the candidates (a degree of latitude is at
# least 110.5 km, of longitude that times the cosine of the latitude); the geodesic distance
# then decides.
NEAREST_SENSORS = """
WITH latest AS (
    SELECT DISTINCT ON (r.sensor_id) r.sensor_id, r.bucket, r.mean
    FROM analytics_sensorrollup r JOIN ingestion_parameter pm ON pm.id = r.parameter_id
    WHERE pm.code = 'pm2_5' AND r.interval = 'day'
    ORDER BY r.sensor_id, r.bucket DESC
),
located AS (
    SELECT l.*, s.location,
           %(radius)s / 110500.0 AS dy,
           %(radius)s / 110500.0 / greatest(cos(radians(ST_Y(s.location))), 0.01) AS dx
    FROM latest l JOIN ingestion_sensor s ON s.id = l.sensor_id
    WHERE s.location IS NOT NULL
)
SELECT DISTINCT ON (p.id) p.id, l.sensor_id,
       ST_Distance(p.location::geography, l.location::geography) AS distance_m,
       (l.bucket AT TIME ZONE 'UTC')::date, l.mean
FROM located l
JOIN places_place p
  ON p.location && ST_Expand(l.location, l.dx, l.dy)
 AND ST_DWithin(p.location::geography, l.location::geography, %(radius)s)
WHERE p.status = 'active'
ORDER BY p.id, distance_m, l.sensor_id
"""
NEAREST_COLUMNS = ("place_id", "sensor_id", "distance_m", "pm2_5_day", "pm2_5")


@dataclass(frozen=True)
class SensorRun:
    since: dt.datetime | None
    sensor_rollups: int
    region_rollups: int
    nearest: int
    computed_on: str


def _rows(*, source: ReadSource, sql: str, params: dict) -> Iterable[tuple]:
    """The statement's rows from the source, in one snapshot, streamed a batch at a time
    into the primary's COPY; read whole first when the source is the primary's own
    connection (a connection in COPY cannot run another statement)."""
    rows = _stream(source=source, sql=sql, params=params)
    return list(rows) if connections[source.alias] is connections["default"] else rows


def _stream(*, source: ReadSource, sql: str, params: dict) -> Iterator[tuple]:
    with snapshot(source.alias), connections[source.alias].cursor() as cursor:
        cursor.execute(sql, params)
        while batch := cursor.fetchmany(5000):
            yield from batch


def sensor_rollups_recompute(*, full: bool = False, now: dt.datetime | None = None) -> SensorRun:
    """Roll up the readings of the window (see the module text) into hourly and daily rows,
    then the regions' means and the nearest sensors from them. Idempotent: every row is an
    upsert on its natural key, and a rerun computes the same values."""
    since: dt.datetime | None = None
    if not full:
        hours = settings.ANALYTICS_SENSOR_RECENT_HOURS
        start = (now or timezone.now()) - dt.timedelta(hours=hours)
        since = start.replace(hour=0, minute=0, second=0, microsecond=0)
    bound = since or dt.datetime(1, 1, 1, tzinfo=dt.UTC)
    source = read_source()
    sensor_rollups = rows_copy_upsert(
        table="analytics_sensorrollup",
        columns=SENSOR_ROLLUP_COLUMNS,
        rows=_rows(source=source, sql=SENSOR_ROLLUPS, params={"since": bound}),
        conflict=("sensor_id", "parameter_id", "interval", "bucket"),
        source=source,
    )
    # What follows reads the rollups just written: on the replica only once it has them.
    source = read_source(wait_for_lsn=primary_lsn())
    region_rollups = rows_copy_upsert(
        table="analytics_regionsensorrollup",
        columns=REGION_ROLLUP_COLUMNS,
        rows=_rows(source=source, sql=REGION_ROLLUPS, params={"since": bound}),
        conflict=("region_id", "parameter_id", "interval", "bucket"),
        source=source,
    )
    radius = float(settings.ANALYTICS_SENSOR_RADIUS_M)
    nearest = rows_copy_upsert(
        table="analytics_placenearestsensor",
        columns=NEAREST_COLUMNS,
        rows=_rows(source=source, sql=NEAREST_SENSORS, params={"radius": radius}),
        conflict=("place_id",),
        source=source,
        prune=True,
    )
    run = SensorRun(
        since=since,
        sensor_rollups=sensor_rollups,
        region_rollups=region_rollups,
        nearest=nearest,
        computed_on="replica" if source.on_replica else "primary",
    )
    logger.info(
        "analytics: %s sensor rollups, %s region rollups, %s nearest sensors since %s on the %s",
        run.sensor_rollups,
        run.region_rollups,
        run.nearest,
        since or "the first reading",
        run.computed_on,
    )
    return run

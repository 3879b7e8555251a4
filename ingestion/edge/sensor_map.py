"""The sensors layer of the public map: each located sensor's latest PM2.5 reading, as GeoJSON.

A selector (``sensor_latest_pm25``), the index band of a value (``pm25_band``), and one
public read view with its route (``urlpatterns``, mounted by ``config.urls`` at
``/api/v1/sensors/latest/``, name ``sensor-latest``).

**Bands: the UK Daily Air Quality Index (DAQI) for PM2.5.** Defra's index has ten points in
four bands (Low 1–3, Moderate 4–6, High 7–9, Very High 10) over whole µg/m³ of a 24-hour
mean; a single reading is placed on the same scale, which makes it indicative only (the map's
legend says so). The layer serves the UK sample's sensors, and the DAQI is the scale their
users are told about; the US EPA AQI would band the same values lower.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.http import HttpResponse
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request

from ingestion.edge.models import EdgeNode, Observation, Parameter, Sensor
from places.serving.responses import (
    BytesNegotiation,
    PublicBytesView,
    QueryParamsGuard,
    cached_bytes_response,
)

PARAMETER = "pm2_5"
SCALE = "UK DAQI (PM2.5)"


@dataclass(frozen=True)
class Band:
    name: str
    label: str
    first_index: int
    last_index: int


BANDS = (
    Band("low", "Low", 1, 3),
    Band("moderate", "Moderate", 4, 6),
    Band("high", "High", 7, 9),
    Band("very_high", "Very high", 10, 10),
)
# The lowest whole µg/m³ of DAQI points 2 to 10 (point 1 starts at 0).
INDEX_FLOORS = (12, 24, 36, 42, 48, 54, 59, 65, 71)
# Browsers may keep an answer this long; an answer limited by ``max_age`` is rebuilt as often.
FRESH_SECONDS = 60
MAX_AGE_DAYS = 3660


def pm25_index(value: float) -> int:
    """The DAQI point (1–10) of a PM2.5 concentration in µg/m³, rounded to a whole µg/m³ as
    the index's bands are (11.4 is point 1, 11.5 point 2)."""
    whole = math.floor(value + 0.5)
    return 1 + sum(whole >= floor for floor in INDEX_FLOORS)


def pm25_band(value: float) -> Band:
    index = pm25_index(value)
    return next(band for band in BANDS if band.first_index <= index <= band.last_index)


@dataclass(frozen=True)
class SensorReading:
    sensor_id: int
    external_id: str
    kind: str
    lon: float
    lat: float
    value: float
    time: dt.datetime


# Per sensor, the primary key (sensor_id, parameter_id, time) read backwards: the partitions
# are ranges of ``time``, so the planner appends them newest first and stops at the first
# row. Two statements rather than ``(%s IS NULL OR time >= %s)``, which would keep the
# planner from leaving out the partitions older than ``since``.
LATEST = """
SELECT s.id, s.external_id, s.kind, ST_X(s.location), ST_Y(s.location), o.value, o.time
FROM {sensor} s
CROSS JOIN LATERAL (
    SELECT value, time FROM {observation}
    WHERE sensor_id = s.id AND parameter_id = %(parameter)s {since}
    ORDER BY time DESC
    LIMIT 1
) o
WHERE s.location IS NOT NULL
ORDER BY s.id
"""
LATEST_ALL = LATEST.format(
    sensor=Sensor._meta.db_table, observation=Observation._meta.db_table, since=""
)
LATEST_SINCE = LATEST.format(
    sensor=Sensor._meta.db_table,
    observation=Observation._meta.db_table,
    since="AND time >= %(since)s",
)
# The readings: the batches stored, summed over the nodes (each batch adds one to its node
# in the transaction that stores it, so a batch that commits after a later-claimed one still
# moves the sum; the largest batch id would not). What the answer shows besides readings:
# the sensors' ids, kinds and places (a few thousand rows; the admin may move a sensor
# without any new reading).
VERSION = f"""
SELECT (SELECT coalesce(sum(batches_stored), 0) FROM {EdgeNode._meta.db_table}),
       (SELECT md5(coalesce(string_agg(
            concat_ws(' ', id, kind, ST_AsEWKB(location)), ',' ORDER BY id), ''))
        FROM {Sensor._meta.db_table})
"""  # nosec B608 # table names are constants


def sensor_latest_pm25(*, max_age: dt.timedelta | None = None) -> list[SensorReading]:
    """Each sensor with a location and a PM2.5 reading (newer than ``max_age`` when given),
    with its latest reading, by sensor id. Sensors without such a reading are left out."""
    parameter = Parameter.objects.filter(code=PARAMETER).values_list("pk", flat=True).first()
    if parameter is None:
        return []
    params: dict[str, Any] = {"parameter": parameter}
    if max_age is not None:
        params["since"] = dt.datetime.now(dt.UTC) - max_age
    with connection.cursor() as cursor:
        cursor.execute(LATEST_ALL if max_age is None else LATEST_SINCE, params)
        return [SensorReading(*row) for row in cursor.fetchall()]


def sensor_map_version() -> str:
    """Names the data the layer shows: how many batches are stored (every reading arrives
    in one, by the batch service) and a digest of the sensors."""
    with connection.cursor() as cursor:
        cursor.execute(VERSION)
        batch, sensors = cursor.fetchone()
    return f"{batch}:{sensors}"


def sensor_latest_geojson(readings: list[SensorReading], *, unit: str) -> dict[str, Any]:
    """The FeatureCollection the map draws; the bands ride along for its legend."""
    features = []
    for reading in readings:
        band = pm25_band(reading.value)
        features.append(
            {
                "type": "Feature",
                "id": reading.sensor_id,
                "geometry": {"type": "Point", "coordinates": [reading.lon, reading.lat]},
                "properties": {
                    "sensor": reading.external_id,
                    "kind": reading.kind,
                    "pm2_5": reading.value,
                    "unit": unit,
                    "time": reading.time.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
                    "band": band.name,
                    "index": pm25_index(reading.value),
                },
            }
        )
    return {
        "type": "FeatureCollection",
        "scale": SCALE,
        "bands": [
            {
                "band": band.name,
                "label": band.label,
                "indexes": [band.first_index, band.last_index],
                "from": 0 if band.first_index == 1 else INDEX_FLOORS[band.first_index - 2],
            }
            for band in BANDS
        ],
        "features": features,
    }


class SensorLatestQuery(serializers.Serializer):
    max_age = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_AGE_DAYS,
        help_text="Only readings newer than this many days; every sensor's latest otherwise.",
    )


EXAMPLE = {
    "type": "FeatureCollection",
    "scale": SCALE,
    "bands": [{"band": "low", "label": "Low", "indexes": [1, 3], "from": 0}],
    "features": [
        {
            "type": "Feature",
            "id": 7,
            "geometry": {"type": "Point", "coordinates": [-2.09, 57.15]},
            "properties": {
                "sensor": "12345",
                "kind": "SDS011",
                "pm2_5": 8.4,
                "unit": "µg/m³",
                "time": "2019-03-14T09:30:00Z",
                "band": "low",
                "index": 1,
            },
        }
    ],
}


class SensorLatestApi(BytesNegotiation, QueryParamsGuard, PublicBytesView):
    """Public and cached like the places list: built once per version of the readings and
    sensors (``sensor_map_version``), answered 304 to a client that has it."""

    @extend_schema(
        operation_id="sensors_latest",
        summary="Each sensor's latest PM2.5 reading, as GeoJSON, banded by the UK DAQI",
        description=(
            "Sensors with a location and at least one PM2.5 reading (within `max_age` days "
            "when given). `band` and `index` place the reading on the UK Daily Air Quality "
            "Index for PM2.5, which is defined on 24-hour means: for one reading it is "
            "indicative. Browsers may keep an answer for a minute."
        ),
        parameters=[SensorLatestQuery],
        responses={
            (200, "application/geo+json"): OpenApiResponse(
                response=OpenApiTypes.OBJECT,
                description="A GeoJSON FeatureCollection of points, with the bands' legend.",
                examples=[OpenApiExample("One sensor", value=EXAMPLE)],
            )
        },
    )
    def get(self, request: Request) -> HttpResponse:
        query = SensorLatestQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        days = query.validated_data.get("max_age")
        # Readings age past ``max_age`` with no change to the data: such answers also name
        # the minute they were built in.
        clock = int(time.time() // FRESH_SECONDS) if days else ""
        key = f"sensors-latest:{sensor_map_version()}:{days or ''}:{clock}"

        def build() -> bytes:
            readings = sensor_latest_pm25(
                max_age=dt.timedelta(days=days) if days is not None else None
            )
            unit = Parameter.objects.filter(code=PARAMETER).values_list("unit", flat=True).first()
            body = sensor_latest_geojson(readings, unit=unit or "µg/m³")
            return JSONRenderer().render(body)

        response = cached_bytes_response(
            request, key=key, ttl=FRESH_SECONDS, build=build, content_type="application/geo+json"
        )
        response["Cache-Control"] = f"public, max-age={FRESH_SECONDS}"
        return response


urlpatterns = [path("", SensorLatestApi.as_view(), name="sensor-latest")]

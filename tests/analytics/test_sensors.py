"""Sensor rollups: hourly and daily figures against the readings, coverage from the typical
interval, region means, and each place's nearest PM2.5 sensor."""

from __future__ import annotations

import datetime as dt
import statistics

import pytest
from django.contrib.gis.geos import Point

from analytics.models import PlaceNearestSensor, RegionSensorRollup, SensorRollup
from analytics.services.sensors import sensor_rollups_recompute
from ingestion.edge.models import Observation, Sensor
from places.services import dataset_get_or_create, place_create
from tests.analytics.conftest import DAY

pytestmark = pytest.mark.django_db(databases=["default", "replica"])


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (PostgreSQL's percentile_cont)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def test_hourly_and_daily_rollups_match_the_readings(sensors):
    # when everything is rolled up
    run = sensor_rollups_recompute(full=True)
    sensor = Sensor.objects.get(external_id="aq-1")
    # then the 09:00 hour of the first sensor holds its three readings
    hour = SensorRollup.objects.get(
        sensor=sensor, interval="hour", bucket=DAY + dt.timedelta(hours=9)
    )
    readings = [v for t, v in sensors["values"]["aq-1"] if t.hour == 9]
    assert hour.count == len(readings) == 3
    assert (hour.min, hour.max) == (min(readings), max(readings))
    assert hour.mean == pytest.approx(statistics.fmean(readings))
    assert hour.median == pytest.approx(statistics.median(readings))
    assert hour.p98 == pytest.approx(_percentile(readings, 0.98))
    # and coverage counts against one reading every 10 minutes
    assert hour.expected == 6
    assert hour.coverage == pytest.approx(0.5)
    full_hour = SensorRollup.objects.get(sensor=sensor, interval="hour", bucket=DAY)
    assert (full_hour.count, full_hour.coverage) == (6, 1.0)
    # and the day
    day = SensorRollup.objects.get(sensor=sensor, interval="day", bucket=DAY)
    all_values = [v for _, v in sensors["values"]["aq-1"]]
    assert day.count == 141
    assert day.expected == 144
    assert day.coverage == pytest.approx(141 / 144)
    assert day.p98 == pytest.approx(_percentile(all_values, 0.98))
    assert day.computed_on in {"replica", "primary"}
    assert run.sensor_rollups == SensorRollup.objects.count() == 2 * (24 + 1)


def test_region_means_weigh_each_sensor_once(sensors):
    # when rolled up
    sensor_rollups_recompute(full=True)
    # then Westminster's day is the mean of its two sensors' daily means
    means = [statistics.fmean(v for _, v in sensors["values"][name]) for name in ("aq-1", "aq-2")]
    day = RegionSensorRollup.objects.get(
        region=sensors["westminster"], interval="day", bucket=DAY, parameter__code="pm2_5"
    )
    assert day.mean == pytest.approx(statistics.fmean(means))
    assert (day.sensors, day.readings) == (2, 141 + 144)
    # and so is Great Britain's, the country holding the same two sensors
    country = RegionSensorRollup.objects.get(
        region=sensors["westminster"].parent, interval="day", bucket=DAY
    )
    assert country.mean == pytest.approx(day.mean)


def test_each_place_gets_its_nearest_sensor_within_the_radius(sensors, settings):
    # given a place 100 m from the first sensor and one far away
    settings.ANALYTICS_SENSOR_RADIUS_M = 1000
    dataset = dataset_get_or_create(slug="nearest-test")
    spot = sensors["spot"]
    near = place_create(
        dataset=dataset,
        source_key="near",
        data={"location": Point(spot.x + 0.001 - 0.0014, spot.y, srid=4326)},
    )
    far = place_create(
        dataset=dataset, source_key="far", data={"location": Point(-2.2, 53.48, srid=4326)}
    )
    # when rolled up
    sensor_rollups_recompute(full=True)
    # then the near place has the first sensor, its distance and its latest daily PM2.5
    nearest = PlaceNearestSensor.objects.get(place=near)
    assert nearest.sensor.external_id == "aq-1"
    assert 80 < nearest.distance_m < 120
    daily = SensorRollup.objects.get(sensor=nearest.sensor, interval="day", bucket=DAY)
    assert (nearest.pm2_5_day, nearest.pm2_5) == (DAY.date(), daily.mean)
    assert not PlaceNearestSensor.objects.filter(place=far).exists()
    # and every row lies within the radius
    assert PlaceNearestSensor.objects.filter(distance_m__gt=1000).count() == 0


def test_recompute_twice_gives_the_same_rows(sensors):
    # given one run
    sensor_rollups_recompute(full=True)
    first = list(SensorRollup.objects.order_by("pk").values_list("pk", "count", "mean"))
    # when it runs again, incrementally over the recent days and then in full
    sensor_rollups_recompute(now=DAY + dt.timedelta(hours=30))
    again = list(SensorRollup.objects.order_by("pk").values_list("pk", "count", "mean"))
    # then nothing doubles or moves
    assert again == first


def test_rollups_outlive_the_readings_retention_drops(sensors):
    # given rollups of both sensors
    sensor_rollups_recompute(full=True)
    kept = SensorRollup.objects.get(sensor__external_id="aq-2", interval="day", bucket=DAY)
    # when the second sensor's readings are gone (retention drops whole months) and a full
    # recompute runs
    Observation.objects.filter(sensor__external_id="aq-2").delete()
    sensor_rollups_recompute(full=True)
    # then its rollups are still there, unchanged
    again = SensorRollup.objects.get(sensor__external_id="aq-2", interval="day", bucket=DAY)
    assert (again.pk, again.count, again.mean) == (kept.pk, kept.count, kept.mean)

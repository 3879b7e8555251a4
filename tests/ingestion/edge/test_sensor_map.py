"""The sensors layer: each located sensor's latest PM2.5 reading, banded, on the public map."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import pytest
from django.contrib.gis.geos import Point
from django.contrib.staticfiles import finders
from django.db import connection
from django.urls import reverse

from ingestion.edge import sensor_map
from ingestion.edge.models import EdgeNode, Parameter, Sensor
from tests.ingestion.edge.factories import ingest, node_make, reading

pytestmark = pytest.mark.django_db

URL = "/api/v1/sensors/latest/"
UTC = dt.UTC
_keys = itertools.count(1)


def _sensor(node: EdgeNode, external_id: str, *, kind: str = "SDS011", located: bool = True):
    return Sensor.objects.create(
        node=node,
        external_id=external_id,
        kind=kind,
        location=Point(-2.09, 57.15) if located else None,
    )


def _readings(sensor: Sensor, *values: tuple[dt.datetime, float], parameter: str = "pm2_5"):
    """Readings in a batch of their own, stored by the batch service."""
    outcome = ingest(
        sensor.node,
        [
            reading(i, sensor.external_id, t, value=v, parameter=parameter)
            for i, (t, v) in enumerate(values)
        ],
        key=f"map-{next(_keys)}",
    )
    assert outcome.response["accepted"] == len(values), outcome.response


@pytest.fixture
def node() -> EdgeNode:
    return node_make()


# --- the selector -----------------------------------------------------------------------------


def test_each_sensor_gets_its_newest_pm25_reading_across_months(node):
    # given two sensors with several readings over two months, and a newer PM10 reading
    a, b = _sensor(node, "map-a"), _sensor(node, "map-b", kind="PMS5003")
    _readings(
        a,
        (dt.datetime(2019, 3, 30, 23, 0, tzinfo=UTC), 8.0),
        (dt.datetime(2019, 4, 1, 0, 30, tzinfo=UTC), 41.5),
        (dt.datetime(2019, 3, 31, 12, 0, tzinfo=UTC), 9.0),
    )
    _readings(a, (dt.datetime(2019, 4, 2, tzinfo=UTC), 99.0), parameter="pm10")
    _readings(
        b, (dt.datetime(2019, 3, 5, tzinfo=UTC), 3.0), (dt.datetime(2019, 3, 6, tzinfo=UTC), 72.0)
    )
    # when the latest readings are selected
    latest = {r.external_id: r for r in sensor_map.sensor_latest_pm25()}
    # then each sensor has its newest PM2.5 value, not PM10's
    assert (latest["map-a"].value, latest["map-a"].time) == (
        41.5,
        dt.datetime(2019, 4, 1, 0, 30, tzinfo=UTC),
    )
    assert (latest["map-b"].value, latest["map-b"].kind) == (72.0, "PMS5003")
    assert (latest["map-a"].lon, latest["map-a"].lat) == pytest.approx((-2.09, 57.15))


def test_sensors_without_a_pm25_reading_or_a_location_are_left_out(node):
    _sensor(node, "map-silent")
    humid = _sensor(node, "map-dht", kind="DHT22")
    _readings(humid, (dt.datetime(2019, 3, 5, tzinfo=UTC), 55.0), parameter="humidity")
    nowhere = _sensor(node, "map-nowhere", located=False)
    _readings(nowhere, (dt.datetime(2019, 3, 5, tzinfo=UTC), 5.0))
    shown = {r.external_id for r in sensor_map.sensor_latest_pm25()}
    assert not shown & {"map-silent", "map-dht", "map-nowhere"}


def test_max_age_leaves_out_sensors_whose_latest_reading_is_older(node):
    # given one sensor read two hours ago and one read twenty days ago
    now = dt.datetime.now(UTC).replace(microsecond=0)
    fresh, stale = _sensor(node, "map-fresh"), _sensor(node, "map-stale")
    _readings(fresh, (now - dt.timedelta(days=30), 50.0), (now - dt.timedelta(hours=2), 6.0))
    _readings(stale, (now - dt.timedelta(days=20), 30.0))
    # when readings newer than a week are asked for
    week = {r.external_id: r.value for r in sensor_map.sensor_latest_pm25(max_age=dt.timedelta(7))}
    # then only the fresh sensor is there, with its newest value
    assert week.get("map-fresh") == 6.0
    assert "map-stale" not in week
    everything = {r.external_id for r in sensor_map.sensor_latest_pm25()}
    assert {"map-fresh", "map-stale"} <= everything


def test_the_latest_reading_is_read_backwards_along_the_primary_key(node):
    _readings(_sensor(node, "map-plan"), (dt.datetime(2019, 3, 5, tzinfo=UTC), 5.0))
    parameter = Parameter.objects.get(code="pm2_5").pk
    with connection.cursor() as cursor:
        # The test tables are tiny: keep the planner from a sequential scan it would prefer.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sensor_map.LATEST_ALL, {"parameter": parameter})
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Scan Backward" in plan


@pytest.mark.parametrize(
    ("value", "index", "band"),
    [
        (0.0, 1, "low"),
        (11.4, 1, "low"),
        (11.5, 2, "low"),
        (35.4, 3, "low"),
        (35.5, 4, "moderate"),
        (53.4, 6, "moderate"),
        (54.0, 7, "high"),
        (70.4, 9, "high"),
        (70.5, 10, "very_high"),
        (500.0, 10, "very_high"),
    ],
)
def test_values_fall_in_the_uk_daqi_bands_for_pm25(value, index, band):
    assert (sensor_map.pm25_index(value), sensor_map.pm25_band(value).name) == (index, band)


# --- the API ----------------------------------------------------------------------------------


@pytest.mark.parametrize("accept", ["application/geo+json", "application/json", "*/*"])
def test_the_api_answers_what_the_map_page_asks_for(node, client, clear_cache, accept):
    # given a sensor with a reading
    _readings(_sensor(node, "map-accept"), (dt.datetime(2019, 3, 14, 9, 30, tzinfo=UTC), 12.0))
    # when it is asked for with the map page's Accept header (GeoJSON's own type), or others
    response = client.get(URL, HTTP_ACCEPT=accept)
    # then the GeoJSON is answered (DRF's negotiation answered GeoJSON's type with 406)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/geo+json"
    assert any(f["properties"]["sensor"] == "map-accept" for f in response.json()["features"])


def test_the_api_answers_geojson_with_band_kind_and_time(node, client, clear_cache):
    sensor = _sensor(node, "map-api", kind="SDS011")
    _readings(sensor, (dt.datetime(2019, 3, 14, 9, 30, tzinfo=UTC), 44.0))
    response = client.get(URL)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/geo+json"
    assert response["Cache-Control"] == f"public, max-age={sensor_map.FRESH_SECONDS}"
    body = response.json()
    assert (body["type"], body["scale"]) == ("FeatureCollection", "UK DAQI (PM2.5)")
    assert [b["band"] for b in body["bands"]] == ["low", "moderate", "high", "very_high"]
    [feature] = [f for f in body["features"] if f["properties"]["sensor"] == "map-api"]
    assert feature["id"] == sensor.pk
    assert feature["geometry"] == {"type": "Point", "coordinates": [-2.09, 57.15]}
    assert feature["properties"] == {
        "sensor": "map-api",
        "kind": "SDS011",
        "pm2_5": 44.0,
        "unit": "µg/m³",
        "time": "2019-03-14T09:30:00Z",
        "band": "moderate",
        "index": 5,
    }
    assert reverse("sensor-latest") == URL


def test_a_new_batch_of_readings_or_a_moved_sensor_changes_the_answer(node, client, clear_cache):
    sensor = _sensor(node, "map-new")
    _readings(sensor, (dt.datetime(2019, 3, 14, tzinfo=UTC), 10.0))
    first = client.get(URL)
    # when the same answer is asked for again, it is not modified
    assert client.get(URL, HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 304
    # and after a newer reading arrives it is
    _readings(sensor, (dt.datetime(2019, 3, 15, tzinfo=UTC), 80.0))
    second = client.get(URL, HTTP_IF_NONE_MATCH=first["ETag"])
    assert second.status_code == 200
    [feature] = [f for f in second.json()["features"] if f["properties"]["sensor"] == "map-new"]
    assert (feature["properties"]["pm2_5"], feature["properties"]["band"]) == (80.0, "very_high")
    # and after the sensor is moved (in the admin, say) with no new reading
    Sensor.objects.filter(pk=sensor.pk).update(location=Point(-2.5, 57.0))
    third = client.get(URL, HTTP_IF_NONE_MATCH=second["ETag"])
    [feature] = [f for f in third.json()["features"] if f["properties"]["sensor"] == "map-new"]
    assert feature["geometry"]["coordinates"] == [-2.5, 57.0]


def test_the_api_reads_with_a_fixed_number_of_queries(
    node, client, clear_cache, django_assert_num_queries
):
    for i in range(5):
        _readings(_sensor(node, f"map-q{i}"), (dt.datetime(2019, 3, 1 + i, tzinfo=UTC), 1.0 * i))
    # version, then parameter, readings and unit; a cached answer needs the version only
    with django_assert_num_queries(4):
        assert client.get(URL).status_code == 200
    with django_assert_num_queries(1):
        assert client.get(URL).status_code == 200


@pytest.mark.parametrize("value", ["0", "-1", "abc", "99999", "1.5"])
def test_a_bad_max_age_is_a_400_naming_it(client, value):
    response = client.get(URL, {"max_age": value})
    assert response.status_code == 400
    assert "max_age" in response.json()


def test_max_age_in_days_through_the_api(node, client, clear_cache):
    now = dt.datetime.now(UTC).replace(microsecond=0)
    _readings(_sensor(node, "map-api-old"), (now - dt.timedelta(days=3), 20.0))
    shown = lambda days: {  # noqa: E731
        f["properties"]["sensor"] for f in client.get(URL, {"max_age": days}).json()["features"]
    }
    assert "map-api-old" in shown(4)
    assert "map-api-old" not in shown(2)


def test_the_schema_documents_the_operation(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"][URL]["get"]
    assert operation["operationId"] == "sensors_latest"
    assert [p["name"] for p in operation["parameters"]] == ["max_age"]


# --- the map page -----------------------------------------------------------------------------


def test_the_map_page_has_a_sensors_toggle_off_by_default(client):
    html = client.get("/map/").content.decode()
    assert '<input type="checkbox" id="sensors"' in html
    assert '<label for="sensors">Sensors (PM2.5)</label>' in html
    assert 'id="sensors" checked' not in html
    assert 'id="sensor-legend" hidden' in html
    assert 'UK <abbr title="Daily Air Quality Index">DAQI</abbr> for PM2.5' in html
    script = Path(finders.find("places/map.js")).read_text(encoding="utf-8")
    assert "/api/v1/sensors/latest/" in script

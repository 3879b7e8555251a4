"""/ogc/collections/sensors: the edge nodes' sensors as features (in-process; GDAL and
OWSLib read them in test_ogc_clients.py). Every answer is compared with SQL on the tables."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.db import connection
from rest_framework.test import APIClient

from ingestion.edge.models import Sensor
from ingestion.edge.services.batches import SensorDeclaration
from tests.ingestion.edge.factories import ingest, node_make, reading
from tests.places.test_ogc import error, walk

pytestmark = pytest.mark.django_db

ITEMS = "/ogc/collections/sensors/items"
T0 = dt.datetime(2019, 3, 1, 7, 0, 3, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
# external id: (lon, lat, [(parameter, time, value), ...]); the last sensor has no reading.
SENSORS: dict[str, tuple[float | None, float | None, list[tuple[str, dt.datetime, float]]]] = {
    "ogc-aberdeen": (
        -2.09,
        57.15,
        [("pm2_5", T0, 5.0), ("pm10", T0, 9.0), ("pm2_5", T0 + 2 * DAY, 7.5)],
    ),
    "ogc-edinburgh": (-3.19, 55.95, [("temperature", T0 + 10 * DAY, 4.5)]),
    "ogc-london": (-0.12, 51.5, [("pm2_5", T0 + 35 * DAY, 3.0), ("humidity", T0 + 35 * DAY, 80)]),
    "ogc-nowhere": (None, None, [("pm10", T0 + DAY, 11.0)]),
    "ogc-silent": (-1.5, 53.0, []),
}


def sensors_make(node_name: str = "ogc-sensors") -> dict[str, int]:
    """SENSORS on one node, stored by the batch service; their ids by external id."""
    node = node_make(node_name)
    readings = [
        reading(i, name, moment, value=value, parameter=parameter)
        for i, (name, parameter, moment, value) in enumerate(
            (name, parameter, moment, value)
            for name, (_, _, rows) in SENSORS.items()
            for parameter, moment, value in rows
        )
    ]
    outcome = ingest(
        node,
        readings,
        sensors=[
            SensorDeclaration(external_id=name, kind="SDS011", lon=lon, lat=lat)
            for name, (lon, lat, _) in SENSORS.items()
        ],
    )
    assert outcome.response["accepted"] == len(readings), outcome.response
    return dict(Sensor.objects.filter(node=node).values_list("external_id", "pk"))


@pytest.fixture
def api(clear_cache) -> APIClient:
    return APIClient()


@pytest.fixture
def sensor_ids() -> dict[str, int]:
    return sensors_make()


def ids_in(sql: str, params: list | dict | None = None) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        return sorted(row[0] for row in cursor.fetchall())


def read_between(start: dt.datetime | None, end: dt.datetime | None) -> list[int]:
    """Sensors with a reading in [start, end), straight from the readings."""
    return ids_in(
        "SELECT DISTINCT sensor_id FROM ingestion_observation WHERE "
        "(%(s)s::timestamptz IS NULL OR time >= %(s)s) AND (%(e)s::timestamptz IS NULL OR "
        "time < %(e)s)",
        {"s": start, "e": end},
    )


def test_sensors_are_a_collection_with_queryables_and_no_tiles(api, sensor_ids):
    # when
    collections = api.get("/ogc/collections").json()["collections"]
    found = api.get("/ogc/collections/sensors").json()
    queryables = api.get("/ogc/collections/sensors/queryables").json()
    tiles = api.get("/ogc/collections/sensors/tiles")
    # then
    assert collections[-1]["id"] == "sensors"
    # (other tests may have left readings of their own: the span is the table's)
    with connection.cursor() as cursor:
        cursor.execute("SELECT min(time), max(time) FROM ingestion_observation")
        first, last = cursor.fetchone()
    assert found["extent"]["temporal"]["interval"] == [
        [t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") for t in (first, last)]
    ]
    assert first <= T0
    assert last >= dt.datetime(2019, 4, 5, 7, 0, 3, tzinfo=dt.UTC)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) "
            "FROM (SELECT ST_Extent(location) e FROM ingestion_sensor) x"
        )
        assert found["extent"]["spatial"]["bbox"] == [pytest.approx(list(cursor.fetchone()))]
    assert {"sensor", "kind", "node", "last_reading_at", "parameters", "pm2_5", "pressure"} <= set(
        queryables["properties"]
    )
    assert queryables["properties"]["pm2_5"]["type"] == "number"
    assert "tilesets-vector" not in json.dumps(found["links"])
    assert tiles.status_code == 404


def test_every_sensor_once_across_keyset_pages_with_its_newest_values(api, sensor_ids):
    # when
    found = walk(api, ITEMS, {"limit": 2})
    # then
    ids = [f["id"] for f in found]
    assert ids == ids_in("SELECT id FROM ingestion_sensor")
    by_id = {f["id"]: f for f in found}
    aberdeen = by_id[sensor_ids["ogc-aberdeen"]]
    assert aberdeen["geometry"] == {"type": "Point", "coordinates": [-2.09, 57.15]}
    props = aberdeen["properties"]
    assert props["sensor"] == "ogc-aberdeen"
    assert props["kind"] == "SDS011"
    assert props["node"] == "ogc-sensors"
    assert props["last_reading_at"].startswith("2019-03-03T07:00:03")
    # The newest reading had PM2.5 only: PM10 of two days before is not its value.
    assert props["parameters"] == ["pm2_5"]
    assert props["pm2_5"] == 7.5
    assert props["pm10"] is None
    london = by_id[sensor_ids["ogc-london"]]["properties"]
    assert london["parameters"] == ["humidity", "pm2_5"]
    assert london["humidity"] == 80
    assert by_id[sensor_ids["ogc-nowhere"]]["geometry"] is None
    silent = by_id[sensor_ids["ogc-silent"]]["properties"]
    assert silent["last_reading_at"] is None
    assert silent["parameters"] == []


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2019-03-01", T0.replace(hour=0, second=0), T0.replace(hour=0, second=0) + DAY),
        (
            "2019-03-02/2019-03-11",
            T0.replace(hour=0, second=0) + DAY,
            T0.replace(hour=0, second=0) + 11 * DAY,
        ),
        ("2019-03-05T00:00:00Z/..", T0.replace(hour=0, second=0) + 4 * DAY, None),
        ("../2019-03-02", None, T0.replace(hour=0, second=0) + 2 * DAY),
        ("2019-03-03T07:00:03Z", T0 + 2 * DAY, T0 + 2 * DAY + dt.timedelta(microseconds=1)),
        (
            "2019-03-03T07:00:04Z/2019-03-11T07:00:03Z",
            T0 + 2 * DAY + dt.timedelta(seconds=1),
            T0 + 10 * DAY + dt.timedelta(microseconds=1),
        ),
        ("2020-01-01/..", dt.datetime(2020, 1, 1, tzinfo=dt.UTC), None),
    ],
)
def test_datetime_selects_the_sensors_with_a_reading_in_it(api, sensor_ids, text, start, end):
    # when
    found = walk(api, ITEMS, {"datetime": text, "limit": 2})
    # then
    expected = read_between(start, end)
    assert [f["id"] for f in found] == expected
    if text.startswith("2019-03-03T07:00:04Z"):
        # Aberdeen's newest reading is a second before the start; Edinburgh's is the end.
        mine = set(sensor_ids.values())
        assert [i for i in expected if i in mine] == [sensor_ids["ogc-edinburgh"]]


def test_bbox_and_datetime_together_equal_postgis(api, sensor_ids):
    # given: Scotland
    box = (-4.0, 55.0, -1.0, 58.0)
    # when
    found = walk(api, ITEMS, {"bbox": ",".join(map(str, box)), "datetime": "2019-03-05/.."})
    everywhere = walk(api, ITEMS, {"bbox": ",".join(map(str, box))})
    # then
    inside = ids_in(
        "SELECT id FROM ingestion_sensor WHERE "
        "ST_Intersects(location, ST_MakeEnvelope(%s, %s, %s, %s, 4326))",
        list(box),
    )
    assert [f["id"] for f in everywhere] == inside
    mine = set(sensor_ids.values())  # other tests may have left sensors in Scotland
    assert len([i for i in inside if i in mine]) == 2
    later = set(read_between(dt.datetime(2019, 3, 5, tzinfo=dt.UTC), None))
    assert [f["id"] for f in found] == [i for i in inside if i in later]
    assert [f["id"] for f in found if f["id"] in mine] == [sensor_ids["ogc-edinburgh"]]


def test_filters_sortby_properties_and_one_sensor(api, sensor_ids):
    # when
    by_value = walk(api, ITEMS, {"filter": "pm2_5 > 4 AND parameters = 'pm2_5'"})
    by_node = api.get(ITEMS, {"node": "ogc-sensors", "sortby": "-sensor", "limit": 100}).json()
    chosen = api.get(ITEMS, {"properties": "sensor,pm2_5", "limit": 1}).json()
    one = api.get(f"{ITEMS}/{sensor_ids['ogc-london']}").json()
    # then
    assert [f["id"] for f in by_value] == [sensor_ids["ogc-aberdeen"]]
    assert [f["properties"]["sensor"] for f in by_node["features"]] == sorted(SENSORS, reverse=True)
    assert by_node["numberMatched"] == len(SENSORS)
    assert set(chosen["features"][0]["properties"]) == {"sensor", "pm2_5"}
    assert one["properties"]["pm2_5"] == 3.0
    assert api.get(f"{ITEMS}/{sensor_ids['ogc-london']}", {"f": "html"}).status_code == 200
    assert api.get(ITEMS, {"f": "html"}).status_code == 200


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"datetime": "2019-13-01"}, "datetime"),
        ({"datetime": "yesterday"}, "datetime"),
        ({"datetime": "2019-03-02/2019-03-01"}, "datetime"),
        ({"limit": "1001"}, "limit"),
        ({"sortby": "last_reading_at"}, "sortby"),
        ({"filter": "religion = 'christian'"}, "filter"),
    ],
)
def test_bad_sensor_parameters_are_400_naming_them(api, sensor_ids, params, parameter):
    # when
    body = error(api.get(ITEMS, params))
    # then
    assert body["parameter"] == parameter
    assert body["description"].startswith(f"{parameter}:")

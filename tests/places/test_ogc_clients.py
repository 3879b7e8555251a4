"""/ogc/ read by clients nobody here wrote, against gunicorn serving the test database with
the GB sample: GDAL's OAPIF driver (Debian's gdal-bin, installed by bin/install-system-deps)
and OWSLib's ``Features`` (requirements/local.txt).

Each compares what the client read with PostGIS: every feature of a dataset collection once,
and random boxes.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import connection
from owslib.ogcapi.features import Features

from ingestion.edge.models import Sensor
from tests.live_server import gunicorn_serving
from tests.places.test_ogc import expected_collection_ids

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

GB = "places-osm-gb"
OGRINFO = "/usr/bin/ogrinfo"
OGR2OGR = "/usr/bin/ogr2ogr"
# GDAL asks for 10 features a page unless told (its PAGE_SIZE open option); our maximum.
PAGE_SIZE = "PAGE_SIZE=1000"


@dataclass(frozen=True)
class Server:
    url: str
    access_log: Path  # what the clients asked for

    def __str__(self) -> str:
        return self.url


@pytest.fixture(scope="module")
def server(gb_import, django_db_blocker, tmp_path_factory) -> Iterator[Server]:
    """gunicorn as deployed (config/gunicorn.py) on the test database."""
    if not Path(OGRINFO).exists():
        pytest.fail(f"{OGRINFO} is missing: bin/install-system-deps installs Debian's gdal-bin")
    with django_db_blocker.unblock():
        database = connection.settings_dict["NAME"]
    folder = tmp_path_factory.mktemp("ogc-clients")
    access_log = folder / "access.log"
    with gunicorn_serving(
        database=database, log=folder / "gunicorn.log", access_log=access_log, browser=False
    ) as base:
        yield Server(url=base, access_log=access_log)


def active_ids(dataset_id: int, box: tuple[float, float, float, float] | None = None) -> list[int]:
    sql = "SELECT id FROM places_place WHERE status = 'active' AND dataset_id = %s"
    params: list = [dataset_id]
    if box is not None:
        sql += " AND ST_Intersects(location, ST_MakeEnvelope(%s, %s, %s, %s, 4326))"
        params += list(box)
    with connection.cursor() as cursor:
        cursor.execute(sql + " ORDER BY id", params)
        return [row[0] for row in cursor.fetchall()]


def ogr_ids(server: Server, tmp_path: Path, *args: str) -> list[int]:
    """The feature ids GDAL reads from the GB collection (ogr2ogr to GeoJSONSeq, ids kept)."""
    out = tmp_path / f"out-{secrets.token_hex(4)}.geojsons"
    run = subprocess.run(
        [OGR2OGR, "-f", "GeoJSONSeq", "-preserve_fid", "-oo", PAGE_SIZE, *args, str(out),
         f"OAPIF:{server}/ogc", GB],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return [json.loads(line.strip("\x1e"))["id"] for line in out.read_text().splitlines() if line]


def random_boxes(count: int) -> list[tuple[float, float, float, float]]:
    rng = random.Random(21)
    boxes = []
    for _ in range(count):
        x0, y0 = rng.uniform(-4.0, 1.0), rng.uniform(50.3, 55.0)
        boxes.append((x0, y0, x0 + rng.uniform(0.02, 0.8), y0 + rng.uniform(0.02, 0.6)))
    return boxes


def test_gdal_lists_the_collections(server):
    # when
    run = subprocess.run(
        [OGRINFO, "-ro", "-so", f"OAPIF:{server}/ogc"], capture_output=True, text=True, timeout=60
    )
    # then
    assert run.returncode == 0, run.stderr
    assert "1: places (title: Places) (Point)" in run.stdout
    assert f"{GB} (title: " in run.stdout
    assert "regions (title: Regions) (Multi Polygon)" in run.stdout
    assert "sensors (title: Sensors)" in run.stdout


def test_gdal_reads_every_feature_of_a_dataset_once(server, gb_import, tmp_path):
    # when: GDAL follows the next links to the end
    ids = ogr_ids(server, tmp_path)
    # then
    expected = active_ids(gb_import.dataset_id)
    assert len(ids) == len(expected) > 30_000
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == expected


def test_gdal_bbox_equals_postgis_for_random_boxes(server, gb_import, tmp_path):
    for box in random_boxes(4):
        # when
        ids = ogr_ids(server, tmp_path, "-spat", *map(str, box))
        # then
        assert sorted(ids) == active_ids(gb_import.dataset_id, box), box


def test_gdal_attribute_filter_equals_postgis(server, gb_import, tmp_path):
    # when: GDAL finds religion among the collection's parameters in the API definition
    ids = ogr_ids(server, tmp_path, "-where", "religion = 'jewish'")
    # then: it sent the filter to the server rather than reading everything
    asked = server.access_log.read_text()
    assert f"/ogc/collections/{GB}/items?" in asked
    assert "religion=jewish" in asked
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id FROM places_place WHERE status = 'active' AND religion = 'jewish' "
            "AND dataset_id = %s ORDER BY id",
            [gb_import.dataset_id],
        )
        assert sorted(ids) == [row[0] for row in cursor.fetchall()]


def owslib_read(client: Features, **params) -> list[dict]:
    """Every feature of the GB collection through OWSLib, following `next` by its cursor."""
    found: list[dict] = []
    while True:
        page = client.collection_items(GB, limit=1000, **params)
        found += page["features"]
        following = [link["href"] for link in page["links"] if link["rel"] == "next"]
        if not following:
            return found
        params["cursor"] = parse_qs(urlsplit(following[0]).query)["cursor"][0]


def test_owslib_reads_collections_queryables_and_every_feature(server, gb_import):
    # given
    client = Features(f"{server}/ogc/")
    # when
    collections = [c["id"] for c in client.collections()["collections"]]
    queryables = client.collection_queryables(GB)
    found = owslib_read(client)
    # then
    assert GB in collections
    assert collections == expected_collection_ids()
    assert "religion" in queryables["properties"]
    assert (
        "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core"
        in (client.conformance()["conformsTo"])
    )
    ids = [f["id"] for f in found]
    assert len(ids) == len(set(ids))
    assert ids == active_ids(gb_import.dataset_id)


def test_owslib_bbox_and_filter_equal_postgis(server, gb_import):
    # given
    client = Features(f"{server}/ogc/")
    for box in random_boxes(3):
        # when
        found = owslib_read(client, bbox=list(box))
        # then
        assert [f["id"] for f in found] == active_ids(gb_import.dataset_id, box), box
    # when: the same box as a CQL2 spatial filter
    box = random_boxes(1)[0]
    found = owslib_read(client, filter=f"S_INTERSECTS(geometry, BBOX({','.join(map(str, box))}))")
    # then
    assert [f["id"] for f in found] == active_ids(gb_import.dataset_id, box)


# --- Sensors ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sensors(server, django_db_blocker) -> Iterator[dict[str, int]]:
    """The sensors of test_ogc_sensors on a node of their own, committed for the server to
    see, and removed afterwards."""
    from tests.ingestion.edge.test_client_e2e import _delete_node
    from tests.places.test_ogc_sensors import sensors_make

    with django_db_blocker.unblock():
        ids = sensors_make("ogc-clients-sensors")
        node = Sensor.objects.get(pk=next(iter(ids.values()))).node
    try:
        yield ids
    finally:
        with django_db_blocker.unblock():
            _delete_node(node, node.region)


def sensor_ids_in(sql: str, params: list | None = None) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        return sorted(row[0] for row in cursor.fetchall())


def ogr_sensor_ids(server: Server, tmp_path: Path, *args: str) -> list[int]:
    """The sensor ids GDAL reads, two a page so that it follows several next links."""
    out = tmp_path / f"sensors-{secrets.token_hex(4)}.geojsons"
    run = subprocess.run(
        [OGR2OGR, "-f", "GeoJSONSeq", "-preserve_fid", "-oo", "PAGE_SIZE=2", *args, str(out),
         f"OAPIF:{server}/ogc", "sensors"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return [json.loads(line.strip("\x1e"))["id"] for line in out.read_text().splitlines() if line]


def test_gdal_reads_every_sensor_once_and_a_bbox_equal_to_postgis(server, sensors, tmp_path):
    # when
    every = ogr_sensor_ids(server, tmp_path)
    box = (-4.0, 55.0, -1.0, 58.0)
    inside = ogr_sensor_ids(server, tmp_path, "-spat", *map(str, box))
    # then
    assert len(every) == len(set(every))
    assert sorted(every) == sensor_ids_in("SELECT id FROM ingestion_sensor")
    assert set(sensors.values()) <= set(every)
    assert sorted(inside) == sensor_ids_in(
        "SELECT id FROM ingestion_sensor WHERE "
        "ST_Intersects(location, ST_MakeEnvelope(%s, %s, %s, %s, 4326))",
        list(box),
    )
    assert {sensors["ogc-aberdeen"], sensors["ogc-edinburgh"]} <= set(inside)
    # GDAL sends the box to the server: the pages asked for carry it
    asked = server.access_log.read_text()
    assert re.search(r"/ogc/collections/sensors/items\?\S*bbox=-4,55,-1,58", asked)


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2019-03-02/2019-03-31", "2019-03-02", "2019-04-01"),
        ("2019-04-05", "2019-04-05", "2019-04-06"),
        ("../2019-03-01T07:00:03Z", None, "2019-03-01T07:00:03.000001Z"),
    ],
)
def test_owslib_datetime_equals_the_readings(server, sensors, text, start, end):
    # given
    client = Features(f"{server}/ogc/")
    # when
    found = client.collection_items("sensors", datetime_=text, limit=1000)
    # then
    expected = sensor_ids_in(
        "SELECT DISTINCT sensor_id FROM ingestion_observation WHERE "
        "(%s::timestamptz IS NULL OR time >= %s::timestamptz) AND time < %s::timestamptz",
        [start, start, end],
    )
    assert [f["id"] for f in found["features"]] == expected
    assert expected
    assert found["numberMatched"] == len(expected)


def test_a_bad_datetime_is_400_naming_the_parameter(server, sensors):
    # when
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(  # noqa: S310 # nosec B310 # the test's own server
            f"{server}/ogc/collections/sensors/items?datetime=2019-02-30", timeout=30
        )
    # then
    assert refused.value.code == 400
    body = json.loads(refused.value.read())
    assert body["parameter"] == "datetime"
    assert body["code"] == "InvalidParameterValue"

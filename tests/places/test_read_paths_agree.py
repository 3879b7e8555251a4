"""The places list, the viewport and the tiles show the same places for the same request."""

from __future__ import annotations

import gzip
import math

import mapbox_vector_tile
import pytest
from django.contrib.gis.geos import Point

from places.models import Place, PlaceStatus
from places.services import dataset_get_or_create, place_create, place_retire, place_update

pytestmark = pytest.mark.django_db

# A quiet corner of the Alps, far from the sample data: one zoom-12 tile holds it all.
CENTRE = (9.51, 46.51)
BOX = "9.5,46.5,9.52,46.52"
ZOOM = 12


def _tile_of(lon: float, lat: float, z: int) -> tuple[int, int, int]:
    n = 2**z
    y = (1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n
    return z, int((lon + 180) / 360 * n), int(y)


@pytest.fixture
def mixed_statuses(sample_regions, clear_cache) -> dict[str, set[int]]:
    """Four active places, two retired, one merged into an active one, in one small box."""
    dataset = dataset_get_or_create(slug="statuses")
    made = [
        place_create(
            dataset=dataset,
            source_key=f"s{i}",
            data={"name": f"place {i}", "location": Point(9.501 + i * 0.002, 46.501 + i * 0.002)},
        )
        for i in range(7)
    ]
    place_retire(place=made[4])
    place_retire(place=made[5])
    place_update(place=made[6], data={"status": PlaceStatus.MERGED, "merged_into": made[0]})
    by_status: dict[str, set[int]] = {}
    for place in Place.objects.filter(dataset=dataset):
        by_status.setdefault(place.status, set()).add(place.pk)
    return by_status


def _listed(client, params: dict[str, str]) -> set[int]:
    body = client.get("/api/v1/places/", {**params, "bbox": BOX, "limit": 1000}).json()
    return {feature["id"] for feature in body["features"]}


def _viewport(client, params: dict[str, str]) -> set[int]:
    body = client.get("/api/v1/viewport/", {**params, "bbox": BOX, "zoom": 14}).json()
    assert body["kind"] == "points"
    return set(body["ids"])


def _tile(client, params: dict[str, str]) -> set[int]:
    z, x, y = _tile_of(*CENTRE, ZOOM)
    response = client.get(f"/tiles/places/{z}/{x}/{y}.pbf", params)
    body = response.content
    if response.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    layer = mapbox_vector_tile.decode(body).get("places", {"features": []}) if body else None
    return {feature["id"] for feature in layer["features"]} if layer else set()


@pytest.mark.parametrize("status", [None, "active", "retired", "merged", "any"])
def test_list_viewport_and_tiles_show_the_same_places_for_each_status(
    client, mixed_statuses, status
):
    # given places of every status in one box, and a request with or without a status
    params = {"dataset": "statuses"}
    if status is not None:
        params["status"] = status
    # when the three read paths answer it
    listed, viewed, tiled = (
        _listed(client, params),
        _viewport(client, params),
        _tile(client, params),
    )
    # then they show the same places: active ones by default, else the status asked for
    if status == "any":
        expected = set().union(*mixed_statuses.values())
    else:
        expected = mixed_statuses[status or PlaceStatus.ACTIVE]
    assert listed == viewed == tiled == expected
    assert expected


def test_status_help_text_names_the_default_on_every_read_path(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    for path in ("/api/v1/places/", "/api/v1/viewport/", "/tiles/places/{z}/{x}/{y}.pbf"):
        status = next(
            p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == "status"
        )
        assert status["schema"]["default"] == "active", path
        assert set(status["schema"]["enum"]) == {"active", "retired", "merged", "any"}, path


@pytest.mark.parametrize(
    "bbox",
    ["1,2,3", "1,2,3,4,5", "a,b,c,d", "nan,0,1,1", "0,0,inf,1", "0,10,1,5", "0,-95,1,0", ",,,"],
)
def test_list_and_viewport_refuse_a_bad_bbox_with_the_same_message(client, bbox):
    listed = client.get("/api/v1/places/", {"bbox": bbox})
    viewed = client.get("/api/v1/viewport/", {"bbox": bbox, "zoom": 3})
    assert listed.status_code == viewed.status_code == 400
    assert listed.json()["bbox"] == viewed.json()["bbox"]


def test_list_and_viewport_document_the_same_bbox(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    descriptions = {
        path: next(
            p["description"]
            for p in schema["paths"][path]["get"]["parameters"]
            if p["name"] == "bbox"
        )
        for path in ("/api/v1/places/", "/api/v1/viewport/")
    }
    assert len(set(descriptions.values())) == 1
    assert "antimeridian" in descriptions["/api/v1/viewport/"]

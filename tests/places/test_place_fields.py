"""One list of exposed place fields: GeoJSON, CSV, the detail, the tiles and TileJSON follow it."""

from __future__ import annotations

import csv
import gzip
import io
import math

import mapbox_vector_tile
import pytest
from rest_framework.test import APIClient

from places.models import Place
from places.serving.fields import PLACE_FIELDS, PROPERTIES, TILE_COLUMNS

pytestmark = pytest.mark.django_db

LONDON = "-0.15,51.49,-0.07,51.53"


def _tile_for(lon: float, lat: float, z: int) -> tuple[int, int, int]:
    n = 2**z
    y = (1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n
    return z, int((lon + 180) / 360 * n), int(y)


def _layer(client, url: str, name: str) -> list[dict]:
    response = client.get(url)
    body = response.content
    if response.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return mapbox_vector_tile.decode(body)[name]["features"]


def _declared(tilejson: dict, layer: str) -> set[str]:
    return set(next(v for v in tilejson["vector_layers"] if v["id"] == layer)["fields"])


def _carried(features: list[dict]) -> set[str]:
    # A tile leaves out null values, so the union over many features is what the layer carries.
    return set().union(*(feature["properties"] for feature in features))


def test_tilejson_declares_exactly_what_the_tiles_carry(client, gb_import, clear_cache):
    # given the TileJSON documents and tiles of each layer
    places_json = client.get("/tiles/places.json").json()
    regions_json = client.get("/tiles/regions.json").json()
    city = _tile_for(-0.0984, 51.5138, 13)
    places = _layer(client, "/tiles/places/{}/{}/{}.pbf".format(*city), "places")
    clusters = _layer(client, "/tiles/places/0/0/0.pbf", "clusters")
    westminster = _tile_for(-0.1357, 51.4973, 6)
    regions = _layer(
        client, "/tiles/regions/{}/{}/{}.pbf?level=district".format(*westminster), "regions"
    )
    # then every layer carries the fields its TileJSON declares, no more and no fewer
    assert _carried(places) == _declared(places_json, "places")
    assert _carried(clusters) == _declared(places_json, "clusters")
    assert _carried(regions) == _declared(regions_json, "regions")
    # and the places layer's fields are those the one list gives a tile column
    assert _declared(places_json, "places") == {column.name for column in TILE_COLUMNS}


def test_geojson_properties_and_csv_header_follow_the_one_list(gb_import, clear_cache):
    api = APIClient()
    # when the list is fetched as GeoJSON and as CSV with every field
    geojson = api.get("/api/v1/places/", {"bbox": LONDON, "limit": 20}).json()
    table = api.get("/api/v1/places/", {"bbox": LONDON, "limit": 20, "format": "csv"})
    header = next(csv.reader(io.StringIO(table.content.decode())))
    # then the GeoJSON properties are the list, in its order
    assert geojson["features"]
    assert all(list(f["properties"]) == list(PROPERTIES) for f in geojson["features"])
    # and the CSV has id, lon, lat, then each field's columns, named after their field
    expected = ["id", "lon", "lat"]
    for field in PLACE_FIELDS:
        names = [name for name, _ in field.csv]
        assert all(n == field.name or n.startswith(field.name + "_") for n in names), names
        expected += names
    assert header == expected


def test_place_detail_shows_every_listed_field(gb_import):
    place = Place.objects.order_by("id").first()
    body = APIClient().get(f"/api/v1/places/{place.pk}/").json()
    assert list(body["properties"])[: len(PROPERTIES)] == list(PROPERTIES)


def test_fields_parameter_documents_the_one_list(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    parameters = schema["paths"]["/api/v1/places/"]["get"]["parameters"]
    fields = next(p for p in parameters if p["name"] == "fields")
    assert all(f"`{name}`" in fields["description"] for name in PROPERTIES)

"""Several datasets at once: ``dataset=a,b`` (or the parameter repeated) on the places list,
the viewport and the tiles, counted against PostGIS; refusals; cache keys that ignore order."""

from __future__ import annotations

import gzip
import math

import mapbox_vector_tile
import pytest
from django.contrib.gis.geos import Point, Polygon
from django.db import connection

from analytics.downloads.selectors import Selection
from places.models import Dataset, Place
from places.services import dataset_get_or_create, place_create
from places.serving.query import PlaceQuery

pytestmark = pytest.mark.django_db

# A quiet corner of the Pyrenees, far from the sample data: one zoom-11 tile holds it all.
BOX = "1.0,42.5,1.1,42.6"
ZOOM = 11
# Places per dataset: the three are told apart by their counts.
SIZES = {"layers-a": 3, "layers-b": 5, "layers-c": 7}


@pytest.fixture
def layers(sample_regions, clear_cache) -> dict[str, Dataset]:
    """Three datasets of places in BOX (and one place of each outside it)."""
    made = {}
    for slug, size in SIZES.items():
        dataset = dataset_get_or_create(slug=slug, defaults={"attribution": f"© {slug}"})
        for i in range(size):
            offset = 0.001 * (i + 1) + 0.01 * len(made)
            place_create(
                dataset=dataset,
                source_key=f"{slug}-{i}",
                data={"name": f"{slug} {i}", "location": Point(1.0 + offset, 42.5 + offset)},
            )
        place_create(dataset=dataset, source_key=f"{slug}-far", data={"location": Point(1.5, 43)})
        made[slug] = dataset
    return made


def _in_box(*slugs: str) -> set[int]:
    """What PostGIS holds: active places of those datasets in BOX."""
    box = Polygon.from_bbox(tuple(float(v) for v in BOX.split(",")))
    return set(
        Place.objects.filter(
            status="active", dataset__slug__in=slugs, location__intersects=box
        ).values_list("id", flat=True)
    )


def _tile_xy(lon: float, lat: float, z: int) -> tuple[int, int]:
    n = 2**z
    y = (1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n
    return int((lon + 180) / 360 * n), int(y)


TILE = (ZOOM, *_tile_xy(1.05, 42.55, ZOOM))


def _tile_ids(response) -> set[int]:
    body = response.content
    if response.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    layer = mapbox_vector_tile.decode(body).get("places") if body else None
    return {feature["id"] for feature in layer["features"]} if layer else set()


def _cluster_total(response) -> int:
    body = response.content
    if response.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    layer = mapbox_vector_tile.decode(body).get("clusters") if body else None
    return sum(f["properties"]["count"] for f in layer["features"]) if layer else 0


def test_two_datasets_show_the_places_of_both_on_every_read_path(client, layers):
    # given three datasets in one box, and a request for two of them
    params = {"dataset": "layers-a,layers-c"}
    expected = _in_box("layers-a", "layers-c")
    assert len(expected) == SIZES["layers-a"] + SIZES["layers-c"]
    # when the list, the viewport (points and clusters) and a tile answer it
    listed = client.get("/api/v1/places/", {**params, "bbox": BOX, "limit": 100})
    points = client.get("/api/v1/viewport/", {**params, "bbox": BOX, "zoom": 14}).json()
    clusters = client.get("/api/v1/viewport/", {**params, "bbox": BOX, "zoom": 5}).json()
    z, x, y = TILE
    tiled = _tile_ids(client.get(f"/tiles/places/{z}/{x}/{y}.pbf", params))
    low = _cluster_total(client.get("/tiles/places/5/16/11.pbf", params))
    # then each shows the places of those two datasets, and none of the third
    assert {f["id"] for f in listed.json()["features"]} == expected
    assert listed["X-Number-Matched"] == str(len(expected))
    assert points["kind"] == "points"
    assert set(points["ids"]) == expected
    assert clusters["kind"] == "clusters"
    assert sum(clusters["count"]) == clusters["total"] == len(expected)
    assert tiled == expected
    # (the zoom-5 tile holds the places outside BOX too: one more per dataset)
    assert low == len(expected) + 2


def test_the_parameter_repeated_means_the_same_as_a_list(client, layers):
    # when the datasets are named by repeating the parameter, or by both forms at once
    repeated = client.get("/api/v1/places/?dataset=layers-b&dataset=layers-c&bbox=" + BOX)
    mixed = client.get("/api/v1/places/?dataset=layers-a,layers-b&dataset=layers-c&bbox=" + BOX)
    # then
    assert {f["id"] for f in repeated.json()["features"]} == _in_box("layers-b", "layers-c")
    assert {f["id"] for f in mixed.json()["features"]} == _in_box(*SIZES)


def test_one_dataset_still_filters_alone(client, layers):
    body = client.get("/api/v1/places/", {"dataset": "layers-b", "bbox": BOX}).json()
    assert {f["id"] for f in body["features"]} == _in_box("layers-b")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("layers-a,nope", "no dataset nope"),
        ("zz,layers-a,aa", "no dataset aa, zz"),
        (
            "layers-a,,layers-b",
            "an empty slug in the list; name each dataset once, e.g. dataset=a,b",
        ),
        ("layers-a,", "an empty slug in the list; name each dataset once, e.g. dataset=a,b"),
    ],
)
def test_an_unknown_or_empty_dataset_is_a_400_naming_dataset(client, layers, value, message):
    z, x, y = TILE
    for url, params in (
        ("/api/v1/places/", {}),
        ("/api/v1/viewport/", {"bbox": BOX, "zoom": 14}),
        (f"/tiles/places/{z}/{x}/{y}.pbf", {}),
        ("/tiles/places.json", {}),
    ):
        response = client.get(url, {**params, "dataset": value})
        assert response.status_code == 400, url
        assert response.json() == {"dataset": [message]}, url


def test_a_repeated_empty_dataset_is_a_400(client, layers):
    response = client.get("/api/v1/places/?dataset=layers-a&dataset=")
    assert response.status_code == 400
    assert list(response.json()) == ["dataset"]


def test_the_cache_key_and_etag_ignore_the_order_datasets_are_named_in(client, layers):
    ids = [layers[slug].pk for slug in SIZES]
    # then the query's key is that of the set
    assert (
        PlaceQuery(dataset_ids=tuple(ids)).key()
        == PlaceQuery(dataset_ids=(ids[2], ids[0], ids[1], ids[0])).key()
    )
    assert PlaceQuery(dataset_ids=(ids[0], ids[1])).key() != PlaceQuery(dataset_ids=(ids[0],)).key()
    # and over HTTP: the same ETag, and a 304 for the other order
    z, x, y = TILE
    for url, params in (
        (f"/tiles/places/{z}/{x}/{y}.pbf", {}),
        ("/api/v1/viewport/", {"bbox": BOX, "zoom": 14}),
        ("/api/v1/places/", {"bbox": BOX}),
    ):
        first = client.get(url, {**params, "dataset": "layers-a,layers-c"})
        other = client.get(url, {**params, "dataset": "layers-c,layers-a"})
        assert first["ETag"] == other["ETag"], url
        again = client.get(
            url, {**params, "dataset": "layers-c,layers-a"}, HTTP_IF_NONE_MATCH=first["ETag"]
        )
        assert again.status_code == 304, url
        alone = client.get(url, {**params, "dataset": "layers-a"})
        assert alone["ETag"] != first["ETag"], url


def test_a_write_to_one_named_dataset_moves_the_etag_and_one_not_named_does_not(client, layers):
    z, x, y = TILE
    url = f"/tiles/places/{z}/{x}/{y}.pbf"
    params = {"dataset": "layers-a,layers-b"}
    before = client.get(url, params)["ETag"]
    # when a place is added to a dataset not named
    place_create(
        dataset=layers["layers-c"], source_key="late-c", data={"location": Point(1.05, 42.55)}
    )
    # then the tile of a and b keeps its ETag
    assert client.get(url, params)["ETag"] == before
    # when one is added to b
    place_create(
        dataset=layers["layers-b"], source_key="late-b", data={"location": Point(1.05, 42.55)}
    )
    # then the tile is new and shows it
    after = client.get(url, params)
    assert after["ETag"] != before
    assert _tile_ids(after) == _in_box("layers-a", "layers-b")


def test_one_dataset_keeps_the_plain_equality_and_several_one_array(layers):
    ids = [layers[slug].pk for slug in SIZES]
    # when
    one, one_params = PlaceQuery(dataset_ids=(ids[0],)).where()
    many, many_params = PlaceQuery(dataset_ids=(ids[1], ids[0])).where()
    # then: one statement for any number of datasets, bound values only
    assert "p.dataset_id = %(dataset_id)s" in one
    assert one_params["dataset_id"] == ids[0]
    assert "p.dataset_id = ANY(%(dataset_ids)s)" in many
    assert many_params["dataset_ids"] == sorted(ids[:2])
    # and PostgreSQL counts the same places as the ORM
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM places_place p WHERE {many}", many_params)  # nosec B608
        assert cursor.fetchone()[0] == Place.objects.filter(dataset_id__in=ids[:2]).count()


def test_the_tilejson_credits_only_the_datasets_shown(client, layers):
    # when
    two = client.get("/tiles/places.json", {"dataset": "layers-b,layers-a"}).json()
    every = client.get("/tiles/places.json").json()
    # then
    assert two["attribution"] == "© layers-a; © layers-b"
    assert "© layers-c" in every["attribution"]
    assert "dataset=layers-b%2Clayers-a" in two["tiles"][0]


def test_the_schema_describes_dataset_as_a_list_on_every_read_path(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    for path in (
        "/api/v1/places/",
        "/api/v1/viewport/",
        "/tiles/places/{z}/{x}/{y}.pbf",
        "/tiles/places.json",
    ):
        parameter = next(
            p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == "dataset"
        )
        assert parameter["schema"]["type"] == "array", path
        assert parameter["schema"]["items"]["type"] == "string", path
        assert "commas" in parameter["description"], path


def test_a_download_job_stored_with_one_dataset_id_still_reads(layers):
    # given a selection as jobs stored it before several datasets could be named
    stored = {"dataset_id": layers["layers-a"].pk, "status": "active"}
    # when
    query = Selection.from_json(stored).query
    # then it is the same query as one naming that dataset now, and it round-trips
    assert query == PlaceQuery(dataset_ids=(layers["layers-a"].pk,))
    assert Selection.from_json(Selection(query=query).to_json()).query == query

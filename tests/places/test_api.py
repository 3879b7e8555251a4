"""The read API: bbox queries, filters, pagination, errors that name the parameter."""

from __future__ import annotations

import pytest
from django.contrib.gis.geos import Point, Polygon
from django.core.cache import cache
from django.db import connection
from rest_framework.test import APIClient

from places.models import Place
from places.services import dataset_get_or_create, place_create
from places.services.places import place_update
from places.serving.query import PlaceQuery

pytestmark = pytest.mark.django_db


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def pacific() -> list[Place]:
    """Places on both sides of the antimeridian (New Zealand, Chatham Islands) and one far off."""
    dataset = dataset_get_or_create(slug="pacific")
    spots = {
        "wellington": (174.78, -41.29),
        "chatham": (-176.5, -43.93),  # inside Natural Earth 1:50m Chatham Island
        "fiji-east": (179.9, -17.0),
        "honolulu": (-157.86, 21.31),
    }
    return [
        place_create(dataset=dataset, source_key=key, data={"name": key, "location": Point(*xy)})
        for key, xy in spots.items()
    ]


def test_bbox_returns_geojson_features_inside_the_box(api, gb_import):
    response = api.get("/api/v1/places/", {"bbox": "-0.15,51.49,-0.07,51.53", "limit": 50})
    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "FeatureCollection"
    assert body["numberReturned"] == len(body["features"]) == 50
    for feature in body["features"]:
        lon, lat = feature["geometry"]["coordinates"]
        assert -0.15 <= lon <= -0.07
        assert 51.49 <= lat <= 51.53
    assert body["next"]


def test_cursor_pages_cover_the_box_once(api, gb_import):
    box = "-0.13,51.50,-0.11,51.52"
    expected = set(
        Place.objects.filter(
            location__within=Polygon.from_bbox((-0.13, 51.50, -0.11, 51.52))
        ).values_list("id", flat=True)
    )
    seen: list[int] = []
    url: str | None = f"/api/v1/places/?bbox={box}&limit=7"
    while url:
        body = api.get(url).json()
        seen += [f["id"] for f in body["features"]]
        url = body["next"]
    assert len(seen) == len(set(seen))
    assert set(seen) == expected
    assert len(expected) > 7


def test_bbox_crossing_antimeridian_returns_both_sides(api, pacific):
    response = api.get("/api/v1/places/", {"bbox": "170,-48,-175,-34", "dataset": "pacific"})
    assert response.status_code == 200
    names = {f["properties"]["name"] for f in response.json()["features"]}
    assert names == {"wellington", "chatham"}


@pytest.mark.parametrize(
    "bbox",
    [
        "1,2,3",
        "1,2,3,4,5",
        "a,b,c,d",
        "nan,0,1,1",
        "0,0,inf,1",
        "0,10,1,5",
        "0,-95,1,0",
        "-190,0,1,1",
        "0,0,181,1",
        "",
        ",,,",
    ],
)
def test_malformed_bbox_is_a_400_naming_the_parameter(api, bbox):
    response = api.get("/api/v1/places/", {"bbox": bbox})
    if bbox == "":
        assert response.status_code == 200  # an empty bbox means no box
        return
    assert response.status_code == 400, response.content
    assert "bbox" in response.json()


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"religion": "jedi"}, "religion"),
        ({"status": "gone"}, "status"),
        ({"dataset": "no-such-dataset"}, "dataset"),
        ({"limit": "0"}, "limit"),
        ({"limit": "100000000"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"region": "abc"}, "region"),
    ],
)
def test_bad_filter_values_are_a_400_naming_the_parameter(api, params, name):
    response = api.get("/api/v1/places/", params)
    assert response.status_code == 400
    assert name in response.json()


def test_filters_narrow_the_result(api, gb_import):
    response = api.get(
        "/api/v1/places/",
        {"bbox": "-0.5,51.3,0.3,51.7", "religion": "sikh", "dataset": "osm-gb", "limit": 500},
    )
    features = response.json()["features"]
    assert features
    assert {f["properties"]["religion"] for f in features} == {"sikh"}
    expected = Place.objects.filter(
        dataset__slug="osm-gb",
        religion="sikh",
        location__intersects=Polygon.from_bbox((-0.5, 51.3, 0.3, 51.7)),
    ).count()
    assert len(features) == expected


def test_name_search_and_country_filter(api, gb_import):
    response = api.get("/api/v1/places/", {"q": "cathedral", "country": "GBR", "limit": 1000})
    names = [f["properties"]["name"] for f in response.json()["features"]]
    assert names
    assert all("cathedral" in n.lower() for n in names)


def test_name_search_ignores_accents_and_is_answered_by_the_trigram_index(api, pacific):
    """`q` is the admin's name search (case and accents ignored), on its one trigram index."""
    place = pacific[0]
    place_update(place=place, data={"name": "Igreja de São Sebastião"})
    for q in ("sao sebastiao", "SÃO SEBAST", "são"):
        found = api.get("/api/v1/places/", {"q": q, "dataset": "pacific"}).json()["features"]
        assert [f["id"] for f in found] == [place.pk], q
    # LIKE's wildcards in the text are taken literally, full-width ones too (unaccent folds
    # them into % _ \\ ).
    for q in ("sao paulo", "s_o", "％", "＿", "s＿o", "ｓ％ｏ", "s＼ao", "s\\ao"):
        assert not api.get("/api/v1/places/", {"q": q, "dataset": "pacific"}).json()["features"]
    where, params = PlaceQuery(q="sao").where()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN SELECT p.id FROM places_place p WHERE {where}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "place_name_unaccent_trgm" in plan


def test_place_detail_has_footprint_and_region(api, gb_import):
    place = Place.objects.filter(dataset=gb_import.dataset).select_related("region").first()
    body = api.get(f"/api/v1/places/{place.pk}/").json()
    assert body["id"] == place.pk
    assert body["properties"]["region"]["code"] == place.region.code
    assert "footprint" in body["properties"]
    assert api.get("/api/v1/places/999999999/").status_code == 404


def test_regions_and_datasets(api, sample_regions, gb_import):
    countries = api.get("/api/v1/regions/", {"level": "country", "code": "GBR"}).json()["results"]
    assert [r["code"] for r in countries] == ["GBR"]
    gbr = countries[0]
    detail = api.get(f"/api/v1/regions/{gbr['id']}/").json()
    assert detail["geometry"]["type"] == "MultiPolygon"
    assert api.get("/api/v1/regions/", {"level": "planet"}).status_code == 400
    datasets = api.get("/api/v1/datasets/").json()
    slugs = [d["slug"] for d in datasets]
    assert "osm-gb" in slugs
    assert api.get("/api/v1/datasets/osm-gb/").json()["slug"] == "osm-gb"


def test_place_list_query_count_does_not_grow_with_page_size(
    api, gb_import, django_assert_max_num_queries
):
    with django_assert_max_num_queries(3):
        response = api.get("/api/v1/places/", {"bbox": "-0.5,51.3,0.3,51.7", "limit": 500})
    assert len(response.json()["features"]) == 500


def test_openapi_schema_and_docs_work_offline(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/api/v1/places/", "/api/v1/regions/", "/api/v1/datasets/"} <= set(paths)
    bbox = next(p for p in paths["/api/v1/places/"]["get"]["parameters"] if p["name"] == "bbox")
    assert "antimeridian" in bbox["description"]
    # Every operation but the edge devices' and the proposals' is public: none lists a
    # security requirement, so Swagger UI draws no lock on them (drf-spectacular lists the
    # login schemes as optional). The edge protocol's operations need a node's key, the
    # review queue's a user's token or session, and say so.
    secured = {
        path: op["security"]
        for path, ops in paths.items()
        for op in ops.values()
        if "security" in op
    }
    edge = {path for path in paths if path.startswith("/api/v1/edge/")}
    proposals = {path for path in paths if path.startswith("/api/v1/proposals/")}
    assert proposals
    assert set(secured) == edge | proposals
    assert all(secured[path] == [{"edgeKey": []}] for path in edge)
    assert all(secured[path] == [{"userToken": []}, {"cookieAuth": []}] for path in proposals)
    docs = api.get("/api/docs/")
    assert docs.status_code == 200
    assert b"cdn.jsdelivr" not in docs.content


def test_home_page_shows_the_number_of_places_after_an_import(client, gb_import):
    response = client.get("/")
    assert response.status_code == 200
    shown = int(response.context["place_estimate"])
    actual = Place.objects.count()
    assert actual * 0.9 <= shown <= actual * 1.1
    assert b"osm-gb" in response.content


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"cursor": "cD1hYmM="}, "cursor"),  # base64 of p=abc
        ({"dataset": "\x00"}, "dataset"),
        ({"country": "GB\x00R"}, "country"),
        ({"q": "a\x00b"}, "q"),
    ],
)
def test_tampered_cursor_and_nul_characters_are_a_400(api, params, name):
    response = api.get("/api/v1/places/", params)
    assert response.status_code == 400
    assert name in response.json()


NUL_REFUSED = ["must not contain NUL characters"]


def test_nul_bytes_and_escapes_in_the_raw_query_string_are_a_400(api, client):
    """The NUL guard looks at the raw query string first: a NUL byte itself, %00 in any
    parameter, and a NUL spelt in the charset the request names (UTF-7: +AAA-) are refused
    by the guard, naming the parameter, on the list, the viewport and a tile. Parameters
    whose own validation would not catch a NUL (dataset, country) would reach PostgreSQL."""
    cases = [
        ("/api/v1/places/", "dataset=a\x00b", "dataset"),
        ("/api/v1/places/", "limit=5&country=GB%00R", "country"),
        ("/api/v1/viewport/", "bbox=-1,51,0,52&zoom=12&dataset=%00", "dataset"),
        ("/tiles/places/10/511/340.pbf", "country=%00x", "country"),
    ]
    for path, query, name in cases:
        response = api.get(path, QUERY_STRING=query)
        assert response.status_code == 400, (path, query)
        assert response.json()[name] == NUL_REFUSED, (path, query)
    # Django decodes a query string in the charset of the request's Content-Type, even on a
    # GET (DRF's test client would replace the header). UTF-7's NUL, all of it escaped (a
    # plus alone would be a space):
    response = client.get(
        "/api/v1/places/",
        QUERY_STRING="dataset=%2B%41%41%41%2D",
        CONTENT_TYPE="text/plain; charset=utf-7",
    )
    assert response.status_code == 400
    assert response.json()["dataset"] == NUL_REFUSED
    # The text "%00" (its percent sign escaped) is no NUL.
    assert api.get("/api/v1/places/", QUERY_STRING="q=%2500&limit=1").status_code == 200


def test_country_filter_excludes_other_countries(api, gb_import, pacific):
    response = api.get("/api/v1/places/", {"country": "NZL", "limit": 100})
    names = {f["properties"]["name"] for f in response.json()["features"]}
    assert names == {"wellington", "chatham"}


def test_clients_over_the_rate_limit_get_429(api, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"anon": "2/min", "user": None},
    }
    cache.clear()
    codes = [api.get("/api/v1/datasets/").status_code for _ in range(3)]
    tile = api.get("/tiles/places/0/0/0.pbf")
    cache.clear()
    assert codes == [200, 200, 429]
    assert tile.status_code == 429
    assert "Retry-After" in tile

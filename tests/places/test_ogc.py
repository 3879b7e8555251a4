"""/ogc/: OGC API – Features and Tiles on the places fast paths (in-process; the clients
nobody here wrote are in test_ogc_clients.py)."""

from __future__ import annotations

import datetime
import json
import random
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.gis.geos import Point
from django.db import connection
from rest_framework.test import APIClient

from places.models import Place, Region
from places.ogc.documents import CONFORMANCE
from places.services import dataset_get_or_create, place_create, place_update

pytestmark = pytest.mark.django_db

GB = "places-osm-gb"
ITEMS = f"/ogc/collections/{GB}/items"
LONDON = (-0.15, 51.49, -0.07, 51.53)


@pytest.fixture
def api(clear_cache) -> APIClient:
    return APIClient()


def ids_in(sql: str, params: list | None = None) -> set[int]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        return {row[0] for row in cursor.fetchall()}


def walk(api: APIClient, url: str, params: dict) -> list[dict]:
    """Every feature, following the `next` links to the end."""
    found: list[dict] = []
    body = api.get(url, params).json()
    while True:
        found += body["features"]
        following = [link["href"] for link in body["links"] if link["rel"] == "next"]
        if not following:
            return found
        parts = urlsplit(following[0])
        body = api.get(parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}).json()


def error(response) -> dict:
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/json"
    return response.json()


# --- Landing page, conformance, collections ------------------------------------------------


def test_landing_page_links_the_definition_conformance_and_data(api):
    # when
    body = api.get("/ogc/").json()
    # then
    rels = {link["rel"]: link["href"] for link in body["links"]}
    assert rels["conformance"].endswith("/ogc/conformance")
    assert rels["data"].endswith("/ogc/collections")
    assert rels["service-desc"].endswith("/ogc/api")
    assert api.get(urlsplit(rels["service-desc"]).path).status_code == 200


def test_api_definition_is_relative_to_ogc_with_each_collections_queryables(api, gb_import):
    # when
    response = api.get("/ogc/api")
    # then
    assert response["Content-Type"] == "application/vnd.oai.openapi+json;version=3.0"
    body = json.loads(response.content)
    assert body["servers"][0]["url"].endswith("/ogc")
    assert "/conformance" in body["paths"]
    assert not [path for path in body["paths"] if path.startswith(("/ogc", "/api"))]
    names = {p["name"] for p in body["paths"][f"/collections/{GB}/items"]["get"]["parameters"]}
    assert {"bbox", "limit", "filter", "religion", "start_date"} <= names
    region_names = {
        p["name"] for p in body["paths"]["/collections/regions/items"]["get"]["parameters"]
    }
    assert "level" in region_names
    assert "religion" not in region_names


def test_conformance_declares_features_filters_and_tiles_but_not_crs(api):
    # when
    classes = api.get("/ogc/conformance").json()["conformsTo"]
    # then
    assert classes == CONFORMANCE
    assert "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core" in classes
    assert "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text" in classes
    assert "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/mvt" in classes
    # Part 2 (output in other CRSs) is not implemented, so not declared.
    assert not [c for c in classes if "ogcapi-features-2" in c]


def expected_collection_ids() -> list[str]:
    """All places, a collection per dataset that holds places (other tests of the session
    commit places of datasets of their own), by slug, the regions and the sensors."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 'places-' || slug FROM places_dataset d WHERE EXISTS "
            "(SELECT 1 FROM places_place p WHERE p.dataset_id = d.id) ORDER BY slug"
        )
        return ["places", *(row[0] for row in cursor.fetchall()), "regions", "sensors"]


def test_collections_are_all_places_each_dataset_with_places_and_regions(api, gb_import):
    # given: the region datasets hold boundaries only
    # when
    body = api.get("/ogc/collections").json()
    # then
    ids = [c["id"] for c in body["collections"]]
    assert GB in ids
    assert ids == expected_collection_ids()
    gb = body["collections"][ids.index(GB)]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT "
            "ST_Extent(location) e FROM places_place WHERE dataset_id = %s) x",
            [gb_import.dataset_id],
        )
        expected = list(cursor.fetchone())
    assert gb["extent"]["spatial"]["bbox"] == [pytest.approx(expected)]
    assert {link["rel"] for link in gb["links"]} >= {
        "self",
        "items",
        "http://www.opengis.net/def/rel/ogc/1.0/queryables",
        "http://www.opengis.net/def/rel/ogc/1.0/tilesets-vector",
    }


def test_collection_temporal_extent_spans_the_dated_places(api, gb_import):
    # given
    first, last = Place.objects.filter(dataset_id=gb_import.dataset_id).order_by("id")[:2]
    Place.objects.filter(pk=first.pk).update(
        start_date=datetime.date(1066, 12, 25), end_date=datetime.date(1536, 4, 1)
    )
    Place.objects.filter(pk=last.pk).update(
        start_date=datetime.date(1900, 1, 1), end_date=datetime.date(1999, 12, 31)
    )
    # when: the extent is read again (the writes moved the data version)
    body = api.get(f"/ogc/collections/{GB}").json()
    # then
    assert body["extent"]["temporal"]["interval"] == [["1066-12-25", "1999-12-31"]]
    # when: a dated place still stands, the interval is open at its end
    place_update(place=Place.objects.get(pk=last.pk), data={"end_date": None})
    body = api.get(f"/ogc/collections/{GB}").json()
    # then
    assert body["extent"]["temporal"]["interval"] == [["1066-12-25", None]]


def test_unknown_collection_is_404_in_the_standard_body(api, gb_import):
    # when
    response = api.get("/ogc/collections/places-nowhere/items")
    # then
    assert response.status_code == 404
    assert response.json()["code"] == "NotFound"


def test_queryables_are_a_json_schema_of_the_filterable_properties(api):
    # when
    response = api.get(f"/ogc/collections/{GB}/queryables")
    # then
    assert response.status_code in (200, 404)
    body = api.get("/ogc/collections/places/queryables").json()
    assert body["type"] == "object"
    assert body["properties"]["religion"]["type"] == "string"
    assert "christian" in body["properties"]["religion"]["enum"]
    assert body["properties"]["start_date"] == {
        "type": "string",
        "format": "date",
        "title": "start_date",
    }
    assert "geometry" in body["properties"]


# --- Items -----------------------------------------------------------------------------------


def test_every_feature_comes_once_across_keyset_pages(api, gb_import):
    # given
    box = ",".join(map(str, LONDON))
    expected = ids_in(
        "SELECT id FROM places_place WHERE status = 'active' AND dataset_id = %s AND "
        "ST_Intersects(location, ST_MakeEnvelope(%s, %s, %s, %s, 4326))",
        [gb_import.dataset_id, *LONDON],
    )
    # when
    found = walk(api, ITEMS, {"bbox": box, "limit": 50})
    # then
    ids = [f["id"] for f in found]
    assert len(ids) == len(set(ids)) == len(expected) > 100
    assert set(ids) == expected


def test_number_matched_and_returned(api, gb_import):
    # when
    body = api.get(ITEMS, {"bbox": ",".join(map(str, LONDON)), "limit": 7}).json()
    # then
    assert body["numberReturned"] == len(body["features"]) == 7
    assert body["numberMatched"] == len(
        ids_in(
            "SELECT id FROM places_place WHERE status = 'active' AND "
            "ST_Intersects(location, ST_MakeEnvelope(%s, %s, %s, %s, 4326))",
            list(LONDON),
        )
    )
    assert body["numberMatchedExact"] is True


def test_sortby_pages_follow_the_order_by_keyset(api, gb_import):
    # when
    found = walk(api, ITEMS, {"bbox": ",".join(map(str, LONDON)), "sortby": "-name", "limit": 40})
    # then: descending by name, then id, and no feature twice
    keys = [(f["properties"]["name"], f["id"]) for f in found]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT name, id FROM places_place WHERE status = 'active' AND "
            "ST_Intersects(location, ST_MakeEnvelope(%s, %s, %s, %s, 4326)) "
            "ORDER BY name DESC, id DESC",
            list(LONDON),
        )
        assert keys == [tuple(row) for row in cursor.fetchall()]


@pytest.fixture
def pacific() -> list[Place]:
    dataset = dataset_get_or_create(slug="pacific")
    spots = [(174.78, -41.29), (-176.56, -43.95), (10.0, 10.0)]
    return [
        place_create(
            dataset=dataset, source_key=f"p{i}", data={"name": f"P{i}", "location": Point(*xy)}
        )
        for i, xy in enumerate(spots)
    ]


def test_bbox_crossing_the_antimeridian_returns_both_sides(api, pacific):
    # when
    body = api.get("/ogc/collections/places-pacific/items", {"bbox": "170,-48,-175,-34"}).json()
    # then
    assert {f["id"] for f in body["features"]} == {pacific[0].pk, pacific[1].pk}


def test_bbox_crs_epsg_4326_is_latitude_first(api, pacific):
    # when
    crs84 = api.get("/ogc/collections/places-pacific/items", {"bbox": "170,-48,-175,-34"})
    epsg = api.get(
        "/ogc/collections/places-pacific/items",
        {"bbox": "-48,170,-34,-175", "bbox-crs": "http://www.opengis.net/def/crs/EPSG/0/4326"},
    )
    # then
    assert [f["id"] for f in epsg.json()["features"]] == [f["id"] for f in crs84.json()["features"]]
    assert len(epsg.json()["features"]) == 2


def test_datetime_selects_the_dated_places_whose_span_meets_it(api, pacific):
    # given: one place 1850–1900, one since 1950, one undated
    Place.objects.filter(pk=pacific[0].pk).update(
        start_date=datetime.date(1850, 1, 1), end_date=datetime.date(1900, 1, 1)
    )
    Place.objects.filter(pk=pacific[1].pk).update(start_date=datetime.date(1950, 6, 1))
    url = "/ogc/collections/places-pacific/items"

    def ids(value: str) -> set[int]:
        return {f["id"] for f in api.get(url, {"datetime": value}).json()["features"]}

    # then
    assert ids("1875-05-05") == {pacific[0].pk}
    assert ids("2020-01-01T12:00:00Z") == {pacific[1].pk}
    assert ids("1920-01-01/1940-01-01") == set()
    assert ids("1899-01-01/..") == {pacific[0].pk, pacific[1].pk}
    assert ids("../1800-01-01") == set()


def test_property_filters_are_equality_on_queryables(api, gb_import):
    # when
    found = walk(api, ITEMS, {"religion": "jewish", "limit": 1000})
    # then
    assert {f["id"] for f in found} == ids_in(
        "SELECT id FROM places_place WHERE status = 'active' AND religion = 'jewish' "
        "AND dataset_id = %s",
        [gb_import.dataset_id],
    )


@pytest.mark.parametrize(
    ("cql", "sql"),
    [
        ("religion = 'muslim' AND name LIKE 'E%'", "religion = 'muslim' AND name LIKE 'E%%'"),
        ("religion IN ('jewish', 'sikh')", "religion IN ('jewish', 'sikh')"),
        ("NOT (religion <> 'buddhist')", "religion = 'buddhist'"),
        ("id BETWEEN 100 AND 300", "id BETWEEN 100 AND 300"),
        ("denominations = 'quaker'", "denominations @> ARRAY['quaker']"),
        (
            "S_INTERSECTS(geometry, BBOX(-0.15,51.49,-0.07,51.53))",
            "ST_Intersects(location, ST_MakeEnvelope(-0.15,51.49,-0.07,51.53,4326))",
        ),
        (
            "S_WITHIN(geometry, POLYGON((-1 51, 0 51, 0 52, -1 51)))",
            "ST_Within(location, 'SRID=4326;POLYGON((-1 51, 0 51, 0 52, -1 51))'::geometry)",
        ),
        (
            "S_DISJOINT(geometry, BBOX(-10,50,1.5,60)) OR version > 1",
            "NOT ST_Intersects(location, ST_MakeEnvelope(-10,50,1.5,60,4326)) OR version > 1",
        ),
    ],
)
def test_cql2_text_filters_equal_the_same_sql(api, gb_import, cql, sql):
    # when
    found = walk(api, "/ogc/collections/places/items", {"filter": cql, "limit": 1000})
    # then
    expected = ids_in(f"SELECT id FROM places_place WHERE status = 'active' AND ({sql})")
    assert [f["id"] for f in found] == sorted(expected)


def test_a_filter_on_status_lifts_the_default_active(api, pacific):
    # given
    Place.objects.filter(pk=pacific[2].pk).update(status="retired")
    url = "/ogc/collections/places-pacific/items"
    # then
    assert len(api.get(url).json()["features"]) == 2
    assert [f["id"] for f in api.get(url, {"status": "retired"}).json()["features"]] == [
        pacific[2].pk
    ]
    assert len(api.get(url, {"filter": "status <> 'merged'"}).json()["features"]) == 3
    assert len(api.get(url, {"status": "any"}).json()["features"]) == 3


def test_properties_chooses_the_properties(api, gb_import):
    # when
    body = api.get(ITEMS, {"properties": "religion,name", "limit": 3}).json()
    # then: in the documented order
    assert [list(f["properties"]) for f in body["features"]] == [["name", "religion"]] * 3


def test_regions_are_a_collection_with_boundaries(api, sample_regions):
    # given
    region = Region.objects.get(code="E09000001")
    # when
    body = api.get(
        "/ogc/collections/regions/items",
        {"filter": "code = 'E09000001'", "properties": "name,level"},
    ).json()
    # then
    assert body["numberMatched"] == 1
    assert body["features"][0]["id"] == region.pk
    assert body["features"][0]["properties"] == {"name": region.name, "level": region.level}
    assert body["features"][0]["geometry"]["type"] == "MultiPolygon"


def test_one_feature_and_only_in_its_collection(api, gb_import, pacific):
    # when
    found = api.get(f"/ogc/collections/places-pacific/items/{pacific[0].pk}")
    elsewhere = api.get(f"{ITEMS}/{pacific[0].pk}")
    # then
    assert found.status_code == 200
    assert found["Content-Type"] == "application/geo+json"
    assert found.json()["properties"]["name"] == "P0"
    assert elsewhere.status_code == 404
    assert api.get(f"/ogc/collections/places/items/{pacific[0].pk}").status_code == 200


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"bbox": "1,2,3"}, "bbox"),
        ({"bbox": "0,60,1,50"}, "bbox"),
        ({"bbox": "0,50,1,51", "bbox-crs": "EPSG:3857"}, "bbox-crs"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"datetime": "yesterday"}, "datetime"),
        ({"datetime": "2000-01-01/1999-01-01"}, "datetime"),
        ({"filter": "name ="}, "filter"),
        ({"filter": "colour = 'red'"}, "filter"),
        ({"filter": "version = 'x'"}, "filter"),
        ({"filter-lang": "cql2-json"}, "filter-lang"),
        ({"properties": "name,colour"}, "properties"),
        ({"sortby": "start_date"}, "sortby"),
        ({"cursor": "nonsense"}, "cursor"),
        ({"version": "one"}, "version"),
        ({"bbbox": "1,2,3,4"}, "bbbox"),
        ({"f": "xml"}, "f"),
    ],
)
def test_bad_parameters_are_400_naming_them(api, gb_import, params, parameter):
    # when
    body = error(api.get(ITEMS, params))
    # then
    assert body["code"] == "InvalidParameterValue"
    assert body["parameter"] == parameter
    assert body["description"].startswith(f"{parameter}:")


def test_a_cursor_of_another_sort_order_is_refused(api, gb_import):
    # given
    body = api.get(ITEMS, {"limit": 2}).json()
    cursor = parse_qs(urlsplit(body["links"][-1]["href"]).query)["cursor"][0]
    # when
    response = api.get(ITEMS, {"limit": 2, "cursor": cursor, "sortby": "name"})
    # then
    assert error(response)["parameter"] == "cursor"


def test_items_are_cached_with_an_etag_until_the_data_changes(api, gb_import, pacific):
    # given
    url = "/ogc/collections/places-pacific/items"
    first = api.get(url)
    # when
    again = api.get(url, HTTP_IF_NONE_MATCH=first["ETag"])
    Place.objects.filter(pk=pacific[0].pk).update(name="Renamed")
    place_update(place=Place.objects.get(pk=pacific[1].pk), data={"name": "Moved on"})
    after = api.get(url, HTTP_IF_NONE_MATCH=first["ETag"])
    # then
    assert again.status_code == 304
    assert after.status_code == 200
    assert "Moved on" in after.content.decode()


# --- HTML ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ogc/", "/ogc/collections", f"/ogc/collections/{GB}", ITEMS])
def test_html_by_f_or_accept(api, gb_import, path):
    # when
    by_f = api.get(path, {"f": "html"})
    by_accept = api.get(path, HTTP_ACCEPT="text/html,application/xhtml+xml")
    # then
    for response in (by_f, by_accept):
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/html")
        assert "Accept" in response["Vary"]
    assert by_f.content == by_accept.content


def test_items_html_draws_the_page_on_the_offline_basemap(api, gb_import):
    # when
    page = api.get(ITEMS, {"f": "html", "limit": 5}).content.decode()
    # then
    assert 'id="ogc-map"' in page
    assert "vendor/maplibre/maplibre-gl.js" in page
    assert "places/basemap/style.js" in page
    config = json.loads(
        page.split('id="ogc-config" type="application/json">')[1].split("</script>")[0]
    )
    assert len(config["features"]["features"]) == 5


# --- Tiles -----------------------------------------------------------------------------------


def test_tileset_names_webmercatorquad_and_a_tile_template(api, gb_import):
    # when
    body = api.get(f"/ogc/collections/{GB}/tiles/WebMercatorQuad").json()
    tms = api.get("/ogc/tileMatrixSets/WebMercatorQuad").json()
    # then
    assert body["tileMatrixSetURI"] == (
        "http://www.opengis.net/def/tilematrixset/OGC/1.0/WebMercatorQuad"
    )
    template = next(link["href"] for link in body["links"] if link["rel"] == "item")
    assert template.endswith(
        f"/ogc/collections/{GB}/tiles/WebMercatorQuad/{{tileMatrix}}/{{tileRow}}/{{tileCol}}"
    )
    assert tms["tileMatrices"][3]["matrixWidth"] == 8


def test_a_tile_is_the_maps_own_tile_from_the_same_cache(api, gb_import):
    # given: z14 over Westminster (x 8186, y 5448)
    ours = api.get(f"/ogc/collections/{GB}/tiles/WebMercatorQuad/14/5448/8186")
    # when
    theirs = api.get("/tiles/places/14/8186/5448.pbf", {"dataset": "osm-gb"})
    # then: the same bytes under the same ETag (one cache entry)
    assert ours.status_code == 200
    assert ours["Content-Type"] == "application/vnd.mapbox-vector-tile"
    assert ours.content == theirs.content
    assert len(ours.content) > 100
    assert ours["ETag"] == theirs["ETag"]


@pytest.mark.parametrize(
    ("path", "parameter"),
    [("99/0/0", "tileMatrix"), ("2/4/0", "tileRow"), ("2/0/x", "tileCol")],
)
def test_bad_tile_coordinates_name_them(api, gb_import, path, parameter):
    response = api.get(f"/ogc/collections/{GB}/tiles/WebMercatorQuad/{path}")
    assert error(response)["parameter"] == parameter


def test_random_boxes_equal_postgis(api, gb_import):
    # given
    rng = random.Random(7)
    for _ in range(5):
        x0, y0 = rng.uniform(-3, 1), rng.uniform(50.5, 54)
        box = (x0, y0, x0 + rng.uniform(0.05, 0.5), y0 + rng.uniform(0.05, 0.5))
        # when
        found = walk(api, ITEMS, {"bbox": ",".join(map(str, box)), "limit": 1000})
        # then
        assert sorted(f["id"] for f in found) == sorted(
            ids_in(
                "SELECT id FROM places_place WHERE status = 'active' AND "
                "ST_Intersects(location, ST_MakeEnvelope(%s, %s, %s, %s, 4326))",
                list(box),
            )
        )

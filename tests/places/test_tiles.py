"""Vector tiles: content checked against PostGIS, freshness by data version, bad input 400."""

from __future__ import annotations

import gzip
import math

import mapbox_vector_tile
import pytest
from django.contrib.gis.geos import Polygon
from django.db import connection
from django.db.models import Count
from django.test.utils import CaptureQueriesContext

from places.models import Place
from places.selectors import data_version
from places.services import dataset_get_or_create, place_create, place_update
from places.serving import tiles
from places.serving.query import PlaceQuery

pytestmark = pytest.mark.django_db


def _tile_for(lon: float, lat: float, z: int) -> tuple[int, int, int]:
    n = 2**z
    y = (1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n
    return z, int((lon + 180) / 360 * n), int(y)


CITY_Z13 = _tile_for(-0.0984, 51.5138, 13)  # the City, around St Paul's (zoom 13)
WESTMINSTER_Z6 = _tile_for(-0.1357, 51.4973, 6)


def _tile_bounds(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    n = 2**z

    def lat(row: int) -> float:
        return math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * row / n))))

    return (x / n * 360 - 180, lat(y + 1), (x + 1) / n * 360 - 180, lat(y))


def _get(client, url: str, **headers):
    return client.get(url, **{f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()})


def _decode(response) -> dict:
    body = response.content
    if response.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return mapbox_vector_tile.decode(body) if body else {}


def test_city_tile_holds_every_active_place_in_it(client, gb_import, clear_cache):
    z, x, y = CITY_Z13
    layer = _decode(client.get(f"/tiles/places/{z}/{x}/{y}.pbf"))["places"]
    inside = Place.objects.filter(
        status="active", location__intersects=Polygon.from_bbox(_tile_bounds(z, x, y))
    )
    ids = {f["id"] for f in layer["features"]}
    assert ids >= set(inside.values_list("id", flat=True))
    assert len(inside) > 50
    names = {f["properties"]["name"] for f in layer["features"]}
    assert "St Paul's Cathedral" in names or any("Cathedral" in n for n in names)


def test_low_zoom_clusters_add_up_to_all_places(client, gb_import, clear_cache):
    layer = _decode(client.get("/tiles/places/0/0/0.pbf"))["clusters"]
    total = sum(f["properties"]["count"] for f in layer["features"])
    assert total == Place.objects.filter(status="active").count()
    assert all(f["properties"]["religion"] for f in layer["features"])


def test_clusters_count_their_places_per_religion_most_first(client, gb_import, clear_cache):
    # when: the world in one tile, clustered
    layer = _decode(client.get("/tiles/places/0/0/0.pbf"))["clusters"]
    # then: each cluster lists its religions, most first, adding up to its count
    per_religion: dict[str, int] = {}
    for feature in layer["features"]:
        p = feature["properties"]
        pairs = [item.split(":") for item in p["religions"].split(",")]
        counts = [int(n) for _, n in pairs]
        assert sum(counts) == p["count"]
        assert counts == sorted(counts, reverse=True)
        assert pairs[0][0] == p["religion"]
        for religion, n in pairs:
            per_religion[religion] = per_religion.get(religion, 0) + int(n)
    # and over all clusters they are the database's counts per religion
    expected = dict(
        Place.objects.filter(status="active")
        .values_list("religion")
        .annotate(n=Count("id"))
        .values_list("religion", "n")
    )
    assert per_religion == expected
    assert len(expected) >= 6


def test_feature_cap_thins_by_a_stable_priority(client, gb_import, clear_cache, monkeypatch):
    monkeypatch.setattr(tiles, "MAX_FEATURES", 25)
    z, x, y = CITY_Z13
    first = tiles.place_tile(z=z, x=x, y=y, filters=PlaceQuery(status="active"))
    again = tiles.place_tile(z=z, x=x, y=y, filters=PlaceQuery(status="active"))
    features = mapbox_vector_tile.decode(first)["places"]["features"]
    assert len(features) == 25
    assert first == again


def test_a_tile_within_the_cap_is_one_unsorted_statement(gb_import, monkeypatch):
    """Within the cap the tile is built in one statement without the thinning order, and
    holds the places the thinned tile holds with room for all; one place over the cap, a
    second statement builds the thinned tile: the first places by the stable priority."""
    z, x, y = CITY_Z13
    query = PlaceQuery(status="active")
    where, params = query.where(box=False)
    with connection.cursor() as cursor:
        cursor.execute(
            tiles.PLACES_THINNED_SQL.format(extent=tiles.EXTENT, cap=100_000, where=where),
            {"z": z, "x": x, "y": y, **params},
        )
        everything = bytes(cursor.fetchone()[0])

    def ids(body: bytes) -> list[int]:
        return [f["id"] for f in mapbox_vector_tile.decode(body)["places"]["features"]]

    count = len(ids(everything))
    assert 25 < count < tiles.MAX_FEATURES
    for cap in (tiles.MAX_FEATURES, count):  # room to spare, exactly full
        monkeypatch.setattr(tiles, "MAX_FEATURES", cap)
        with CaptureQueriesContext(connection) as queries:
            body = tiles.place_tile(z=z, x=x, y=y, filters=query)
        assert len(queries) == 1
        assert "hashint8" not in queries[0]["sql"]
        assert sorted(ids(body)) == sorted(ids(everything))
    monkeypatch.setattr(tiles, "MAX_FEATURES", count - 1)  # one over
    with CaptureQueriesContext(connection) as queries:
        thinned = tiles.place_tile(z=z, x=x, y=y, filters=query)
    assert len(queries) == 2
    assert "hashint8" in queries[1]["sql"]
    assert ids(thinned) == ids(everything)[: count - 1]


@pytest.mark.parametrize("template", ["PLACES_SQL", "PLACES_THINNED_SQL"])
def test_tile_uses_the_spatial_index(gb_import, template):
    where, params = PlaceQuery(status="active").where(box=False)
    sql = getattr(tiles, template).format(extent=4096, cap=1000, where=where)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = on")
        cursor.execute("EXPLAIN " + sql, {"z": 14, "x": 8186, "y": 5448, **params})
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Index Scan" in plan or "Bitmap Index Scan" in plan
    assert "location" in plan


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("/tiles/places/23/0/0.pbf", "z"),
        ("/tiles/places/-1/0/0.pbf", "z"),
        ("/tiles/places/2/4/0.pbf", "x"),
        ("/tiles/places/2/0/-1.pbf", "y"),
        ("/tiles/places/a/0/0.pbf", "z"),
        ("/tiles/places/1_0/0/0.pbf", "z"),
        ("/tiles/places/3/\u0661/0.pbf", "x"),
        ("/tiles/places/3/1/1.pbf?religion=jedi", "religion"),
        ("/tiles/places/3/1/1.pbf?dataset=nope", "dataset"),
        ("/tiles/regions/3/1/1.pbf?level=planet", "level"),
    ],
)
def test_bad_tile_requests_are_a_400_naming_the_part(client, url, name):
    response = client.get(url)
    assert response.status_code == 400
    assert name in response.json()


def test_etag_revalidates_and_moves_with_an_edit(client, gb_import, clear_cache):
    z, x, y = CITY_Z13
    url = f"/tiles/places/{z}/{x}/{y}.pbf"
    first = client.get(url)
    etag = first["ETag"]
    assert first["Cache-Control"] == "no-cache"  # unversioned URL: always revalidate
    assert _get(client, url, **{"If-None-Match": etag}).status_code == 304
    # when a curator renames a place in that tile
    feature = _decode(first)["places"]["features"][0]
    place_update(place=Place.objects.get(pk=feature["id"]), data={"name": "Renamed just now"})
    # then the tile is new, not the cached one
    second = _get(client, url, **{"If-None-Match": etag})
    assert second.status_code == 200
    assert second["ETag"] != etag
    renamed = [f for f in _decode(second)["places"]["features"] if f["id"] == feature["id"]]
    assert renamed[0]["properties"]["name"] == "Renamed just now"


def test_data_version_moves_only_for_the_dataset_written(gb_import, sample_regions):
    other = dataset_get_or_create(slug="versions-other")
    place = place_create(
        dataset=other,
        source_key="v1",
        data={"location": Polygon.from_bbox((0, 51, 0.1, 51.1)).centroid},
    )
    gb_before = data_version(dataset_ids=[gb_import.dataset_id])
    all_before = data_version()
    other_before = data_version(dataset_ids=[other.pk])
    place_update(place=place, data={"name": "moved the version"})
    assert data_version(dataset_ids=[gb_import.dataset_id]) == gb_before
    assert data_version(dataset_ids=[other.pk]) != other_before
    assert data_version() != all_before


def test_tiles_are_gzipped_only_for_clients_that_accept_it(client, gb_import, clear_cache):
    z, x, y = CITY_Z13
    url = f"/tiles/places/{z}/{x}/{y}.pbf"
    zipped = _get(client, url, **{"Accept-Encoding": "gzip, br"})
    plain = client.get(url)
    assert zipped["Content-Encoding"] == "gzip"
    assert "Content-Encoding" not in plain
    assert gzip.decompress(zipped.content) == plain.content
    assert plain["Content-Type"] == "application/vnd.mapbox-vector-tile"


def test_region_tiles_and_tilejson(client, sample_regions, clear_cache):
    z, x, y = WESTMINSTER_Z6
    layer = _decode(client.get(f"/tiles/regions/{z}/{x}/{y}.pbf?level=district"))["regions"]
    assert {f["properties"]["level"] for f in layer["features"]} == {"district"}
    assert any(f["properties"]["code"] == "E09000033" for f in layer["features"])
    tilejson = client.get("/tiles/places.json?religion=sikh").json()
    assert tilejson["tilejson"] == "3.0.0"
    assert "/tiles/places/{z}/{x}/{y}.pbf?religion=sikh&v=" in tilejson["tiles"][0]
    assert {layer["id"] for layer in tilejson["vector_layers"]} == {"places", "clusters"}
    assert client.get("/tiles/regions.json").json()["vector_layers"][0]["id"] == "regions"


def test_map_page_loads_only_our_own_assets(client):
    response = client.get("/map/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "vendor/maplibre/maplibre-gl.js" in html
    assert "places/map.js" in html
    assert "https://" not in html


def test_tile_request_with_the_mvt_accept_type_is_served(client, gb_import, clear_cache):
    z, x, y = CITY_Z13
    response = client.get(
        f"/tiles/places/{z}/{x}/{y}.pbf", HTTP_ACCEPT="application/vnd.mapbox-vector-tile"
    )
    assert response.status_code == 200
    assert _decode(response)["places"]["features"]


def test_tilejson_urls_name_the_data_version_and_are_cached_for_good(
    client, gb_import, clear_cache
):
    before = client.get("/tiles/places.json")
    assert before["Cache-Control"] == "no-cache"
    url = before.json()["tiles"][0].replace("http://testserver", "")
    z, x, y = CITY_Z13
    tile = client.get(url.replace("{z}", str(z)).replace("{x}", str(x)).replace("{y}", str(y)))
    assert tile["Cache-Control"] == "public, max-age=31536000, immutable"
    # an edit gives the TileJSON a new version, so clients fetch new tile URLs
    place = Place.objects.filter(dataset=gb_import.dataset).first()
    place_update(place=place, data={"name": "New version please"})
    assert client.get("/tiles/places.json").json()["tiles"][0] != before.json()["tiles"][0]


@pytest.mark.parametrize(
    ("query", "cache_control"),
    [
        ("", "no-cache"),
        ("?v=", "no-cache"),
        ("?v=abc", "public, max-age=31536000, immutable"),
        # `v` escaped is `v` all the same
        ("?%76=abc", "public, max-age=31536000, immutable"),
        ("?religion=christian&v=abc", "public, max-age=31536000, immutable"),
        ("?religion=christian&vv=abc", "no-cache"),
    ],
)
def test_a_tile_url_naming_a_version_is_cached_for_good(
    client, sample_regions, clear_cache, query, cache_control
):
    response = client.get(f"/tiles/places/5/15/10.pbf{query}")
    assert response.status_code == 200
    assert response["Cache-Control"] == cache_control


def test_a_version_spelled_in_the_charset_a_request_names_is_read_in_it(
    client, sample_regions, clear_cache
):
    # "+AHY-" is "v" in UTF-7, which a request may name on its Content-Type
    path = "/tiles/places/5/15/10.pbf?%2BAHY-=abc"
    assert client.get(path)["Cache-Control"] == "no-cache"
    named = client.get(path, CONTENT_TYPE="text/plain; charset=utf-7")
    assert named["Cache-Control"] == "public, max-age=31536000, immutable"


def test_byte_responses_do_not_vary_on_cookies_and_honour_q0_and_star(
    client, gb_import, clear_cache
):
    z, x, y = CITY_Z13
    url = f"/tiles/places/{z}/{x}/{y}.pbf"
    response = _get(client, url, **{"Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in response
    assert "Cookie" not in response.get("Vary", "")
    assert _get(client, url, **{"If-None-Match": "*"}).status_code == 304
    assert _get(client, url, **{"If-None-Match": f'"other", {response["ETag"]}'}).status_code == 304
    viewport = client.get("/api/v1/viewport/", {"bbox": "-0.2,51.45,0.0,51.55", "zoom": 12})
    assert viewport["Vary"] == "Accept-Encoding, Accept"


def test_tilejson_attribution_is_escaped(client, gb_import):
    dataset_get_or_create(slug="xss", defaults={"attribution": "<img src=x onerror=alert(1)>"})
    attribution = client.get("/tiles/places.json").json()["attribution"]
    assert "<img" not in attribution
    assert "&lt;img" in attribution


def test_region_edit_in_the_admin_moves_the_region_tiles(admin_client, sample_regions, clear_cache):
    from django.urls import reverse

    from places.models import Region

    before = admin_client.get("/tiles/regions.json").json()["tiles"][0]
    region = Region.objects.get(code_system="gss", code="E09000033")
    url = reverse("admin:places_region_change", args=[region.pk])
    form = admin_client.get(url).context["adminform"].form
    data = {k: ("" if v is None else v) for k, v in form.initial.items()}
    data.update({"name": "Westminster (renamed)", "geom": region.geom.json, "extra_codes": "{}"})
    assert admin_client.post(url, data).status_code == 302
    after = admin_client.get("/tiles/regions.json").json()["tiles"][0]
    assert after != before


def test_cluster_counts_over_every_tile_of_a_zoom_add_up(gb_import):
    # given every zoom-9 tile over Great Britain, each counted on its own
    xs, ys = range(243, 259), range(145, 174)
    total = 0
    for x in xs:
        for y in ys:
            body = tiles.place_tile(z=9, x=x, y=y, filters=PlaceQuery(status="active"))
            if body:
                layer = mapbox_vector_tile.decode(body)["clusters"]
                total += sum(f["properties"]["count"] for f in layer["features"])
    # then each active place inside those tiles was counted exactly once
    west, _, _, north = _tile_bounds(9, xs[0], ys[0])
    _, south, east, _ = _tile_bounds(9, xs[-1], ys[-1])
    inside = Place.objects.filter(
        status="active", location__within=Polygon.from_bbox((west, south, east, north))
    )
    assert inside.count() > 30_000
    assert total == inside.count()

"""/api/v1/places/: SQL-built pages in four formats, counts, fields, caching and freshness."""

from __future__ import annotations

import csv
import io
import json
import re
import threading
import time

import pytest
from django.contrib.gis.geos import Point, Polygon
from django.core.cache import cache
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from places import selectors
from places.admin_base import EXACT_COUNT_BELOW, EstimatedCountPaginator
from places.geo import parse_bbox
from places.models import Place
from places.services import dataset_get_or_create, place_create, place_update
from places.serving import features, responses
from places.serving.fields import PROPERTIES
from places.serving.query import PlaceQuery
from places.serving.serializers import PlaceDetailSerializer

pytestmark = pytest.mark.django_db

LONDON = "-0.15,51.49,-0.07,51.53"


@pytest.fixture
def api(clear_cache) -> APIClient:
    return APIClient()


@pytest.fixture
def nasty() -> list[Place]:
    """Names a spreadsheet would run as formulas, and text CSV must quote."""
    dataset = dataset_get_or_create(slug="nasty")
    names = ['=HYPERLINK("http://x","y")', "+1", "-2", "@SUM(A1)", 'Quote " and, comma', "plain"]
    return [
        place_create(
            dataset=dataset,
            source_key=f"k{i}",
            data={"name": name, "location": Point(10 + i / 100, 10)},
        )
        for i, name in enumerate(names)
    ]


def test_features_match_the_detail_serializer(api, gb_import):
    body = api.get("/api/v1/places/", {"bbox": LONDON, "limit": 20}).json()
    ids = [f["id"] for f in body["features"]]
    assert ids == sorted(ids)
    for feature in body["features"][:20]:
        place = Place.objects.select_related("dataset", "country", "region").get(pk=feature["id"])
        expected = PlaceDetailSerializer(place).data
        assert feature["geometry"]["coordinates"] == pytest.approx(
            expected["geometry"]["coordinates"], abs=1e-7
        )
        props, want = feature["properties"], expected["properties"]
        for name in PROPERTIES:
            if name == "updated_at":
                continue  # same instant, written with +00:00 instead of Z
            assert props[name] == want[name], name


def test_fields_picks_properties_and_refuses_unknown_ones(api, gb_import):
    body = api.get("/api/v1/places/", {"bbox": LONDON, "fields": "religion,name"}).json()
    assert all(list(f["properties"]) == ["name", "religion"] for f in body["features"])
    response = api.get("/api/v1/places/", {"fields": "name,password"})
    assert response.status_code == 400
    assert "password" in response.json()["fields"][0]


def test_small_results_are_counted_exactly_and_big_ones_estimated(api, gb_import):
    body = api.get("/api/v1/places/", {"bbox": LONDON, "limit": 10}).json()
    exact = Place.objects.filter(
        location__intersects=Polygon.from_bbox((-0.15, 51.49, -0.07, 51.53))
    )
    assert body["numberMatched"] == exact.count()
    assert body["numberMatchedExact"] is True
    assert body["truncated"] is True
    assert body["next"]

    everything = api.get("/api/v1/places/", {"limit": 1, "fields": "name"}).json()
    assert everything["numberMatchedExact"] is False
    assert everything["numberMatched"] > features.EXACT_COUNT_LIMIT
    # An estimate, but of the right size: within a factor of two of the truth.
    total = Place.objects.count()
    assert total / 2 <= everything["numberMatched"] <= total * 2


def test_last_page_is_not_truncated(api, gb_import):
    box = "-0.13,51.50,-0.11,51.52"
    first = api.get("/api/v1/places/", {"bbox": box, "limit": 5}).json()
    n = first["numberMatched"]
    whole = api.get("/api/v1/places/", {"bbox": box, "limit": n}).json()
    assert whole["numberReturned"] == n
    assert whole["truncated"] is False
    assert whole["next"] is None


def test_updated_since_returns_only_later_changes(api, gb_import):
    since = timezone.now()
    place = Place.objects.filter(religion="sikh").order_by("id").first()
    place_update(place=place, data={"name": "Renamed gurdwara"})
    body = api.get("/api/v1/places/", {"updated_since": since.isoformat()}).json()
    assert [f["id"] for f in body["features"]] == [place.pk]
    assert api.get("/api/v1/places/", {"updated_since": "yesterday"}).status_code == 400


def test_denomination_filter(api, gb_import):
    body = api.get("/api/v1/places/", {"denomination": "quaker", "limit": 1000}).json()
    expected = Place.objects.filter(denominations__contains=["quaker"]).count()
    assert expected > 0
    assert body["numberMatched"] == body["numberReturned"] == expected
    assert all("quaker" in f["properties"]["denominations"] for f in body["features"])
    bad = api.get("/api/v1/places/", {"denomination": "Robert'); DROP TABLE"})
    assert bad.status_code == 400
    assert "denomination" in bad.json()


def test_geojsonseq_and_ndjson(api, gb_import):
    seq = api.get("/api/v1/places/", {"bbox": LONDON, "limit": 30, "format": "geojsonseq"})
    assert seq["Content-Type"] == "application/geo+json-seq"
    records = seq.content.decode().split("\x1e")
    assert records[0] == ""  # every record starts with RS
    assert len(records) == 31
    assert all(r.endswith("\n") and json.loads(r)["type"] == "Feature" for r in records[1:])
    assert seq["X-Truncated"] == "true"
    assert 'rel="next"' in seq["Link"]

    nd = api.get(
        "/api/v1/places/",
        {"bbox": LONDON, "limit": 30},
        HTTP_ACCEPT="application/x-ndjson",
    )
    assert nd["Content-Type"] == "application/x-ndjson"
    lines = nd.content.decode().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [json.loads(r)["id"] for r in records[1:]]


def test_csv_quotes_text_and_neutralises_formulas(api, nasty):
    response = api.get("/api/v1/places/", {"dataset": "nasty"}, HTTP_ACCEPT="text/csv")
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    names = [row["name"] for row in rows]
    assert names == [
        '\'=HYPERLINK("http://x","y")',
        "+1",  # plain numbers run nothing: left as they are
        "-2",
        "'@SUM(A1)",
        'Quote " and, comma',
        "plain",
    ]
    assert float(rows[0]["lon"]) == pytest.approx(10.0)
    assert rows[0]["dataset"] == "nasty"
    assert "T" in rows[0]["updated_at"]


def test_pages_are_cached_with_etag_and_fresh_after_an_edit(api, gb_import):
    params = {"bbox": LONDON, "limit": 5, "fields": "name"}
    first = api.get("/api/v1/places/", params)
    etag = first["ETag"]
    assert first["Cache-Control"] == "no-cache"
    assert api.get("/api/v1/places/", params, HTTP_IF_NONE_MATCH=etag).status_code == 304

    place = Place.objects.get(pk=first.json()["features"][0]["id"])
    place_update(place=place, data={"name": "Freshly renamed"})
    again = api.get("/api/v1/places/", params, HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 200
    assert again.json()["features"][0]["properties"]["name"] == "Freshly renamed"


def test_cursor_pages_in_csv_cover_the_box_once(api, gb_import):
    box = "-0.13,51.50,-0.11,51.52"
    url: str | None = f"/api/v1/places/?bbox={box}&limit=7&format=csv"
    seen: list[int] = []
    while url:
        response = api.get(url)
        seen += [int(row["id"]) for row in csv.DictReader(io.StringIO(response.content.decode()))]
        link = response.get("Link")
        url = link.split(">")[0].lstrip("<") if link else None
    expected = Place.objects.filter(
        location__intersects=Polygon.from_bbox((-0.13, 51.50, -0.11, 51.52))
    ).values_list("id", flat=True)
    assert sorted(seen) == sorted(expected)
    assert len(seen) == len(set(seen)) > 7


def test_list_query_uses_the_spatial_index(gb_import):
    where, params = PlaceQuery(bbox=parse_bbox(LONDON)).where()
    with connection.cursor() as cursor:
        cursor.execute(
            f"EXPLAIN SELECT p.id FROM places_place p WHERE {where} ORDER BY p.id LIMIT 1001",
            params,
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert re.search(r"Index Scan on places_place_location_\w+_id", plan), plan


def test_concurrent_misses_build_once(clear_cache):
    """Single flight: while one request builds a body, the others wait for it."""
    calls: list[int] = []
    lock_key = "bytes:stampede:building"
    cache.add(lock_key, 1, timeout=30)  # someone else is building

    def finish_building() -> None:
        time.sleep(0.2)
        cache.set("bytes:stampede", (b"built elsewhere", {"X-From": "other"}), timeout=60)
        cache.delete(lock_key)

    threading.Thread(target=finish_building).start()
    body, headers = responses.cached_build(
        cache_key="bytes:stampede", ttl=60, build=lambda: calls.append(1) or b"mine"
    )
    assert body == b"built elsewhere"
    assert headers == {"X-From": "other"}
    assert calls == []


@pytest.mark.parametrize(
    "filters",
    [
        {"denomination": "methodist"},
        {"q": "saint"},
        {"religion": "christian", "country": "GBR"},
        {"updated_since": "2000-01-01T00:00:00Z", "status": "active"},
    ],
)
def test_list_and_viewport_agree_on_every_filter(api, gb_import, filters):
    params = {"bbox": LONDON, **filters}
    listed = api.get("/api/v1/places/", {**params, "limit": 1_000, "fields": "name"}).json()
    view = api.get("/api/v1/viewport/", {**params, "zoom": 14}).json()
    assert view["kind"] == "points"
    assert [f["id"] for f in listed["features"]] == view["ids"]
    assert view["ids"], "the filter should match something in the box"


def test_place_detail_revalidates_by_version(api, gb_import):
    place = Place.objects.order_by("id").first()
    first = api.get(f"/api/v1/places/{place.pk}/")
    etag = first["ETag"]
    assert api.get(f"/api/v1/places/{place.pk}/", HTTP_IF_NONE_MATCH=etag).status_code == 304
    place_update(place=place, data={"name": "New name"})
    again = api.get(f"/api/v1/places/{place.pk}/", HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 200
    assert again.json()["properties"]["name"] == "New name"


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ('W/"abc"', True),
        ('"abc"', True),  # weak comparison: a strong tag with the same value matches
        ('"other", W/"abc"', True),
        ("*", True),
        (" * ", True),
        ('"other"', False),
        ('W/"abcd"', False),
        ("abc", False),  # not a quoted tag
        ("", False),
    ],
)
def test_etag_matching_follows_the_weak_comparison(header, matches):
    assert responses.etag_matches(if_none_match=header, etag='W/"abc"') is matches


@pytest.mark.parametrize("form", ["exact", "strong", "list", "star"])
def test_detail_and_cached_responses_answer_if_none_match_alike(api, gb_import, form):
    # given the ETags of a place's detail and of a cached list page
    place = Place.objects.order_by("id").first()
    urls = [f"/api/v1/places/{place.pk}/", f"/api/v1/places/?bbox={LONDON}&limit=3"]
    for url in urls:
        etag = api.get(url)["ETag"]
        header = {
            "exact": etag,
            "strong": etag.removeprefix("W/"),
            "list": f'"nope", {etag}',
            "star": "*",
        }[form]
        # then each answers 304 to every form that names it, and 200 to another tag
        assert api.get(url, HTTP_IF_NONE_MATCH=header).status_code == 304, url
        assert api.get(url, HTTP_IF_NONE_MATCH='"nope"').status_code == 200, url


def test_admin_counts_and_number_matched_share_the_planner_estimate(api, gb_import):
    # given every place, far more than either caller counts exactly
    everything = Place.objects.all()
    assert everything.count() > max(EXACT_COUNT_BELOW, features.EXACT_COUNT_LIMIT)
    estimate = selectors.query_row_estimate(sql="SELECT 1 FROM places_place p")
    # when the admin's paginator and the list API estimate it
    paginator = EstimatedCountPaginator(everything.order_by("-id"), 50)
    body = api.get("/api/v1/places/", {"status": "any", "limit": 1, "fields": "name"}).json()
    # then both give the one selector's figure
    assert paginator.count == estimate
    assert body["numberMatched"] == estimate
    assert body["numberMatchedExact"] is False

"""The region list: never a boundary in it, paged by limit and offset, cached per region
version with an ETag."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from places.models import Region
from places.services import region_save
from places.serving.apis import REGION_PAGE_SIZE

pytestmark = pytest.mark.django_db

LIST = "/api/v1/regions/"
# Without its boundaries a region is a few hundred bytes; one boundary alone is kilobytes.
SUMMARY_FIELDS = {
    "id",
    "name",
    "level",
    "code",
    "code_system",
    "extra_codes",
    "parent",
    "population",
    "area_km2",
}


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def test_region_list_is_unchanged_after_the_schema_and_a_region_detail(
    api, sample_regions, clear_cache, django_assert_num_queries
):
    # given the list as it is first built (region version, count, page)
    with django_assert_num_queries(3):
        before = api.get(LIST)
    assert before.status_code == 200
    # when the schema, the docs and a region's detail are built (rest_framework_gis used to
    # add the boundary to a field list the list's serializer shared)
    gbr = Region.objects.get(level="country", code="GBR")
    assert api.get("/api/schema/").status_code == 200
    assert api.get("/api/docs/").status_code == 200
    assert api.get(f"/api/v1/regions/{gbr.pk}/").json()["geometry"]["type"] == "MultiPolygon"
    cache.clear()
    # then the list, built again, is the same body at the same cost, with no geometry
    with django_assert_num_queries(3):
        after = api.get(LIST)
    assert after.content == before.content
    results = after.json()["results"]
    assert results
    assert all(set(region) == SUMMARY_FIELDS for region in results)


def test_region_pages_cover_every_region_once(api, sample_regions, clear_cache):
    # given pages of 100 in a list of several hundred regions
    total = Region.objects.count()
    assert total > 300
    seen: list[int] = []
    url: str | None = f"{LIST}?limit=100"
    pages = 0
    # when every next link is followed
    while url:
        body = api.get(url).json()
        assert body["count"] == total
        assert (body["previous"] is None) == (pages == 0)
        seen += [region["id"] for region in body["results"]]
        url = body["next"]
        pages += 1
    # then every region came exactly once, in level, name, id order
    assert pages == -(-total // 100)
    assert len(seen) == len(set(seen)) == total
    ordered = list(Region.objects.order_by("level", "name", "id").values_list("id", flat=True))
    assert seen == ordered


def test_region_list_default_page_holds_the_sample_and_filters_apply(
    api, sample_regions, clear_cache
):
    body = api.get(LIST).json()
    assert body["count"] == Region.objects.count() <= REGION_PAGE_SIZE
    assert body["next"] is None
    districts = api.get(LIST, {"level": "district", "limit": 5}).json()
    assert districts["count"] == Region.objects.filter(level="district").count()
    assert {region["level"] for region in districts["results"]} == {"district"}
    assert "level=district" in districts["next"]


def test_region_list_is_answered_from_the_cache_and_revalidated_by_etag(
    api, sample_regions, clear_cache, django_assert_num_queries
):
    # given a list built once
    first = api.get(LIST, {"level": "country"})
    etag = first["ETag"]
    assert first["Cache-Control"] == "no-cache"
    assert "Cookie" not in first.get("Vary", "")
    # then asking again costs only the region version, and the ETag answers 304
    with django_assert_num_queries(1):
        again = api.get(LIST, {"level": "country"})
    assert again.content == first.content
    assert again["ETag"] == etag
    assert api.get(LIST, {"level": "country"}, HTTP_IF_NONE_MATCH=etag).status_code == 304
    # and a parameter the list does not know buys no other entry
    assert api.get(LIST, {"level": "country", "junk": "1"})["ETag"] == etag


def test_a_region_write_moves_the_region_list_etag(api, sample_regions, clear_cache):
    # given the cached list of countries
    before = api.get(LIST, {"level": "country", "code": "GBR"})
    # when the country is renamed through the service
    gbr = Region.objects.get(level="country", code="GBR")
    gbr.name = "United Kingdom (renamed)"
    region_save(region=gbr)
    # then the list shows the new name under a new ETag
    after = api.get(LIST, {"level": "country", "code": "GBR"})
    assert after["ETag"] != before["ETag"]
    assert after.json()["results"][0]["name"] == "United Kingdom (renamed)"
    stale = api.get(LIST, {"level": "country", "code": "GBR"}, HTTP_IF_NONE_MATCH=before["ETag"])
    assert stale.status_code == 200


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": str(REGION_PAGE_SIZE + 1)}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"offset": str(10**19)}, "offset"),
        ({"level": "planet"}, "level"),
    ],
)
def test_bad_region_list_values_are_a_400_naming_the_parameter(api, params, name):
    response = api.get(LIST, params)
    assert response.status_code == 400
    assert name in response.json()

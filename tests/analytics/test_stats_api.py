"""The region statistics endpoint: validated, cached per data and region version, ETag."""

from __future__ import annotations

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from config.routers import REPLICA
from places.models import Region
from places.services import dataset_get_or_create, place_create

pytestmark = pytest.mark.django_db(databases=["default", "replica"])

STATS = "/api/v1/stats/regions/"


def test_stats_are_answered_from_the_cache_and_revalidated_by_etag(client, gb_import, clear_cache):
    # given the figures built once (two versions, then the two aggregate queries)
    with CaptureQueriesContext(connections[REPLICA]) as built:
        first = client.get(STATS, {"level": "district"})
    assert first.status_code == 200
    assert len(built) == 4
    etag = first["ETag"]
    assert first["Cache-Control"] == "no-cache"
    # when they are asked for again
    with CaptureQueriesContext(connections[REPLICA]) as again_queries:
        again = client.get(STATS, {"level": "district"})
    # then only the versions are read, and the ETag answers 304
    assert len(again_queries) == 2
    assert again.content == first.content
    assert client.get(STATS, {"level": "district"}, HTTP_IF_NONE_MATCH=etag).status_code == 304
    # and another level is another entry
    assert client.get(STATS, {"level": "country"})["ETag"] != etag


def test_a_new_place_moves_the_stats_and_their_etag(
    client, gb_import, clear_cache, replica_caught_up
):
    # given the cached district figures
    before = client.get(STATS, {"level": "district"})
    westminster = Region.objects.get(code="E09000033")
    counted = next(r for r in before.json() if r["code"] == "E09000033")["places"]
    # when a place is added in Westminster
    place_create(
        dataset=dataset_get_or_create(slug="stats-test"),
        source_key="new-chapel",
        data={"name": "New Chapel", "location": westminster.geom.point_on_surface},
    )
    # then the figures count it, under a new ETag
    after = client.get(STATS, {"level": "district"})
    assert after["ETag"] != before["ETag"]
    assert next(r for r in after.json() if r["code"] == "E09000033")["places"] == counted + 1
    assert (
        client.get(STATS, {"level": "district"}, HTTP_IF_NONE_MATCH=before["ETag"]).status_code
        == 200
    )

"""Analytics read through the replica alias and add up to what is in the places table."""

from __future__ import annotations

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from analytics.selectors import region_place_counts
from places.models import Place

pytestmark = pytest.mark.django_db(databases=["default", "replica"])


def test_region_counts_add_up_and_come_from_the_replica(gb_import):
    with CaptureQueriesContext(connections["replica"]) as replica_queries:
        stats = region_place_counts(level="district")
    assert len(replica_queries) == 2
    assert (
        sum(s["places"] for s in stats)
        == Place.objects.filter(region__level="district", status="active").count()
    )
    westminster = next(s for s in stats if s["code"] == "E09000033")
    assert westminster["places"] == Place.objects.filter(region__code="E09000033").count()
    assert sum(westminster["by_religion"].values()) == westminster["places"]
    assert westminster["per_1000_km2"] > 0


def test_stats_endpoint_validates_level(client, gb_import):
    assert client.get("/api/v1/stats/regions/", {"level": "galaxy"}).status_code == 400
    body = client.get("/api/v1/stats/regions/", {"level": "country"}).json()
    gbr = next(row for row in body if row["code"] == "GBR")
    assert gbr["per_100k_people"] > 0

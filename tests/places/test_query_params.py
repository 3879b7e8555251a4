"""Query parameters given with no value are refused, naming the parameter."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("/api/v1/places/?updated_since=", "updated_since"),
        ("/api/v1/places/?religion=", "religion"),
        ("/api/v1/viewport/?bbox=-0.2,51.4,0,51.6&zoom=12&status=", "status"),
        ("/tiles/places/0/0/0.pbf?dataset=", "dataset"),
        ("/tiles/regions/0/0/0.pbf?level=", "level"),
        ("/tiles/regions.json?level=", "level"),
        ("/api/v1/stats/regions/?level=", "level"),
    ],
)
def test_an_empty_value_is_a_400_naming_the_parameter(client, clear_cache, url, name):
    response = client.get(url)
    assert response.status_code == 400
    assert response.json() == {name: ["must not be empty; leave the parameter out for its default"]}


def test_a_blank_bbox_still_means_no_box_on_the_list(client, clear_cache):
    assert client.get("/api/v1/places/?bbox=&limit=1").status_code == 200

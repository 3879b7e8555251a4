"""The analytics dashboard's page: who may open it, where it is linked from, and the choices
it offers (its charts are checked in a browser: test_dashboard_browser.py)."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from analytics import selectors
from analytics.services import analytics_recompute
from places.models import Region, RegionLevel

pytestmark = pytest.mark.django_db

DASHBOARD = "admin:analytics_dashboard"


def _config(response) -> dict:
    html = response.content.decode()
    start = html.index('<script id="dashboard-config" type="application/json">')
    body = html[html.index(">", start) + 1 : html.index("</script>", start)]
    return json.loads(body)


def test_only_staff_open_the_dashboard(client, django_user_model):
    # given a signed-in member of the public
    url = reverse(DASHBOARD)
    anonymous = client.get(url)
    client.force_login(django_user_model.objects.create_user("visitor", password="x"))
    # when
    signed_in = client.get(url)
    # then both are sent to the admin's login
    assert anonymous.status_code == signed_in.status_code == 302
    assert signed_in["Location"].startswith(reverse("admin:login"))


def test_the_admin_index_and_the_summaries_link_to_the_dashboard(admin_client):
    # when
    index = admin_client.get(reverse("admin:index")).content.decode()
    summaries = admin_client.get(reverse("admin:analytics_regionsummary_changelist"))
    # then
    link = f'href="{reverse(DASHBOARD)}"'
    assert link in index
    assert link in summaries.content.decode()


def test_the_dashboard_offers_the_figures_sensors_and_the_districts_extent(admin_client, sensors):
    # given the sample's districts and two sensors' rolled-up readings
    analytics_recompute(full=True)
    # when
    response = admin_client.get(reverse(DASHBOARD))
    # then
    assert response.status_code == 200
    config = _config(response)
    assert config["figures"] == selectors.DASHBOARD_FIGURES
    assert [s["external_id"] for s in config["sensors"]] == ["aq-1", "aq-2"]
    west, south, east, north = config["extent"]
    districts = Region.objects.filter(level=RegionLevel.DISTRICT)
    assert districts.count() > 300
    for region in districts[:20]:
        x0, y0, x1, y1 = region.geom.extent
        assert west <= x0 <= x1 <= east
        assert south <= y0 <= y1 <= north
    # every figure on offer is a number (or none) in the summaries the page reads
    listed = admin_client.get("/api/v1/stats/summaries/?level=district").json()["results"]
    for path in config["figures"]:
        value = listed[0]
        for key in path.split("."):
            value = value[key]
        assert value is None or isinstance(value, int | float), path


def test_without_rollups_no_sensor_is_offered(admin_client, gb_import):
    # then
    assert selectors.sensors_with_rollups() == []
    assert _config(admin_client.get(reverse(DASHBOARD)))["sensors"] == []

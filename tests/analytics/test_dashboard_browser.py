"""The admin's analytics dashboard in a real browser: Debian's Chromium, driven by
playwright-core (tests/browser/dashboard.mjs), against gunicorn serving the test database with
the GB sample imported, two sensors' readings stored and every result computed.

One browser run feeds every test here; the tests compare what each chart drew with what the
statistics API answers for the same data (read here through Django's test client).
"""

from __future__ import annotations

import datetime as dt
import secrets
import subprocess
from collections.abc import Iterator
from importlib import import_module
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.db import connection
from django.urls import reverse
from rest_framework.test import APIClient

from analytics.models import RegionSensorRollup, RegionSummary
from analytics.services import analytics_recompute
from ingestion.edge.models import EdgeNode, Observation, ObservationBatch, Sensor
from ingestion.edge.services.batches import SensorDeclaration
from places.models import Place, Region
from tests.db import replica_caught_up
from tests.ingestion.edge.factories import ingest, node_make, reading
from tests.live_server import CHROMIUM, ROOT, browser_needs, browser_run, gunicorn_serving

# Database tests, so that pytest-django's ordering keeps them together and the module's one
# browser run is not made twice.
pytestmark = [pytest.mark.slow, pytest.mark.django_db]

SCRIPT = ROOT / "tests" / "browser" / "dashboard.mjs"
DAY = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
FIRST_FIGURE = "per_1000_km2"
SECOND_FIGURE = "diversity.shannon"
SENSORS = ("dash-1", "dash-2")
DATE_PLACES = """
UPDATE places_place SET start_date = make_date((1800 + id %% 22 * 10)::int, 6, 1)
WHERE id = ANY(%s)
"""


@pytest.fixture(scope="module")
def results(gb_import, django_db_blocker) -> Iterator[dict[str, Any]]:
    """Two PM2.5 sensors in Westminster over two days (every 30 minutes) and founding dates
    for a tenth of the places, committed, and a full recompute; all of it, and the stored
    results, removed afterwards."""
    with django_db_blocker.unblock():
        assert not RegionSummary.objects.exists()
        westminster = Region.objects.get(code="E09000033")
        spot = westminster.geom.point_on_surface
        node = node_make(region=westminster)
        declared = [
            SensorDeclaration(external_id=name, kind="SDS011", lon=spot.x + n * 1e-3, lat=spot.y)
            for n, name in enumerate(SENSORS)
        ]
        items = []
        for step in range(96):
            time = DAY + dt.timedelta(minutes=30 * step)
            for n, name in enumerate(SENSORS):
                value = float((step * 7 + n * 13) % 40) + 0.5
                items.append(reading(len(items), name, time, value=value, parameter="pm2_5"))
        ingest(node, items, sensors=declared)
        # The sample has no founding dates: every tenth place is given one, in 22 decades.
        undated = Place.objects.filter(dataset_id=gb_import.dataset_id, start_date__isnull=True)
        dated = list(undated.order_by("pk").values_list("pk", flat=True))[::10]
        with connection.cursor() as cursor:
            cursor.execute(DATE_PLACES, [dated])
        replica_caught_up()
        analytics_recompute(full=True)
        # Answers are cached by results version, which a new test database starts again at:
        # an earlier run's would be taken for this one's.
        cache.clear()
        sensor = Sensor.objects.get(external_id=SENSORS[0])
        user = User.objects.create_user(username=f"dash-{secrets.token_hex(4)}", is_staff=True)
        user.user_permissions.add(
            Permission.objects.get(
                codename="view_regionsummary", content_type__app_label="analytics"
            )
        )
        session = _session(user)
    try:
        yield {"sensor": sensor, "user": user, "session": session}
    finally:
        with django_db_blocker.unblock():
            import_module(settings.SESSION_ENGINE).SessionStore(session_key=session).delete()
            sensors = list(Sensor.objects.filter(node=node).values_list("pk", flat=True))
            Observation.objects.filter(sensor_id__in=sensors).delete()
            Sensor.objects.filter(pk__in=sensors).delete()  # their rollups go with them
            ObservationBatch.objects.filter(node=node).delete()
            EdgeNode.objects.filter(pk=node.pk).delete()
            Place.objects.filter(pk__in=dated).update(start_date=None)
            RegionSensorRollup.objects.all().delete()
            RegionSummary.objects.all().delete()
            cache.clear()
            # The user and its permission only: a cascade would visit every model that
            # names users, and the security trail keeps its rows (no constraint).
            with connection.cursor() as cursor:
                cursor.execute(
                    "DELETE FROM auth_user_user_permissions WHERE user_id = %s", [user.pk]
                )
                cursor.execute("DELETE FROM auth_user WHERE id = %s", [user.pk])


def _session(user: User) -> str:
    """A signed-in session for ``user``, made without logging in: a login leaves a row in
    the security trail, which is append-only and would outlive this module's data."""
    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "places.login_throttle.CheckedModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return session.session_key


@pytest.fixture(scope="module")
def report(results, django_db_blocker, tmp_path_factory) -> dict[str, Any]:
    with django_db_blocker.unblock():
        database = connection.settings_dict["NAME"]
    folder = tmp_path_factory.mktemp("dashboard-browser")
    with gunicorn_serving(database=database, log=folder / "gunicorn.log") as base:
        scenario = {
            "base": base,
            "chromium": CHROMIUM,
            "path": reverse("admin:analytics_dashboard"),
            "session": {"name": settings.SESSION_COOKIE_NAME, "value": results["session"]},
            "second_figure": SECOND_FIGURE,
            "screenshots": str(folder),
        }
        return browser_run(script=SCRIPT, scenario=scenario, folder=folder)


def _api(path: str) -> Any:
    response = APIClient().get(path, HTTP_ACCEPT="application/json")
    assert response.status_code == 200, path
    return response.json()


def _figure(summary: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        summary = summary[key]
    return summary


def _district_figures(path: str) -> dict[str, float]:
    listed = _api("/api/v1/stats/summaries/?level=district")["results"]
    found = {str(s["region"]["id"]): _figure(s, path) for s in listed}
    return {rid: value for rid, value in found.items() if value is not None}


def test_the_dashboard_loads_offline_without_console_errors_and_is_linked(report):
    # given: a signed-in staff member who may view the summaries
    # then
    assert report["console_errors"] == []
    assert report["external_requests"] == []
    assert report["failed_requests"] == []
    assert report["steps"]["errors"] == []
    dashboard = reverse("admin:analytics_dashboard")
    assert ["Analytics dashboard", dashboard] in report["steps"]["index_links"]
    assert ["Dashboard", dashboard] in report["steps"]["changelist_links"]


@pytest.mark.parametrize(
    ("step", "figure"), [("choropleth", FIRST_FIGURE), ("second_figure", SECOND_FIGURE)]
)
def test_the_choropleth_colours_each_district_by_the_apis_figure(report, step, figure):
    drawn = report["steps"][step]
    expected = _district_figures(figure)
    # then: the page holds the API's figure for every district that has one, and nothing else
    assert drawn["figure"] == figure
    assert len(expected) > 100
    assert drawn["values"] == pytest.approx(expected)
    # the districts drawn in view carry those figures (None: a district without one)
    assert len(drawn["rendered"]) > 100
    for region_id, value in drawn["rendered"].items():
        assert value == pytest.approx(expected.get(region_id)), region_id
    # up to six bands in the legend (equal breaks merge), from the lowest figure up, and the
    # map's pixels coloured, not a blank basemap
    assert 4 <= len(drawn["legend"]) == len(drawn["breaks"]) <= 6
    assert drawn["breaks"][0] == pytest.approx(min(expected.values()))
    assert drawn["breaks"] == sorted(drawn["breaks"])
    assert f"{len(expected)} of " in drawn["status"]
    assert drawn["colours"]["darkest"] > 100
    assert drawn["colours"]["distinct"] > 20


def test_the_bars_are_the_religions_of_the_regions_with_most_places(report):
    drawn = report["steps"]["religions"]
    ranking = _api("/api/v1/stats/rankings/?order=places&limit=12&level=district")["results"]
    summaries = {
        s["region"]["id"]: s for s in _api("/api/v1/stats/summaries/?level=district")["results"]
    }
    ids = [row["region"]["id"] for row in ranking]
    # then: one bar per region, in the ranking's order, stacked by religion
    assert len(ids) == 12
    assert drawn["type"] == "bar"
    assert drawn["drawn"]["regions"] == ids
    assert drawn["labels"] == [summaries[rid]["region"]["name"] for rid in ids]
    religions = {code for rid in ids for code, n in summaries[rid]["by_religion"].items() if n}
    assert {d["code"] for d in drawn["datasets"]} == religions
    for dataset in drawn["datasets"]:
        assert dataset["data"] == [
            summaries[rid]["by_religion"].get(dataset["code"], 0) for rid in ids
        ]
        assert dataset["elements"] == dataset["visible"] == 12
    # each bar is as long as its region's places
    totals = [sum(d["data"][i] for d in drawn["datasets"]) for i in range(12)]
    assert totals == [summaries[rid]["places"] for rid in ids]
    assert drawn["painted"] > drawn["pixels"] * 0.05


def test_the_founding_decades_are_the_top_countrys_then_a_selected_bars(report):
    steps = report["steps"]
    country = _api("/api/v1/stats/rankings/?order=places&limit=1&level=country")["results"][0]
    for step, region_id in (
        ("decades", country["region"]["id"]),
        ("decades_of_bar", steps["religions"]["drawn"]["regions"][1]),
    ):
        drawn = steps[step]
        points = _api(f"/api/v1/stats/summaries/{region_id}/series/?interval=decade")["points"]
        # then: one bar per decade with dated places, each of its count
        assert drawn["drawn"]["region"] == region_id
        assert len(points) > 3, step
        assert drawn["labels"] == [f"{p['t']}s" for p in points]
        assert drawn["datasets"][0]["data"] == [p["places"] for p in points]
        assert drawn["datasets"][0]["elements"] == drawn["datasets"][0]["visible"] == len(points)
        assert drawn["painted"] > 0


@pytest.mark.parametrize(
    ("step", "interval", "count"), [("sensor", "day", 2), ("sensor_hourly", "hour", 48)]
)
def test_the_sensor_series_draws_the_apis_rollups(report, results, step, interval, count):
    drawn = report["steps"][step]
    sensor = results["sensor"]
    points = _api(f"/api/v1/stats/sensors/{sensor.pk}/series/?interval={interval}")["points"]
    # then: a point per day or hour, mean, minimum and maximum as the API gives them
    assert len(points) == count
    assert drawn["type"] == "line"
    assert drawn["drawn"] == {"sensor": sensor.pk, "interval": interval, "points": count}
    by_label = {d["label"]: d for d in drawn["datasets"]}
    assert by_label["Mean"]["data"] == pytest.approx([p["mean"] for p in points])
    assert by_label["Minimum"]["data"] == pytest.approx([p["min"] for p in points])
    assert by_label["Maximum"]["data"] == pytest.approx([p["max"] for p in points])
    assert all(d["elements"] == d["visible"] == count for d in drawn["datasets"])
    assert drawn["labels"][0].startswith("2026-03-02")
    assert drawn["painted"] > 0


def test_the_committed_chartjs_is_the_npm_package_copied_by_bin_vendor_js(tmp_path):
    # given: node_modules from package-lock.json (make test runs npm ci)
    browser_needs()
    # when
    subprocess.run(
        [str(ROOT / "bin" / "vendor-js"), str(tmp_path / "maplibre"), str(tmp_path / "chartjs")],
        cwd=ROOT,
        check=True,
    )
    # then: the dashboard loads exactly what npm pinned, and nothing else is in the copy
    committed = ROOT / "static" / "vendor" / "chartjs"
    names = ("chart.umd.min.js", "LICENSE.md", "LICENSE-kurkle-color.md", "README.md")
    assert sorted(p.name for p in committed.iterdir()) == sorted(names)
    for name in names:
        assert (tmp_path / "chartjs" / name).read_bytes() == (committed / name).read_bytes(), name
    assert b"Chart.js v4.6.1" in (committed / "chart.umd.min.js").read_bytes()[:200]

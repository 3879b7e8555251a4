"""The map page and the place page in a real browser: Debian's Chromium, driven by
playwright-core (tests/browser/map.mjs), against gunicorn serving the test database with the
GB sample imported.

One browser run (one to four minutes, by the machine's load) feeds every test here but the
districts' figure test, which has a short run of its own: the script looks, clicks and
measures, and prints a JSON report; the tests compare it with the database and the API. The
run waits for states (the map idle, a popup filled), never for times.

``make test`` installs what it needs (``bin/install-system-deps``: chromium; ``npm ci``:
playwright-core). Without them these tests fail, saying so: they are not skipped.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import subprocess
import urllib.request
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from django.contrib.gis.geos import Point, Polygon
from django.db import connection

from analytics.models import RegionSummary
from analytics.services.results import results_bump
from analytics.services.summaries import region_summaries_recompute
from ingestion.edge import sensor_map
from places.models import Dataset, Place, PlaceStatus, Religion
from tests.live_server import CHROMIUM, ROOT, browser_needs, browser_run, gunicorn_serving

# Every test here is marked for the database, so that pytest-django's ordering (database tests
# first) keeps them together and the module's one browser run is not made twice.
pytestmark = [pytest.mark.slow, pytest.mark.django_db]

SCRIPT = ROOT / "tests" / "browser" / "map.mjs"
# In the GB sample: two places on one spot, and a place with a denomination.
STACKED_NAMES = {"Edgware Road Mosque", "Former St Mark's School,"}
KNOWN_NAME = "Westminster Abbey"
FILTER_RELIGION = "jewish"
LICENCE = "ODbL 1.0"
ATTRIBUTION = "© OpenStreetMap contributors"


@pytest.fixture(scope="module")
def server(gb_import, django_db_blocker, tmp_path_factory) -> Iterator[str]:
    """gunicorn as bin/run starts it (config/gunicorn.py), on the test database."""
    with django_db_blocker.unblock():
        database = connection.settings_dict["NAME"]
    log = tmp_path_factory.mktemp("map-browser") / "gunicorn.log"
    with gunicorn_serving(database=database, log=log) as base:
        yield base


@pytest.fixture(scope="module")
def places(gb_import, django_db_blocker) -> Iterator[dict[str, Any]]:
    """The sample's places the browser visits, read from the database. The session's GB
    dataset is given a licence and an attribution for the popup to show (committed, for the
    server's processes to see), and its own back afterwards."""
    dataset_id = gb_import.dataset_id
    with django_db_blocker.unblock():
        before = Dataset.objects.filter(pk=dataset_id).values("licence", "attribution").get()
        Dataset.objects.filter(pk=dataset_id).update(licence=LICENCE, attribution=ATTRIBUTION)
        dataset = Dataset.objects.get(pk=dataset_id)
        known = Place.objects.select_related("dataset").get(dataset=dataset, name=KNOWN_NAME)
        stacked = list(Place.objects.filter(dataset=dataset, name__in=STACKED_NAMES))
    try:
        assert {p.name for p in stacked} == STACKED_NAMES
        assert stacked[0].location == stacked[1].location
        yield {"dataset": dataset, "known": known, "stacked": stacked[0]}
    finally:
        with django_db_blocker.unblock():
            Dataset.objects.filter(pk=dataset_id).update(**before)


@pytest.fixture(scope="module")
def curator(django_db_blocker) -> Iterator[dict[str, str]]:
    """A superuser for the browser to sign in with (committed, for the server to see), removed
    afterwards."""
    from django.contrib.auth import get_user_model

    credentials = {"username": "map-browser-curator", "password": secrets.token_urlsafe(16)}
    with django_db_blocker.unblock():
        get_user_model().objects.create_superuser(email="curator@example.org", **credentials)
    try:
        yield credentials
    finally:
        with django_db_blocker.unblock():
            get_user_model().objects.filter(username=credentials["username"]).delete()


SHARED_URL = "/map/?lat=51.51844&lon=-0.16645&z=14.5&religion=muslim&dataset={dataset}"

# A second dataset of places across England, for the map's dataset boxes.
SECOND = {"slug": "map-browser-second", "licence": "CC0 1.0", "attribution": "A second survey"}
SECOND_GRID = [(-2.4 + 0.4 * i, 51.8 + 0.4 * j) for i in range(6) for j in range(5)]


@pytest.fixture(scope="module")
def second_dataset(gb_import, django_db_blocker) -> Iterator[Dataset]:
    """SECOND's places on SECOND_GRID (committed, for the server to see); retired afterwards,
    as places are never deleted, so that later tests see no more active places than before."""
    from places.services import dataset_get_or_create, place_create, place_retire

    with django_db_blocker.unblock():
        dataset = dataset_get_or_create(
            slug=SECOND["slug"],
            defaults={"licence": SECOND["licence"], "attribution": SECOND["attribution"]},
        )
        made = [
            place_create(
                dataset=dataset,
                source_key=f"grid-{lon:.1f}-{lat:.1f}",
                data={"name": f"Grid {lon:.1f} {lat:.1f}", "location": Point(lon, lat)},
            )
            for lon, lat in SECOND_GRID
        ]
    try:
        yield dataset
    finally:
        with django_db_blocker.unblock():
            for place in made:
                place_retire(place=Place.objects.get(pk=place.pk))


# Two sensors in Aberdeen with PM2.5 readings in different bands (DAQI low and very high).
SENSORS = {"map-browser-low": (-2.10, 57.15, 4.0), "map-browser-high": (-2.08, 57.16, 80.0)}


@pytest.fixture(scope="module")
def sensors(django_db_blocker) -> Iterator[dict[str, Any]]:
    """A node with the two SENSORS and their readings (committed, for the server to see),
    removed afterwards."""
    from ingestion.edge.services.batches import SensorDeclaration
    from tests.ingestion.edge.factories import ingest, node_make, reading
    from tests.ingestion.edge.test_client_e2e import _delete_node

    at = dt.datetime(2019, 3, 1, 7, tzinfo=dt.UTC)
    with django_db_blocker.unblock():
        node = node_make("map-browser-sensors")
        outcome = ingest(
            node,
            [
                reading(i, name, at, value=value, parameter="pm2_5")
                for i, (name, (_, _, value)) in enumerate(SENSORS.items())
            ],
            sensors=[
                SensorDeclaration(external_id=name, kind="SDS011", lon=lon, lat=lat)
                for name, (lon, lat, _) in SENSORS.items()
            ],
        )
        assert outcome.response["accepted"] == len(SENSORS), outcome.response
        with_reading = len(sensor_map.sensor_latest_pm25())
    try:
        yield {"center": [-2.09, 57.155], "with_reading": with_reading}
    finally:
        with django_db_blocker.unblock():
            _delete_node(node, node.region)


@pytest.fixture(scope="module")
def report(server, places, curator, sensors, second_dataset, tmp_path_factory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("map-browser-run")
    known, stacked = places["known"], places["stacked"]
    scenario = {
        "base": server,
        "chromium": CHROMIUM,
        "dataset": places["dataset"].slug,
        "religion": FILTER_RELIGION,
        "shared_url": SHARED_URL.format(dataset=places["dataset"].slug),
        "stacked": {"lon": stacked.location.x, "lat": stacked.location.y},
        "known": {"lon": known.location.x, "lat": known.location.y, "id": known.pk},
        "search": KNOWN_NAME,
        "curator": curator,
        "sensors": {"center": sensors["center"]},
        "second_dataset": second_dataset.slug,
        "screenshots": str(folder),
    }
    # The run takes about 4 minutes on a loaded machine: hover, water, admin and sensors.
    return browser_run(script=SCRIPT, scenario=scenario, folder=folder, timeout=600)


def _in_bounds(bounds: list[list[float]], **filters: Any) -> int:
    (west, south), (east, north) = bounds
    box = Polygon.from_bbox((west, south, east, north))
    box.srid = 4326
    return Place.objects.filter(status=PlaceStatus.ACTIVE, location__within=box, **filters).count()


def test_pages_draw_with_webgl_without_console_errors_or_requests_elsewhere(report):
    # then
    assert report["steps"]["webgl"]["webgl2"] is True
    assert report["console_errors"] == []
    assert report["external_requests"] == []
    assert report["failed_requests"] == []


def test_the_first_view_draws_places_on_land_and_water(report):
    pixels = report["steps"]["overview"]["pixels"]
    # then: a blank or failed canvas has none of these
    assert pixels["place_blue"] > 5_000
    assert pixels["water"] > 50_000
    assert pixels["land"] > 50_000


def test_cluster_counts_add_up_to_the_places_in_view_and_are_written_on_them(report, places):
    overview = report["steps"]["overview"]
    # then: every place of the dataset in the view is in exactly one drawn cluster
    expected = _in_bounds(overview["bounds"], dataset=places["dataset"])
    assert expected > 30_000
    assert overview["places"] == expected
    assert overview["clusters"] > 100
    biggest = overview["biggest_cluster"]
    assert biggest["count"] > 1
    assert biggest["label_drawn"] is True


def test_hovering_a_cluster_lists_its_religions_in_the_legends_colours(report):
    hover = report["steps"]["cluster_hover"]
    # then: one line per religion of the cluster under the pointer, most first, with counts
    # adding up to the cluster's and each religion's swatch in its legend colour
    pairs = [item.split(":") for item in hover["tile"]["religions"].split(",")]
    assert len(pairs) > 1
    assert hover["title"] == f"{hover['tile']['count']:,} places"
    assert [item["text"] for item in hover["items"]] == [
        f"{Religion(code).label} {int(n):,}" for code, n in pairs
    ]
    assert sum(int(n) for _, n in pairs) == hover["tile"]["count"]
    colours = {item["text"].rsplit(" ", 1)[0]: item["colour"] for item in hover["items"]}
    assert colours["Christian"] == "rgb(0, 114, 178)"  # Okabe–Ito blue, as in the legend
    assert colours["Muslim"] == "rgb(0, 158, 115)"


def test_the_list_of_what_is_in_view_gives_the_clusters_religions_too(report):
    steps = report["steps"]
    biggest = steps["overview"]["biggest_cluster"]["count"]
    # then: zoomed out, the list (for keyboards and screen readers) starts with the biggest
    # cluster and its religions, most first
    assert len(steps["cluster_list"]) == min(50, steps["overview"]["clusters"])
    assert steps["cluster_list"][0].startswith(f"{biggest:,} places: Christian ")


def test_the_offline_basemap_draws_rivers_and_lakes_at_every_zoom(report):
    water = report["steps"]["water"]
    # then: the Thames by London and Lake Geneva, zoomed out and close in
    for zoom in (7, 12):
        assert water[f"thames_z{zoom}"]["rivers"] >= 1, zoom
        assert water[f"geneva_z{zoom}"]["lakes"] >= 1, zoom
    # and no lake is drawn where there is none
    assert water["thames_z12"]["lakes"] == 0


def test_a_religion_filter_changes_the_count_and_the_url(report, places):
    steps = report["steps"]
    filtered = steps["filtered"]
    # then
    expected = _in_bounds(filtered["bounds"], dataset=places["dataset"], religion=FILTER_RELIGION)
    assert 0 < filtered["places"] == expected < steps["overview"]["places"]
    assert f"religion={FILTER_RELIGION}" in filtered["url"]
    assert steps["unfiltered"]["places"] == steps["overview"]["places"]
    assert "religion=" not in steps["unfiltered"]["url"]


def test_a_box_per_dataset_switches_it_off_and_a_reload_keeps_it_so(report, second_dataset):
    steps = report["steps"]
    every, one_off, reloaded = (
        steps["datasets_all"],
        steps["datasets_one_off"],
        steps["datasets_reloaded"],
    )
    # then: one box per dataset holding places, all ticked, each with its licence and
    # attribution, and the view counts the places of every dataset
    with_places = list(
        Dataset.objects.filter(places__isnull=False)
        .distinct()
        .order_by("slug")
        .values_list("slug", flat=True)
    )
    assert [box["slug"] for box in every["boxes"]] == with_places
    assert all(box["checked"] for box in every["boxes"])
    second = next(box for box in every["boxes"] if box["slug"] == second_dataset.slug)
    assert second["source"] == f"{SECOND['licence']} · {SECOND['attribution']}"
    assert "dataset=" not in every["url"]
    assert every["places"] == _in_bounds(every["bounds"])
    # unticking the second dataset draws the others' places alone, and the URL names them
    others = [slug for slug in with_places if slug != second_dataset.slug]
    assert f"dataset={','.join(others)}" in one_off["url"]
    expected = _in_bounds(one_off["bounds"], dataset__slug__in=others)
    assert one_off["places"] == expected
    assert every["places"] - one_off["places"] == len(SECOND_GRID)
    # and a reload shows the same boxes, places and URL
    assert reloaded["url"] == one_off["url"]
    assert [(b["slug"], b["checked"]) for b in reloaded["boxes"]] == [
        (slug, slug != second_dataset.slug) for slug in with_places
    ]
    assert reloaded["places"] == one_off["places"]
    # and the map credits only the datasets it shows
    assert SECOND["attribution"] in every["attribution"]
    assert SECOND["attribution"] not in reloaded["attribution"]


def test_with_every_dataset_switched_off_nothing_is_drawn_and_a_reload_keeps_it(report):
    steps = report["steps"]
    # then
    for seen in (steps["datasets_none"], steps["datasets_none_reloaded"]):
        assert not any(box["checked"] for box in seen["boxes"])
        assert seen["places"] == seen["symbols"] == 0
        assert seen["status"].startswith("No dataset switched on. 0 places in view")
        assert seen["url"].endswith("&dataset=")
    assert steps["datasets_all"]["places"] > 0


def test_the_density_layer_colours_the_districts_from_the_analytics_figures(report):
    density = report["steps"]["density"]
    # then: the GB sample's districts (361 regions loaded, those with an area) are coloured
    assert density["regions"] > 300
    assert density["with_figure"] > 100
    assert density["legend"][0] == "0–50"
    assert density["legend"][-1] == "2000 or more"


# The figure the districts' test chooses: stored summaries, with values spread enough for five
# quantile classes in the GB sample.
FIGURE = "shannon"


@pytest.fixture(scope="module")
def stored_summaries(gb_import, django_db_blocker) -> Iterator[None]:
    """Every region's stored summary (committed, for the server to see); those this made are
    removed afterwards, so that later tests find the results as they were."""
    with django_db_blocker.unblock():
        before = list(RegionSummary.objects.values_list("pk", flat=True))
        region_summaries_recompute(full=True)
    try:
        yield
    finally:
        with django_db_blocker.unblock():
            RegionSummary.objects.exclude(pk__in=before).delete()
            results_bump()


@pytest.fixture(scope="module")
def figure_report(server, stored_summaries, tmp_path_factory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("map-browser-figure")
    scenario = {"base": server, "chromium": CHROMIUM, "only": "figure", "figure": FIGURE}
    scenario["screenshots"] = str(folder)
    return browser_run(script=SCRIPT, scenario=scenario, folder=folder, timeout=300)


def _fixed(value: float, digits: int) -> str:
    """JavaScript's toFixed: the float's exact value rounded, halves away from zero."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def test_the_districts_take_a_chosen_figures_colours_and_legend_and_a_reload_keeps_it(
    figure_report, server
):
    # given: the figure per district as the API gives it, and its quantile classes
    url = f"{server}/api/v1/stats/summaries/?level=district"
    with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310 # nosec B310 # our server
        summaries = json.load(answer)["results"]
    by_region = {s["region"]["id"]: s["diversity"][FIGURE] for s in summaries}
    known = sorted(v for v in by_region.values() if v is not None)
    assert len(set(known)) > 20
    breaks: list[float] = []
    for k in range(5):
        at = known[len(known) * k // 5]
        if not breaks or at > breaks[-1]:
            breaks.append(at)
    ends = [*breaks[1:], known[-1]]
    missing = len(by_region) - len(known)
    steps = figure_report["steps"]["figure"]
    # then: the list is reached by its label, and the choice shows the figure's classes
    assert steps["focused"] == "figure"
    for seen in (steps["chosen"], steps["reloaded"]):
        assert seen["chosen"] == FIGURE
        assert seen["checked"] is True
        assert seen["visibility"] == "visible"
        assert seen["title"].startswith("Shannon index")
        classes = zip(breaks, ends, strict=True)
        assert seen["legend"] == [f"{_fixed(a, 2)}–{_fixed(b, 2)}" for a, b in classes]
        assert len(seen["legend"]) >= 3  # a fifth of the districts or more share 0: fewer than 5
        plural = "district" if missing == 1 else "districts"
        assert seen["missing"] == [f"No figure: {missing} {plural}"]
        assert seen["status"] == f"{len(known)} districts with a figure."
        # the fill is painted by the figure's feature state, which holds each drawn
        # district's value from the API (-1: no figure)
        assert '["feature-state","shannon"]' in seen["fill"]
        assert len(seen["states"]) > 100
        for region_id, value in seen["states"].items():
            expected = by_region.get(int(region_id))
            assert value == (-1 if expected is None else expected), region_id
        assert f"figure={FIGURE}" in seen["url"]
    # and the reload kept the URL as it was
    assert steps["reloaded"]["url"] == steps["chosen"]["url"]
    assert figure_report["console_errors"] == []
    assert figure_report["external_requests"] == []


def test_the_sensors_layer_draws_each_sensors_latest_pm25_in_its_bands_colour(report, sensors):
    drawn = {f["sensor"]: f for f in report["steps"]["sensors"]["drawn"]}
    # then: both sensors are circles with their readings, in their DAQI band's colour
    assert drawn["map-browser-low"]["pm2_5"] == 4.0
    assert drawn["map-browser-low"]["band"] == "low"
    assert drawn["map-browser-high"]["pm2_5"] == 80.0
    assert drawn["map-browser-high"]["band"] == "very_high"
    assert drawn["map-browser-low"]["colour"] != drawn["map-browser-high"]["colour"]
    # and the status counts every sensor with a reading, the legend names the four bands
    status = report["steps"]["sensors"]["status"]
    assert status == f"{sensors['with_reading']} sensors with a reading"
    assert len(report["steps"]["sensors"]["legend"]) == 4


def test_a_shared_link_and_a_reload_reproduce_the_view_and_filters(report, places):
    steps = report["steps"]
    shared = SHARED_URL.format(dataset=places["dataset"].slug)
    # then: the link is kept as it was given, and shows what it says
    assert steps["shared"]["url"] == shared
    assert steps["shared_reloaded"]["url"] == shared
    assert (steps["shared_reloaded"]["lon"], steps["shared_reloaded"]["lat"]) == pytest.approx(
        (-0.16645, 51.51844), abs=1e-6
    )
    assert steps["shared_reloaded"]["zoom"] == 14.5
    # a move rewrites it; the reload lands on the same view
    moved = "/map/?lat=53.79876&lon=-1.54321&z=9.25&religion=muslim&dataset=" + (
        places["dataset"].slug
    )
    assert steps["moved"]["url"] == moved
    assert steps["moved_reloaded"]["url"] == moved
    assert steps["moved_reloaded"]["zoom"] == 9.25


def test_every_place_on_a_shared_spot_is_in_the_popup(report, places):
    popup = report["steps"]["stacked_popup"]
    # then
    assert popup["places"] == 2
    assert set(popup["headings"]) == STACKED_NAMES
    assert "2 places here" in popup["text"]
    assert "Muslim" in popup["text"]


def test_a_places_popup_shows_labels_denomination_dataset_licence_and_links(report, places):
    known = places["known"]
    popup = report["steps"]["known_popup"]
    # then: labels, not codes
    assert popup["headings"] == [KNOWN_NAME]
    lines = popup["text"].splitlines()
    assert "Christian" in lines
    assert "christian" not in lines
    assert known.denominations == ["anglican"]
    assert "Anglican" in lines
    assert f"{known.dataset.name} ({LICENCE})" in lines
    assert ATTRIBUTION in lines
    assert f"/places/{known.pk}/" in popup["links"]


def test_search_by_name_flies_to_the_place_and_opens_it(report, places):
    known = places["known"]
    steps = report["steps"]
    # then
    assert steps["search_popup"]["headings"] == [KNOWN_NAME]
    assert (steps["search_view"]["lon"], steps["search_view"]["lat"]) == pytest.approx(
        (known.location.x, known.location.y), abs=1e-5
    )
    assert steps["search_view"]["zoom"] >= 16
    assert steps["search_results"][0].startswith(KNOWN_NAME)


def test_search_by_coordinates_flies_there(report):
    view = report["steps"]["coordinates_view"]
    # then
    assert (view["lat"], view["lon"]) == pytest.approx((51.5138, -0.0984), abs=1e-5)
    assert "lat=51.51380&lon=-0.09840" in view["url"]


def test_the_keyboard_reaches_the_search_first(report):
    steps = report["steps"]
    # then
    assert steps["first_tab"] == "Skip to the search"
    assert steps["after_skip"] == "search-input"
    assert steps["in_view_list"]


def test_the_place_page_shows_the_place_on_its_map(report, places):
    page = report["steps"]["place_page"]
    # then
    assert page["title"] == KNOWN_NAME
    assert page["nearby"] == 10
    assert page["history_rows"] >= 1
    assert page["drawn"] >= 1


def test_the_admins_location_widget_draws_the_basemap_and_keeps_the_point_where_shown(
    report, places
):
    known = places["known"]
    widget = report["steps"]["location_widget"]
    # then: the map page's basemap (land, water layers) under the place's marker
    assert set(widget["layers"]) >= {"land", "lakes", "rivers", "coast", "borders"}
    assert widget["land_drawn"] > 0
    assert widget["start"]["value"] == known.location.wkt
    assert (widget["start"]["marker"]["lng"], widget["start"]["marker"]["lat"]) == pytest.approx(
        (known.location.x, known.location.y), abs=1e-9
    )
    # a click on the marker itself leaves the point where it was
    assert widget["marker_clicked"]["value"] == widget["start"]["value"]
    # a click on the map puts it there, in the field and the typed boxes alike (6 decimals)
    clicked = widget["map_clicked"]
    assert clicked["value"] == f"POINT ({clicked['longitude']} {clicked['latitude']})"
    lon, lat = float(clicked["longitude"]), float(clicked["latitude"])
    assert (lon, lat) == (round(lon, 6), round(lat, 6))
    # (where the pointer was, to a pixel at zoom 14: the browser rounds the event's position)
    assert (lon, lat) == pytest.approx((clicked["at"]["lng"], clicked["at"]["lat"]), abs=5e-5)
    assert (lon, lat) != pytest.approx((known.location.x, known.location.y), abs=1e-4)
    assert (clicked["marker"]["lng"], clicked["marker"]["lat"]) == pytest.approx((lon, lat))
    # typed coordinates move the marker and the field
    typed = widget["typed"]
    assert typed["value"] == "POINT (-0.1 51.5)"
    assert (typed["marker"]["lng"], typed["marker"]["lat"]) == pytest.approx((-0.1, 51.5))


def test_a_curator_sees_the_admin_link_in_a_popup_and_visitors_do_not(report, places):
    known = places["known"]
    admin_link = f"/admin/places/place/{known.pk}/change/"
    # then
    assert admin_link in report["steps"]["curator_popup"]["links"]
    assert admin_link not in report["steps"]["known_popup"]["links"]


def test_on_a_phone_the_panel_starts_folded_and_opens(report):
    phone = report["steps"]["phone"]
    # then
    assert phone["expanded"] == "false"
    assert phone["body_hidden"] is True
    assert phone["after_click"] is False


def test_the_committed_maplibre_is_the_npm_package_copied_by_bin_vendor_js(tmp_path):
    # given: node_modules from package-lock.json (make test runs npm ci)
    browser_needs()
    # when
    subprocess.run([str(ROOT / "bin" / "vendor-js"), str(tmp_path)], cwd=ROOT, check=True)
    # then: the pages load exactly what npm pinned
    committed = ROOT / "static" / "vendor" / "maplibre"
    for name in ("maplibre-gl.js", "maplibre-gl.css", "LICENSE.txt", "README.md"):
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name

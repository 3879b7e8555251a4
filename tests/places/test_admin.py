"""Admin pages for every model work, stay cheap to count, and edit through services."""

from __future__ import annotations

import json

import pytest
from django.contrib import admin
from django.urls import reverse

from places.models import Dataset, Place, PlaceChange

pytestmark = pytest.mark.django_db


def test_every_model_is_registered():
    from django.apps import apps

    # Django's admin refuses models with a composite primary key (edge readings; the sensor
    # page shows a sensor's latest ones).
    ours = [
        m
        for m in apps.get_models()
        if m._meta.app_label in {"places", "ingestion"} and not m._meta.is_composite_pk
    ]
    assert ours
    assert all(admin.site.is_registered(m) for m in ours)


@pytest.mark.parametrize(
    "model",
    [
        "places.dataset",
        "places.region",
        "places.regionpart",
        "places.place",
        "places.placeattribute",
        "places.placechange",
        "places.dataversion",
        "ingestion.importjob",
        "ingestion.importrejection",
    ],
)
def test_changelists_open(admin_client, gb_import, model):
    app, name = model.split(".")
    response = admin_client.get(reverse(f"admin:{app}_{name}_changelist"))
    assert response.status_code == 200


def test_place_search_and_filters(admin_client, gb_import):
    url = reverse("admin:places_place_changelist")
    response = admin_client.get(url, {"q": "cathedral", "religion__exact": "christian"})
    assert response.status_code == 200
    assert b"Cathedral" in response.content


def test_place_change_page_has_an_offline_map(admin_client, gb_import):
    place = Place.objects.filter(dataset=gb_import.dataset).first()
    response = admin_client.get(reverse("admin:places_place_change", args=[place.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "vendor/ol/ol.js" in html
    # the footprint's OpenLayers map draws the map page's basemap files
    footprint_script = html[html.index('id="id_footprint_div_map"') :]
    for name in ("ne_50m_land", "ne_50m_water", "ne_50m_borders"):
        assert f"/static/places/basemap/{name}.geojson" in footprint_script
    assert "cdn.jsdelivr" not in html
    assert "openstreetmap.org" not in html
    # the empty footprint map opens at the place, and no map zooms past the basemap's detail
    footprint = html[html.index("id_footprint_map") :]
    assert f"default_lon: {place.location.x}," in footprint
    assert f"default_lat: {place.location.y}," in footprint
    assert "view.setZoom(7)" in html


def test_the_location_widget_draws_the_maps_own_basemap(admin_client, gb_import, settings):
    # given a place, and no MAP_STYLE_URL: the offline basemap
    settings.MAP_STYLE_URL = ""
    place = Place.objects.filter(dataset=gb_import.dataset).first()
    # when its change page opens
    response = admin_client.get(reverse("admin:places_place_change", args=[place.pk]))
    html = response.content.decode()
    # then the location is a MapLibre map with the map page's basemap scripts, from our files
    for script in (
        "vendor/maplibre/maplibre-gl.js",
        "places/basemap/style.js",
        "places/location_widget.js",
    ):
        assert f'src="/static/{script}"' in html
    start = html.index('id="id_location_config"')
    config = json.loads(html[html.index(">", start) + 1 : html.index("</script>", start)])
    assert config["styleUrl"] == ""
    assert config["basemap"]["water"].endswith("places/basemap/ne_50m_water.geojson")
    assert config["basemap"]["land"].endswith("places/basemap/ne_50m_land.geojson")
    assert (config["id"], config["lonInput"], config["latInput"]) == (
        "id_location",
        "id_longitude",
        "id_latitude",
    )
    # its value is the place's WKT in WGS84, and the typed boxes hold the same point
    assert f">{place.location.wkt}</textarea>" in html
    form = response.context["adminform"].form
    assert (form["longitude"].initial, form["latitude"].initial) == (
        place.location.x,
        place.location.y,
    )
    # the footprint (an area) keeps OpenLayers' drawing tools
    assert 'id="id_footprint_map"' in html


def test_the_location_widget_follows_map_style_url(admin_client, gb_import, settings):
    # given a deployment's own style
    settings.MAP_STYLE_URL = "https://tiles.example.org/style.json"
    place = Place.objects.filter(dataset=gb_import.dataset).first()
    # when its change page opens
    response = admin_client.get(reverse("admin:places_place_change", args=[place.pk]))
    # then the widget is given that style
    assert '"styleUrl": "https://tiles.example.org/style.json"' in response.content.decode()


def test_a_point_the_location_widget_writes_is_saved_where_it_shows(admin_client, gb_import):
    # given a place's form, posted as the widget leaves it after a click: the WKT (no SRID,
    # 6 decimals) in the location field and the same numbers in the typed boxes
    place = Place.objects.filter(dataset=gb_import.dataset).exclude(name="").first()
    url = reverse("admin:places_place_change", args=[place.pk])
    form = admin_client.get(url).context["adminform"].form
    data = {k: ("" if v is None else v) for k, v in form.initial.items()}
    data.update(
        {
            "location": "POINT (-0.127586 51.500729)",
            "longitude": "-0.127586",
            "latitude": "51.500729",
            "footprint": "",
            "denominations": ",".join(place.denominations),
            "tags": json.dumps(place.tags),
            "attributes-TOTAL_FORMS": "0",
            "attributes-INITIAL_FORMS": "0",
        }
    )
    for key in ("country", "region", "merged_into"):
        data[key] = data.get(key) or ""
    # when
    response = admin_client.post(url, data)
    # then the point is exactly where the widget showed it
    assert response.status_code == 302, response.context["adminform"].form.errors
    place.refresh_from_db()
    assert (place.location.x, place.location.y) == (-0.127586, 51.500729)
    assert place.location.srid == 4326


def test_admin_edit_goes_to_the_change_log(admin_client, admin_user, gb_import):
    place = Place.objects.filter(dataset=gb_import.dataset).exclude(name="").first()
    url = reverse("admin:places_place_change", args=[place.pk])
    form = admin_client.get(url).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None}
    data.update(
        {
            "name": "Renamed by a curator",
            "location": place.location.json,
            "footprint": "",
            "denominations": ",".join(place.denominations),
            "tags": '{{"area_code": "{}"}}'.format(place.tags.get("area_code", "")),
            "attributes-TOTAL_FORMS": "0",
            "attributes-INITIAL_FORMS": "0",
        }
    )
    data = {k: ("" if v is None else v) for k, v in data.items()}
    for key in ("country", "region", "merged_into"):
        data[key] = data.get(key) or ""
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    place.refresh_from_db()
    assert place.name == "Renamed by a curator"
    change = PlaceChange.objects.filter(place=place).latest("seq")
    assert change.user == admin_user
    assert "name" in change.changes


def test_places_cannot_be_deleted_in_the_admin(admin_client, gb_import):
    place = Place.objects.filter(dataset=gb_import.dataset).first()
    response = admin_client.get(reverse("admin:places_place_delete", args=[place.pk]))
    assert response.status_code == 403


def test_large_changelist_is_counted_by_estimate_not_count(admin_client, gb_import):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    # given a table larger than the exact-count threshold, freshly analysed
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE places_place")
    # when the unfiltered changelist opens
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(reverse("admin:places_place_changelist"))
    # then no COUNT(*) ran over the places table, and the count shown is the estimate
    assert response.status_code == 200
    counts = [q["sql"] for q in queries if "COUNT(" in q["sql"] and "places_place" in q["sql"]]
    assert counts == []
    assert response.context["cl"].result_count >= 20_000


def test_stale_admin_form_is_refused_instead_of_overwriting(admin_client, gb_import):
    from places.services import place_update

    # given a curator who opened a place
    place = Place.objects.filter(dataset=gb_import.dataset).exclude(name="").last()
    url = reverse("admin:places_place_change", args=[place.pk])
    form = admin_client.get(url).context["adminform"].form
    data = {k: ("" if v is None else v) for k, v in form.initial.items()}
    data.update(
        {
            "name": "Stale edit",
            "opened_version": form["opened_version"].value(),
            "location": place.location.json,
            "footprint": "",
            "denominations": ",".join(place.denominations),
            "tags": json.dumps(place.tags),
            "attributes-TOTAL_FORMS": "0",
            "attributes-INITIAL_FORMS": "0",
        }
    )
    # when someone else changes it before the form is saved
    place_update(place=place, data={"name": "Newer edit"})
    response = admin_client.post(url, data)
    # then the form comes back with an error and the newer edit stays
    assert response.status_code == 200
    assert "changed while you edited it" in response.content.decode()
    place.refresh_from_db()
    assert place.name == "Newer edit"


def test_curator_adds_a_place_in_the_admin(admin_client, admin_user, gb_import):
    url = reverse("admin:places_place_add")
    assert admin_client.get(url).status_code == 200
    data = {
        "name": "New chapel",
        "dataset": gb_import.dataset.pk,
        "source_key": "curator:new-chapel",
        "status": "active",
        "religion": "christian",
        "religion_raw": "",
        "denominations": "methodist",
        "denomination_raw": "",
        # The location widget posts WGS84 WKT, as the browser would.
        "location": "POINT (-0.1 51.5)",
        "footprint": "",
        "tags": "{}",
        "start_date_raw": "",
        "end_date_raw": "",
        "attributes-TOTAL_FORMS": "0",
        "attributes-INITIAL_FORMS": "0",
    }
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    place = Place.objects.get(dataset=gb_import.dataset, source_key="curator:new-chapel")
    assert place.country.code == "GBR"
    change = PlaceChange.objects.get(place=place)
    assert (change.operation, change.user) == ("create", admin_user)


def test_adding_a_dataset_shows_no_pending_timestamps(admin_client):
    page = admin_client.get("/admin/places/dataset/add/").content.decode()
    assert "DatabaseDefault" not in page
    assert "Created at" not in page
    response = admin_client.post(
        "/admin/places/dataset/add/", {"name": "Parish register", "slug": "parish-register"}
    )
    assert response.status_code == 302
    dataset = Dataset.objects.get(slug="parish-register")
    page = admin_client.get(f"/admin/places/dataset/{dataset.pk}/change/").content.decode()
    assert "Created at" in page


@pytest.mark.parametrize(
    ("term", "found"),
    [
        ("Sao Paulo", {"São Paulo Cathedral", "Igreja de São Paulo"}),
        ("sÃO pAULO", {"São Paulo Cathedral", "Igreja de São Paulo"}),
        ("paulo igreja", {"Igreja de São Paulo"}),
        ("Zurich", {"Grossmünster Zürich"}),
        ("grossmunster", {"Grossmünster Zürich"}),
        ("100%", {"100% Gospel Hall"}),
        ("_", set()),
        ('"de São"', {"Igreja de São Paulo"}),
    ],
)
def test_place_name_search_ignores_case_and_accents(admin_client, term, found):
    # given places whose names carry accents, a % and none of the term's case
    dataset = Dataset.objects.create(name="Accents", slug="accents")
    for i, name in enumerate(
        ["São Paulo Cathedral", "Igreja de São Paulo", "Grossmünster Zürich", "100% Gospel Hall"]
    ):
        Place.objects.create(
            dataset=dataset, source_key=f"a{i}", name=name, location="POINT(-46.6 -23.5)"
        )
    # when a curator searches the places list
    response = admin_client.get(
        reverse("admin:places_place_changelist"), {"q": term, "dataset__id__exact": dataset.pk}
    )
    # then exactly the names holding every word are listed (LIKE's % and _ are plain text)
    assert response.status_code == 200
    listed = {place.name for place in response.context["cl"].result_list}
    assert listed == found


def test_place_name_search_uses_the_unaccented_trigram_index(gb_import):
    # given the search's query for a word
    from django.db import connection

    from places.selectors import place_name_search

    query = place_name_search(Place.objects.all(), "Sao Paulo").values("pk").query
    sql, params = query.sql_with_params()
    # when PostgreSQL plans it with sequential scans discouraged (the test table is small)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    # then the trigram index on the same expression answers it
    assert "place_name_unaccent_trgm" in plan

"""Regions are kept by one service: whoever saves a boundary (the admin, the loader), its
pieces, area, parents and version follow, and the places inside it are located again."""

from __future__ import annotations

import io
import json

import pytest
from django.contrib.gis.geos import MultiPolygon, Point, Polygon
from django.core.management import call_command
from django.urls import reverse

from places.models import Place, PlaceChange, Region, RegionPart
from places.selectors import region_version, regions_for_point
from places.services import dataset_get_or_create, place_create
from tests.places.synthetic_regions import (
    DISTRICT_BOXES,
    DISTRICTS,
    boundary_file,
    load,
    load_all,
)

pytestmark = pytest.mark.django_db

# West Vale (TD1, -30..-29 × -44..-42) grows north to -40 and gives up its southern strip.
MOVED_WEST_VALE = (-30, -43, -29, -40)
NORTH = Point(-29.5, -41)  # in the new part: was in the admin1 region only
SOUTH = Point(-29.5, -43.5)  # in the part given up: in no district any more
MIDDLE = Point(-29.5, -42.5)  # in West Vale before and after


@pytest.fixture
def regions(tmp_path) -> dict[str, Region]:
    load_all(tmp_path)
    return {r.code: r for r in Region.objects.filter(code_system__startswith="test-")}


@pytest.fixture
def places(regions) -> dict[str, Place]:
    dataset = dataset_get_or_create(slug="regions-kept")
    points = {"north": NORTH, "south": SOUTH, "middle": MIDDLE}
    return {
        key: place_create(dataset=dataset, source_key=key, data={"location": point})
        for key, point in points.items()
    }


def _region_form(admin_client, region: Region, **changes) -> dict:
    """The region's change form as the browser posts it (the map in Web Mercator)."""
    url = reverse("admin:places_region_change", args=[region.pk])
    form = admin_client.get(url).context["adminform"].form
    data = {k: ("" if v is None else v) for k, v in form.initial.items()}
    data.update(
        {
            "extra_codes": json.dumps(region.extra_codes),
            "geom": region.geom.transform(3857, clone=True).json,
        }
    )
    data.update(changes)
    return data


def _box_3857(box) -> str:
    return MultiPolygon(Polygon.from_bbox(box), srid=4326).transform(3857, clone=True).json


def test_moving_a_district_boundary_in_the_admin_reassigns_and_logs_the_places(
    admin_client, regions, places
):
    # given places north of West Vale (admin1 only), in its south strip and in its middle
    west, north_march = regions["TD1"], regions["TA1"]
    assert places["north"].region == north_march
    assert places["south"].region == west
    area_before = west.area_km2
    url = reverse("admin:places_region_change", args=[west.pk])
    # when a curator moves its boundary north in the admin
    data = _region_form(admin_client, west, geom=_box_3857(MOVED_WEST_VALE))
    response = admin_client.post(url, data, follow=True)
    # then point in polygon reads the new pieces, and the places inside the new part name
    # West Vale, those in the part given up do not any more, each logged once
    assert response.status_code == 200
    assert regions_for_point(lon=NORTH.x, lat=NORTH.y) == (west.pk, regions["TC1"].pk)
    north, south, middle = (
        Place.objects.get(pk=places[k].pk) for k in ("north", "south", "middle")
    )
    assert (north.region, north.version) == (west, 2)
    assert (south.region, south.version) == (north_march, 2)
    assert (middle.region, middle.version) == (west, 1)
    change = PlaceChange.objects.filter(place=north).latest("seq")
    assert (change.operation, change.source, change.place_version) == ("update", "system", 2)
    assert change.changes == {"region_id": {"old": north_march.pk, "new": west.pk}}
    assert "West Vale (test-district TD1)" in change.comment
    assert PlaceChange.objects.filter(place=middle).count() == 1
    # the region itself: pieces cut from the new boundary, area measured again
    west.refresh_from_db()
    assert west.area_km2 != area_before
    pieces = RegionPart.objects.filter(region=west)
    assert all(MultiPolygon(Polygon.from_bbox(MOVED_WEST_VALE)).covers(p.geom) for p in pieces)
    # and the curator is told what followed
    messages = [str(m) for m in response.context["messages"]]
    assert any(
        "its boundary was cut into" in m and "2 place(s) got another region or country" in m
        for m in messages
    ), messages


def test_saving_a_region_form_without_moving_the_boundary_moves_no_place(
    admin_client, regions, places
):
    # given a district whose form comes back from the map through Web Mercator
    west = regions["TD1"]
    pieces = set(RegionPart.objects.filter(region=west).values_list("pk", flat=True))
    version = region_version()
    # when only its name changes
    data = _region_form(admin_client, west, name="West Vale (renamed)")
    response = admin_client.post(reverse("admin:places_region_change", args=[west.pk]), data)
    # then the stored boundary and its pieces stay, no place is touched, the version moves
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert set(RegionPart.objects.filter(region=west).values_list("pk", flat=True)) == pieces
    assert not PlaceChange.objects.filter(place__dataset__slug="regions-kept", operation="update")
    assert region_version() != version


def test_moving_a_district_to_another_country_in_the_admin_moves_its_places_country(
    admin_client, regions, places
):
    # given West Vale in Westland (TC1)
    west, eastland = regions["TD1"], regions["TC2"]
    # when a curator makes it part of Eastland
    data = _region_form(admin_client, west, parent=str(eastland.pk))
    admin_client.post(reverse("admin:places_region_change", args=[west.pk]), data)
    # then its places take their country from it, logged
    middle = Place.objects.get(pk=places["middle"].pk)
    assert middle.country == eastland
    change = PlaceChange.objects.filter(place=middle).latest("seq")
    assert change.changes == {"country_id": {"old": regions["TC1"].pk, "new": eastland.pk}}


def test_reloading_a_changed_boundary_file_reassigns_the_places(tmp_path, regions, places):
    # given the districts' file with West Vale moved north
    moved = {**DISTRICT_BOXES, "TD1": ("West Vale", MOVED_WEST_VALE)}
    # when it is loaded again
    result = load(tmp_path, DISTRICTS, moved)
    # then only West Vale was rewritten, and the places inside its old and new parts moved
    assert (result.added, result.updated, result.unchanged) == (0, 1, 1)
    assert result.places_reassigned == 2
    west = regions["TD1"]
    assert Place.objects.get(pk=places["north"].pk).region == west
    assert Place.objects.get(pk=places["south"].pk).region == regions["TA1"]
    change = PlaceChange.objects.filter(place=places["north"]).latest("seq")
    assert (change.operation, change.source) == ("update", "system")
    assert "West Vale (test-district TD1)" in change.comment
    # and loading the same file once more changes nothing
    log = PlaceChange.objects.count()
    version = region_version()
    again = load(tmp_path, DISTRICTS, moved)
    assert (again.updated, again.places_reassigned) == (0, 0)
    assert PlaceChange.objects.count() == log
    assert region_version() == version


def test_load_regions_command_says_how_many_places_it_reassigned(tmp_path, regions, places):
    moved = {**DISTRICT_BOXES, "TD1": ("West Vale", MOVED_WEST_VALE)}
    path = boundary_file(tmp_path / "moved.geojson", moved)
    out = io.StringIO()
    call_command(
        "load_regions",
        str(path),
        "--dataset",
        "test-district-boundaries",
        "--level",
        "district",
        "--code-field",
        "code",
        "--name-field",
        "name",
        "--code-system",
        "test-district",
        stdout=out,
    )
    assert "0 added, 1 updated, 1 unchanged, 0 rejected; 2 places re-assigned" in out.getvalue()


def test_region_version_moves_with_pieces_and_with_any_region_write(tmp_path, regions):
    # given the version of the regions as they are
    before = region_version()
    assert region_version() == before  # stable while nothing changes
    # when a district loses its pieces (by hand, outside the service)
    RegionPart.objects.filter(region=regions["TD2"]).delete()
    # then the version moves, as it does when a boundary file adds a region
    after_pieces = region_version()
    assert after_pieces != before
    load(tmp_path, DISTRICTS, {"TD3": ("New Vale", (-28, -44, -27, -43))})
    assert region_version() != after_pieces


def test_the_region_form_tells_what_saving_a_boundary_does(admin_client, regions):
    response = admin_client.get(reverse("admin:places_region_change", args=[regions["TD1"].pk]))
    html = response.content.decode()
    assert "Saving a changed boundary cuts it into pieces again for point in polygon" in html
    assert "each place that changes is logged in the change log" in html
    assert "Left empty, it is the country that holds a point inside the region" in html

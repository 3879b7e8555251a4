"""Per-area data versions: an edit in one part of the map leaves other parts' caches alone."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.gis.geos import Point, Polygon
from django.db import connection

from places.geo import BBox, parse_bbox
from places.models import AreaVersion, Place
from places.selectors import area_cells, data_version
from places.services import dataset_get_or_create, place_create, place_update

LONDON = "-0.15,51.49,-0.07,51.53"
LONDON_TILE = "/tiles/places/14/8185/5447.pbf"  # Westminster
MANCHESTER = (-2.5, 53.3, -2.0, 53.6)


def _box(extent: tuple[float, float, float, float]) -> Polygon:
    return Polygon.from_bbox(extent)


def _manchester_place() -> Place:
    return Place.objects.filter(location__intersects=_box(MANCHESTER)).order_by("id")[0]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        f"/api/v1/viewport/?bbox={LONDON}&zoom=13",
        f"/api/v1/places/?bbox={LONDON}&limit=10",
        LONDON_TILE,
    ],
)
def test_an_edit_elsewhere_keeps_a_view_cached_and_an_edit_inside_moves_it(
    client, gb_import, clear_cache, url
):
    etag = client.get(url)["ETag"]
    # An edit in Manchester (another cell) leaves London's answers valid...
    place_update(place=_manchester_place(), data={"name": "Renamed in Manchester"})
    assert client.get(url, HTTP_IF_NONE_MATCH=etag).status_code == 304
    # ...an edit in London does not.
    inside = Place.objects.filter(location__intersects=_box((-0.15, 51.49, -0.07, 51.53)))
    place_update(place=inside.order_by("id")[0], data={"name": "Renamed in London"})
    assert client.get(url, HTTP_IF_NONE_MATCH=etag).status_code == 200


@pytest.mark.django_db
def test_a_move_changes_the_version_of_both_areas(gb_import):
    london, manchester = parse_bbox(LONDON), BBox(*MANCHESTER)
    before = data_version(bbox=london), data_version(bbox=manchester)
    place = _manchester_place()
    place_update(place=place, data={"location": Point(-0.1, 51.5)})
    after = data_version(bbox=london), data_version(bbox=manchester)
    assert before[0] != after[0]
    assert before[1] != after[1]


@pytest.mark.django_db
def test_low_zoom_boxes_fall_back_to_the_dataset_version(gb_import):
    world = BBox(-180, -85, 180, 85)
    assert area_cells(world) is None
    before = data_version(bbox=world)
    assert before == data_version()
    place_update(place=_manchester_place(), data={"name": "x"})
    assert data_version(bbox=world) != before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("lon", "lat"),
    [(-180, -90), (180, 90), (0, 0), (-0.1, 51.5), (1.40625, 1.40625), (179.99, -89.99)],
)
def test_sql_and_python_agree_on_cells(lon, lat):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT places_area_cell(ST_SetSRID(ST_MakePoint(%s, %s), 4326))", [lon, lat]
        )
        cell = cursor.fetchone()[0]
    box = BBox(lon - 1e-9 if lon > -180 else lon, lat, lon, lat)
    assert area_cells(BBox(lon, lat, lon, lat)) == [cell]
    assert cell in area_cells(box)


def test_versions_move_at_commit_and_leave_no_pending_rows(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        dataset = dataset_get_or_create(slug=f"area-{uuid.uuid4().hex[:6]}")
        place_create(dataset=dataset, source_key="a", data={"location": Point(10.1, 20.1)})
        rows = list(AreaVersion.objects.filter(dataset=dataset).values_list("cell", flat=True))
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM places_areaversion_pending WHERE dataset_id = %s",
                [dataset.pk],
            )
            pending = cursor.fetchone()[0]
        connection.close()
    assert rows == area_cells(BBox(10.1, 20.1, 10.1, 20.1))
    assert pending == 0

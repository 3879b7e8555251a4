"""Property-based checks: for random boxes the API returns exactly what PostGIS says is inside.

Boxes are drawn over Great Britain (where the sample data is), including boxes that cross
the antimeridian; the expected set comes from a direct SQL query, not from the code under
test.
"""

from __future__ import annotations

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.django_db

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

lons = st.floats(min_value=-8.0, max_value=2.0, allow_nan=False)
lats = st.floats(min_value=49.9, max_value=58.0, allow_nan=False)
sizes = st.floats(min_value=0.001, max_value=0.6)


def _expected(min_lon: float, min_lat: float, max_lon: float, max_lat: float) -> set[int]:
    """Active places in the box, straight from PostGIS (two envelopes across ±180)."""
    parts = (
        [(min_lon, min_lat, max_lon, max_lat)]
        if min_lon <= max_lon
        else [(min_lon, min_lat, 180, max_lat), (-180, min_lat, max_lon, max_lat)]
    )
    ids: set[int] = set()
    with connection.cursor() as cursor:
        for part in parts:
            cursor.execute(
                "SELECT id FROM places_place WHERE status = 'active' AND "
                "ST_Intersects(location, ST_MakeEnvelope(%s, %s, %s, %s, 4326))",
                list(part),
            )
            ids |= {row[0] for row in cursor.fetchall()}
    return ids


def _bbox(min_lon: float, min_lat: float, max_lon: float, max_lat: float) -> str:
    return ",".join(repr(v) for v in (min_lon, min_lat, max_lon, max_lat))


@SETTINGS
@given(lon=lons, lat=lats, width=sizes, height=sizes)
def test_viewport_points_are_exactly_the_places_in_the_box(
    client, gb_import, lon, lat, width, height
):
    box = (lon, lat, lon + width, min(lat + height, 90.0))
    body = client.get("/api/v1/viewport/", {"bbox": _bbox(*box), "zoom": 10}).json()
    assert body["kind"] == "points"
    assert set(body["ids"]) == _expected(*box)


@SETTINGS
@given(lon=lons, lat=lats, width=st.floats(min_value=0.5, max_value=5), zoom=st.integers(0, 9))
def test_viewport_clusters_count_exactly_the_places_in_the_box(
    client, gb_import, lon, lat, width, zoom
):
    box = (lon, lat, lon + width, min(lat + width, 90.0))
    body = client.get("/api/v1/viewport/", {"bbox": _bbox(*box), "zoom": zoom}).json()
    assert body["kind"] == "clusters"
    assert sum(body["count"]) == len(_expected(*box))


@SETTINGS
@given(lon=lons, lat=lats, width=sizes, height=sizes)
def test_places_api_pages_cover_exactly_the_box(client, gb_import, lon, lat, width, height):
    box = (lon, lat, lon + width, min(lat + height, 90.0))
    seen: list[int] = []
    url: str | None = f"/api/v1/places/?bbox={_bbox(*box)}&status=active&limit=1000"
    while url:
        body = client.get(url).json()
        seen += [f["id"] for f in body["features"]]
        url = body["next"]
    assert len(seen) == len(set(seen))
    assert set(seen) == _expected(*box)


@pytest.fixture
def pacific_places(sample_regions) -> int:
    """Sixty places scattered over the Pacific, on both sides of the antimeridian."""
    from django.contrib.gis.geos import Point

    from places.services import dataset_get_or_create, place_create

    dataset = dataset_get_or_create(slug="pacific-properties")
    for i in range(60):
        lon = 177 + (i * 0.61) % 6  # 177 … 183, folded into -180 … 180 below
        lat = -45 + (i * 0.37) % 5
        place_create(
            dataset=dataset,
            source_key=f"p{i}",
            data={"location": Point(lon if lon <= 180 else lon - 360, lat)},
        )
    return 60


@SETTINGS
@given(
    west=st.floats(min_value=177.5, max_value=179.9),
    east=st.floats(min_value=-179.9, max_value=-177.5),
    south=st.floats(min_value=-47.0, max_value=-42.0),
)
def test_boxes_across_the_antimeridian_match_postgis(client, pacific_places, west, east, south):
    box = (west, south, east, south + 5)
    body = client.get("/api/v1/viewport/", {"bbox": _bbox(*box), "zoom": 10}).json()
    expected = _expected(*box)
    assert set(body["ids"]) == expected
    both_sides = _expected(178, -46, -178, -39)
    assert len(both_sides) > 5  # the fixture really straddles the antimeridian


# A box and places on its edges, at its corners and a hair outside it: 1e-7 degrees is well
# inside the single-precision rounding of the GiST boxes (about 1e-6 at 10°), so only an exact
# comparison of the coordinates keeps these out.
EDGE_BOX = (10.0, 50.0, 10.5, 50.5)
HAIR = 1e-7
ON_THE_EDGES = [(10.0, 50.0), (10.5, 50.5), (10.5, 50.2), (10.2, 50.0), (10.0, 50.5)]
A_HAIR_OUTSIDE = [
    (10.5 + HAIR, 50.2),
    (10.0 - HAIR, 50.2),
    (10.2, 50.5 + HAIR),
    (10.2, 50.0 - HAIR),
    (10.5 + HAIR, 50.5 + HAIR),
]


@pytest.fixture
def edge_places(sample_regions) -> dict[str, set[int]]:
    from django.contrib.gis.geos import Point

    from places.services import dataset_get_or_create, place_create

    dataset = dataset_get_or_create(slug="edge-properties")
    ids: dict[str, set[int]] = {"in": set(), "out": set()}
    for side, points in (("in", ON_THE_EDGES), ("out", A_HAIR_OUTSIDE)):
        for i, (lon, lat) in enumerate(points):
            place = place_create(
                dataset=dataset, source_key=f"{side}{i}", data={"location": Point(lon, lat)}
            )
            ids[side].add(place.pk)
    return ids


def test_places_on_the_edges_are_in_the_box_and_a_hair_outside_are_not(client, edge_places):
    assert _expected(*EDGE_BOX) == edge_places["in"]  # PostGIS agrees with the fixture
    bbox = _bbox(*EDGE_BOX)
    points = client.get("/api/v1/viewport/", {"bbox": bbox, "zoom": 10}).json()
    assert set(points["ids"]) == edge_places["in"]
    clusters = client.get("/api/v1/viewport/", {"bbox": bbox, "zoom": 5}).json()
    assert sum(clusters["count"]) == len(edge_places["in"])
    listed = client.get("/api/v1/places/", {"bbox": bbox, "limit": 100}).json()
    assert {f["id"] for f in listed["features"]} == edge_places["in"]
    ogc = client.get(
        "/ogc/collections/places/items", {"bbox": bbox, "limit": 100, "f": "json"}
    ).json()
    assert {f["id"] for f in ogc["features"]} == edge_places["in"]


def test_the_box_test_keeps_the_planners_estimate_of_st_intersects(gb_import):
    """The places list's numberMatched above its exact limit, and the plans' sizes, are the
    planner's estimate of the box test: the exact comparison of coordinates must not shrink it
    (two BETWEENs were estimated as true of one row in 40,000)."""
    from places.geo import parse_bbox
    from places.selectors import query_row_estimate
    from places.serving.query import PlaceQuery

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE places_place")
    for box in ("-8,49.9,2,58", "-1,51,0.5,52", "-0.2,51.45,0.0,51.55"):
        where, params = PlaceQuery(bbox=parse_bbox(box)).where()
        ours = query_row_estimate(sql=f"SELECT 1 FROM places_place p WHERE {where}", params=params)
        postgis = query_row_estimate(
            sql="SELECT 1 FROM places_place p WHERE status = 'active' AND "
            "ST_Intersects(p.location, ST_MakeEnvelope(%s, %s, %s, %s, 4326))",
            params=[float(v) for v in box.split(",")],
        )
        assert postgis > 100  # the box holds places, so the estimates mean something
        assert abs(ours - postgis) <= 0.02 * postgis, (box, ours, postgis)

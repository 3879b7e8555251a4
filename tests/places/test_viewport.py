"""The viewport endpoint: clusters that add up, every point, both encodings, freshness."""

from __future__ import annotations

import gzip
import json
import math
import struct
from collections import Counter

import numpy as np
import pytest
from django.contrib.gis.geos import Point, Polygon
from django.db import DatabaseError, connection, transaction
from django.test import override_settings

from places.geo import BBox
from places.models import Place, Religion
from places.services import dataset_get_or_create, place_create, place_update
from places.serving import viewport as viewport_module
from places.serving.query import PlaceQuery

pytestmark = pytest.mark.django_db

LONDON = "-0.2,51.45,0.0,51.55"


def _in_box(bbox: str) -> set[int]:
    box = Polygon.from_bbox(tuple(float(v) for v in bbox.split(",")))
    return set(
        Place.objects.filter(status="active", location__intersects=box).values_list("id", flat=True)
    )


def _decode_binary(body: bytes) -> dict:
    assert body[:4] == b"PLV1"
    kind, n, legend_length = struct.unpack_from("<B3xII", body, 4)
    legend = json.loads(body[16 : 16 + legend_length])
    offset = 16 + legend_length + (-legend_length % 8)
    first = np.frombuffer(body, dtype="<i8" if kind == 0 else "<u4", count=n, offset=offset)
    offset += first.nbytes
    lon = np.frombuffer(body, dtype="<f4", count=n, offset=offset)
    offset += lon.nbytes
    lat = np.frombuffer(body, dtype="<f4", count=n, offset=offset)
    offset += lat.nbytes
    religion = np.frombuffer(body, dtype="u1", count=n, offset=offset)
    assert offset + n == len(body)
    return {
        "kind": kind,
        "first": first,
        "lon": lon,
        "lat": lat,
        "religion": religion,
        "legend": legend,
    }


def test_high_zoom_returns_every_point_in_the_box(client, gb_import, clear_cache):
    body = client.get("/api/v1/viewport/", {"bbox": LONDON, "zoom": 12}).json()
    assert body["kind"] == "points"
    assert set(body["ids"]) == _in_box(LONDON)
    assert len(body["lon"]) == len(body["lat"]) == len(body["religion"]) == body["total"]
    assert {body["legend"][code] for code in body["religion"]} <= set(body["legend"])


def test_low_zoom_clusters_add_up_to_the_places_in_the_box(client, gb_import, clear_cache):
    bbox = "-6,49.8,2,56"
    body = client.get("/api/v1/viewport/", {"bbox": bbox, "zoom": 6}).json()
    assert body["kind"] == "clusters"
    assert sum(body["count"]) == body["total"] == len(_in_box(bbox))
    for count, by_religion, (x0, y0, x1, y1), lon, lat in zip(
        body["count"], body["by_religion"], body["bounds"], body["lon"], body["lat"], strict=True
    ):
        assert sum(by_religion.values()) == count
        assert x0 <= lon <= x1
        assert y0 <= lat <= y1


def test_each_cluster_is_its_cells_places_mean_count_bounds_and_religions(
    client, gb_import, clear_cache
):
    """Worked out here from the places themselves, grouped by grid cell in Python: every
    cluster's count, mean position, bounds, count per religion and most common religion."""
    bbox, zoom = "-3,51,0,53", 7
    cell = 360 / (2**zoom * 8)
    box = Polygon.from_bbox(tuple(float(v) for v in bbox.split(",")))
    cells: dict[tuple[int, int], list[tuple[float, float, str]]] = {}
    for point, religion in Place.objects.filter(
        status="active", location__intersects=box
    ).values_list("location", "religion"):
        key = (math.floor(point.y / cell), math.floor(point.x / cell))
        cells.setdefault(key, []).append((point.x, point.y, religion))
    body = client.get("/api/v1/viewport/", {"bbox": bbox, "zoom": zoom}).json()
    assert body["kind"] == "clusters"
    assert len(body["count"]) == len(cells) > 20
    for i, key in enumerate(sorted(cells)):  # the answer's order: by row, then column
        places = cells[key]
        xs, ys = [x for x, _, _ in places], [y for _, y, _ in places]
        assert body["count"][i] == len(places)
        assert body["lon"][i] == pytest.approx(sum(xs) / len(xs), abs=1e-6)
        assert body["lat"][i] == pytest.approx(sum(ys) / len(ys), abs=1e-6)
        assert body["bounds"][i] == [min(xs), min(ys), max(xs), max(ys)]
        per_religion = Counter(r for _, _, r in places)
        assert body["by_religion"][i] == dict(per_religion)
        top = min(per_religion, key=lambda r: (-per_religion[r], r))
        assert body["legend"][body["religion"][i]] == top


def test_binary_layout_matches_the_json(client, gb_import, clear_cache):
    as_json = client.get("/api/v1/viewport/", {"bbox": LONDON, "zoom": 12}).json()
    response = client.get(
        "/api/v1/viewport/",
        {"bbox": LONDON, "zoom": 12},
        HTTP_ACCEPT="application/vnd.places.viewport",
    )
    assert response["Content-Type"] == "application/vnd.places.viewport"
    decoded = _decode_binary(response.content)
    assert decoded["kind"] == 0
    assert decoded["first"].tolist() == as_json["ids"]
    assert np.allclose(decoded["lon"], as_json["lon"], atol=1e-5)
    assert np.allclose(decoded["lat"], as_json["lat"], atol=1e-5)
    assert decoded["religion"].tolist() == as_json["religion"]
    clusters = _decode_binary(
        client.get(
            "/api/v1/viewport/", {"bbox": "-6,49.8,2,56", "zoom": 6, "format": "bin"}
        ).content
    )
    assert clusters["kind"] == 1
    assert int(clusters["first"].sum()) == len(_in_box("-6,49.8,2,56"))


def test_binary_bodies_take_the_fast_gzip_level_and_json_the_small_one(
    client, gb_import, clear_cache
):
    """Float columns barely shrink at level 6, JSON does: the gzip header's XFL byte says
    which level wrote the body (4 fastest, 0 the default)."""
    params = {"bbox": LONDON, "zoom": 12}
    binary = client.get(
        "/api/v1/viewport/", {**params, "format": "bin"}, HTTP_ACCEPT_ENCODING="gzip"
    )
    as_json = client.get("/api/v1/viewport/", params, HTTP_ACCEPT_ENCODING="gzip")
    assert binary["Content-Encoding"] == as_json["Content-Encoding"] == "gzip"
    assert len(gzip.decompress(as_json.content)) < 64 * 1024  # small: sized by the rule
    assert binary.content[8] == 4
    assert as_json.content[8] == 0
    assert _decode_binary(gzip.decompress(binary.content))["kind"] == 0


def test_box_across_the_antimeridian_returns_both_sides(client, sample_regions, clear_cache):
    dataset = dataset_get_or_create(slug="viewport-pacific")
    for key, xy in {
        "nz": (174.78, -41.29),
        "chatham": (-176.5, -43.93),
        "hawaii": (-157.86, 21.31),
    }.items():
        place_create(dataset=dataset, source_key=key, data={"name": key, "location": Point(*xy)})
    # the New Zealand + Chatham Islands box, at a zoom that shows it on one screen
    body = client.get(
        "/api/v1/viewport/", {"bbox": "170,-48,-175,-34", "zoom": 6, "dataset": "viewport-pacific"}
    ).json()
    assert body["kind"] == "clusters"
    assert sum(body["count"]) == 2
    assert sorted(lon > 0 for lon in body["lon"]) == [False, True]


def test_an_edit_is_visible_in_the_next_response(client, gb_import, clear_cache):
    params = {"bbox": LONDON, "zoom": 12}
    first = client.get("/api/v1/viewport/", params)
    assert (
        client.get("/api/v1/viewport/", params, HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 304
    )
    place = Place.objects.get(pk=first.json()["ids"][0])
    place_update(place=place, data={"location": Point(-10.5, 40.0)})  # moved out of the box
    second = client.get("/api/v1/viewport/", params, HTTP_IF_NONE_MATCH=first["ETag"])
    assert second.status_code == 200
    assert place.pk not in second.json()["ids"]


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"bbox": "1,2,3", "zoom": 5}, "bbox"),
        ({"bbox": "0,95,1,96", "zoom": 5}, "bbox"),
        ({"bbox": LONDON}, "zoom"),
        ({"bbox": LONDON, "zoom": 23}, "zoom"),
        ({"bbox": LONDON, "zoom": "x"}, "zoom"),
        ({"bbox": LONDON, "zoom": 5, "format": "xml"}, "format"),
        ({"bbox": LONDON, "zoom": 5, "religion": "jedi"}, "religion"),
    ],
)
def test_bad_viewport_requests_are_a_400_naming_the_parameter(client, params, name):
    response = client.get("/api/v1/viewport/", params)
    assert response.status_code == 400
    assert name in response.json()


def test_box_too_large_for_its_zoom_is_a_400(client):
    response = client.get("/api/v1/viewport/", {"bbox": "10,0,-10,1", "zoom": 12})
    assert response.status_code == 400
    assert "too large" in response.json()["bbox"][0]


def test_box_edge_is_exact_not_rounded(client, sample_regions, clear_cache):
    # given a place a hair east of the box's eastern edge (float4 boxes would round it in)
    dataset = dataset_get_or_create(slug="viewport-edge")
    place_create(dataset=dataset, source_key="e1", data={"location": Point(10.0000001, 45.0)})
    body = client.get(
        "/api/v1/viewport/", {"bbox": "9.99,44.99,10,45.01", "zoom": 14, "dataset": "viewport-edge"}
    ).json()
    assert body["ids"] == []


def test_every_points_religion_code_names_its_places_religion(client, sample_regions, clear_cache):
    # given a place of each religion of the legend, and one whose value is not in it (a row
    # written before the vocabulary changed, say)
    dataset = dataset_get_or_create(slug="viewport-religions")
    religions = {f"r{i}": value for i, value in enumerate(Religion.values)}
    for i, (key, value) in enumerate(religions.items()):
        place_create(
            dataset=dataset,
            source_key=key,
            data={"religion": value, "location": Point(30.0 + i * 0.001, 10.0)},
        )
    stray = place_create(dataset=dataset, source_key="stray", data={"location": Point(30.05, 10)})
    with connection.cursor() as cursor:
        cursor.execute("UPDATE places_place SET religion = 'jedi' WHERE id = %s", [stray.pk])
    expected = {
        place.pk: place.religion if place.religion in Religion.values else Religion.UNKNOWN
        for place in Place.objects.filter(dataset=dataset)
    }
    params = {"bbox": "29.9,9.9,30.1,10.1", "zoom": 14, "dataset": "viewport-religions"}
    # then each point's code, in JSON and in binary, is its place's religion in the legend
    as_json = client.get("/api/v1/viewport/", params).json()
    decoded = _decode_binary(client.get("/api/v1/viewport/", {**params, "format": "bin"}).content)
    assert as_json["kind"] == "points"
    assert decoded["kind"] == 0
    for ids, body in ((as_json["ids"], as_json), (decoded["first"], decoded)):
        got = {
            int(pk): body["legend"][code] for pk, code in zip(ids, body["religion"], strict=True)
        }
        assert got == expected
    assert sorted(expected.values()).count(Religion.UNKNOWN) == 2


@pytest.mark.parametrize(
    ("extra", "accept", "content_type"),
    [
        ({"format": "bin"}, "application/vnd.places.viewport", "application/json"),
        ({}, "application/vnd.places.viewport", "application/json"),
        ({"format": "json"}, "", "application/json"),
        # a browser asking for HTML gets DRF's browsable page of the error
        ({}, "text/html", "text/html"),
    ],
)
def test_a_refused_view_is_a_400_in_a_form_the_client_can_read(
    client, sample_regions, extra, accept, content_type
):
    params = {"bbox": "1,2,3", "zoom": 5, **extra}
    response = client.get("/api/v1/viewport/", params, HTTP_ACCEPT=accept)
    assert response.status_code == 400
    assert response["Content-Type"].startswith(content_type)
    assert b"bbox" in response.content
    # and the NUL guard's refusal, raised before the view runs, is a 400 naming its field
    nul = client.get("/api/v1/viewport/?bbox=1,2,3,4&zoom=5&dataset=%00", HTTP_ACCEPT=accept)
    assert nul.status_code == 400
    assert b"dataset" in nul.content


def test_with_debug_on_an_error_in_a_view_is_raised_as_itself(
    client, sample_regions, clear_cache, settings, monkeypatch
):
    # DRF reads the request's renderer before it re-raises, with DEBUG on: negotiated then
    settings.DEBUG = True

    def broken(**kwargs):
        raise RuntimeError("the view's own error")

    monkeypatch.setattr(viewport_module, "viewport_query", broken)
    with pytest.raises(RuntimeError, match="the view's own error"):
        client.get("/api/v1/viewport/", {"bbox": "29.9,9.9,30.1,10.1", "zoom": 14})


def _prepared_points_statements() -> list[tuple[int, int]]:
    """(generic plans, custom plans) of each points statement prepared on this connection."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE NOT from_sql AND statement LIKE %s",
            ["%string_agg(%places_place%"],
        )
        return cursor.fetchall()


def _places_on_a_line(slug: str, n: int = 40) -> None:
    dataset = dataset_get_or_create(slug=slug)
    for i in range(n):
        location = Point(40 + i * 0.01, 5)
        place_create(dataset=dataset, source_key=f"p{i}", data={"location": location})


def _view_of(client, n: int, **params) -> None:
    """The view of the first ``n`` places on the line: exactly those."""
    bbox = f"39.995,4.99,{40 + n * 0.01 - 0.005:.3f},5.01"
    body = client.get("/api/v1/viewport/", {"bbox": bbox, "zoom": 14, **params}).json()
    assert sorted(body["ids"]) == sorted(_in_box(bbox))
    assert len(body["ids"]) == n


@override_settings(DB_PREPARED_STATEMENTS=True)
def test_a_plain_view_is_prepared_once_and_answers_every_box_exactly(
    client, sample_regions, clear_cache
):
    # given places on a line, and views each holding another number of them
    _places_on_a_line("viewport-prepared")
    before = _prepared_points_statements()
    # then each answer is that box's places
    for n in range(1, 9):
        _view_of(client, n)
    # and one statement served all eight (planned for each of the first five boxes at least;
    # after those, PostgreSQL takes its generic plan if it estimates it cheaper)
    [(generic, custom)] = [s for s in _prepared_points_statements() if s not in before]
    assert generic + custom == 8
    assert custom >= 5
    # and the generic plan, whenever PostgreSQL takes it, answers each box exactly too
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
    for n in range(9, 13):
        _view_of(client, n)
    [(generic_after, _)] = [s for s in _prepared_points_statements() if s not in before]
    assert generic_after == generic + 4
    # and a view of any status is a box alone too: a statement of its own
    _view_of(client, 3, status="any")
    assert len(_prepared_points_statements()) == len(before) + 2
    # while Django's own queries on that connection are never prepared, nor counted
    assert connection.connection.prepare_threshold is None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement NOT LIKE %s",
            ["%string_agg(%"],
        )
        assert cursor.fetchone() == (0,)


@override_settings(DB_PREPARED_STATEMENTS=True)
def test_the_prepared_statement_outlives_a_rolled_back_savepoint_and_an_error(
    client, sample_regions, clear_cache
):
    _places_on_a_line("viewport-prepared-rollbacks")
    _view_of(client, 2)
    prepared = _prepared_points_statements()
    # when a savepoint is rolled back on the connection (Django sends ROLLBACK TO SAVEPOINT
    # through a cursor, which psycopg does not look at), and a statement fails in another
    with transaction.atomic():
        Place.objects.filter(source_key="p0").update(name="for a moment")
        transaction.set_rollback(True)
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT 1 / 0")
    # then the same statement still answers, and is the only one
    _view_of(client, 3)
    [(generic, custom)] = _prepared_points_statements()
    assert generic + custom == sum(g + c for g, c in prepared) + 1
    assert connection.connection.prepare_threshold is None


@override_settings(DB_PREPARED_STATEMENTS=True)
def test_a_filtered_view_is_planned_for_its_values_each_time(client, sample_regions, clear_cache):
    # given a place, viewed with a filter (a name, a religion) as well as the box
    dataset = dataset_get_or_create(slug="viewport-unprepared")
    place = {"location": Point(41, 6), "name": "Abbey", "religion": "christian"}
    place_create(dataset=dataset, source_key="u1", data=place)
    before = _prepared_points_statements()
    for params in ({"religion": "christian"}, {"q": "abbey"}, {"dataset": "viewport-unprepared"}):
        body = client.get("/api/v1/viewport/", {"bbox": "40.9,5.9,41.1,6.1", "zoom": 14, **params})
        assert body.status_code == 200
        assert body.json()["total"] == 1
    # then none of those statements was prepared
    assert _prepared_points_statements() == before


@override_settings(DB_PREPARED_STATEMENTS=False)
def test_with_prepared_statements_off_a_plain_view_prepares_nothing(
    client, sample_regions, clear_cache
):
    # (behind a transaction pool that would lend the prepared statement's session to others)
    _places_on_a_line("viewport-unprepared-plain")
    before = _prepared_points_statements()
    for n in (1, 5, 9):
        _view_of(client, n)
    assert _prepared_points_statements() == before


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (PlaceQuery(bbox=BBox(1, 1, 2, 2)), True),
        (PlaceQuery(bbox=BBox(1, 1, 2, 2), status=None), True),
        (PlaceQuery(bbox=BBox(170, 1, -170, 2)), True),
        (PlaceQuery(), False),
        (PlaceQuery(bbox=BBox(1, 1, 2, 2), religion="sikh"), False),
        (PlaceQuery(bbox=BBox(1, 1, 2, 2), dataset_ids=(3,)), False),
        (PlaceQuery(bbox=BBox(1, 1, 2, 2), q="abbey"), False),
    ],
)
def test_only_a_box_of_any_status_makes_a_statement_prepared(query, expected):
    assert viewport_module.box_only(query) is expected

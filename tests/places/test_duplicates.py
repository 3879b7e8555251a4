"""Likely duplicates: found in SQL on the sample data, kept across runs, decided by curators."""

from __future__ import annotations

import csv
import gzip
from collections import defaultdict
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.contrib.gis.geos import MultiPolygon, Point, Polygon

from ingestion.services.imports import import_job_execute
from ingestion.services.jobs import import_job_create
from places import tasks
from places.models import Dataset, DuplicateCandidate, DuplicateStatus, Place, PlaceStatus
from places.services import (
    dataset_get_or_create,
    duplicate_mark_not_duplicate,
    duplicates_find,
    duplicates_find_for_job,
    place_create,
    place_merge,
    place_update,
)
from tests.conftest import GB_CSV, LONDON_SHP

pytestmark = pytest.mark.django_db


def _pairs(dataset: Dataset | None = None, reason: str | None = None) -> set[frozenset[str]]:
    """Open pairs as sets of source keys (of ``dataset``'s places, with ``reason``)."""
    qs = DuplicateCandidate.objects.select_related("place_a", "place_b")
    if dataset is not None:
        qs = qs.filter(dataset_a=dataset, dataset_b=dataset)
    if reason is not None:
        qs = qs.filter(reasons__contains=[reason])
    return {frozenset((c.place_a.source_key, c.place_b.source_key)) for c in qs}


def _gb_rows_sharing_coordinates() -> set[frozenset[str]]:
    """From the file itself: pairs of rows (distinct keys) at exactly the same point."""
    at: dict[tuple[str, str], set[str]] = defaultdict(set)
    with gzip.open(GB_CSV, "rt", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            at[(row["lon"], row["lat"])].add(f"osm:{row['osm_type']}/{row['osm_id']}")
    return {
        frozenset((a, b))
        for keys in at.values()
        for a in keys
        for b in keys
        if a < b  # the same key twice in the file is one place (staging rejects the repeat)
    }


def _place(dataset: Dataset, key: str, lon: float, lat: float, **data) -> Place:
    return place_create(dataset=dataset, source_key=key, data={"location": Point(lon, lat), **data})


def test_gb_rows_sharing_exact_coordinates_are_proposed(gb_import):
    # given the GB sample, imported through the real pipeline
    expected = _gb_rows_sharing_coordinates()
    assert len(expected) >= 5

    # when the finder's task looks at every place, twice (it is idempotent)
    first = tasks.duplicates_find()
    second = tasks.duplicates_find()

    # then every pair of GB rows at one point is proposed, with that reason
    assert first == second
    assert first["stored"] >= len(expected)
    assert _pairs(gb_import.dataset, "exact_coordinates") == expected
    # and a pair named alike scores higher than one whose names differ
    scores = {
        frozenset((c.place_a.source_key, c.place_b.source_key)): c.score
        for c in DuplicateCandidate.objects.select_related("place_a", "place_b")
    }
    alike = frozenset(("osm:node/401670779", "osm:node/825294733"))  # Buckminster Road Baptist
    unlike = frozenset(("osm:node/13803264702", "osm:way/112072560"))  # mosque / former school
    assert scores[alike] > scores[unlike]


def test_london_points_inside_polygons_of_the_same_building_are_proposed(sample_regions):
    # given the London file's points and polygons (both layers), imported
    job = import_job_execute(
        job_id=import_job_create(
            path=LONDON_SHP, dataset=dataset_get_or_create(slug="london-dups")
        ).pk
    )
    london = job.dataset

    # when the finder looks at the places of that import
    duplicates_find_for_job(job_id=job.pk)

    # then the point/polygon pairs of one building are proposed
    inside = _pairs(london, "point_in_footprint")
    same_building = {
        frozenset(("osm:area/492655653", "osm:node/5363970224")),  # Havering Road Methodist
        frozenset(("osm:area/122875352", "osm:node/746268444")),  # Oxlow Lane Baptist
        frozenset(("osm:area/97388305", "osm:node/4792432862")),  # Wallington Baptist
        frozenset(("osm:area/416334479", "osm:node/4118984890")),  # Welsh Church
        frozenset(("osm:area/124101513", "osm:node/596548532")),  # St Vincent's, Becontree
    }
    assert same_building <= inside
    # and each of them really is a point inside the other's footprint
    for candidate in DuplicateCandidate.objects.filter(
        dataset_a=london, dataset_b=london, reasons__contains=["point_in_footprint"]
    ).select_related("place_a", "place_b"):
        a, b = candidate.place_a, candidate.place_b
        assert (a.footprint and a.footprint.intersects(b.location)) or (
            b.footprint and b.footprint.intersects(a.location)
        )
    # but a chapel inside a synagogue's footprint is not (religions differ)
    assert frozenset(("osm:area/99847224", "osm:node/5762497431")) not in inside


def test_near_places_with_similar_names_ignoring_accents_are_proposed_within_their_kind():
    # given pairs of places 60 m apart: names alike (accents aside), or not; a shrine's
    # reach is shorter than that, a church's longer
    one, other = dataset_get_or_create(slug="dups-a"), dataset_get_or_create(slug="dups-b")
    _place(one, "c1", 10.0, 40.0, name="São Tomé Church", religion="christian")
    _place(other, "c2", 10.0, 40.00054, name="Sao Tome church", religion="christian")
    _place(one, "m1", 11.0, 40.0, name="São Tomé", religion="christian")
    _place(other, "m2", 11.0, 40.00054, name="Sao Tome", religion="muslim")
    _place(one, "d1", 12.0, 40.0, name="Holy Trinity", religion="christian")
    _place(other, "d2", 12.0, 40.00054, name="Al-Noor Mosque", religion="unknown")
    shrine = {"historic": "wayside_shrine"}
    _place(one, "s1", 13.0, 40.0, name="Wayside shrine", tags=shrine)
    _place(other, "s2", 13.0, 40.00054, name="Wayside shrine", tags=shrine)

    # when the finder runs
    duplicates_find(place_ids=list(Place.objects.filter(dataset=one).values_list("pk", flat=True)))

    # then only the church pair is proposed, with its distance and similarity
    assert _pairs(reason="near_similar_name") == {frozenset(("c1", "c2"))}
    pair = DuplicateCandidate.objects.get()
    assert 55 < pair.distance_m < 65
    assert pair.name_similarity > 0.5
    assert pair.dataset_a_id != pair.dataset_b_id


def test_the_same_source_key_in_two_datasets_is_proposed():
    # given one key in two datasets, far apart and named differently
    one, other = dataset_get_or_create(slug="dups-c"), dataset_get_or_create(slug="dups-d")
    a = _place(one, "osm:node/1", 1.0, 1.0, name="Chapel")
    _place(other, "osm:node/1", 3.0, 3.0, name="Something else")

    # when the finder looks at one of them
    duplicates_find(place_ids=[a.pk])

    # then the pair is proposed for its key
    assert _pairs(reason="same_source_key") == {frozenset(("osm:node/1",))}


def test_not_a_duplicate_is_remembered_and_a_rerun_changes_nothing_else(django_user_model):
    # given a proposed pair, marked "not a duplicate" by a curator
    data = dataset_get_or_create(slug="dups-e")
    a = _place(data, "x1", 5.0, 5.0, name="St Anne")
    b = _place(data, "x2", 5.0, 5.0, name="St Anne")
    duplicates_find(place_ids=[a.pk])
    pair = DuplicateCandidate.objects.get(place_a=a)
    curator = django_user_model.objects.create_superuser("dups-curator")
    duplicate_mark_not_duplicate(candidate=pair, user=curator)

    # when the finder looks at both again (twice), the places unchanged
    duplicates_find(place_ids=[a.pk, b.pk])
    duplicates_find(place_ids=[a.pk, b.pk])

    # then the pair stays decided and nothing new is proposed
    pair.refresh_from_db()
    assert pair.status == DuplicateStatus.NOT_DUPLICATE
    assert pair.decided_by == curator
    assert DuplicateCandidate.objects.filter(place_a__in=[a, b]).count() == 1


def test_an_open_pair_no_longer_found_is_dropped():
    # given a proposed pair
    data = dataset_get_or_create(slug="dups-f")
    a = _place(data, "y1", 6.0, 6.0, name="Bethel")
    b = _place(data, "y2", 6.0, 6.0, name="Bethel")
    duplicates_find(place_ids=[a.pk])
    assert DuplicateCandidate.objects.filter(place_a=a, place_b=b).exists()

    # when one of them moves away and the finder looks at it again
    place_update(place=b, data={"location": Point(7.0, 7.0)})
    duplicates_find(place_ids=[b.pk])

    # then the pair is no longer proposed
    assert not DuplicateCandidate.objects.filter(place_a=a, place_b=b).exists()


def test_an_import_is_followed_by_a_search_of_its_own_places_only(sample_regions, tmp_path: Path):
    # given two places at one point that no import touches, and an import that adds a place
    # at the point of a third
    data = dataset_get_or_create(slug="dups-g")
    untouched = [_place(data, k, 8.0, 8.0, name="Zion") for k in ("u1", "u2")]
    _place(data, "t1", -0.2, 51.45, name="Bethesda Chapel")
    file = tmp_path / "new.csv"
    file.write_text("id,name,religion,lon,lat\nt2,Bethesda Chapel,christian,-0.2,51.45\n")
    job = import_job_execute(job_id=import_job_create(path=file, dataset=data).pk)

    # when the task for that job runs (twice: it is idempotent)
    first = tasks.duplicates_find_for_job(job.pk)
    second = tasks.duplicates_find_for_job(job.pk)

    # then the new place's pair is found, and the untouched pair was not looked at
    assert first == second == {"stored": 1, "dropped": 0, "places": 1}
    assert _pairs(data) == {frozenset(("t1", "t2"))}
    assert not DuplicateCandidate.objects.filter(place_a__in=untouched).exists()


def test_a_footprint_reaches_as_far_as_its_size():
    # given a large footprint and a point of the same name outside it, past a church's reach
    data = dataset_get_or_create(slug="dups-h")
    square = MultiPolygon(Polygon.from_bbox((20.0, 50.0, 20.004, 50.003)))  # ~285 x 330 m
    _place(data, "big", 20.002, 50.0015, name="Great Minster", footprint=square)
    near = _place(data, "gate", 20.0045, 50.0015, name="Great Minster")  # outside, ~180 m
    # when the finder looks at the point
    duplicates_find(place_ids=[near.pk])
    # then the footprint's size makes them near
    assert _pairs(data) == {frozenset(("big", "gate"))}


def test_merged_pairs_are_not_proposed_again(django_user_model):
    # given a proposed pair, merged
    data = dataset_get_or_create(slug="dups-i")
    a = _place(data, "z1", 9.0, 9.0, name="Ebenezer")
    b = _place(data, "z2", 9.0, 9.0, name="Ebenezer")
    duplicates_find(place_ids=[a.pk])
    place_merge(survivor=a, merged=b, user=User.objects.create_superuser("dups-merger"), take=[])
    # when the finder looks at both again
    duplicates_find(place_ids=[a.pk, b.pk])
    # then the pair stays merged
    pair = DuplicateCandidate.objects.get(place_a=a, place_b=b)
    assert pair.status == DuplicateStatus.MERGED
    assert Place.objects.get(pk=b.pk).status == PlaceStatus.MERGED


def test_an_import_that_wrote_places_queues_the_search_of_them(
    sample_regions, tmp_path: Path, django_capture_on_commit_callbacks
):
    # given a file of one new place
    file = tmp_path / "one.csv"
    file.write_text("id,name,religion,lon,lat\nq1,Ebenezer,christian,-0.3,51.4\n")
    data = dataset_get_or_create(slug="dups-queue")

    # when it is imported (callbacks captured, not run: no task is sent)
    with django_capture_on_commit_callbacks() as callbacks:
        import_job_execute(job_id=import_job_create(path=file, dataset=data).pk)

    # then the search of its places is among what runs once the import commits
    assert any("duplicates_find_soon" in c.__qualname__ for c in callbacks)

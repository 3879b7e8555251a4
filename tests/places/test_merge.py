"""Merging duplicates: field by field, logged, redirected, undone, rights per dataset, and
re-imports of a merged-away key that update the survivor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.gis.geos import Point
from django.core.exceptions import PermissionDenied
from django.test import Client

from ingestion.edge import selectors as edge_selectors
from ingestion.models import ImportMode
from ingestion.services.imports import import_job_execute
from ingestion.services.jobs import import_job_create
from places.geo import BBox
from places.models import (
    ChangeOperation,
    Dataset,
    DuplicateCandidate,
    DuplicateStatus,
    Place,
    PlaceChange,
    PlaceStatus,
    SecurityEvent,
)
from places.selectors import data_version
from places.services import (
    RevertConflict,
    dataset_get_or_create,
    duplicates_find,
    place_create,
    place_merge,
    place_merge_undo,
    place_update,
)
from places.services.access import dataset_role_grant
from tests.ingestion.edge.factories import region_make

pytestmark = pytest.mark.django_db


def _place(dataset: Dataset, key: str, lon: float = 4.0, lat: float = 45.0, **data) -> Place:
    return place_create(dataset=dataset, source_key=key, data={"location": Point(lon, lat), **data})


@pytest.fixture
def admin_user() -> User:
    return User.objects.create_superuser("merge-admin")


def _curator(name: str, *datasets: Dataset) -> User:
    user = User.objects.create_user(name)
    for dataset in datasets:
        dataset_role_grant(user=user, dataset=dataset, role="curator")
    return user


def test_a_merge_keeps_chosen_values_logs_every_step_and_is_a_security_event(admin_user):
    # given two records of one chapel, each with something the other lacks
    data = dataset_get_or_create(slug="merge-a")
    keep = _place(data, "k", name="Ebenezer", religion="christian", start_date_raw="1850")
    gone = _place(data, "g", 4.0001, 45.0, name="Ebenezer Chapel", denominations=["baptist"])

    # when a curator merges, taking the name and denominations of the other
    pair = place_merge(survivor=keep, merged=gone, take=["name", "denominations"], user=admin_user)

    # then the survivor has the chosen values and kept its own others
    keep.refresh_from_db()
    gone.refresh_from_db()
    assert (keep.name, keep.denominations, keep.start_date_raw) == (
        "Ebenezer Chapel",
        ["baptist"],
        "1850",
    )
    assert keep.location == Point(4.0, 45.0, srid=4326)
    # and the other is merged into it, its own values untouched
    assert (gone.status, gone.merged_into_id, gone.name) == (
        PlaceStatus.MERGED,
        keep.pk,
        "Ebenezer Chapel",
    )
    # and both steps are merge changes by the curator, recorded on the pair
    logged = PlaceChange.objects.filter(seq__in=pair.merge_changes)
    assert {(c.place_id, c.operation, c.user_id) for c in logged} == {
        (keep.pk, ChangeOperation.MERGE, admin_user.pk),
        (gone.pk, ChangeOperation.MERGE, admin_user.pk),
    }
    assert set(logged.get(place=keep).changes) == {"name", "denominations"}
    assert pair.status == DuplicateStatus.MERGED
    assert pair.survivor_id == keep.pk
    # and the security trail has the merge
    event = SecurityEvent.objects.filter(kind="merge").latest("id")
    assert event.details["survivor"] == keep.pk
    assert event.details["merged"] == gone.pk
    assert event.details["fields_taken"] == ["denominations", "name"]


def test_a_merged_place_redirects_to_the_survivor_and_the_api_says_superseded_by(admin_user):
    # given a merged pair
    data = dataset_get_or_create(slug="merge-b")
    keep, gone = _place(data, "k", name="Zion"), _place(data, "g", name="Zion")
    place_merge(survivor=keep, merged=gone, user=admin_user)
    client = Client()

    # when the merged place is asked for, by the API and by its page
    api = client.get(f"/api/v1/places/{gone.pk}/")
    page = client.get(f"/places/{gone.pk}/")

    # then both answer a permanent redirect to the survivor
    assert api.status_code == page.status_code == 301
    assert api["Location"].endswith(f"/api/v1/places/{keep.pk}/")
    assert page["Location"] == f"/places/{keep.pk}/"
    # and the API's body says what superseded it
    assert api.json()["properties"]["superseded_by"] == keep.pk
    assert api.json()["properties"]["status"] == "merged"
    survivor = client.get(f"/api/v1/places/{keep.pk}/")
    assert survivor.status_code == 200
    assert survivor.json()["properties"]["superseded_by"] is None


def test_a_merge_moves_the_data_versions_so_caches_and_tiles_refresh(admin_user, clear_cache):
    # given a tile and the data version of a box around two duplicates
    data = dataset_get_or_create(slug="merge-c")
    keep = _place(data, "k", -0.1, 51.5, name="Bethel")
    gone = _place(data, "g", -0.1, 51.5, name="Bethel")
    box = BBox(-0.11, 51.49, -0.09, 51.51)
    tile = "/tiles/places/14/8187/5448.pbf"
    client = Client()
    etag = client.get(tile)["ETag"]
    before = data_version(bbox=box)

    # when they are merged
    place_merge(survivor=keep, merged=gone, user=admin_user)

    # then the version moved and the tile is built again
    assert data_version(bbox=box) != before
    assert client.get(tile, HTTP_IF_NONE_MATCH=etag).status_code == 200


def test_merging_a_survivor_points_earlier_merges_at_the_new_survivor(admin_user):
    data = dataset_get_or_create(slug="merge-d")
    first, second, third = (_place(data, k, name="Hope") for k in ("1", "2", "3"))
    place_merge(survivor=second, merged=first, user=admin_user)
    place_merge(survivor=third, merged=second, user=admin_user)
    # one hop: every merged place names a place that is not merged
    assert Place.objects.get(pk=first.pk).merged_into_id == third.pk
    assert Client().get(f"/places/{first.pk}/")["Location"] == f"/places/{third.pk}/"


def test_a_merge_is_undone_and_an_undo_is_refused_after_a_later_edit_unless_forced(admin_user):
    # given a merge that took the other's name
    data = dataset_get_or_create(slug="merge-e")
    keep = _place(data, "k", name="Salem")
    gone = _place(data, "g", name="Salem Chapel")
    pair = place_merge(survivor=keep, merged=gone, take=["name"], user=admin_user)

    # when it is undone
    place_merge_undo(candidate=pair, user=admin_user)

    # then both places are as they were, and the pair is open again
    keep.refresh_from_db()
    gone.refresh_from_db()
    assert (keep.name, keep.status) == ("Salem", PlaceStatus.ACTIVE)
    assert (gone.status, gone.merged_into_id) == (PlaceStatus.ACTIVE, None)
    pair.refresh_from_db()
    assert (pair.status, pair.merge_changes) == (DuplicateStatus.OPEN, [])
    assert SecurityEvent.objects.filter(kind="merge", details__undone=True).exists()

    # given the merge again, then a curator's later edit of the same field
    pair = place_merge(survivor=keep, merged=gone, take=["name"], user=admin_user)
    place_update(place=keep, data={"name": "Salem, renamed"}, user=admin_user)
    # when undone, it is refused, naming the field
    with pytest.raises(RevertConflict, match="name"):
        place_merge_undo(candidate=pair, user=admin_user)
    assert Place.objects.get(pk=gone.pk).status == PlaceStatus.MERGED
    # unless forced
    place_merge_undo(candidate=pair, user=admin_user, force=True)
    assert Place.objects.get(pk=gone.pk).status == PlaceStatus.ACTIVE


def test_merging_across_datasets_needs_the_merge_right_in_both():
    # given places in two datasets, a curator of one and a curator of both
    one, two = dataset_get_or_create(slug="merge-f1"), dataset_get_or_create(slug="merge-f2")
    a, b = _place(one, "a", name="Carmel"), _place(two, "b", name="Carmel")
    only_one, both = _curator("merge-one", one), _curator("merge-both", one, two)
    reviewer = User.objects.create_user("merge-reviewer")
    dataset_role_grant(user=reviewer, dataset=one, role="reviewer")
    dataset_role_grant(user=reviewer, dataset=two, role="reviewer")

    # when the curator of one dataset (or a reviewer of both) tries, it is refused
    for user in (only_one, reviewer):
        with pytest.raises(PermissionDenied):
            place_merge(survivor=a, merged=b, user=user)
    assert Place.objects.get(pk=b.pk).status == PlaceStatus.ACTIVE

    # and the curator of both may
    place_merge(survivor=a, merged=b, user=both)
    assert Place.objects.get(pk=b.pk).merged_into_id == a.pk


def test_the_admin_merge_page_merges_field_by_field_and_refuses_a_curator_of_one_dataset():
    # given a proposed pair across two datasets
    one, two = dataset_get_or_create(slug="merge-g1"), dataset_get_or_create(slug="merge-g2")
    a = _place(one, "a", name="St Luke", religion="christian")
    b = _place(two, "b", name="St Luke's Church", religion="christian", start_date_raw="1870")
    duplicates_find(place_ids=[a.pk])
    pair = DuplicateCandidate.objects.get(place_a=a, place_b=b)
    url = f"/admin/places/duplicatecandidate/{pair.pk}/merge/"
    only_one, viewer_of_other, both = Client(), Client(), Client()
    only_one.force_login(_curator("merge-page-one", one))
    half = _curator("merge-page-half", one)
    dataset_role_grant(user=half, dataset=two, role="viewer")
    viewer_of_other.force_login(half)
    both.force_login(_curator("merge-page-both", one, two))

    # when a curator of one dataset opens it, it is not found (they cannot see the other
    # place), and for a curator of one who views the other, it is refused
    assert only_one.get(url).status_code == 404
    assert only_one.post(url, {"survivor": "a", "decision": "merge"}).status_code == 404
    assert viewer_of_other.get(url).status_code == 403
    assert viewer_of_other.post(url, {"survivor": "a", "decision": "merge"}).status_code == 403
    assert Place.objects.get(pk=b.pk).status == PlaceStatus.ACTIVE

    # when a curator of both opens it, the differing fields are offered
    page = both.get(url)
    assert page.status_code == 200
    assert "start_date_raw" in page.content.decode()
    # and merging keeps the first, with the second's name
    done = both.post(
        url,
        {
            "survivor": "a",
            "decision": "merge",
            "take_name": "b",
            "take_start_date_raw": "b",
            "take_religion_raw": "a",
        },
    )
    assert done.status_code == 302
    a.refresh_from_db()
    assert (a.name, a.start_date_raw) == ("St Luke's Church", "1870")
    assert Place.objects.get(pk=b.pk).merged_into_id == a.pk
    # and the pair's page offers the undo, which works
    assert (
        "Undo merge"
        in both.get(f"/admin/places/duplicatecandidate/{pair.pk}/change/").content.decode()
    )
    both.post(f"/admin/places/duplicatecandidate/{pair.pk}/undo/")
    assert Place.objects.get(pk=b.pk).status == PlaceStatus.ACTIVE


def test_not_a_duplicate_from_the_merge_page_is_remembered():
    data = dataset_get_or_create(slug="merge-h")
    a, b = _place(data, "a", name="Elim"), _place(data, "b", name="Elim")
    duplicates_find(place_ids=[a.pk])
    pair = DuplicateCandidate.objects.get(place_a=a)
    client = Client()
    client.force_login(_curator("merge-h-curator", data))
    client.post(f"/admin/places/duplicatecandidate/{pair.pk}/merge/", {"decision": "not_duplicate"})
    duplicates_find(place_ids=[a.pk, b.pk])
    pair.refresh_from_db()
    assert pair.status == DuplicateStatus.NOT_DUPLICATE
    assert Place.objects.get(pk=b.pk).status == PlaceStatus.ACTIVE


# --- re-imports of a key merged away ---------------------------------------------------------


def _import(path: Path, dataset: Dataset, **kwargs):
    return import_job_execute(job_id=import_job_create(path=path, dataset=dataset, **kwargs).pk)


def _csv(path: Path, *rows: str) -> Path:
    path.write_text("id,name,religion,lon,lat\n" + "".join(f"{r}\n" for r in rows))
    return path


def test_a_reimport_of_a_merged_away_key_updates_the_survivor_and_never_resurrects_it(
    sample_regions, tmp_path, admin_user
):
    # given two rows of one chapel imported, then merged into the first
    data = dataset_get_or_create(slug="merge-reimport")
    _import(
        _csv(
            tmp_path / "1.csv", "k1,Bethany,christian,-1.5,52.5", "k2,Bethany,christian,-1.5,52.5"
        ),
        data,
    )
    keep = Place.objects.get(dataset=data, source_key="k1")
    gone = Place.objects.get(dataset=data, source_key="k2")
    place_merge(survivor=keep, merged=gone, user=admin_user)

    # when the source renames the merged-away row, and nothing else changes
    job = _import(
        _csv(
            tmp_path / "2.csv",
            "k1,Bethany,christian,-1.5,52.5",
            "k2,Bethany Chapel,christian,-1.5,52.5",
        ),
        data,
    )

    # then the survivor takes the new name, logged by the import with the key it came from
    keep.refresh_from_db()
    gone.refresh_from_db()
    assert keep.name == "Bethany Chapel"
    change = PlaceChange.objects.filter(place=keep).latest("seq")
    assert (change.import_job_id, change.changes["name"]["new"]) == (job.pk, "Bethany Chapel")
    assert "k2" in change.comment
    # and the merged place stays merged, unchanged but for the source values it remembers
    assert (gone.status, gone.merged_into_id, gone.name) == (PlaceStatus.MERGED, keep.pk, "Bethany")
    assert gone.source.source_values["name"] == "Bethany Chapel"
    assert Place.objects.filter(dataset=data).count() == 2
    # and the survivor keeps its own key's source values
    assert keep.source.source_values["name"] == "Bethany"

    # when the same file comes again, nothing is written
    again = _import(tmp_path / "2.csv", data)
    assert (again.added, again.updated) == (0, 0)
    assert Place.objects.get(pk=keep.pk).version == keep.version


def test_a_reimport_updates_a_survivor_in_another_dataset_and_a_snapshot_keeps_it(
    sample_regions, tmp_path, admin_user
):
    # given a place of an import merged into a curated place of another dataset
    curated = dataset_get_or_create(slug="merge-curated")
    keep = _place(curated, "own", -1.6, 52.6, name="Rehoboth")
    data = dataset_get_or_create(slug="merge-feed")
    _import(_csv(tmp_path / "1.csv", "f1,Rehoboth,christian,-1.6,52.6"), data)
    gone = Place.objects.get(dataset=data, source_key="f1")
    place_merge(survivor=keep, merged=gone, user=admin_user)

    # when a snapshot import changes the row's name
    job = _import(
        _csv(tmp_path / "2.csv", "f1,Rehoboth Chapel,christian,-1.6,52.6"),
        data,
        mode=ImportMode.SNAPSHOT,
    )

    # then the survivor in the other dataset is updated, logged in its own dataset
    keep.refresh_from_db()
    assert keep.name == "Rehoboth Chapel"
    change = PlaceChange.objects.filter(place=keep).latest("seq")
    assert (change.dataset_id, change.import_job_id) == (curated.pk, job.pk)
    assert Place.objects.get(pk=gone.pk).status == PlaceStatus.MERGED
    assert job.retired == 0


def test_a_snapshot_missing_a_survivors_own_key_keeps_it_while_a_merged_key_is_there(
    sample_regions, tmp_path, admin_user
):
    data = dataset_get_or_create(slug="merge-snapshot")
    _import(
        _csv(tmp_path / "1.csv", "s1,Siloam,christian,-1.7,52.7", "s2,Siloam,christian,-1.7,52.7"),
        data,
    )
    keep = Place.objects.get(dataset=data, source_key="s1")
    gone = Place.objects.get(dataset=data, source_key="s2")
    place_merge(survivor=keep, merged=gone, user=admin_user)

    # when the source drops the survivor's own row and keeps the merged one
    job = _import(
        _csv(tmp_path / "2.csv", "s2,Siloam,christian,-1.7,52.7"), data, mode=ImportMode.SNAPSHOT
    )

    # then the survivor stays active: the key it absorbed is still in the source
    assert job.retired == 0
    assert Place.objects.get(pk=keep.pk).status == PlaceStatus.ACTIVE


def test_two_rows_writing_one_survivor_apply_the_survivors_own_and_defer_the_other(
    sample_regions, tmp_path, admin_user
):
    # given a merge, then a file changing both the survivor's row and the merged one
    data = dataset_get_or_create(slug="merge-both-rows")
    _import(
        _csv(tmp_path / "1.csv", "b1,Shiloh,christian,-1.8,52.8", "b2,Shiloh,christian,-1.8,52.8"),
        data,
    )
    keep = Place.objects.get(dataset=data, source_key="b1")
    gone = Place.objects.get(dataset=data, source_key="b2")
    place_merge(survivor=keep, merged=gone, user=admin_user)
    changed = _csv(
        tmp_path / "2.csv",
        "b1,Shiloh Church,christian,-1.8,52.8",
        "b2,Shiloh Hall,christian,-1.8,52.8",
    )

    # when it is imported
    job = _import(changed, data)

    # then the survivor's own row wins, the other waits as a conflict
    assert Place.objects.get(pk=keep.pk).name == "Shiloh Church"
    assert job.report["conflicts"] == 1
    assert Place.objects.get(pk=gone.pk).status == PlaceStatus.MERGED
    # and the next import applies it
    _import(changed, data)
    assert Place.objects.get(pk=keep.pk).name == "Shiloh Hall"


# --- the edge change feed ----------------------------------------------------------------------


def test_the_edge_feed_turns_a_merge_into_a_tombstone_pointing_to_the_survivor(admin_user):
    # given two duplicates in a node's region (the feed's paging over committed changes is
    # tested in tests/ingestion/edge/test_changes.py; here, what it makes of a merge's)
    region = region_make()
    data = dataset_get_or_create(slug="merge-edge")
    keep = _place(data, "k", -2.5, 57.5, name="Bethel", region=region)
    gone = _place(data, "g", -2.5, 57.5, name="Bethel Chapel", region=region)

    # when a curator merges them, keeping the other's name
    pair = place_merge(survivor=keep, merged=gone, take=["name"], user=admin_user)

    # then the merge's changes become the survivor's new state and a tombstone naming it
    entries: dict[int, dict[str, Any]] = {}
    changes = list(PlaceChange.objects.filter(seq__in=pair.merge_changes).order_by("seq"))
    edge_selectors._apply(entries, changes, scope=edge_selectors._Scope.of(region))
    assert entries[gone.pk] == {
        "op": "delete",
        "id": gone.pk,
        "reason": "merged",
        "superseded_by": keep.pk,
    }
    assert (entries[keep.pk]["op"], entries[keep.pk]["place"]["name"]) == (
        "upsert",
        "Bethel Chapel",
    )


def test_the_list_shows_pairs_to_viewers_of_both_datasets_and_the_action_dismisses_them():
    # given a pair across two datasets, a viewer of one and a curator of both
    one, two = dataset_get_or_create(slug="merge-l1"), dataset_get_or_create(slug="merge-l2")
    a, b = _place(one, "a", name="Providence"), _place(two, "b", name="Providence")
    duplicates_find(place_ids=[a.pk])
    pair = DuplicateCandidate.objects.get(place_a=a, place_b=b)
    viewer = User.objects.create_user("merge-l-viewer")
    dataset_role_grant(user=viewer, dataset=one, role="viewer")
    looks, decides = Client(), Client()
    looks.force_login(viewer)
    decides.force_login(_curator("merge-l-curator", one, two))
    changelist = "/admin/places/duplicatecandidate/"
    row = f"/admin/places/duplicatecandidate/{pair.pk}/change/"

    # when each opens the list
    # then only the one who may view both datasets sees the pair
    assert row not in looks.get(changelist).content.decode()
    assert row in decides.get(changelist).content.decode()

    # when the curator marks it "not a duplicate" from the list
    decides.post(
        changelist, {"action": "mark_not_duplicate", "_selected_action": [pair.pk], "index": 0}
    )

    # then it is remembered
    pair.refresh_from_db()
    assert pair.status == DuplicateStatus.NOT_DUPLICATE

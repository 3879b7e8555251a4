"""Every write path logs old → new per field with its author; reverts and restores go back
through the log, are logged themselves and move the data versions like any edit."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest
from django.contrib.gis.geos import MultiPolygon, Point, Polygon
from django.db import connection

from ingestion.models import ImportMode
from ingestion.services.imports import import_job_execute
from ingestion.services.jobs import import_job_create
from places.models import DataVersion, Place, PlaceChange, Region, SecurityEvent
from places.selectors import data_version
from places.services import (
    HistoryError,
    RevertConflict,
    change_revert,
    dataset_get_or_create,
    place_create,
    place_restore,
    place_retire,
    place_unretire,
    place_update,
    places_retire,
    region_save,
)
from tests.conftest import FIXTURES
from tests.places.synthetic_regions import load_all

pytestmark = pytest.mark.django_db


@pytest.fixture
def place(admin_user) -> Place:
    dataset = dataset_get_or_create(slug="history")
    return place_create(
        dataset=dataset,
        source_key="h1",
        data={"name": "St Anne", "religion": "christian", "location": Point(-1, 52)},
        user=admin_user,
    )


def _at(place: Place, version: int) -> PlaceChange:
    return PlaceChange.objects.get(place=place, place_version=version)


def _latest(place: Place) -> PlaceChange:
    return PlaceChange.objects.filter(place=place).latest("seq")


def _import(path: Path, slug: str, **kwargs):
    dataset = dataset_get_or_create(slug=slug)
    return import_job_execute(job_id=import_job_create(path=path, dataset=dataset, **kwargs).pk)


# Every write path: old and new per field, and who wrote it.


def test_curator_edit_logs_old_and_new_and_the_curator(place, admin_user):
    place_update(place=place, data={"name": "St Anne's", "religion": "other"}, user=admin_user)
    change = _latest(place)
    assert (change.operation, change.source, change.user) == ("update", "user", admin_user)
    assert change.changes == {
        "name": {"old": "St Anne", "new": "St Anne's"},
        "religion": {"old": "christian", "new": "other"},
    }


def test_device_edit_logs_old_and_new_and_the_device(place):
    place_update(place=place, data={"name": "From the field"}, device_id="edge-7")
    change = _latest(place)
    assert (change.source, change.device_id, change.user) == ("device", "edge-7", None)
    assert change.changes == {"name": {"old": "St Anne", "new": "From the field"}}


def test_retirement_logs_status_end_date_reason_and_curator(place, admin_user):
    place_retire(place=place, user=admin_user, end_date=dt.date(2020, 5, 1), comment="demolished")
    change = _latest(place)
    assert (change.operation, change.user, change.comment) == ("retire", admin_user, "demolished")
    assert change.changes == {
        "status": {"old": "active", "new": "retired"},
        "end_date": {"old": None, "new": "2020-05-01"},
    }


def test_retiring_many_places_logs_each_with_the_reason_and_skips_inactive_ones(place, admin_user):
    # given an active place with an end date already, and a retired one
    dated = place_create(
        dataset=place.dataset,
        source_key="h2",
        data={"location": Point(-1, 53), "end_date": dt.date(2019, 1, 1)},
    )
    retired = place_create(dataset=place.dataset, source_key="h3", data={"location": Point(0, 52)})
    place_retire(place=retired)
    before = data_version(dataset_ids=[place.dataset_id])
    # when all three are retired at once
    count = places_retire(
        place_ids=[place.pk, dated.pk, retired.pk], user=admin_user, comment="closed"
    )
    # then the two active ones are, each logged with old and new, the curator and the reason
    assert count == 2
    logged = {
        c.place_id: c for c in PlaceChange.objects.filter(operation="retire", comment="closed")
    }
    assert set(logged) == {place.pk, dated.pk}
    today = dt.date.today().isoformat()
    assert logged[place.pk].changes == {
        "status": {"old": "active", "new": "retired"},
        "end_date": {"old": None, "new": today},
    }
    assert logged[dated.pk].changes == {"status": {"old": "active", "new": "retired"}}
    assert {(c.user, c.source, c.place_version) for c in logged.values()} == {
        (admin_user, "user", 2)
    }
    assert data_version(dataset_ids=[place.dataset_id]) != before
    # and each retirement can be undone
    place_unretire(place=place, user=admin_user)
    place.refresh_from_db()
    assert (place.status, place.end_date) == ("active", None)


def test_import_update_logs_old_and_new_and_its_job_and_a_curator_reverts_it(
    sample_regions, tmp_path, admin_user
):
    # given an imported file, then a changed one renaming p9
    slug = f"hist-import-{uuid.uuid4().hex[:6]}"
    _import(FIXTURES / "nasty_places.csv", slug)
    changed = tmp_path / "changed.csv"
    changed.write_text(
        (FIXTURES / "nasty_places.csv").read_text(encoding="utf-8").replace("Druid grove", "Grove"),
        encoding="utf-8",
    )
    second = _import(changed, slug)
    p9 = Place.objects.get(dataset=second.dataset, source_key="p9")
    change = _latest(p9)
    # then the log names the job and both values
    assert (change.operation, change.source, change.import_job_id, change.user) == (
        "update",
        "import",
        second.pk,
        None,
    )
    assert change.changes == {"name": {"old": "Druid grove", "new": "Grove"}}
    # when a curator reverts the import's change
    revert = change_revert(change, user=admin_user)
    # then the old name is back, and re-importing the same file leaves the curator's value
    p9.refresh_from_db()
    assert p9.name == "Druid grove"
    assert (revert.reverts, revert.user) == (change, admin_user)
    again = _import(changed, slug)
    assert again.updated == 0
    p9.refresh_from_db()
    assert p9.name == "Druid grove"


def test_snapshot_retirement_is_logged_by_its_job_and_can_be_undone(
    sample_regions, tmp_path, admin_user
):
    # given a snapshot import, then one whose file lacks p9
    slug = f"hist-snapshot-{uuid.uuid4().hex[:6]}"
    _import(FIXTURES / "nasty_places.csv", slug, mode=ImportMode.SNAPSHOT)
    lines = (FIXTURES / "nasty_places.csv").read_text(encoding="utf-8").splitlines()
    without_p9 = tmp_path / "without_p9.csv"
    without_p9.write_text("\n".join(x for x in lines if not x.startswith("p9,")) + "\n")
    second = _import(without_p9, slug, mode=ImportMode.SNAPSHOT)
    p9 = Place.objects.get(dataset=second.dataset, source_key="p9")
    retirement = _latest(p9)
    assert (p9.status, retirement.operation, retirement.source) == ("retired", "retire", "import")
    assert retirement.import_job_id == second.pk
    assert retirement.changes["status"] == {"old": "active", "new": "retired"}
    # when a curator undoes the retirement
    undo = place_unretire(place=p9, user=admin_user)
    # then the place is active again without the end date the import gave it
    p9.refresh_from_db()
    assert (p9.status, p9.end_date) == ("active", None)
    assert (undo.operation, undo.reverts, undo.user) == ("revert", retirement, admin_user)


def test_region_reassignment_is_logged_by_the_system_and_can_be_reverted(tmp_path, admin_user):
    # given synthetic districts and a place in West Vale's southern strip
    load_all(tmp_path)
    west = Region.objects.get(code_system__startswith="test-", code="TD1")
    dataset = dataset_get_or_create(slug="hist-regions")
    place = place_create(dataset=dataset, source_key="r1", data={"location": Point(-29.5, -43.5)})
    assert place.region == west
    # when West Vale gives that strip up
    west.geom = MultiPolygon(Polygon.from_bbox((-30, -43, -29, -40)))
    region_save(region=west)
    place.refresh_from_db()
    change = _latest(place)
    # then the reassignment is logged by the system with old and new region
    assert (change.source, change.user) == ("system", None)
    assert change.changes["region_id"] == {"old": west.pk, "new": place.region_id}
    # and a curator may put the place back in West Vale by reverting it
    change_revert(change, user=admin_user)
    place.refresh_from_db()
    assert place.region == west


# Revert.


def test_revert_writes_back_only_the_fields_the_change_touched(place, admin_user):
    # given a rename, then a change of religion
    place_update(place=place, data={"name": "Wrong name"})
    place_update(place=place, data={"religion": "other"})
    renamed = _at(place, 2)
    # when the rename is reverted
    revert = change_revert(renamed, user=admin_user)
    # then the name is back and the later religion stays
    place.refresh_from_db()
    assert (place.name, place.religion, place.version) == ("St Anne", "other", 4)
    assert (revert.operation, revert.source, revert.user) == ("revert", "user", admin_user)
    assert revert.reverts == renamed
    assert revert.place_version == 4
    assert revert.changes == {"name": {"old": "Wrong name", "new": "St Anne"}}
    assert revert.comment == f"revert of change #{renamed.seq}"
    # and the security audit trail has it
    event = SecurityEvent.objects.get(kind="revert", details__change=revert.seq)
    assert (event.user, event.dataset_id) == (admin_user, place.dataset_id)
    assert event.details["reverts"] == renamed.seq


def test_revert_is_refused_naming_the_fields_a_later_change_touched(place, admin_user):
    # given two renames
    place_update(place=place, data={"name": "First"})
    place_update(place=place, data={"name": "Second", "religion": "other"})
    first, second = _at(place, 2), _at(place, 3)
    logged = PlaceChange.objects.count()
    # when the first is reverted
    with pytest.raises(RevertConflict) as refused:
        change_revert(first, user=admin_user)
    # then nothing is written and the message names the field and the later change
    assert f"name (by change #{second.seq})" in str(refused.value)
    assert refused.value.later == {"name": [second.seq]}
    assert PlaceChange.objects.count() == logged
    place.refresh_from_db()
    assert place.name == "Second"


def test_forced_revert_overwrites_what_later_changes_wrote(place, admin_user):
    place_update(place=place, data={"name": "First"})
    place_update(place=place, data={"name": "Second"})
    revert = change_revert(_at(place, 2), user=admin_user, force=True)
    place.refresh_from_db()
    assert place.name == "St Anne"
    assert revert.changes == {"name": {"old": "Second", "new": "St Anne"}}


def test_a_creation_is_not_reverted(place, admin_user):
    with pytest.raises(HistoryError, match="retire the place instead"):
        change_revert(_at(place, 1), user=admin_user)


def test_reverting_a_revert_reapplies_the_change(place, admin_user):
    place_update(place=place, data={"name": "Renamed"})
    revert = change_revert(_at(place, 2), user=admin_user)
    again = change_revert(revert, user=admin_user)
    place.refresh_from_db()
    assert place.name == "Renamed"
    assert again.reverts == revert


def test_reverting_a_move_brings_back_the_location_and_its_regions(sample_regions, admin_user):
    # given a place moved from Westminster to Manchester
    dataset = dataset_get_or_create(slug="hist-move")
    place = place_create(
        dataset=dataset, source_key="m1", data={"location": Point(-0.1265, 51.5088)}
    )
    westminster = place.region
    place_update(place=place, data={"location": Point(-2.2426, 53.4808)})
    # when the move is reverted
    revert = change_revert(_at(place, 2), user=admin_user)
    # then the place is back where it was, in its district again
    place.refresh_from_db()
    assert place.location.equals_exact(Point(-0.1265, 51.5088, srid=4326), tolerance=1e-9)
    assert place.region == westminster
    assert set(revert.changes) == {"location", "region_id"}


# Restore and un-retire.


def test_restore_brings_back_the_place_as_of_an_earlier_version(place, admin_user):
    # given three later changes
    place_update(place=place, data={"name": "Second name"})
    place_update(place=place, data={"religion": "other", "denominations": ["x"]})
    place_update(place=place, data={"name": "Third name", "tags": {"k": "v"}})
    # when version 2 is restored
    restore = place_restore(place=place, version=2, user=admin_user)
    # then every field changed since takes its version-2 value
    place.refresh_from_db()
    assert (place.name, place.religion, place.denominations, place.tags) == (
        "Second name",
        "christian",
        [],
        {},
    )
    assert (restore.operation, restore.user, restore.reverts) == (
        "restore",
        admin_user,
        _at(place, 2),
    )
    assert set(restore.changes) == {"name", "religion", "denominations", "tags"}
    assert restore.comment == "restore of version 2"
    event = SecurityEvent.objects.get(kind="revert", details__change=restore.seq)
    assert event.details["operation"] == "restore"


def test_restore_refuses_a_version_that_is_not_earlier(place, admin_user):
    place_update(place=place, data={"name": "Second name"})
    with pytest.raises(HistoryError, match="cannot be restored"):
        place_restore(place=place, version=2, user=admin_user)
    with pytest.raises(HistoryError, match="cannot be restored"):
        place_restore(place=place, version=0, user=admin_user)


def test_unretire_reverts_the_retirement(place, admin_user):
    place_retire(place=place, user=admin_user, comment="closed")
    undo = place_unretire(place=place, user=admin_user)
    place.refresh_from_db()
    assert (place.status, place.end_date) == ("active", None)
    assert undo.reverts == _at(place, 2)
    assert undo.comment == f"undo of retirement #{_at(place, 2).seq}"


def test_unretire_of_an_active_place_is_refused(place, admin_user):
    with pytest.raises(HistoryError, match="is not retired"):
        place_unretire(place=place, user=admin_user)


def test_revert_and_restore_move_the_data_version(place, admin_user):
    # given a place's dataset version after a rename
    place_update(place=place, data={"name": "Renamed"})
    before = data_version(dataset_ids=[place.dataset_id])
    # when the rename is reverted, then the version moves
    change_revert(_at(place, 2), user=admin_user)
    after_revert = data_version(dataset_ids=[place.dataset_id])
    assert after_revert != before
    # and so it does for a restore
    place_restore(place=place, version=2, user=admin_user)
    assert data_version(dataset_ids=[place.dataset_id]) != after_revert


def test_the_edge_feed_turns_an_unretirement_into_an_upsert_of_the_reverted_place(admin_user):
    # The feed's reading of the log, without waiting for the server's transaction horizon
    # (the committed test below does the whole path when the server is quiet).
    from ingestion.edge.selectors import _apply, _Scope
    from tests.ingestion.edge.factories import region_make

    region = region_make()
    dataset = dataset_get_or_create(slug="hist-edge-apply")
    place = place_create(
        dataset=dataset,
        source_key="e1",
        data={"name": "Kirk", "location": Point(-2.5, 57.5), "region": region},
    )
    scope = _Scope.of(region)
    # the retirement reads as a tombstone
    place_retire(place=place, user=admin_user)
    gone: dict = {}
    _apply(gone, [_latest(place)], scope=scope)
    assert gone[place.pk]["op"] == "delete"
    # and its undo as the place again
    undo = place_unretire(place=place, user=admin_user)
    back: dict = {}
    _apply(back, [undo], scope=scope)
    assert (back[place.pk]["op"], back[place.pk]["place"]["name"]) == ("upsert", "Kirk")


@pytest.fixture
def committed(django_db_setup, django_db_blocker, settings):
    settings.EDGE_RATE = None
    with django_db_blocker.unblock():
        yield
        connection.close()


@pytest.mark.slow
def test_a_committed_revert_moves_the_dataset_version_and_reaches_the_edge_feed(committed):
    from tests.ingestion.edge.factories import node_make, region_make
    from tests.ingestion.edge.test_changes import _feed_caught_up, _pull

    # given an edge node whose region holds a renamed place, and the node's copy of it
    region = region_make()
    node = node_make(region=region)
    dataset = dataset_get_or_create(slug=f"hist-edge-{uuid.uuid4().hex[:8]}")
    place = place_create(
        dataset=dataset,
        source_key="e1",
        data={"name": "Kirk", "location": Point(-2.5, 57.5), "region": region},
    )
    place_update(place=place, data={"name": "Wrong kirk"})
    _feed_caught_up()
    copy: dict = {}
    cursor, _ = _pull(node, None, copy)
    version_before = DataVersion.objects.get(dataset=dataset).version
    # when the rename is reverted (and committed)
    change_revert(_at(place, 2), user=None)
    _feed_caught_up()
    # then the dataset's version moved and the node's next pull brings the old name back
    assert DataVersion.objects.get(dataset=dataset).version > version_before
    _cursor, seen = _pull(node, cursor, copy)
    assert [(e["op"], e["id"]) for e in seen] == [("upsert", place.pk)]
    assert copy[place.pk]["name"] == "Kirk"

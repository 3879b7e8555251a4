"""Merging happens only through the merge service: the place forms cannot set ``merged_into``
or the merged status, and the merge is offered to the roles that hold its permission
(curators and the admin role), not to contributors."""

from __future__ import annotations

import importlib
import json
from typing import Any

import pytest
from django.apps import apps as global_apps
from django.contrib.auth.models import Group, User
from django.contrib.gis.geos import Point
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.test import Client
from django.urls import reverse

from places.access import MERGE_PERMISSION, role_groups_sync
from places.models import Dataset, DuplicateCandidate, Place, PlaceChange, PlaceStatus
from places.services import dataset_get_or_create, duplicates_find, place_create, place_merge
from places.services.access import dataset_role_grant

pytestmark = pytest.mark.django_db

MIGRATION = importlib.import_module("ingestion.migrations.0013_merge_permission_for_roles")


def _place(dataset: Dataset, key: str, name: str) -> Place:
    return place_create(
        dataset=dataset, source_key=key, data={"name": name, "location": Point(4.0, 45.0)}
    )


def _user(name: str, role: str, *datasets: Dataset) -> User:
    user = User.objects.create_user(name)
    for dataset in datasets:
        dataset_role_grant(user=user, dataset=dataset, role=role)
    return user


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _change_form_post(client: Client, place: Place, **changes: Any) -> Any:
    """POST the place's change form as the browser sends it, with ``changes`` on top."""
    url = reverse("admin:places_place_change", args=[place.pk])
    form = client.get(url).context["adminform"].form
    data = {k: ("" if v is None else v) for k, v in form.initial.items()}
    data.update(
        {
            "location": place.location.wkt,
            "footprint": "",
            "denominations": ",".join(place.denominations),
            "tags": json.dumps(place.tags),
            "country": "",
            "region": "",
            "attributes-TOTAL_FORMS": "0",
            "attributes-INITIAL_FORMS": "0",
            **changes,
        }
    )
    return client.post(url, data)


# --- the place forms -----------------------------------------------------------------------------


def test_the_change_form_ignores_a_posted_merged_into_and_refuses_the_merged_status(
    admin_client,
):
    # given two active places of one dataset
    data = dataset_get_or_create(slug="form-merge")
    place, other = _place(data, "p", "Bethesda"), _place(data, "o", "Bethesda Chapel")

    # when a curator posts its change form with merged_into and status merged
    refused = _change_form_post(
        admin_client, place, status=PlaceStatus.MERGED, merged_into=str(other.pk)
    )
    # then the form is shown again with an error on the status, and nothing changed
    assert refused.status_code == 200
    assert "status" in refused.context["adminform"].form.errors
    place.refresh_from_db()
    assert (place.status, place.merged_into_id) == (PlaceStatus.ACTIVE, None)

    # when they post merged_into with an active status and a new name
    saved = _change_form_post(
        admin_client, place, name="Bethesda renamed", merged_into=str(other.pk)
    )
    # then the name is saved and merged_into is not, nor logged
    assert saved.status_code == 302, saved.context["adminform"].form.errors
    place.refresh_from_db()
    assert (place.name, place.status, place.merged_into_id) == (
        "Bethesda renamed",
        PlaceStatus.ACTIVE,
        None,
    )
    latest = PlaceChange.objects.filter(place=place).latest("seq")
    # (the save may also set the country from regions other tests left in the database)
    assert "name" in latest.changes
    assert not {"merged_into", "status"} & set(latest.changes)
    # and the page shows merged_into as text, with no input for it
    page = admin_client.get(reverse("admin:places_place_change", args=[place.pk]))
    assert 'name="merged_into"' not in page.content.decode()
    assert "merged_into" not in page.context["adminform"].form.fields


def test_a_merged_place_stays_merged_whatever_its_change_form_posts(admin_client, admin_user):
    # given a place merged into another by the merge service
    data = dataset_get_or_create(slug="form-unmerge")
    keep, gone = _place(data, "k", "Zoar"), _place(data, "g", "Zoar Chapel")
    place_merge(survivor=keep, merged=gone, user=admin_user)
    gone.refresh_from_db()

    # when its change form is posted with active status and no merged_into
    response = _change_form_post(admin_client, gone, status=PlaceStatus.ACTIVE, merged_into="")

    # then neither field is in the form, and the place is still merged into the survivor
    assert response.status_code == 302
    gone.refresh_from_db()
    assert (gone.status, gone.merged_into_id) == (PlaceStatus.MERGED, keep.pk)
    page = admin_client.get(reverse("admin:places_place_change", args=[gone.pk]))
    assert not {"status", "merged_into"} & set(page.context["adminform"].form.fields)


def test_the_add_form_offers_neither_merged_into_nor_the_merged_status(admin_client):
    # given the add form
    data = dataset_get_or_create(slug="form-add")
    other = _place(data, "o", "Tabernacle")
    url = reverse("admin:places_place_add")
    form = admin_client.get(url).context["adminform"].form
    # then it has no merged_into and its statuses are active and retired only
    assert "merged_into" not in form.fields
    assert [value for value, _ in form.fields["status"].choices] == ["active", "retired"]

    # when a place is posted with merged_into
    posted = {
        "name": "New tabernacle",
        "dataset": data.pk,
        "source_key": "form:new",
        "status": "active",
        "religion": "christian",
        "denominations": "",
        "location": "POINT (4 45)",
        "footprint": "",
        "tags": "{}",
        "merged_into": str(other.pk),
        "attributes-TOTAL_FORMS": "0",
        "attributes-INITIAL_FORMS": "0",
    }
    response = admin_client.post(url, posted)
    # then it is created without it
    assert response.status_code == 302, response.context["adminform"].form.errors
    created = Place.objects.get(dataset=data, source_key="form:new")
    assert (created.status, created.merged_into_id) == (PlaceStatus.ACTIVE, None)
    # and with the merged status it is refused
    response = admin_client.post(url, {**posted, "source_key": "form:merged", "status": "merged"})
    assert response.status_code == 200
    assert not Place.objects.filter(dataset=data, source_key="form:merged").exists()


# --- who may merge -------------------------------------------------------------------------------


def test_the_merge_permission_is_the_curators_and_the_admins_and_no_other_roles():
    holders = set(
        Group.objects.filter(
            permissions__content_type__app_label="places",
            permissions__codename=MERGE_PERMISSION.split(".")[1],
        ).values_list("name", flat=True)
    )
    assert holders == {"curator", "admin"}


def test_a_curator_merges_from_the_admin_and_a_contributor_cannot():
    # given a proposed pair in one dataset, a curator and a contributor of it
    data = dataset_get_or_create(slug="rights-merge")
    a, b = _place(data, "a", "Ebenezer"), _place(data, "b", "Ebenezer")
    duplicates_find(place_ids=[a.pk])
    pair = DuplicateCandidate.objects.get(place_a=a, place_b=b)
    merge_url = f"/admin/places/duplicatecandidate/{pair.pk}/merge/"
    changelist = "/admin/places/duplicatecandidate/"
    contributor = _client(_user("rights-contributor", "contributor", data))
    curator = _client(_user("rights-curator", "curator", data))

    # when the contributor opens the merge page, posts a merge, or runs "not a duplicate"
    assert contributor.get(merge_url).status_code == 403
    assert contributor.post(merge_url, {"survivor": "a", "decision": "merge"}).status_code == 403
    assert "mark_not_duplicate" not in contributor.get(changelist).content.decode()
    contributor.post(
        changelist, {"action": "mark_not_duplicate", "_selected_action": [pair.pk], "index": 0}
    )
    # then nothing was decided
    pair.refresh_from_db()
    assert pair.status == "open"
    assert Place.objects.get(pk=b.pk).status == PlaceStatus.ACTIVE

    # when the curator merges on the same page
    assert "mark_not_duplicate" in curator.get(changelist).content.decode()
    done = curator.post(merge_url, {"survivor": "a", "decision": "merge"})
    # then the second place is merged into the first
    assert done.status_code == 302
    b.refresh_from_db()
    assert (b.status, b.merged_into_id) == (PlaceStatus.MERGED, a.pk)


def test_a_curator_without_the_groups_merge_permission_is_refused():
    # given a curator whose group lost the merge permission (as before migration 0013)
    data = dataset_get_or_create(slug="rights-no-perm")
    a, b = _place(data, "a", "Salem"), _place(data, "b", "Salem")
    duplicates_find(place_ids=[a.pk])
    pair = DuplicateCandidate.objects.get(place_a=a, place_b=b)
    curator = _client(_user("rights-curator-no-perm", "curator", data))
    MIGRATION.groups_backward(global_apps, None)

    # when they post a merge
    response = curator.post(f"/admin/places/duplicatecandidate/{pair.pk}/merge/", {"survivor": "a"})

    # then it is refused, and the migration forwards gives the permission back
    assert response.status_code == 403
    assert Place.objects.get(pk=b.pk).status == PlaceStatus.ACTIVE
    MIGRATION.groups_forward(global_apps, None)
    assert Group.objects.get(name="curator").permissions.filter(codename="merge_duplicatecandidate")


def test_the_role_groups_sync_before_the_duplicates_model_leaves_merge_for_later():
    # given the migration state where ingestion 0012 may run before places 0022
    state = MigrationLoader(connection).project_state(
        [("ingestion", "0012_role_groups"), ("places", "0019_dataset_roles_security_events")]
    )
    assert ("places", "duplicatecandidate") not in state.models
    # when the role groups are synced there
    role_groups_sync(state.apps)
    # then the curator's group holds its other permissions, the merge one not yet
    curator = Group.objects.get(name="curator")
    assert curator.permissions.filter(codename="change_place").exists()
    assert not curator.permissions.filter(codename="merge_duplicatecandidate").exists()

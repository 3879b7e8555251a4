"""Admin actions run only for users holding the permissions they declare.

Django offers and runs an action only when one of the ``has_<permission>_permission`` checks
it names (``@admin.action(permissions=[...])``) allows it; an action naming none runs for
anyone who can see the changelist, view-only staff included.
"""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_permission_codename
from django.contrib.auth.models import Group, Permission, User
from django.contrib.gis.geos import Point
from django.db.models import Model
from django.test import RequestFactory
from django.urls import reverse

from places.models import Dataset, DatasetRole, Place, PlaceChange
from places.services import dataset_get_or_create, place_create

pytestmark = pytest.mark.django_db

OUR_APPS = {"places", "ingestion", "analytics"}


def _our_actions() -> list[tuple[type[Model], str]]:
    found = []
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label not in OUR_APPS:
            continue
        for _func, name, _description in model_admin._get_base_actions():
            found.append((model, name))
    return sorted(found, key=lambda pair: (pair[0]._meta.label, pair[1]))


ACTIONS = _our_actions()


def _staff(
    username: str,
    *,
    model: type[Model],
    perms: tuple[str, ...],
    role: tuple[str, Dataset] | None = None,
) -> User:
    """Staff with these model permissions and, when given, one role in one dataset (both are
    needed: places.access)."""
    user = User.objects.create_user(username, password="pw", is_staff=True)
    if role is not None:
        DatasetRole.objects.create(user=user, role=role[0], dataset=role[1])
    opts = model._meta
    for perm in perms:
        user.user_permissions.add(
            Permission.objects.get(
                content_type__app_label=opts.app_label,
                codename=get_permission_codename(perm, opts),
            )
        )
    return User.objects.get(pk=user.pk)  # a fresh object: permissions are cached per object


def _action_names(model: type[Model], user: User) -> set[str]:
    request = RequestFactory().get("/")
    request.user = user
    return set(admin.site._registry[model].get_actions(request))


def test_the_admin_has_actions_to_check():
    names = {name for _model, name in ACTIONS}
    assert {"retire_selected", "delete_selected"} <= names


@pytest.mark.parametrize(
    ("model", "name"), ACTIONS, ids=[f"{m._meta.label}:{n}" for m, n in ACTIONS]
)
def test_every_admin_action_is_refused_to_view_only_staff(model, name):
    # given an action of one of our admins
    model_admin = admin.site._registry[model]
    func = model_admin.get_action(name)[0]
    declared = getattr(func, "allowed_permissions", ())
    # then it declares what it needs, beyond seeing the list
    assert declared
    assert set(declared) - {"view"}
    # and a view-only staff user is not offered it, so Django refuses a POST naming it
    viewer = _staff(f"viewer-{name}", model=model, perms=("view",))
    assert name not in _action_names(model, viewer)
    # while a user holding the declared permissions is, unless the admin refuses them to all
    # (Django offers an action when any of its checks passes)
    holder = _staff(f"holder-{name}", model=model, perms=("view", *declared))
    request = RequestFactory().get("/")
    request.user = holder
    allowed = any(getattr(model_admin, f"has_{p}_permission")(request) for p in declared)
    assert (name in _action_names(model, holder)) == allowed


@pytest.fixture
def active_place() -> Place:
    dataset = dataset_get_or_create(slug="admin-actions")
    return place_create(
        dataset=dataset,
        source_key="chapel",
        data={"name": "Chapel", "location": Point(-0.1, 51.5)},
    )


def _post_action(client, url: str, action: str, pks: list[int], **extra: str):
    return client.post(url, {"action": action, ACTION_CHECKBOX_NAME: pks, "index": 0, **extra})


def test_view_only_staff_cannot_retire_places(client, active_place):
    # given a staff user who may only view places
    viewer = _staff("viewer", model=Place, perms=("view",), role=("viewer", active_place.dataset))
    client.force_login(viewer)
    url = reverse("admin:places_place_changelist")
    assert b"retire_selected" not in client.get(url).content
    # when they post the retire action anyway
    response = _post_action(client, url, "retire_selected", [active_place.pk])
    # then nothing is retired and nothing is logged
    assert response.status_code in {200, 302}
    active_place.refresh_from_db()
    assert active_place.status == "active"
    assert not PlaceChange.objects.filter(place=active_place, operation="retire").exists()


def test_staff_who_may_change_places_can_retire_them(client, active_place):
    # given a staff user who may change places
    curator = _staff(
        "curator", model=Place, perms=("view", "change"), role=("curator", active_place.dataset)
    )
    client.force_login(curator)
    url = reverse("admin:places_place_changelist")
    # when they retire a place from the list and confirm it with a reason
    response = _post_action(
        client, url, "retire_selected", [active_place.pk], confirm="yes", reason="closed"
    )
    # then it is retired, and the change log names them
    assert response.status_code == 302
    active_place.refresh_from_db()
    assert active_place.status == "retired"
    assert PlaceChange.objects.filter(place=active_place, user=curator).exists()


def test_view_only_staff_cannot_delete_datasets_and_deleters_can(client):
    # given an empty dataset and a staff user who may only view datasets
    dataset = dataset_get_or_create(slug="to-delete")
    url = reverse("admin:places_dataset_changelist")
    client.force_login(_staff("viewer", model=Dataset, perms=("view",), role=("viewer", dataset)))
    # when they confirm the delete action
    _post_action(client, url, "delete_selected", [dataset.pk], post="yes")
    # then the dataset is still there
    assert Dataset.objects.filter(pk=dataset.pk).exists()
    # and a user who may delete datasets (the admin role: places.access) does delete it
    deleter = _staff("deleter", model=Dataset, perms=("view", "delete"))
    deleter.groups.add(Group.objects.get(name="admin"))
    client.force_login(deleter)
    response = _post_action(client, url, "delete_selected", [dataset.pk], post="yes")
    assert response.status_code == 302
    assert not Dataset.objects.filter(pk=dataset.pk).exists()

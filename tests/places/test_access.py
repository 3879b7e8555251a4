"""Per-dataset roles beyond the URL matrix (test_access_matrix): the role groups, the import
paths (service and command), the admin's forms, and the security audit trail."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Group, User
from django.contrib.gis.geos import Point
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.urls import reverse

from ingestion.services import jobs
from places import access
from places.access import ROLE_ACTIONS, ROLE_PERMISSIONS, Action
from places.models import Dataset, DatasetRole, Role, SecurityEvent
from places.services import place_create
from places.services.access import dataset_role_grant, dataset_role_revoke
from places.services.audit import security_event

pytestmark = pytest.mark.django_db

# Rows of the trail committed by session fixtures (the sample import) may be there too.
ROLE_KINDS = ("role_granted", "role_revoked")
CSV = "id,name,lon,lat\nc1,One,-0.1,51.5\nc2,Two,-0.2,51.6\n"


@pytest.fixture
def own() -> Dataset:
    return Dataset.objects.create(name="Own", slug="own")


@pytest.fixture
def other() -> Dataset:
    return Dataset.objects.create(name="Other", slug="other")


def _granted(name: str, role: str, dataset: Dataset) -> User:
    user = User.objects.create_user(name, password="pw")
    dataset_role_grant(user=user, dataset=dataset, role=role)
    return User.objects.get(pk=user.pk)  # fresh: permissions are cached per object


def test_the_role_groups_hold_exactly_the_permissions_of_the_table():
    # given the groups the data migration made
    for role in Role:
        group = Group.objects.get(name=role)
        held = {
            f"{app}.{codename}"
            for app, codename in group.permissions.values_list(
                "content_type__app_label", "codename"
            )
        }
        # then each holds its role's permissions; the admin's also all of places and ingestion
        assert set(ROLE_PERMISSIONS[role]) <= held
        if role == Role.ADMIN:
            assert {"places.change_place", "ingestion.change_edgenode"} <= held
        else:
            assert held == set(ROLE_PERMISSIONS[role])


def test_rights_are_per_dataset(own, other):
    # given a curator of one dataset
    curator = _granted("cur", Role.CURATOR, own)
    # then they may edit there and not elsewhere, and may not import or manage anywhere
    assert access.can(curator, Action.EDIT, own)
    assert not access.can(curator, Action.EDIT, other)
    assert access.dataset_ids_for(curator, Action.EDIT) == [own.pk]
    assert not access.can(curator, Action.IMPORT, own)
    assert not access.can(curator, Action.MANAGE, own)
    # while the admin role may do everything everywhere
    boss = User.objects.create_user("boss")
    boss.groups.add(Group.objects.get(name=Role.ADMIN))
    assert all(access.can(boss, action, other) for action in Action)
    assert access.dataset_ids_for(boss, Action.EDIT) is None
    # and an inactive user may do nothing, whatever they were granted
    curator.is_active = False
    assert not access.can(curator, Action.VIEW, own)
    assert set(ROLE_ACTIONS[Role.CURATOR]) == {
        Action.VIEW,
        Action.PROPOSE,
        Action.EDIT,
        Action.MERGE,
        Action.REVERT,
    }


def test_the_admin_role_is_never_granted_per_dataset(own):
    user = User.objects.create_user("u")
    with pytest.raises(DatabaseError), transaction.atomic():
        DatasetRole.objects.create(user=user, dataset=own, role="admin")


def test_a_curator_cannot_save_a_place_of_another_dataset(client, own, other):
    # given a curator of one dataset and a place of another
    place = place_create(
        dataset=other, source_key="x", data={"name": "Chapel", "location": Point(0, 0)}
    )
    client.force_login(_granted("cur", Role.CURATOR, own))
    url = reverse("admin:places_place_change", args=[place.pk])
    # when they open it or post a change
    opened = client.get(url)
    posted = client.post(url, {"name": "Renamed", "opened_version": place.version})
    # then the admin answers both as for a place that does not exist, and nothing changed
    for response in (opened, posted):
        assert response.status_code == 302
        assert response["Location"] == reverse("admin:index")
    place.refresh_from_db()
    assert place.name == "Chapel"


def test_the_place_add_form_offers_only_the_curators_datasets(client, own, other):
    client.force_login(_granted("cur", Role.CURATOR, own))
    form = client.get(reverse("admin:places_place_add")).context["adminform"].form
    assert list(form.fields["dataset"].queryset) == [own]


def test_the_upload_form_offers_only_the_importers_datasets_and_no_new_one(client, own, other):
    client.force_login(_granted("imp", Role.IMPORTER, own))
    form = client.get(reverse("admin:ingestion_importjob_add")).context["form"]
    assert list(form.fields["dataset"].queryset) == [own]
    assert "new_dataset" not in form.fields


def test_an_importer_imports_only_into_their_dataset(own, other, tmp_path):
    # given an importer of one dataset and a file
    importer = _granted("imp", Role.IMPORTER, own)
    path = tmp_path / "places.csv"
    path.write_text(CSV)
    # when they create a job for the other dataset, it is refused; for theirs, it is made
    with pytest.raises(PermissionDenied, match="imp may not import in dataset other"):
        jobs.import_job_create(path=path, dataset=other, user=importer)
    job = jobs.import_job_create(path=path, dataset=own, user=importer)
    assert job.created_by == importer
    # and a curator of that dataset may not queue its apply
    curator = _granted("cur", Role.CURATOR, own)
    with pytest.raises(PermissionDenied):
        jobs.import_job_apply_queue(job=job, user=curator)


def test_the_import_command_checks_the_user_given(own, other, tmp_path, sample_regions):
    # given an importer of one dataset and a file
    _granted("imp", Role.IMPORTER, own)
    path = tmp_path / "places.csv"
    path.write_text(CSV)
    # when the command imports as them into another dataset, or into a new one
    for slug in ("other", "brand-new"):
        with pytest.raises(CommandError, match="--user"):
            call_command(
                "import_places",
                str(path),
                "--dataset",
                slug,
                "--user",
                "imp",
                "--sync",
                stdout=io.StringIO(),
            )
    assert not Dataset.objects.filter(slug="brand-new").exists()
    # then it is refused; into theirs it imports, and the audit trail says who applied what
    call_command(
        "import_places",
        str(path),
        "--dataset",
        "own",
        "--user",
        "imp",
        "--sync",
        stdout=io.StringIO(),
    )
    event = SecurityEvent.objects.get(kind="import_applied", dataset_id=own.pk)
    assert (event.username, event.dataset_id, event.details["added"]) == ("imp", own.pk, 2)


def test_grants_and_revokes_are_in_the_audit_trail(own):
    # given a grant made by an admin, a second identical grant, and its revoke
    boss = User.objects.create_superuser("boss")
    user = User.objects.create_user("new")
    grant = dataset_role_grant(user=user, dataset=own, role=Role.CURATOR, by=boss)
    dataset_role_grant(user=user, dataset=own, role=Role.CURATOR, by=boss)
    assert user.groups.filter(name="curator").exists()
    assert user.is_staff
    dataset_role_revoke(grant=grant, by=boss)
    # then one grant and one revoke are logged, naming who, whom, which role and dataset
    events = list(
        SecurityEvent.objects.filter(kind__in=ROLE_KINDS)
        .order_by("id")
        .values_list("kind", "username", "details")
    )
    assert [(k, u, d["role"], d["subject"]) for k, u, d in events] == [
        ("role_granted", "boss", "curator", "new"),
        ("role_revoked", "boss", "curator", "new"),
    ]
    assert not user.groups.filter(name="curator").exists()


def test_joining_and_leaving_the_admin_group_is_in_the_audit_trail():
    user = User.objects.create_user("rising")
    admins = Group.objects.get(name=Role.ADMIN)
    user.groups.add(admins)
    admins.user_set.remove(user)
    events = SecurityEvent.objects.filter(kind__in=ROLE_KINDS).order_by("id")
    assert list(events.values_list("kind", "details__subject")) == [
        ("role_granted", "rising"),
        ("role_revoked", "rising"),
    ]


def test_merges_and_reverts_have_a_hook(own):
    # given the hook the merge and revert services call
    curator = User.objects.create_user("cur")
    for kind in ("merge", "revert"):
        security_event(kind, curator, dataset=own, place=7, change=11)
    # then each is a row with its details
    events = SecurityEvent.objects.filter(kind__in=("merge", "revert")).order_by("id")
    assert list(events.values_list("kind", "user", "dataset", "details")) == [
        ("merge", curator.pk, own.pk, {"place": 7, "change": 11}),
        ("revert", curator.pk, own.pk, {"place": 7, "change": 11}),
    ]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE places_securityevent SET username = 'someone else'",
        "DELETE FROM places_securityevent",
        "TRUNCATE places_securityevent",
    ],
)
def test_the_audit_trail_refuses_changes_in_sql(statement):
    # given an event
    security_event("login_failed", None, username="guess")
    # when any client tries to change or remove it, it is refused by the database
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement)
    # and it is still there as written
    assert SecurityEvent.objects.filter(kind="login_failed").get().username == "guess"

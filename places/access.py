"""Who may do what, per dataset: the one home of the rule.

The admin (``places.admin_access``), the import services and commands, and any API that
writes ask here. A user's rights are the union of

- superuser, or member of the ``admin`` group: every action on every dataset;
- each ``DatasetRole`` grant: the actions of that role (``ROLE_ACTIONS``) on that dataset.

Django's model permissions come from the group of each role (``ROLE_PERMISSIONS``, kept by
``role_groups_sync`` from a data migration): they say which kinds of rows a user may touch at
all and decide what the admin shows; a grant says in which datasets. The admin requires both.

| role        | view | propose | edit, merge, revert | review | import | manage (datasets, roles) |
|-------------|------|---------|---------------------|--------|--------|--------------------------|
| viewer      | yes  |         |                     |        |        |                          |
| contributor | yes  | yes     |                     |        |        |                          |
| curator     | yes  | yes     | yes                 |        |        |                          |
| reviewer    | yes  |         |                     | yes    |        |                          |
| importer    | yes  |         |                     |        | yes    |                          |
| admin       | yes  | yes     | yes                 | yes    | yes    | yes (every dataset)      |
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from django.core.exceptions import PermissionDenied

from places.models_access import DatasetRole, Role


class Action(StrEnum):
    VIEW = "view"  # see the dataset's places, changes, imports in the admin
    PROPOSE = "propose"  # propose an edit for review
    EDIT = "edit"  # change, add, retire places and their attributes
    MERGE = "merge"  # merge duplicates, mark "not a duplicate"
    REVERT = "revert"  # revert a change, restore an earlier version
    REVIEW = "review"  # approve or reject proposals
    IMPORT = "import"  # upload, dry-run, apply, cancel, resume imports; sync
    MANAGE = "manage"  # the dataset's own settings, roles, anything not listed


ROLE_ACTIONS: dict[str, frozenset[Action]] = {
    Role.VIEWER: frozenset({Action.VIEW}),
    Role.CONTRIBUTOR: frozenset({Action.VIEW, Action.PROPOSE}),
    Role.CURATOR: frozenset(
        {Action.VIEW, Action.PROPOSE, Action.EDIT, Action.MERGE, Action.REVERT}
    ),
    Role.REVIEWER: frozenset({Action.VIEW, Action.REVIEW}),
    Role.IMPORTER: frozenset({Action.VIEW, Action.IMPORT}),
    Role.ADMIN: frozenset(Action),
}

# Merging duplicates, their undo and "not a duplicate": the curator's, with Action.MERGE.
MERGE_PERMISSION = "places.merge_duplicatecandidate"

_VIEW = [
    "places.view_dataset",
    "places.view_place",
    "places.view_placeattribute",
    "places.view_placechange",
    "places.view_region",
    "ingestion.view_importjob",
    "ingestion.view_importrejection",
]

# Model permissions of each role's group. The admin group gets every permission of the apps
# in ADMIN_APPS as well. A change here ships with a migration that calls role_groups_sync.
ROLE_PERMISSIONS: dict[str, list[str]] = {
    Role.VIEWER: _VIEW,
    Role.CONTRIBUTOR: _VIEW,
    Role.CURATOR: [
        *_VIEW,
        "places.add_place",
        "places.change_place",
        "places.add_placeattribute",
        "places.change_placeattribute",
        "places.delete_placeattribute",
        # The duplicates' merge page, undo and "not a duplicate" (merge right per dataset).
        MERGE_PERMISSION,
    ],
    Role.REVIEWER: _VIEW,
    Role.IMPORTER: [
        *_VIEW,
        "ingestion.add_importjob",
        "ingestion.change_importjob",
        "places.sync_dataset",
    ],
    Role.ADMIN: ["auth.view_user", "auth.view_group"],
}
ADMIN_APPS = ("places", "ingestion")


def is_admin(user: Any) -> bool:
    """A superuser or a member of the admin group (active ones only)."""
    if not (user is not None and user.is_active and user.is_authenticated):
        return False
    if user.is_superuser:
        return True
    cached = getattr(user, "_places_is_admin", None)
    if cached is None:
        cached = user.groups.filter(name=Role.ADMIN).exists()
        user._places_is_admin = cached
    return bool(cached)


def _grants(user: Any) -> dict[int, frozenset[Action]]:
    """Dataset id → actions granted there; read once per user object (one request)."""
    cached = getattr(user, "_places_grants", None)
    if cached is None:
        actions: dict[int, set[Action]] = {}
        rows = DatasetRole.objects.filter(user=user).values_list("dataset_id", "role")
        for dataset_id, role in rows:
            actions.setdefault(dataset_id, set()).update(ROLE_ACTIONS[role])
        cached = {k: frozenset(v) for k, v in actions.items()}
        user._places_grants = cached
    return cached


def forget(user: Any) -> None:
    """Drop what ``can`` remembered on this user object (after a grant changed)."""
    for name in ("_places_is_admin", "_places_grants"):
        if hasattr(user, name):
            delattr(user, name)


def can(user: Any, action: Action | str, dataset: Any) -> bool:
    """May ``user`` do ``action`` on ``dataset`` (a Dataset, its id, or None for "no
    dataset": only admins)?"""
    if is_admin(user):
        return True
    if user is None or not (user.is_active and user.is_authenticated) or dataset is None:
        return False
    dataset_id = dataset if isinstance(dataset, int) else dataset.pk
    return Action(action) in _grants(user).get(dataset_id, frozenset())


def dataset_ids_for(user: Any, action: Action | str) -> list[int] | None:
    """The ids of the datasets where ``user`` may do ``action``; None means every dataset."""
    if is_admin(user):
        return None
    if user is None or not (user.is_active and user.is_authenticated):
        return []
    wanted = Action(action)
    return sorted(d for d, actions in _grants(user).items() if wanted in actions)


def can_somewhere(user: Any, action: Action | str) -> bool:
    """May ``user`` do ``action`` in at least one dataset?"""
    ids = dataset_ids_for(user, action)
    return ids is None or bool(ids)


def require(user: Any, action: Action | str, dataset: Any) -> None:
    """``can`` or ``PermissionDenied`` naming what was refused."""
    if not can(user, action, dataset):
        name = getattr(dataset, "slug", dataset)
        who = getattr(user, "username", None) or "anonymous"
        raise PermissionDenied(f"{who} may not {Action(action)} in dataset {name}")


def role_groups_sync(apps: Any) -> None:
    """Create the role groups and give each exactly its model permissions (idempotent).

    Called from data migrations with their historical ``apps``; permissions of models that
    do not exist yet are created first (Django makes them only after all migrations).
    A permission that no model of ``apps`` declares belongs to a model of a later migration
    (ingestion 0012 may run before places 0022 makes DuplicateCandidate): it is left for that
    later migration, which syncs again; the role groups' test checks the final groups.
    """
    from django.contrib.auth.management import create_permissions

    for config in apps.get_app_configs():
        # create_permissions skips apps without a models module; historical apps have none.
        config.models_module = True
        create_permissions(config, apps=apps, verbosity=0)
        config.models_module = None
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    declared = {
        f"{model._meta.app_label}.{codename}"
        for model in apps.get_models()
        for codename in (
            *(f"{action}_{model._meta.model_name}" for action in model._meta.default_permissions),
            *(codename for codename, _ in model._meta.permissions),
        )
    }
    for role in Role:
        group, _ = group_model.objects.get_or_create(name=role.value)
        wanted = ROLE_PERMISSIONS[role]
        chosen = permission_model.objects.none()
        for name in wanted:
            if name not in declared:
                continue
            app_label, codename = name.split(".")
            found = permission_model.objects.filter(
                content_type__app_label=app_label, codename=codename
            )
            if not found.exists():
                raise LookupError(f"role {role.value}: no permission {name}")
            chosen |= found
        if role == Role.ADMIN:
            chosen |= permission_model.objects.filter(content_type__app_label__in=ADMIN_APPS)
        group.permissions.set(chosen.distinct())

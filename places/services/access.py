"""Grants of per-dataset roles, each logged in the security audit trail.

The rule that reads grants is ``places.access``. A grant also makes the user a member of the
role's group (its model permissions) and staff (the admin's door); the last grant of a role
taken away takes the membership away too.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group
from django.db import transaction

from places import access
from places.models import Dataset
from places.models_access import DatasetRole, Role, SecurityEventKind
from places.services.audit import security_event


def dataset_role_grant(*, user: Any, dataset: Dataset, role: str, by: Any = None) -> DatasetRole:
    """Give ``user`` the ``role`` in ``dataset`` (idempotent: a second grant changes nothing
    and logs nothing). ``by`` is who granted it, for the audit trail."""
    with transaction.atomic():
        grant, created = DatasetRole.objects.get_or_create(
            user=user, dataset=dataset, role=Role(role)
        )
        if created:
            user.groups.add(Group.objects.get(name=role))
            if not user.is_staff:
                user.is_staff = True
                user.save(update_fields=["is_staff"])
            security_event(
                SecurityEventKind.ROLE_GRANTED,
                by,
                dataset=dataset,
                role=str(role),
                subject=user.get_username(),
                subject_id=user.pk,
            )
    access.forget(user)
    return grant


def dataset_role_revoke(*, grant: DatasetRole, by: Any = None) -> None:
    """Take one grant away; the role's group goes with the user's last grant of that role."""
    user, role = grant.user, grant.role
    with transaction.atomic():
        security_event(
            SecurityEventKind.ROLE_REVOKED,
            by,
            dataset=grant.dataset_id,
            role=role,
            subject=user.get_username(),
            subject_id=user.pk,
        )
        grant.delete()
        if not DatasetRole.objects.filter(user=user, role=role).exists():
            user.groups.remove(*Group.objects.filter(name=role))
    access.forget(user)


def on_groups_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: set[int] | None, **_: Any
) -> None:
    """Log joins and leaves of the admin group (the global admin role), however made: the
    users' admin, the groups' admin, a shell. Dataset roles are logged by their services."""
    if action not in ("post_add", "post_remove") or not pk_set:
        return
    kind = (
        SecurityEventKind.ROLE_GRANTED if action == "post_add" else SecurityEventKind.ROLE_REVOKED
    )
    if reverse:  # group.user_set.add(...): the instance is the group
        if instance.name != Role.ADMIN:
            return
        users = list(instance.user_set.model.objects.filter(pk__in=pk_set))
    else:
        if not Group.objects.filter(pk__in=pk_set, name=Role.ADMIN).exists():
            return
        users = [instance]
    for user in users:
        access.forget(user)
        security_event(
            kind, None, role=Role.ADMIN.value, subject=user.get_username(), subject_id=user.pk
        )

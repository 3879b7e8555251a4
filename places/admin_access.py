"""Per-dataset rights in the admin: every hook asks ``places.access``.

``DatasetScopedAdminMixin`` goes first in a ModelAdmin's bases. On top of Django's model
permissions (the role groups') it lists only rows of datasets the user may view, lets a row be
changed only in a dataset the user may change, and runs an action only when every selected
row is in such a dataset. The admin answers a refusal as it always does: 403, the object not
found, or the action not run with a message. Grants and the security audit trail are here too.
"""

from __future__ import annotations

import functools
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest

from places import access
from places.access import Action
from places.admin_base import FastChangeListMixin, ReadOnlyAdminMixin
from places.models import Dataset
from places.models_access import DatasetRole, SecurityEvent
from places.services import access as access_services


def _dataset_id(obj: Any, path: str) -> int | None:
    """The dataset id of a row, following ``path`` (``dataset``, ``job__dataset``, ``pk``)."""
    if path == "pk":
        return obj.pk
    *hops, last = path.split("__")
    for hop in hops:
        obj = getattr(obj, hop)
    return getattr(obj, f"{last}_id")


class DatasetScopedAdminMixin:
    """Rights of a ModelAdmin whose rows belong to a dataset (see the module docstring)."""

    dataset_path = "dataset"  # from the model to its dataset; "pk" for Dataset itself
    view_action = Action.VIEW
    change_action = Action.EDIT  # change and add rows, and the actions needing "change"
    delete_action = Action.MANAGE
    # An admin action's declared permission → the right it needs in every selected row's
    # dataset ("change" → change_action, "delete" → delete_action, others → MANAGE).
    action_rights: dict[str, Action] = {}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)  # type: ignore[misc]
        ids = access.dataset_ids_for(request.user, self.view_action)
        if ids is None:
            return queryset
        return queryset.filter(**{f"{self.dataset_path}__in": ids})

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if not super().has_view_permission(request, obj):  # type: ignore[misc]
            return False
        if obj is None:
            return access.can_somewhere(request.user, self.view_action)
        return access.can(request.user, self.view_action, _dataset_id(obj, self.dataset_path))

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if not super().has_change_permission(request, obj):  # type: ignore[misc]
            return False
        if obj is None:
            return access.can_somewhere(request.user, self.change_action)
        return access.can(request.user, self.change_action, _dataset_id(obj, self.dataset_path))

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        if not super().has_add_permission(request, *args):  # type: ignore[misc]
            return False
        return access.can_somewhere(request.user, self.change_action)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if not super().has_delete_permission(request, obj):  # type: ignore[misc]
            return False
        if obj is None:
            return access.can_somewhere(request.user, self.delete_action)
        return access.can(request.user, self.delete_action, _dataset_id(obj, self.dataset_path))

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        # A row added or moved (a raw id typed in) must land in a dataset the user may change.
        if not access.can(request.user, self.change_action, _dataset_id(obj, self.dataset_path)):
            raise PermissionDenied
        super().save_model(request, obj, form, change)  # type: ignore[misc]

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        # New rows go only into datasets the user may change.
        if db_field.name == "dataset" and self.dataset_path == "dataset":
            ids = access.dataset_ids_for(request.user, self.change_action)
            if ids is not None:
                kwargs["queryset"] = Dataset.objects.filter(pk__in=ids)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)  # type: ignore[misc]

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)  # type: ignore[misc]
        return {
            name: (self._guarded(func), name, description)
            for name, (func, _, description) in actions.items()
        }

    def _right_for(self, permission: str) -> Action:
        if permission in self.action_rights:
            return self.action_rights[permission]
        return {"change": self.change_action, "delete": self.delete_action}.get(
            permission, Action.MANAGE
        )

    def _guarded(self, func: Any) -> Any:
        needed = {self._right_for(p) for p in getattr(func, "allowed_permissions", ("change",))}
        path = self.dataset_path

        @functools.wraps(func)
        def guarded(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
            for right in needed:
                ids = access.dataset_ids_for(request.user, right)
                if ids is not None and queryset.exclude(**{f"{path}__in": ids}).exists():
                    modeladmin.message_user(
                        request,
                        f"Nothing was done: some of the selected rows belong to datasets "
                        f"where you may not {right}.",
                        messages.ERROR,
                    )
                    return None
            return func(modeladmin, request, queryset)

        return guarded


class DatasetScopedInlineMixin:
    """Inline rows of a parent that belongs to a dataset: editable only where it may change."""

    change_action = Action.EDIT

    def _may(self, request: HttpRequest, obj: Any) -> bool:
        return obj is None or access.can(request.user, self.change_action, obj.dataset_id)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_add_permission(request, obj) and self._may(request, obj)  # type: ignore[misc]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self._may(request, obj)  # type: ignore[misc]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self._may(request, obj)  # type: ignore[misc]


class AdminRoleOnlyMixin:
    """Only the admin role (and superusers) may see or touch these rows at all."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return access.is_admin(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return access.is_admin(request.user) and super().has_view_permission(request, obj)  # type: ignore[misc]

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return access.is_admin(request.user) and super().has_add_permission(request, *args)  # type: ignore[misc]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return access.is_admin(request.user) and super().has_change_permission(request, obj)  # type: ignore[misc]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return access.is_admin(request.user) and super().has_delete_permission(request, obj)  # type: ignore[misc]


@admin.register(DatasetRole)
class DatasetRoleAdmin(AdminRoleOnlyMixin, admin.ModelAdmin):
    """Grants are added and deleted, never edited; each one lands in the audit trail."""

    list_display = ("user", "dataset", "role", "granted_at")
    list_filter = ("role", "dataset")
    search_fields = ("user__username", "dataset__slug")
    raw_id_fields = ("user",)
    list_select_related = ("user", "dataset")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke and grant again: the audit trail shows both

    def save_model(self, request: HttpRequest, obj: DatasetRole, form: Any, change: bool) -> None:
        grant = access_services.dataset_role_grant(
            user=obj.user, dataset=obj.dataset, role=obj.role, by=request.user
        )
        obj.pk = grant.pk

    def delete_model(self, request: HttpRequest, obj: DatasetRole) -> None:
        access_services.dataset_role_revoke(grant=obj, by=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[DatasetRole]) -> None:
        for grant in queryset.select_related("user"):
            access_services.dataset_role_revoke(grant=grant, by=request.user)


@admin.register(SecurityEvent)
class SecurityEventAdmin(
    AdminRoleOnlyMixin, ReadOnlyAdminMixin, FastChangeListMixin, admin.ModelAdmin
):
    """The security audit trail: admins read it, nobody edits it (the table refuses too)."""

    list_display = ("at", "kind", "username", "ip_address", "dataset", "details")
    list_filter = ("kind",)
    search_fields = ("=username",)
    date_hierarchy = "at"
    list_select_related = ("dataset",)

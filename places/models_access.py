"""Who may do what: per-dataset role grants, and the security audit trail.

The rule that reads these tables lives in ``places.access``; grants are written by
``places.services.access`` (which logs them) and audit rows by ``places.services.audit``.
Imported by ``places.models`` so that the app's migrations see them.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now


class Role(models.TextChoices):
    """The roles of the data migration (Django groups of the same names).

    ``admin`` is global (membership of the group): it is never granted per dataset.
    """

    VIEWER = "viewer", "Viewer"
    CONTRIBUTOR = "contributor", "Contributor"
    CURATOR = "curator", "Curator"
    REVIEWER = "reviewer", "Reviewer"
    IMPORTER = "importer", "Importer"
    ADMIN = "admin", "Admin"


DATASET_ROLES = [r for r in Role if r != Role.ADMIN]


class DatasetRole(models.Model):
    """One user's role in one dataset. A user may hold several roles in a dataset."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="dataset_roles"
    )
    dataset = models.ForeignKey("places.Dataset", on_delete=models.CASCADE, related_name="roles")
    role = models.CharField(max_length=16, choices=[(r.value, r.label) for r in DATASET_ROLES])
    granted_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "dataset", "role"], name="datasetrole_user_dataset_role"
            ),
            # The admin role is global: a per-dataset admin would be a second, weaker meaning.
            models.CheckConstraint(
                condition=Q(role__in=[r.value for r in DATASET_ROLES]),
                name="datasetrole_role_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.dataset}"


class SecurityEventKind(models.TextChoices):
    LOGIN = "login", "Login"
    LOGIN_FAILED = "login_failed", "Failed login"
    LOCKED_OUT = "locked_out", "Locked out"
    ROLE_GRANTED = "role_granted", "Role granted"
    ROLE_REVOKED = "role_revoked", "Role revoked"
    MERGE = "merge", "Merge"
    REVERT = "revert", "Revert"
    IMPORT_APPLIED = "import_applied", "Import applied"


class SecurityEvent(models.Model):
    """The security audit trail: append-only (UPDATE and DELETE refused by a trigger).

    ``user`` is who acted (none for a failed login of an unknown name or a system step);
    ``username`` keeps the name as typed, ``details`` the rest (dataset, role, job …).
    """

    at = models.DateTimeField(db_default=Now(), db_index=True)
    kind = models.CharField(max_length=16, choices=SecurityEventKind.choices)
    # An id kept as history: the row must outlive the user, so no cascade and no constraint.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    username = models.CharField(max_length=150, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    dataset = models.ForeignKey(
        "places.Dataset",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["kind", "at"], name="securityevent_kind_at")]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.kind} {self.username}"

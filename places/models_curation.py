"""Curation: proposals waiting for review, users' API tokens, and data-quality flags.

Proposals are written by ``places.services.review``, flags by ``places.services.quality``.
Imported by ``places.models`` so that the app's migrations see them.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now


class ProposalStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"


class PlaceProposal(models.Model):
    """An edit of one place proposed by a contributor, applied only when a reviewer approves.

    ``values`` holds the proposed fields in the change log's JSON form; ``base_values`` the
    same fields as the place had them when proposed (at ``base_version``), so a reviewer is
    shown, field by field, what changed since instead of overwriting it silently.
    """

    place = models.ForeignKey("places.Place", on_delete=models.PROTECT, related_name="proposals")
    # The place's dataset, kept here so that rights and lists filter without a join.
    dataset = models.ForeignKey(
        "places.Dataset", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    proposer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="place_proposals"
    )
    values = models.JSONField(help_text='Proposed values: {"field": value}.')
    base_values = models.JSONField(help_text="The same fields as they were when proposed.")
    base_version = models.PositiveIntegerField(help_text="The place's version when proposed.")
    comment = models.TextField(blank=True, help_text="Why the proposer suggests the edit.")
    status = models.CharField(
        max_length=8, choices=ProposalStatus.choices, default=ProposalStatus.PENDING
    )
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    review_comment = models.TextField(blank=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    decided_at = models.DateTimeField(null=True, blank=True)
    # The change an approval made (none when the place already had every proposed value).
    # An id checked by Django, like the change log's own references.
    applied_change = models.ForeignKey(
        "places.PlaceChange",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=ProposalStatus.values), name="proposal_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(status=ProposalStatus.PENDING)
                | (Q(reviewer__isnull=False) & Q(decided_at__isnull=False)),
                name="proposal_decided_has_reviewer",
            ),
        ]
        indexes = [
            # A reviewer's queue: the pending proposals of their datasets, oldest first.
            models.Index(
                fields=["dataset", "id"],
                name="proposal_pending",
                condition=Q(status=ProposalStatus.PENDING),
            ),
        ]

    def __str__(self) -> str:
        return f"Proposal #{self.pk} for place {self.place_id} ({self.status})"


class ApiToken(models.Model):
    """A user's key for the API (``Authorization: Token <key>``); only its SHA-256 is kept,
    so a copy of the database opens nothing. Made by ``manage.py api_token_create``."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    key_sha256 = models.CharField(max_length=64, unique=True, editable=False)
    name = models.CharField(max_length=100, blank=True, help_text="What the token is for.")
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"API token {self.name or self.pk} of {self.user}"


class QualityFlag(models.TextChoices):
    NO_NAME = "no_name", "No name"
    UNKNOWN_RELIGION = "unknown_religion", "Unknown religion"
    OUTSIDE_REGION = "outside_region", "Outside its assigned region"
    DUPLICATE_COORDINATES = "duplicate_coordinates", "Shares exact coordinates"
    UNRECOGNISED_DENOMINATION = "unrecognised_denomination", "Unrecognised denomination"
    START_AFTER_END = "start_after_end", "Start after end"


class PlaceFlag(models.Model):
    """One data-quality flag of one place; a place without problems has no rows.

    Stored, not computed per request: "outside its region" and "duplicate coordinates" are
    spatial joins that cost seconds over a million places, while a lookup here by
    (flag, dataset) is an index range. Kept up to date by ``places.services.quality``.
    """

    pk = models.CompositePrimaryKey("place_id", "flag")
    place = models.ForeignKey(
        "places.Place",
        on_delete=models.CASCADE,
        related_name="flags",
        db_constraint=False,
        db_index=False,  # the primary key leads with it
    )
    flag = models.CharField(max_length=32, choices=QualityFlag.choices)
    dataset = models.ForeignKey(
        "places.Dataset",
        on_delete=models.CASCADE,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )

    class Meta:
        indexes = [
            # The changelist's filter and the counts per dataset read only this index.
            models.Index(fields=["flag", "dataset", "place"], name="placeflag_flag_dataset"),
        ]

    def __str__(self) -> str:
        return f"place {self.place_id}: {self.flag}"


class QualityRefresh(models.Model):
    """The last change-log entry a dataset's flags were computed after, so that beat's
    refresh recomputes only datasets with changes the services did not flag as they wrote
    them (imports, region maintenance)."""

    dataset = models.OneToOneField(
        "places.Dataset", primary_key=True, on_delete=models.CASCADE, related_name="+"
    )
    last_seq = models.BigIntegerField(help_text="The change log's seq when last computed.")
    refreshed_at = models.DateTimeField(db_default=Now())

    def __str__(self) -> str:
        return f"{self.dataset_id} flags after change #{self.last_seq}"

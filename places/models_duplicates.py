"""Likely duplicates, found by ``places.services.duplicates`` and decided by curators.

Imported by ``places.models`` so that the app's migrations see them.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Now


class DuplicateReason(models.TextChoices):
    """Why two places were proposed as one (a pair may have several reasons)."""

    SAME_SOURCE_KEY = "same_source_key", "Same source key in another dataset"
    EXACT_COORDINATES = "exact_coordinates", "Exactly the same coordinates"
    POINT_IN_FOOTPRINT = "point_in_footprint", "A point inside the other's footprint"
    NEAR_SIMILAR_NAME = "near_similar_name", "Near, with a similar name"
    CURATOR = "curator", "Merged by a curator without a proposal"


class DuplicateStatus(models.TextChoices):
    OPEN = "open", "To review"
    MERGED = "merged", "Merged"
    NOT_DUPLICATE = "not_duplicate", "Not a duplicate"


class DuplicateCandidate(models.Model):
    """Two places that may be one, as an ordered pair (``place_a`` has the lower id).

    The pair is the natural key, so every run of the finder upserts: an open pair gets its
    new score, a decided one (merged, "not a duplicate") is never proposed again. A merge's
    change-log entries are kept here so that the merge can be undone as one.
    """

    place_a = models.ForeignKey(
        "places.Place", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    place_b = models.ForeignKey("places.Place", on_delete=models.PROTECT, related_name="+")
    # The datasets of the two places, copied: lists and rights filter on them.
    dataset_a = models.ForeignKey(
        "places.Dataset", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    dataset_b = models.ForeignKey(
        "places.Dataset", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    score = models.FloatField(help_text="0-1: how likely the two are one place.")
    reasons = ArrayField(
        models.CharField(max_length=24, choices=DuplicateReason.choices),
        default=list,
        help_text="Why the pair was proposed.",
    )
    distance_m = models.FloatField(null=True, blank=True, help_text="Metres between the points.")
    name_similarity = models.FloatField(
        null=True, blank=True, help_text="Trigram similarity of the names, accents ignored (0-1)."
    )
    status = models.CharField(
        max_length=16, choices=DuplicateStatus.choices, default=DuplicateStatus.OPEN
    )
    found_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(db_default=Now(), editable=False)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    survivor = models.ForeignKey(
        "places.Place",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
        help_text="For a merge, the place that was kept.",
    )
    merge_changes = ArrayField(
        models.BigIntegerField(),
        default=list,
        blank=True,
        help_text="The change-log entries (seq) the merge wrote; an undo reverts them.",
    )

    class Meta:
        # Held by the curator's and admin's role groups (ingestion 0013); the admin's merge
        # page, undo and "not a duplicate" ask for it and for the merge right in both places'
        # datasets (places.access).
        permissions = [("merge_duplicatecandidate", "Can merge duplicates or dismiss them")]
        constraints = [
            models.UniqueConstraint(fields=["place_a", "place_b"], name="duplicate_pair_unique"),
            models.CheckConstraint(condition=Q(place_a__lt=F("place_b")), name="duplicate_ordered"),
            models.CheckConstraint(
                condition=Q(status__in=DuplicateStatus.values), name="duplicate_status_valid"
            ),
        ]
        indexes = [
            # The review list: open pairs, best first.
            models.Index(
                F("score").desc(),
                name="duplicate_open_score",
                condition=Q(status=DuplicateStatus.OPEN),
            ),
            models.Index(fields=["dataset_a", "dataset_b"], name="duplicate_datasets"),
        ]

    def __str__(self) -> str:
        return f"#{self.place_a_id} / #{self.place_b_id} ({self.score:.2f})"

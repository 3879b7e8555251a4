"""Likely duplicates and merges (issue 17): the pairs the finder proposes and curators decide.

``DuplicateCandidate`` keys a pair by its two places (ordered), so every run of the finder
upserts; a decided pair (merged, not a duplicate) is never proposed again. ``unaccent``
lets the finder compare names with accents ignored (pg_trgm is there since 0001).
"""

import django.contrib.postgres.fields
import django.db.models.deletion
import django.db.models.functions.datetime
from django.conf import settings
from django.contrib.postgres.operations import UnaccentExtension
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("places", "0021_review_queue_quality"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        UnaccentExtension(),
        migrations.CreateModel(
            name="DuplicateCandidate",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("score", models.FloatField(help_text="0-1: how likely the two are one place.")),
                (
                    "reasons",
                    django.contrib.postgres.fields.ArrayField(
                        base_field=models.CharField(
                            choices=[
                                ("same_source_key", "Same source key in another dataset"),
                                ("exact_coordinates", "Exactly the same coordinates"),
                                ("point_in_footprint", "A point inside the other's footprint"),
                                ("near_similar_name", "Near, with a similar name"),
                                ("curator", "Merged by a curator without a proposal"),
                            ],
                            max_length=24,
                        ),
                        default=list,
                        help_text="Why the pair was proposed.",
                        size=None,
                    ),
                ),
                (
                    "distance_m",
                    models.FloatField(
                        blank=True, help_text="Metres between the points.", null=True
                    ),
                ),
                (
                    "name_similarity",
                    models.FloatField(
                        blank=True,
                        help_text="Trigram similarity of the names, accents ignored (0-1).",
                        null=True,
                    ),
                ),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("open", "To review"),
                            ("merged", "Merged"),
                            ("not_duplicate", "Not a duplicate"),
                        ],
                        default="open",
                        max_length=16,
                    ),
                ),
                (
                    "found_at",
                    models.DateTimeField(
                        db_default=django.db.models.functions.datetime.Now(), editable=False
                    ),
                ),
                (
                    "updated_at",
                    models.DateTimeField(
                        db_default=django.db.models.functions.datetime.Now(), editable=False
                    ),
                ),
                ("decided_at", models.DateTimeField(blank=True, null=True)),
                (
                    "merge_changes",
                    django.contrib.postgres.fields.ArrayField(
                        base_field=models.BigIntegerField(),
                        blank=True,
                        default=list,
                        help_text="The change-log entries (seq) the merge wrote; an undo reverts them.",
                        size=None,
                    ),
                ),
                (
                    "dataset_a",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="places.dataset",
                    ),
                ),
                (
                    "dataset_b",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="places.dataset",
                    ),
                ),
                (
                    "decided_by",
                    models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "place_a",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="places.place",
                    ),
                ),
                (
                    "place_b",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="places.place",
                    ),
                ),
                (
                    "survivor",
                    models.ForeignKey(
                        blank=True,
                        db_index=False,
                        help_text="For a merge, the place that was kept.",
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="places.place",
                    ),
                ),
            ],
            options={
                "permissions": [
                    ("merge_duplicatecandidate", "Can merge duplicates or dismiss them")
                ],
                "indexes": [
                    models.Index(
                        models.OrderBy(models.F("score"), descending=True),
                        condition=models.Q(("status", "open")),
                        name="duplicate_open_score",
                    ),
                    models.Index(fields=["dataset_a", "dataset_b"], name="duplicate_datasets"),
                ],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("place_a", "place_b"), name="duplicate_pair_unique"
                    ),
                    models.CheckConstraint(
                        condition=models.Q(("place_a__lt", models.F("place_b"))),
                        name="duplicate_ordered",
                    ),
                    models.CheckConstraint(
                        condition=models.Q(("status__in", ["open", "merged", "not_duplicate"])),
                        name="duplicate_status_valid",
                    ),
                ],
            },
        ),
    ]

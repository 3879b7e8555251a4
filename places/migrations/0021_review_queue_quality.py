"""Curation: proposals for review, users' API tokens, stored data-quality flags.

Flags are rows of their own (one per flagged place and flag), kept by
``places.services.quality``: filtering a million-place changelist by flag is then an index
range on (flag, dataset) instead of spatial joins per request.
"""

import django.db.models.deletion
import django.db.models.functions.datetime
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("places", "0020_change_log_audit_indexes"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="QualityRefresh",
            fields=[
                (
                    "dataset",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="+",
                        serialize=False,
                        to="places.dataset",
                    ),
                ),
                (
                    "last_seq",
                    models.BigIntegerField(help_text="The change log's seq when last computed."),
                ),
                (
                    "refreshed_at",
                    models.DateTimeField(db_default=django.db.models.functions.datetime.Now()),
                ),
            ],
        ),
        migrations.CreateModel(
            name="ApiToken",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("key_sha256", models.CharField(editable=False, max_length=64, unique=True)),
                (
                    "name",
                    models.CharField(
                        blank=True, help_text="What the token is for.", max_length=100
                    ),
                ),
                (
                    "created_at",
                    models.DateTimeField(
                        db_default=django.db.models.functions.datetime.Now(), editable=False
                    ),
                ),
                ("revoked_at", models.DateTimeField(blank=True, null=True)),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="api_tokens",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
        ),
        migrations.CreateModel(
            name="PlaceFlag",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "place_id",
                        "flag",
                        blank=True,
                        editable=False,
                        primary_key=True,
                        serialize=False,
                    ),
                ),
                (
                    "flag",
                    models.CharField(
                        choices=[
                            ("no_name", "No name"),
                            ("unknown_religion", "Unknown religion"),
                            ("outside_region", "Outside its assigned region"),
                            ("duplicate_coordinates", "Shares exact coordinates"),
                            ("unrecognised_denomination", "Unrecognised denomination"),
                            ("start_after_end", "Start after end"),
                        ],
                        max_length=32,
                    ),
                ),
                (
                    "dataset",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="places.dataset",
                    ),
                ),
                (
                    "place",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="flags",
                        to="places.place",
                    ),
                ),
            ],
            options={
                "indexes": [
                    models.Index(fields=["flag", "dataset", "place"], name="placeflag_flag_dataset")
                ],
            },
        ),
        migrations.CreateModel(
            name="PlaceProposal",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("values", models.JSONField(help_text='Proposed values: {"field": value}.')),
                (
                    "base_values",
                    models.JSONField(help_text="The same fields as they were when proposed."),
                ),
                (
                    "base_version",
                    models.PositiveIntegerField(help_text="The place's version when proposed."),
                ),
                (
                    "comment",
                    models.TextField(blank=True, help_text="Why the proposer suggests the edit."),
                ),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("pending", "Pending"),
                            ("approved", "Approved"),
                            ("rejected", "Rejected"),
                        ],
                        default="pending",
                        max_length=8,
                    ),
                ),
                ("review_comment", models.TextField(blank=True)),
                (
                    "created_at",
                    models.DateTimeField(
                        db_default=django.db.models.functions.datetime.Now(), editable=False
                    ),
                ),
                ("decided_at", models.DateTimeField(blank=True, null=True)),
                (
                    "applied_change",
                    models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="places.placechange",
                    ),
                ),
                (
                    "dataset",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="places.dataset",
                    ),
                ),
                (
                    "place",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="proposals",
                        to="places.place",
                    ),
                ),
                (
                    "proposer",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="place_proposals",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "reviewer",
                    models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["-id"],
                "indexes": [
                    models.Index(
                        condition=models.Q(("status", "pending")),
                        fields=["dataset", "id"],
                        name="proposal_pending",
                    )
                ],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("status__in", ["pending", "approved", "rejected"])),
                        name="proposal_status_valid",
                    ),
                    models.CheckConstraint(
                        condition=models.Q(
                            ("status", "pending"),
                            models.Q(("reviewer__isnull", False), ("decided_at__isnull", False)),
                            _connector="OR",
                        ),
                        name="proposal_decided_has_reviewer",
                    ),
                ],
            },
        ),
    ]

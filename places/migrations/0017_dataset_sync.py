"""Datasets that follow a source URL on a schedule (``ingestion.services.sync``).

"Sync now" has a permission of its own, since a snapshot retires places. The check
constraint keeps a schedule from pointing at nothing, whoever writes the row. ETag and
Last-Modified are what the source last answered, for the next conditional GET.
"""

import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("places", "0016_place_name_trgm_in_model"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="dataset",
            options={
                "ordering": ["slug"],
                "permissions": [
                    ("sync_dataset", "Can fetch a dataset's sync URL now and import it")
                ],
            },
        ),
        migrations.AddField(
            model_name="dataset",
            name="sync_checked_at",
            field=models.DateTimeField(
                blank=True,
                editable=False,
                help_text="When the sync URL was last checked.",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="dataset",
            name="sync_etag",
            field=models.CharField(
                blank=True, editable=False, help_text="ETag of the last fetch.", max_length=255
            ),
        ),
        migrations.AddField(
            model_name="dataset",
            name="sync_every",
            field=models.CharField(
                choices=[
                    ("off", "Off"),
                    ("hourly", "Every hour"),
                    ("daily", "Every day"),
                    ("weekly", "Every week"),
                ],
                default="off",
                help_text="How often the sync URL is checked (a conditional GET: an unchanged file is not downloaded again).",
                max_length=8,
            ),
        ),
        migrations.AddField(
            model_name="dataset",
            name="sync_last_modified",
            field=models.CharField(
                blank=True,
                editable=False,
                help_text="Last-Modified of the last fetch.",
                max_length=64,
            ),
        ),
        migrations.AddField(
            model_name="dataset",
            name="sync_result",
            field=models.TextField(
                blank=True,
                editable=False,
                help_text="What the last check did: unchanged, the job it queued, or the error.",
            ),
        ),
        migrations.AddField(
            model_name="dataset",
            name="sync_url",
            field=models.URLField(
                blank=True,
                help_text="A file (any format an upload takes) fetched on the schedule below and imported in snapshot mode when it changed: places missing from it are retired.",
                max_length=500,
                validators=[django.core.validators.URLValidator(schemes=["http", "https"])],
            ),
        ),
        migrations.AddConstraint(
            model_name="dataset",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("sync_every", "off"),
                    models.Q(("sync_url", ""), _negated=True),
                    _connector="OR",
                ),
                name="dataset_sync_needs_url",
                violation_error_message="A sync schedule needs a sync URL.",
            ),
        ),
    ]

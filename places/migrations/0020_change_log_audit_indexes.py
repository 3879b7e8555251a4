"""The audit view (the change log list) finds rare operations and people's changes by index.

Filtering a log of millions of rows by operation "revert" or source "user" read the whole
table backwards for a page of 50. Both indexes are partial: an import's creates and updates,
nearly every row, enter neither, so imports pay nothing for them. Built concurrently, so a
large log keeps taking writes while they are made.
"""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("places", "0019_dataset_roles_security_events"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="placechange",
            index=models.Index(
                condition=models.Q(("operation__in", ["create", "update"]), _negated=True),
                fields=["seq"],
                name="change_rare_operations",
            ),
        ),
        AddIndexConcurrently(
            model_name="placechange",
            index=models.Index(
                condition=models.Q(("source__in", ["user", "device"])),
                fields=["seq"],
                name="change_by_people",
            ),
        ),
    ]

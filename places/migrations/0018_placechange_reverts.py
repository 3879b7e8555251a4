"""Reverts and restores are changes of the log themselves: two operations and a reference.

``reverts`` names the change a revert undid (or, for a restore, the change that made the
version the place went back to). Adding a nullable column rewrites no row, so the
append-only trigger (0003) is not involved; the partial index serves "reverted by" lookups.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('places', '0017_dataset_sync'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='placechange',
            name='reverts',
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, help_text='For a revert, the change it undid; for a restore, the change that made the version the place went back to.', null=True, on_delete=django.db.models.deletion.PROTECT, related_name='reverted_by', to='places.placechange'),
        ),
        migrations.AlterField(
            model_name='placechange',
            name='operation',
            field=models.CharField(choices=[('create', 'Create'), ('update', 'Update'), ('retire', 'Retire'), ('merge', 'Merge'), ('revert', 'Revert'), ('restore', 'Restore')], max_length=8),
        ),
        migrations.AddIndex(
            model_name='placechange',
            index=models.Index(condition=models.Q(('reverts__isnull', False)), fields=['reverts'], name='change_reverts'),
        ),
    ]

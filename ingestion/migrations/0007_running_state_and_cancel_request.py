"""Jobs that a worker runs are ``running`` (a dry run was shown as "applying"), and a running
job can be asked to stop after its current batch (``cancel_requested_at``)."""

from django.db import migrations, models

RENAME = "UPDATE ingestion_importjob SET state = %s WHERE state = %s"


class Migration(migrations.Migration):

    dependencies = [
        ('ingestion', '0006_importjob_checkpoint_stage'),
    ]

    operations = [
        migrations.AddField(
            model_name='importjob',
            name='cancel_requested_at',
            field=models.DateTimeField(blank=True, help_text='Set when someone cancels a running job: the run stops after the batch it is applying, keeping what committed.', null=True),
        ),
        migrations.AlterField(
            model_name='importjob',
            name='checkpoint',
            field=models.JSONField(blank=True, default=dict, help_text='Where a resumed or redelivered run goes on: rows staged, the applied prefix of staged rows and the batches committed past it.'),
        ),
        migrations.AlterField(
            model_name='importjob',
            name='state',
            field=models.CharField(choices=[('uploaded', 'Uploaded'), ('inspected', 'Inspected'), ('dry_run_ready', 'Dry run ready'), ('queued', 'Queued'), ('running', 'Running'), ('done', 'Done'), ('failed', 'Failed'), ('cancelled', 'Cancelled')], db_index=True, default='uploaded', max_length=16),
        ),
        migrations.RunSQL(
            sql=[(RENAME, ["running", "applying"])],
            reverse_sql=[(RENAME, ["applying", "running"])],
        ),
    ]

"""Batched, resumable imports: a checkpoint and heartbeat on the job, and the staging table.

The staging table is UNLOGGED: it is scratch space (no WAL, so COPY is cheap), and it is
keyed by job so that a redelivered task finds what an earlier run staged. A server crash
empties unlogged tables; the import notices and stages the file again.
"""

from django.db import migrations, models

CREATE_STAGE = """
CREATE UNLOGGED TABLE ingestion_importstage (
    job_id bigint NOT NULL,
    sid bigint NOT NULL,
    row_number bigint NOT NULL,
    layer text NOT NULL,
    source_key text NOT NULL,
    denominations text[] NOT NULL,
    lon float8,
    lat float8,
    wkb bytea,
    srid integer NOT NULL,
    geom geometry(Point, 4326),
    footprint geometry(MultiPolygon, 4326),
    fields text NOT NULL,
    fingerprint text NOT NULL,
    raw text,
    reject text,
    reject_detail text,
    PRIMARY KEY (job_id, sid)
);
COMMENT ON TABLE ingestion_importstage IS
    'Scratch rows of running imports (ingestion.services.imports); emptied when a job ends.';
"""


class Migration(migrations.Migration):
    dependencies = [("ingestion", "0005_rejection_reasons_cells_and_classes")]

    operations = [
        migrations.AddField(
            model_name="importjob",
            name="heartbeat_at",
            field=models.DateTimeField(
                blank=True,
                help_text="Last sign of life of the run (every batch); a stale one gets the job re-queued.",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="importjob",
            name="checkpoint",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="Where a redelivered run resumes: rows staged, last staged row applied, batches.",
            ),
        ),
        migrations.RunSQL(CREATE_STAGE, "DROP TABLE ingestion_importstage"),
    ]

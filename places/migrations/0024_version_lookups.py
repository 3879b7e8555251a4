"""Reading a data version must stay cheaper than a cached answer (issue 14).

Every cached map view, tile and list page first reads the data version of what it shows.
After a big import the version tables were full of dead rows (each commit rewrites a
version row and inserts then deletes pending marks), and the read of a view's cells took
a parallel scan of 20 ms: longer than the answer from Redis. Now:

- ``areaversion_cell`` answers the cells of a view over all datasets;
- the four tables are kept small: autovacuum after a few hundred dead rows instead of a
  fifth of the table, and room on each page for updates that need no index change (HOT);
- they never get parallel plans, whose start alone costs more than reading them.
"""

from django.db import migrations, models

TABLES = [
    "places_dataversion",
    "places_dataversion_pending",
    "places_areaversion",
    "places_areaversion_pending",
]

FORWARD = "\n".join(
    f"ALTER TABLE {table} SET (parallel_workers = 0, fillfactor = 50, "
    "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 200, "
    "autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 200);"
    for table in TABLES
)
BACKWARD = "\n".join(
    f"ALTER TABLE {table} RESET (parallel_workers, fillfactor, "
    "autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, "
    "autovacuum_analyze_scale_factor, autovacuum_analyze_threshold);"
    for table in TABLES
)


class Migration(migrations.Migration):
    dependencies = [("places", "0023_place_name_unaccent_search")]

    operations = [
        migrations.AddIndex(
            model_name="areaversion",
            index=models.Index(fields=["cell"], name="areaversion_cell"),
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]

"""Source values move out of the place row into ``places_placesource`` (issue 14).

``source_values`` was about 470 of a place row's 670 bytes on the generated million
(``pg_column_size``), and only imports read it: every map view, tile and list page read
through it. Without it the table is about 200 MB instead of 674 MB and a view of 100,000
places reads about a third of the pages. The copy is one ``INSERT … SELECT`` (seconds per
million places); the column's space comes back when the table is next rewritten
(``VACUUM FULL places_place``, or the table's new rows as they come).
"""

import django.db.models.deletion
from django.db import migrations, models

COPY_OUT = """
INSERT INTO places_placesource (place_id, source_values)
SELECT id, source_values FROM places_place WHERE source_values IS NOT NULL

"""

# After the JSON has left the place rows, so that the rewritten rows are the narrow ones.
FILL_FINGERPRINT = """
UPDATE places_place p SET source_fingerprint = hashtextextended(s.source_values ->> '_fingerprint', 0)
FROM places_placesource s WHERE s.place_id = p.id AND s.source_values ? '_fingerprint'
"""

COPY_BACK = """
UPDATE places_place p SET source_values = s.source_values
FROM places_placesource s WHERE s.place_id = p.id
"""


class Migration(migrations.Migration):
    dependencies = [("places", "0024_version_lookups")]

    operations = [
        migrations.CreateModel(
            name="PlaceSource",
            fields=[
                (
                    "place",
                    models.OneToOneField(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="source",
                        serialize=False,
                        to="places.place",
                    ),
                ),
                (
                    "source_values",
                    models.JSONField(
                        help_text="Field values as the dataset last delivered them "
                        "(``_fingerprint``: the file row's fingerprint)."
                    ),
                ),
            ],
        ),
        migrations.RunSQL(COPY_OUT, COPY_BACK),
        migrations.RemoveField(model_name="place", name="source_values"),
        migrations.AddField(
            model_name="place",
            name="source_fingerprint",
            field=models.BigIntegerField(
                blank=True,
                editable=False,
                help_text="64-bit hash (hashtextextended) of the fingerprint of the file row "
                "the place was last imported from, with the regions' version; empty for "
                "curator-made places.",
                null=True,
            ),
        ),
        migrations.RunSQL(FILL_FINGERPRINT, migrations.RunSQL.noop),
    ]

"""Trigram index for name search.

Admin and API search run ``UPPER(name) LIKE UPPER('%…%')``; a GIN trigram index on that
expression keeps it fast on millions of rows. Written in SQL because Django renders an
operator class on a functional index without the parentheses PostgreSQL requires.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("places", "0003_placechange_append_only")]

    operations = [
        migrations.RunSQL(
            'CREATE INDEX place_name_trgm ON places_place USING gin ((UPPER("name")) gin_trgm_ops);',
            "DROP INDEX place_name_trgm;",
        )
    ]

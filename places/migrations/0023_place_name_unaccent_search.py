"""Accent-insensitive name search ("Sao Paulo" finds "São Paulo") that stays an index lookup
on a million places.

``unaccent()`` is only STABLE (its dictionary could change), so no index may use it; a SQL
wrapper that names the dictionary is IMMUTABLE and is the usual way round. The trigram
index is on the upper-cased, unaccented name, the expression the admin's search compares,
and is built concurrently so that a deployment does not lock the places table meanwhile.
"""

from django.db import migrations

FUNCTION = """
CREATE FUNCTION places_unaccent(text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
AS $$ SELECT public.unaccent('public.unaccent'::regdictionary, $1) $$;
"""

INDEX = """
CREATE INDEX CONCURRENTLY IF NOT EXISTS place_name_unaccent_trgm ON places_place
USING gin (upper(places_unaccent(name)) gin_trgm_ops);
"""


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [("places", "0022_duplicates_merge")]

    operations = [
        migrations.RunSQL(FUNCTION, "DROP FUNCTION places_unaccent(text);"),
        migrations.RunSQL(INDEX, "DROP INDEX CONCURRENTLY IF EXISTS place_name_unaccent_trgm;"),
    ]

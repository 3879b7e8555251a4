"""Drop ``place_name_trgm``, the trigram index of the API's old name search.

The API's ``q`` has used the admin's rule and its index (``place_name_unaccent_trgm``,
migration 0023) since the release before this one, which landed on its own: no running
code reads this index, as the rule for migrations asks (k8s/README.md). Every insert of a
place paid for it: a first import of 200,000 rows took 14.03 s without it against 15.64 s
with it (README, Benchmarks). Dropped concurrently, so that a deployment does not lock the
places table; the reverse builds it again, concurrently too.
"""

from django.db import migrations

DROP = "DROP INDEX CONCURRENTLY IF EXISTS place_name_trgm;"
# The reverse as SQL: Django's AddIndexConcurrently wraps an OpClass expression in one pair of
# parentheses too many ("syntax error at or near gin_trgm_ops").
CREATE = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS place_name_trgm ON places_place "
    "USING gin (upper(name) gin_trgm_ops);"
)


class Migration(migrations.Migration):
    # DROP INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [("places", "0026_versions_notify")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(DROP, CREATE)],
            state_operations=[migrations.RemoveIndex(model_name="place", name="place_name_trgm")],
        ),
    ]

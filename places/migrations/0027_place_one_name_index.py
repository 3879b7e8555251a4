"""One trigram index for name search instead of two (issue 14: what every import pays).

The API's ``q`` compared the upper-cased name, with an index of its own; the admin's search
the upper-cased, unaccented name (migration 0023). ``q`` now uses the admin's rule, so one
GIN index answers both: each insert or rename of a place keeps one trigram index up to
date instead of two (about a quarter of what inserting a place into its indexes cost).
Dropped concurrently, so that a deployment does not lock the places table.
"""

from django.contrib.postgres.operations import RemoveIndexConcurrently
from django.db import migrations


class Migration(migrations.Migration):
    # DROP INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [("places", "0026_versions_notify")]

    operations = [
        RemoveIndexConcurrently(model_name="place", name="place_name_trgm"),
    ]

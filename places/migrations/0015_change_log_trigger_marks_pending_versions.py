"""The change-log trigger and its function are named for what they do since 0010.

0009 created ``places_dataversion_bump()`` and its trigger ``placechange_bump_data_version``
to move a dataset's version in the writing statement. Since 0010 (and 0011 for areas) they
only mark the datasets and area cells a statement touched as pending; the deferred triggers
on the pending tables move the versions at commit. The names now say so. Renaming changes
neither what the trigger runs nor when (a trigger names its function by oid).
"""

from django.db import migrations

FORWARD = """
ALTER FUNCTION places_dataversion_bump() RENAME TO places_versions_mark_pending;
ALTER TRIGGER placechange_bump_data_version ON places_placechange
    RENAME TO placechange_versions_mark_pending;
"""

BACKWARD = """
ALTER TRIGGER placechange_versions_mark_pending ON places_placechange
    RENAME TO placechange_bump_data_version;
ALTER FUNCTION places_versions_mark_pending() RENAME TO places_dataversion_bump;
"""


class Migration(migrations.Migration):
    dependencies = [("places", "0014_place_references_per_statement")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]

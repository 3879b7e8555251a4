"""Make the change log append-only in the database itself: UPDATE and DELETE are refused.

History, revert, audit and the edge devices' change feed all trust that a logged change
never moves; a trigger holds that for every client, not only for Django code.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION places_placechange_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'places_placechange is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER placechange_append_only
    BEFORE UPDATE OR DELETE ON places_placechange
    FOR EACH ROW EXECUTE FUNCTION places_placechange_append_only();
"""

BACKWARD = """
DROP TRIGGER placechange_append_only ON places_placechange;
DROP FUNCTION places_placechange_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [("places", "0002_placeattribute_partitioned")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]

"""Every commit that moves a data version says so on ``places_data_versions`` (issue 14).

Web processes remember the versions they read until a commit moves one
(``places.version_watch``): a cached map answer then needs no round trip to PostgreSQL. The
version tables change only at commit (``places_dataversion_commit``,
``places_areaversion_commit``), or when a dataset's rows go; a statement trigger on each
sends the notification, which PostgreSQL delivers once the transaction has committed, and
once per transaction however many statements sent it (identical notifications fold).
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION places_versions_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('places_data_versions', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER dataversion_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON places_dataversion
    FOR EACH STATEMENT EXECUTE FUNCTION places_versions_notify();
CREATE TRIGGER areaversion_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON places_areaversion
    FOR EACH STATEMENT EXECUTE FUNCTION places_versions_notify();
"""

BACKWARD = """
DROP TRIGGER areaversion_notify ON places_areaversion;
DROP TRIGGER dataversion_notify ON places_dataversion;
DROP FUNCTION places_versions_notify();
"""


class Migration(migrations.Migration):
    dependencies = [("places", "0025_place_source_side_table")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]

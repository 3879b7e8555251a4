"""Bump the dataset's data version in the same statement that writes to the change log."""

from django.db import migrations

FORWARD = """
CREATE SEQUENCE places_dataversion_seq;
CREATE FUNCTION places_dataversion_bump() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO places_dataversion (dataset_id, version, changed_at)
    SELECT dataset_id, nextval('places_dataversion_seq'), now()
    FROM (SELECT DISTINCT dataset_id FROM new_changes) AS touched
    ON CONFLICT (dataset_id) DO UPDATE
        SET version = EXCLUDED.version, changed_at = EXCLUDED.changed_at;
    RETURN NULL;
END
$$;
INSERT INTO places_dataversion (dataset_id, version, changed_at)
SELECT dataset_id, nextval('places_dataversion_seq'), now()
FROM (SELECT DISTINCT dataset_id FROM places_placechange) AS existing;
CREATE TRIGGER placechange_bump_data_version
    AFTER INSERT ON places_placechange
    REFERENCING NEW TABLE AS new_changes
    FOR EACH STATEMENT EXECUTE FUNCTION places_dataversion_bump();
"""

BACKWARD = """
DROP TRIGGER placechange_bump_data_version ON places_placechange;
DROP FUNCTION places_dataversion_bump();
DROP SEQUENCE places_dataversion_seq;
"""


class Migration(migrations.Migration):
    dependencies = [("places", "0008_dataversion")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]

"""Move data versions at commit time, not when the change log is written.

0009 upserted the dataset's version row in the writing statement, so an import held that row
locked until it committed: every curator edit of the dataset waited for the whole import,
and an edit that had locked a place the import then updated deadlocked with it. Now the
statement trigger only notes (transaction, dataset) in a pending table; a deferred
constraint trigger on that table moves the version just before commit, holding the row
for an instant.
"""

from django.db import migrations

FORWARD = """
CREATE TABLE places_dataversion_pending (
    xact bigint NOT NULL,
    dataset_id bigint NOT NULL,
    marks integer NOT NULL DEFAULT 1,
    PRIMARY KEY (xact, dataset_id)
);

CREATE OR REPLACE FUNCTION places_dataversion_bump() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO places_dataversion_pending (xact, dataset_id)
    SELECT DISTINCT txid_current(), dataset_id FROM new_changes
    -- Later writes of the same transaction count up, so its own reads see each of them.
    ON CONFLICT (xact, dataset_id)
        DO UPDATE SET marks = places_dataversion_pending.marks + 1;
    RETURN NULL;
END
$$;

CREATE FUNCTION places_dataversion_commit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO places_dataversion (dataset_id, version, changed_at)
    VALUES (NEW.dataset_id, nextval('places_dataversion_seq'), now())
    ON CONFLICT (dataset_id) DO UPDATE
        SET version = EXCLUDED.version, changed_at = EXCLUDED.changed_at;
    DELETE FROM places_dataversion_pending WHERE xact = NEW.xact AND dataset_id = NEW.dataset_id;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER dataversion_pending_commit
    AFTER INSERT ON places_dataversion_pending
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION places_dataversion_commit();
"""

BACKWARD = """
DROP TRIGGER dataversion_pending_commit ON places_dataversion_pending;
DROP FUNCTION places_dataversion_commit();
DROP TABLE places_dataversion_pending;
CREATE OR REPLACE FUNCTION places_dataversion_bump() RETURNS trigger
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
"""


class Migration(migrations.Migration):
    dependencies = [("places", "0009_dataversion_trigger")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]

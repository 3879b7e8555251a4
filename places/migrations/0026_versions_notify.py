"""Every commit that moves a data version says so on ``places_data_versions`` (issue 14).

Web processes remember the versions they read until a commit moves one
(``places.version_watch``): a cached map answer then needs no round trip to PostgreSQL.
Versions move at commit, in ``places_dataversion_commit`` and ``places_areaversion_commit``;
each now also notifies, which PostgreSQL delivers once the transaction has committed, and
once per transaction however often it was sent (identical notifications fold). The area
function notifies only from the invocation that moved cells: it runs once per pending cell
and all but the first find nothing, and a statement trigger on the version table would have
run for each of those (3 % of a first import in an A/B). Rows that leave the version tables
otherwise (a dataset deleted, a table truncated) notify through statement triggers.
"""

from django.db import migrations

DATAVERSION_COMMIT = """
CREATE OR REPLACE FUNCTION places_dataversion_commit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO places_dataversion (dataset_id, version, changed_at)
    VALUES (NEW.dataset_id, nextval('places_dataversion_seq'), now())
    ON CONFLICT (dataset_id) DO UPDATE
        SET version = EXCLUDED.version, changed_at = EXCLUDED.changed_at;
    DELETE FROM places_dataversion_pending WHERE xact = NEW.xact AND dataset_id = NEW.dataset_id;
    {notify}
    RETURN NULL;
END
$$;
"""

AREAVERSION_COMMIT = """
CREATE OR REPLACE FUNCTION places_areaversion_commit() RETURNS trigger
LANGUAGE plpgsql AS $$
{declare}BEGIN
    -- The first invocation of a transaction moves all of its cells; the rest find none.
    INSERT INTO places_areaversion (dataset_id, cell, version)
    SELECT dataset_id, cell, nextval('places_dataversion_seq')
    FROM (SELECT dataset_id, cell FROM places_areaversion_pending
          WHERE xact = NEW.xact ORDER BY dataset_id, cell) AS touched
    ON CONFLICT (dataset_id, cell) DO UPDATE SET version = EXCLUDED.version;
    {notify}DELETE FROM places_areaversion_pending WHERE xact = NEW.xact;
    RETURN NULL;
END
$$;
"""

NOTIFY = "PERFORM pg_notify('places_data_versions', '');"

FORWARD = (
    DATAVERSION_COMMIT.format(notify=NOTIFY)
    + AREAVERSION_COMMIT.format(
        declare="DECLARE\n    moved bigint;\n",
        notify="GET DIAGNOSTICS moved = ROW_COUNT;\n"
        "    IF moved > 0 THEN\n"
        f"        {NOTIFY}\n"
        "    END IF;\n    ",
    )
    + f"""
CREATE FUNCTION places_versions_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {NOTIFY}
    RETURN NULL;
END
$$;
CREATE TRIGGER dataversion_notify AFTER DELETE OR TRUNCATE ON places_dataversion
    FOR EACH STATEMENT EXECUTE FUNCTION places_versions_notify();
CREATE TRIGGER areaversion_notify AFTER DELETE OR TRUNCATE ON places_areaversion
    FOR EACH STATEMENT EXECUTE FUNCTION places_versions_notify();
"""
)

BACKWARD = (
    """
DROP TRIGGER areaversion_notify ON places_areaversion;
DROP TRIGGER dataversion_notify ON places_dataversion;
DROP FUNCTION places_versions_notify();
"""
    + DATAVERSION_COMMIT.format(notify="")
    + AREAVERSION_COMMIT.format(declare="", notify="")
)


class Migration(migrations.Migration):
    dependencies = [("places", "0025_place_source_side_table")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]

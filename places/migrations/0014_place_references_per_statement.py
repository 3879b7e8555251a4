"""Places' dataset, country and region checked once per statement, not once per row.

A foreign-key constraint checks every inserted or updated row on its own, at commit: for a
million imported places that is three million lookups, 21 to 33 of the import's 190 to 250
seconds here. Triggers with transition tables do the same check once per statement, on the distinct
ids the statement wrote (a few hundred regions and one dataset for a whole import batch).

The check keeps a foreign key's guarantees under READ COMMITTED, the isolation level of every
connection here (under REPEATABLE READ, a delete that waited for a writer would check with
its older snapshot; a foreign key's own check has a cross-check snapshot for that):

- the rows named are locked ``FOR KEY SHARE`` first, as the constraint's own check does, so
  a concurrent delete of one of them waits for the writer; the existence test runs after the
  lock, with a fresh snapshot, so it also sees a delete that committed first;
- deleting a dataset or region that places still name fails (the parent-side checks), after
  Django's own ``on_delete`` handling (``SET_NULL`` for regions) has run.

Unlike the deferred constraints it replaces, the check runs at the end of each statement,
not at commit, and on every UPDATE of places (transition tables cannot name columns), where
a constraint skips rows whose references did not change: the statement's rows are kept for
the trigger, and their few distinct ids looked up. ``TRUNCATE`` of the regions or datasets alone is not checked (it would also
have to be run with ``CASCADE`` under the constraints).

The status index becomes partial: nearly every place is active, and a B-tree over three
values only found the few retired or merged ones.
"""

import django.db.models.deletion
from django.db import migrations, models

FORWARD = r"""
DO $$
DECLARE c record;
BEGIN
    FOR c IN SELECT conname FROM pg_constraint
             WHERE conrelid = 'places_place'::regclass AND contype = 'f'
               AND confrelid IN ('places_dataset'::regclass, 'places_region'::regclass)
    LOOP
        EXECUTE format('ALTER TABLE places_place DROP CONSTRAINT %I', c.conname);
    END LOOP;
END $$;

CREATE FUNCTION places_place_references_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing bigint;
    named_by text;
BEGIN
    PERFORM 1 FROM places_dataset d
    WHERE d.id IN (SELECT dataset_id FROM new_places) ORDER BY d.id FOR KEY SHARE;
    SELECT n.dataset_id INTO missing FROM (SELECT DISTINCT dataset_id FROM new_places) n
    WHERE NOT EXISTS (SELECT 1 FROM places_dataset d WHERE d.id = n.dataset_id) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'insert or update on table "places_place" names dataset %, '
                        'which does not exist', missing
            USING ERRCODE = 'foreign_key_violation', COLUMN = 'dataset_id';
    END IF;
    PERFORM 1 FROM places_region r
    WHERE r.id IN (SELECT region_id FROM new_places UNION SELECT country_id FROM new_places)
    ORDER BY r.id FOR KEY SHARE;
    SELECT n.id, n.col INTO missing, named_by
    FROM (SELECT DISTINCT region_id AS id, 'region_id' AS col FROM new_places
          UNION SELECT DISTINCT country_id, 'country_id' FROM new_places) n
    WHERE n.id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM places_region r WHERE r.id = n.id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'insert or update on table "places_place" names region % (%), '
                        'which does not exist', missing, named_by
            USING ERRCODE = 'foreign_key_violation', COLUMN = named_by;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER place_references_insert AFTER INSERT ON places_place
    REFERENCING NEW TABLE AS new_places
    FOR EACH STATEMENT EXECUTE FUNCTION places_place_references_check();
CREATE TRIGGER place_references_update AFTER UPDATE ON places_place
    REFERENCING NEW TABLE AS new_places
    FOR EACH STATEMENT EXECUTE FUNCTION places_place_references_check();

CREATE FUNCTION places_region_unreferenced_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    named bigint;
BEGIN
    SELECT o.id INTO named FROM old_regions o
    WHERE EXISTS (SELECT 1 FROM places_place p WHERE p.region_id = o.id)
       OR EXISTS (SELECT 1 FROM places_place p WHERE p.country_id = o.id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'delete on table "places_region": places still name region %', named
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER region_unreferenced AFTER DELETE ON places_region
    REFERENCING OLD TABLE AS old_regions
    FOR EACH STATEMENT EXECUTE FUNCTION places_region_unreferenced_check();

CREATE FUNCTION places_dataset_unreferenced_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    named bigint;
BEGIN
    SELECT o.id INTO named FROM old_datasets o
    WHERE EXISTS (SELECT 1 FROM places_place p WHERE p.dataset_id = o.id) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'delete on table "places_dataset": places still belong to dataset %',
                        named
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER dataset_unreferenced AFTER DELETE ON places_dataset
    REFERENCING OLD TABLE AS old_datasets
    FOR EACH STATEMENT EXECUTE FUNCTION places_dataset_unreferenced_check();
"""

BACKWARD = """
DROP TRIGGER place_references_insert ON places_place;
DROP TRIGGER place_references_update ON places_place;
DROP TRIGGER region_unreferenced ON places_region;
DROP TRIGGER dataset_unreferenced ON places_dataset;
DROP FUNCTION places_place_references_check();
DROP FUNCTION places_region_unreferenced_check();
DROP FUNCTION places_dataset_unreferenced_check();
ALTER TABLE places_place
    ADD CONSTRAINT places_place_dataset_id_f245a007_fk_places_dataset_id
        FOREIGN KEY (dataset_id) REFERENCES places_dataset (id) DEFERRABLE INITIALLY DEFERRED,
    ADD CONSTRAINT places_place_country_id_eae7fbe0_fk_places_region_id
        FOREIGN KEY (country_id) REFERENCES places_region (id) DEFERRABLE INITIALLY DEFERRED,
    ADD CONSTRAINT places_place_region_id_2fb4d828_fk_places_region_id
        FOREIGN KEY (region_id) REFERENCES places_region (id) DEFERRABLE INITIALLY DEFERRED;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("places", "0013_areaversion_bump_skips_creates"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(FORWARD, BACKWARD)],
            state_operations=[
                migrations.AlterField(
                    model_name="place",
                    name="country",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        limit_choices_to={"level": "country"},
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="places.region",
                    ),
                ),
                migrations.AlterField(
                    model_name="place",
                    name="dataset",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="places",
                        to="places.dataset",
                    ),
                ),
                migrations.AlterField(
                    model_name="place",
                    name="region",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        help_text="The most detailed region that contains the place "
                        "(e.g. its district).",
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="places",
                        to="places.region",
                    ),
                ),
            ],
        ),
        migrations.RemoveIndex(model_name="place", name="place_status"),
        migrations.AddIndex(
            model_name="place",
            index=models.Index(
                condition=models.Q(("status", "active"), _negated=True),
                fields=["status"],
                name="place_inactive",
            ),
        ),
    ]

"""Data versions per area as well as per dataset, so an edit in Wales leaves London's caches.

The world is cut into cells of 1.40625° (256 × 128; about 156 km at the equator). The
change-log statement trigger notes, besides (transaction, dataset), every (transaction,
dataset, cell) it touched: the cell of each changed place's location, and of its old
location when it moved. A deferred trigger moves those cells' versions just before commit,
all of one transaction's cells at once in (dataset, cell) order, so two committing
transactions lock version rows in the same order and cannot deadlock on them.
"""

import django.db.models.deletion
from django.db import migrations, models

FORWARD = """
CREATE FUNCTION places_area_cell(g geometry) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT least(127, greatest(0, floor((ST_Y(g) + 90) / 1.40625)))::integer * 256
         + least(255, greatest(0, floor((ST_X(g) + 180) / 1.40625)))::integer
$$;

CREATE TABLE places_areaversion_pending (
    xact bigint NOT NULL,
    dataset_id bigint NOT NULL,
    cell integer NOT NULL,
    marks integer NOT NULL DEFAULT 1,
    PRIMARY KEY (xact, dataset_id, cell)
);

CREATE OR REPLACE FUNCTION places_dataversion_bump() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO places_dataversion_pending (xact, dataset_id)
    SELECT DISTINCT txid_current(), dataset_id FROM new_changes
    -- Later writes of the same transaction count up, so its own reads see each of them.
    ON CONFLICT (xact, dataset_id)
        DO UPDATE SET marks = places_dataversion_pending.marks + 1;
    INSERT INTO places_areaversion_pending (xact, dataset_id, cell)
    SELECT DISTINCT txid_current(), c.dataset_id, cells.cell
    FROM new_changes c
    JOIN places_place p ON p.id = c.place_id
    CROSS JOIN LATERAL (VALUES
        (places_area_cell(p.location)),
        (CASE WHEN jsonb_typeof(c.changes -> 'location' -> 'old') = 'object'
              THEN places_area_cell(ST_GeomFromGeoJSON(c.changes -> 'location' -> 'old')) END)
    ) AS cells(cell)
    WHERE cells.cell IS NOT NULL
    ON CONFLICT (xact, dataset_id, cell)
        DO UPDATE SET marks = places_areaversion_pending.marks + 1;
    RETURN NULL;
END
$$;

CREATE FUNCTION places_areaversion_commit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- The first invocation of a transaction moves all of its cells; the rest find none.
    INSERT INTO places_areaversion (dataset_id, cell, version)
    SELECT dataset_id, cell, nextval('places_dataversion_seq')
    FROM (SELECT dataset_id, cell FROM places_areaversion_pending
          WHERE xact = NEW.xact ORDER BY dataset_id, cell) AS touched
    ON CONFLICT (dataset_id, cell) DO UPDATE SET version = EXCLUDED.version;
    DELETE FROM places_areaversion_pending WHERE xact = NEW.xact;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER areaversion_pending_commit
    AFTER INSERT ON places_areaversion_pending
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION places_areaversion_commit();
"""

BACKWARD = """
DROP TRIGGER areaversion_pending_commit ON places_areaversion_pending;
DROP FUNCTION places_areaversion_commit();
CREATE OR REPLACE FUNCTION places_dataversion_bump() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO places_dataversion_pending (xact, dataset_id)
    SELECT DISTINCT txid_current(), dataset_id FROM new_changes
    ON CONFLICT (xact, dataset_id)
        DO UPDATE SET marks = places_dataversion_pending.marks + 1;
    RETURN NULL;
END
$$;
DROP TABLE places_areaversion_pending;
DROP FUNCTION places_area_cell(geometry);
"""


class Migration(migrations.Migration):
    dependencies = [("places", "0010_dataversion_bump_at_commit")]

    operations = [
        migrations.CreateModel(
            name="AreaVersion",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("cell", models.IntegerField(help_text="row × 256 + column of a 1.40625° cell")),
                ("version", models.BigIntegerField()),
                (
                    "dataset",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="places.dataset",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("dataset", "cell"), name="areaversion_dataset_cell"
                    )
                ]
            },
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
